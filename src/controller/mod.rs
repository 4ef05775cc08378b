//! The Kubernetes controller that reconciles `RvfMicroVm` resources into VM pods.
//!
//! `pod`, `service` and `state` are pure (spec and observations in, objects and status out);
//! `reconcile` holds the few side effects; `agent` reads the VM agent's `/status`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tracing::info;

use crate::crd::AGENT_PORT;
use pod::VmPodConfig;

/// Command-line options of `rvf-operator controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Image of the VM pod: `rvf-operator` plus QEMU, used by all its containers.
    #[arg(long, env = "RVF_VM_IMAGE", default_value = pod::DEFAULT_VM_IMAGE)]
    pub vm_image: String,

    /// Pull policy of the VM image (and of image-volume sources).
    #[arg(long, env = "RVF_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    pub image_pull_policy: String,

    /// Extended resource of a KVM device plugin (e.g. devices.kubevirt.io/kvm). Without it,
    /// `kvm: Required` VMs mount /dev/kvm from the host as a CharDevice.
    #[arg(long, env = "RVF_KVM_RESOURCE_NAME")]
    pub kvm_resource_name: Option<String>,

    /// Node label KEY=VALUE that marks KVM nodes; `kvm: Required` VMs are scheduled only there.
    #[arg(long, env = "RVF_KVM_NODE_SELECTOR", value_parser = parse_key_value)]
    pub kvm_node_selector: Option<(String, String)>,

    /// Run the `vm` container privileged (needed for a hostPath /dev/kvm).
    #[arg(long, env = "RVF_VM_PRIVILEGED", default_value_t = true, action = clap::ArgAction::Set)]
    pub vm_privileged: bool,

    /// MiB the VM pod asks for beyond guest RAM (QEMU and agent overhead).
    #[arg(long, env = "RVF_MEMORY_OVERHEAD_MIB", default_value_t = pod::DEFAULT_MEMORY_OVERHEAD_MIB)]
    pub memory_overhead_mib: u32,

    /// CPU millicores the VM pod requests per vCPU.
    #[arg(long, default_value_t = pod::DEFAULT_CPU_REQUEST_MILLIS_PER_VCPU)]
    pub cpu_request_millis_per_vcpu: u32,

    /// Allow `source.hostPath` (single-node development only).
    #[arg(long, env = "RVF_ALLOW_HOST_PATH")]
    pub allow_host_path: bool,

    /// Allow `qemu.extraArgs` (in a privileged pod these can reach the host).
    #[arg(long, env = "RVF_ALLOW_QEMU_EXTRA_ARGS")]
    pub allow_qemu_extra_args: bool,

    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "RVF_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Milliseconds a pull of the agent's /status may take.
    #[arg(long, default_value_t = 2000)]
    pub agent_timeout_ms: u64,

    /// Seconds between looks at a Running VM (keeps qmp.status fresh).
    #[arg(long, default_value_t = 15)]
    pub running_requeue_seconds: u64,

    /// Seconds the agent's /status may keep failing before a VM is no longer reported Ready
    /// (reason AgentUnreachable); a shorter outage leaves the status as the kubelet's probe says.
    #[arg(long, default_value_t = state::DEFAULT_AGENT_STALE_AFTER.as_secs())]
    pub agent_unreachable_seconds: u64,

    /// Name of this replica in Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    #[command(flatten)]
    pub leader: leader::LeaderElectionArgs,

    #[command(flatten)]
    pub metrics: metrics_server::MetricsServerArgs,
}

impl ControllerArgs {
    /// The VM pod settings these flags describe.
    pub fn pod_config(&self) -> VmPodConfig {
        VmPodConfig {
            image: self.vm_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            kvm_resource_name: self.kvm_resource_name.clone(),
            kvm_node_selector: self.kvm_node_selector.clone(),
            privileged: self.vm_privileged,
            memory_overhead_mib: self.memory_overhead_mib,
            cpu_request_millis_per_vcpu: self.cpu_request_millis_per_vcpu,
            allow_host_path: self.allow_host_path,
            allow_qemu_extra_args: self.allow_qemu_extra_args,
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Runs the controller until SIGTERM or SIGINT: serves metrics and health, waits to lead,
/// then reconciles until leadership is lost or a signal arrives.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let metrics = Arc::new(metrics_server::Metrics::new());
    let health = Arc::new(metrics_server::Health::default());
    let server =
        metrics_server::MetricsServer::bind(&args.metrics, metrics.clone(), health.clone())
            .await
            .context("cannot serve metrics and health")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || stop_signalled(stop_rx.clone());
    let server_task = tokio::spawn(server.run(stopped()));
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let agent = Arc::new(agent::HttpAgent::new(
        AGENT_PORT,
        Duration::from_millis(args.agent_timeout_ms),
    ));
    let mut ctx = reconcile::Context::new(
        client.clone(),
        args.pod_config(),
        agent,
        metrics.clone(),
        args.instance.clone(),
    );
    ctx.running_requeue = Duration::from_secs(args.running_requeue_seconds);
    ctx.agent_stale_after = Duration::from_secs(args.agent_unreachable_seconds);
    let ctx = Arc::new(ctx);

    // A standby is ready too: a rolling update needs the new replica Ready before the
    // old one, which holds the Lease, is removed.
    health.set_ready(true);
    let mut leadership = tokio::select! {
        l = leader::Leadership::acquire(client, &args.leader) => l?,
        _ = stopped() => return Ok(()),
    };
    metrics.set_leader(true);
    info!(
        namespace = args.watch_namespace.as_deref().unwrap_or("*"),
        "reconciling RvfMicroVm resources"
    );
    let lost = tokio::select! {
        _ = reconcile::run_controller(ctx, args.watch_namespace.as_deref(), stopped()) => false,
        _ = leadership.lost() => true,
    };
    metrics.set_leader(false);
    health.set_ready(false);
    if lost {
        // The health server stops only on a signal; a replica that lost the Lease exits now.
        server_task.abort();
        anyhow::bail!("lost leadership of the Lease; exiting so a fresh replica can campaign");
    }
    leadership.release().await?;
    let _ = server_task.await;
    Ok(())
}

/// Resolves once `rx` says stop; the controller's and the servers' shutdown trigger.
async fn stop_signalled(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub mod agent;
pub mod events;
pub mod leader;
pub mod metrics_server;
pub mod pod;
pub mod reconcile;
pub mod service;
pub mod state;
