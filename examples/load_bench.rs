//! Load benchmark, run by hand against a real cluster (never in CI):
//!
//! ```text
//! RVF_BENCH_IMAGE=... RVF_BENCH_RVF=/var/lib/rvf/hello.rvf RVF_BENCH_N=50 \
//!   cargo run --release --example load_bench
//! ```
//!
//! Runs the controller in this process, applies N `RvfMicroVm`s at once (hostPath source,
//! `kvm` from `RVF_BENCH_KVM`, default Auto), and prints p50/p95 of creation -> pod created and
//! creation -> Ready, and this process's peak resident memory (the controller's, since the
//! benchmark's own bookkeeping is small). Deletes everything at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, CustomResourceExt};
use rvf_operator::controller::agent::HttpAgent;
use rvf_operator::controller::metrics_server::Metrics;
use rvf_operator::controller::pod::VmPodConfig;
use rvf_operator::controller::reconcile::{run_controller, Context, FIELD_MANAGER};
use rvf_operator::crd::{RvfMicroVm, AGENT_PORT};
use serde_json::json;

const NAMESPACE: &str = "rvf-bench";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let image = std::env::var("RVF_BENCH_IMAGE")?;
    let rvf = std::env::var("RVF_BENCH_RVF")?;
    let n: usize = std::env::var("RVF_BENCH_N")
        .unwrap_or_else(|_| "20".into())
        .parse()?;
    let kvm = std::env::var("RVF_BENCH_KVM").unwrap_or_else(|_| "Auto".into());
    let deadline = Duration::from_secs(
        std::env::var("RVF_BENCH_TIMEOUT_SECONDS")
            .unwrap_or_else(|_| "900".into())
            .parse()?,
    );

    let client = Client::try_default().await?;
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "rvfmicrovms.rvf.ruvector.io",
        &apply,
        &Patch::Apply(RvfMicroVm::crd()),
    )
    .await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    namespaces
        .patch(NAMESPACE, &apply, &Patch::Apply(&ns))
        .await?;

    let config = VmPodConfig {
        image,
        allow_host_path: true,
        ..Default::default()
    };
    let agent = Arc::new(HttpAgent::new(AGENT_PORT, Duration::from_secs(2)));
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        agent,
        Arc::new(Metrics::new()),
        None,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run_controller(ctx, Some(NAMESPACE), async {
        let _ = stopped.await;
    }));

    let vms: Api<RvfMicroVm> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    let mut created = BTreeMap::new();
    for i in 0..n {
        let name = format!("bench-{i}");
        let vm = json!({
            "apiVersion": "rvf.ruvector.io/v1alpha1", "kind": "RvfMicroVm",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"source": {"hostPath": {"path": rvf}}, "kvm": kvm},
        });
        vms.patch(
            &name,
            &PatchParams::apply("rvf-bench").force(),
            &Patch::Apply(&vm),
        )
        .await?;
        created.insert(name, Instant::now());
    }
    println!(
        "applied {n} RvfMicroVms in {:.2}s",
        started.elapsed().as_secs_f64()
    );

    let mut to_pod = BTreeMap::new();
    let mut to_ready = BTreeMap::new();
    while to_ready.len() < n && started.elapsed() < deadline {
        for pod in pods.list(&ListParams::default()).await? {
            let vm = pod
                .metadata
                .name
                .clone()
                .unwrap_or_default()
                .trim_end_matches("-vm")
                .to_string();
            if let Some(t0) = created.get(&vm) {
                to_pod
                    .entry(vm)
                    .or_insert_with(|| t0.elapsed().as_secs_f64());
            }
        }
        for vm in vms.list(&ListParams::default()).await? {
            let name = vm.metadata.name.clone().unwrap_or_default();
            let ready = vm.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if let (true, Some(t0)) = (ready, created.get(&name)) {
                to_ready
                    .entry(name)
                    .or_insert_with(|| t0.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let report = |label: &str, values: &BTreeMap<String, f64>| {
        let mut v: Vec<f64> = values.values().copied().collect();
        v.sort_by(f64::total_cmp);
        println!(
            "{label}: {}/{n} reached, p50 {:.2}s, p95 {:.2}s",
            v.len(),
            percentile(&v, 50.0),
            percentile(&v, 95.0)
        );
    };
    report("creation -> pod created", &to_pod);
    report("creation -> Ready", &to_ready);
    match peak_rss_mib() {
        Some(mib) => println!("controller peak memory (VmHWM): {mib:.1} MiB"),
        None => println!("controller peak memory: /proc/self/status not readable"),
    }

    for name in created.keys() {
        let _ = vms.delete(name, &DeleteParams::default()).await;
    }
    let cleanup = Instant::now();
    while !vms.list(&ListParams::default()).await?.items.is_empty() && cleanup.elapsed() < deadline
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = stop.send(());
    let _ = controller.await;
    let _ = namespaces.delete(NAMESPACE, &DeleteParams::default()).await;
    Ok(())
}
