//! The Kubernetes controller that reconciles `RvfMicroVm` resources into VM pods.
//!
//! `pod`, `service` and `state` are pure (spec and observations in, objects and status out);
//! `reconcile` holds the few side effects; `agent` reads the VM agent's `/status`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Toleration;
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
    #[arg(
        long,
        env = "RVF_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub image_pull_policy: String,

    /// Extended resource of a KVM device plugin (e.g. devices.kubevirt.io/kvm). Without it,
    /// `kvm: Required` VMs mount /dev/kvm from the host as a CharDevice.
    #[arg(long, env = "RVF_KVM_RESOURCE_NAME")]
    pub kvm_resource_name: Option<String>,

    /// Node label KEY=VALUE that marks KVM nodes; `kvm: Required` VMs are scheduled only there.
    #[arg(long, env = "RVF_KVM_NODE_SELECTOR", value_parser = parse_key_value)]
    pub kvm_node_selector: Option<(String, String)>,

    /// Node label KEY=VALUE every VM pod must match (repeatable). A key the VM's own
    /// `spec.nodeSelector` sets keeps the VM's value; a key given twice keeps the last value.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub vm_node_selector: Vec<(String, String)>,

    /// Toleration every VM pod carries, as a JSON Toleration (repeatable), e.g.
    /// '{"key":"dedicated","operator":"Equal","value":"vms","effect":"NoSchedule"}'.
    /// The VM's own `spec.tolerations` are added after these.
    #[arg(long, value_name = "JSON", value_parser = parse_toleration)]
    pub vm_toleration: Vec<Toleration>,

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
            node_selector: self.vm_node_selector.iter().cloned().collect(),
            tolerations: self.vm_toleration.clone(),
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

/// Fields of the Kubernetes Toleration; anything else in `--vm-toleration` is a typo.
const TOLERATION_FIELDS: [&str; 5] = ["key", "operator", "value", "effect", "tolerationSeconds"];

/// Parses one `--vm-toleration`: a JSON object with only Toleration fields and the operators
/// and effects the API server accepts, so a typo fails at startup rather than on every VM pod.
fn parse_toleration(s: &str) -> Result<Toleration, String> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(s)
        .map_err(|e| format!("expected a JSON object in the Toleration shape: {e}"))?;
    if let Some(unknown) = object
        .keys()
        .find(|k| !TOLERATION_FIELDS.contains(&k.as_str()))
    {
        return Err(format!(
            "{unknown:?} is not a Toleration field (expected one of {})",
            TOLERATION_FIELDS.join(", ")
        ));
    }
    let toleration: Toleration = serde_json::from_value(object.into())
        .map_err(|e| format!("not a Kubernetes Toleration: {e}"))?;
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    if !["Equal", "Exists"].contains(&operator) {
        return Err(format!("operator {operator:?} must be Equal or Exists"));
    }
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(format!(
            "effect {effect:?} must be NoSchedule, PreferNoSchedule, NoExecute or empty (all)"
        ));
    }
    // The API server's own rules: a toleration breaking them would get every VM pod refused.
    let value = toleration.value.as_deref().unwrap_or("");
    let key = toleration.key.as_deref().unwrap_or("");
    if operator == "Exists" && !value.is_empty() {
        return Err(format!("operator Exists takes no value (got {value:?})"));
    }
    if key.is_empty() && operator != "Exists" {
        return Err("a toleration without a key must use operator Exists".into());
    }
    if toleration.toleration_seconds.is_some() && effect != "NoExecute" {
        return Err("tolerationSeconds applies only to effect NoExecute".into());
    }
    Ok(toleration)
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        controller: ControllerArgs,
    }

    fn parse(args: &[&str]) -> Result<ControllerArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("controller").chain(args.iter().copied()))
            .map(|cli| cli.controller)
    }

    #[test]
    fn repeated_vm_scheduling_flags_all_reach_the_pod_config() {
        let args = parse(&[
            "--vm-node-selector=pool=vms",
            "--vm-node-selector",
            "zone=a",
            "--vm-toleration",
            r#"{"key":"dedicated","operator":"Equal","value":"vms","effect":"NoSchedule"}"#,
            r#"--vm-toleration={"operator":"Exists","effect":"NoExecute","tolerationSeconds":60}"#,
        ])
        .unwrap();

        let config = args.pod_config();

        assert_eq!(config.node_selector.len(), 2);
        assert_eq!(config.node_selector["zone"], "a");
        assert_eq!(config.tolerations.len(), 2);
        assert_eq!(config.tolerations[0].value.as_deref(), Some("vms"));
        assert_eq!(config.tolerations[1].toleration_seconds, Some(60));
    }

    #[test]
    fn a_toleration_that_is_not_json_is_refused_naming_the_flag() {
        let error = parse(&["--vm-toleration", "dedicated=vms:NoSchedule"]).unwrap_err();

        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(error.to_string().contains("--vm-toleration"), "{error}");
    }

    #[test]
    fn a_toleration_the_api_server_would_refuse_is_refused_at_start() {
        for (json, why) in [
            (
                r#"{"key":"a","operator":"Exists","value":"x"}"#,
                "takes no value",
            ),
            (r#"{"value":"v","effect":"NoSchedule"}"#, "without a key"),
            (
                r#"{"key":"a","value":"v","effect":"NoSchedule","tolerationSeconds":60}"#,
                "only to effect NoExecute",
            ),
        ] {
            let err = parse_toleration(json).unwrap_err();
            assert!(err.contains(why), "{json}: {err}");
        }
        let ok = r#"{"key":"a","operator":"Exists","effect":"NoExecute","tolerationSeconds":30}"#;
        assert!(parse_toleration(ok).is_ok());
        assert!(parse_toleration(r#"{"operator":"Exists"}"#).is_ok());
    }

    #[test]
    fn a_toleration_with_a_misspelled_field_or_bad_effect_is_refused() {
        for bad in [
            r#"{"key":"a","efect":"NoSchedule"}"#,
            r#"{"key":"a","effect":"Never"}"#,
        ] {
            let error = parse(&["--vm-toleration", bad]).unwrap_err();
            assert!(error.to_string().contains("--vm-toleration"), "{error}");
        }
    }

    #[test]
    fn without_vm_scheduling_flags_the_pod_config_adds_nothing() {
        let config = parse(&[]).unwrap().pod_config();

        assert!(config.node_selector.is_empty() && config.tolerations.is_empty());
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
