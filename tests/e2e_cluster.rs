//! End to end on a real cluster: install the CRD, run the controller in-process, boot a VM
//! from an RVF file on the node, wait for Ready with QMP `running`, delete it, check nothing is
//! left. Runs only with `RVF_E2E=1` and `KUBECONFIG` set; see docs/controller.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, CustomResourceExt};
use rvf_operator::controller::agent::HttpAgent;
use rvf_operator::controller::metrics_server::Metrics;
use rvf_operator::controller::pod::VmPodConfig;
use rvf_operator::controller::reconcile::{run_controller, Context, FIELD_MANAGER};
use rvf_operator::crd::{RvfMicroVm, AGENT_PORT};
use serde_json::json;

const NAMESPACE: &str = "rvf-e2e";
const TIMEOUT: Duration = Duration::from_secs(600);

fn enabled() -> bool {
    std::env::var("RVF_E2E").as_deref() == Ok("1") && std::env::var_os("KUBECONFIG").is_some()
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < TIMEOUT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn a_vm_from_an_rvf_on_the_node_becomes_ready_and_leaves_nothing_behind() {
    if !enabled() {
        eprintln!("skipped: set RVF_E2E=1 and KUBECONFIG to run the end-to-end test on a cluster");
        return;
    }
    let image = std::env::var("RVF_E2E_IMAGE").expect("RVF_E2E_IMAGE names the VM pod image");
    let rvf = std::env::var("RVF_E2E_RVF").expect("RVF_E2E_RVF is the RVF file's path on the node");
    let initramfs = std::env::var("RVF_E2E_INITRAMFS").ok();
    let kvm = std::env::var("RVF_E2E_KVM").unwrap_or_else(|_| "Auto".into());

    let client = Client::try_default()
        .await
        .expect("a client from KUBECONFIG");
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "rvfmicrovms.rvf.ruvector.io",
        &apply,
        &Patch::Apply(RvfMicroVm::crd()),
    )
    .await
    .expect("the CRD installs");
    wait_for("the CRD to be established", || async {
        crds.get("rvfmicrovms.rvf.ruvector.io")
            .await
            .ok()
            .and_then(|c| c.status)
            .is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    namespaces
        .patch(NAMESPACE, &apply, &Patch::Apply(&ns))
        .await
        .expect("the namespace exists");

    let config = VmPodConfig {
        image,
        image_pull_policy: "IfNotPresent".into(),
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
    let mut source = json!({"hostPath": {"path": rvf}});
    if let Some(initramfs) = initramfs {
        source["initramfsPath"] = json!(initramfs);
    }
    let vm = json!({
        "apiVersion": "rvf.ruvector.io/v1alpha1", "kind": "RvfMicroVm",
        "metadata": {"name": "e2e", "namespace": NAMESPACE},
        "spec": {"source": source, "kvm": kvm},
    });
    vms.patch(
        "e2e",
        &PatchParams::apply("rvf-e2e").force(),
        &Patch::Apply(&vm),
    )
    .await
    .expect("the RvfMicroVm applies");

    wait_for("Ready with qmp.status running", || async {
        let Ok(vm) = vms.get("e2e").await else {
            return false;
        };
        let status = vm.status.unwrap_or_default();
        eprintln!(
            "phase {:?}: {}",
            status.phase,
            status.message.clone().unwrap_or_default()
        );
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready && status.qmp.is_some_and(|q| q.status == "running")
    })
    .await;

    vms.delete("e2e", &DeleteParams::default())
        .await
        .expect("the RvfMicroVm deletes");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for(
        "the resource, its pod and its Service to be gone",
        || async {
            vms.get_opt("e2e").await.unwrap().is_none()
                && pods.get_opt("e2e-vm").await.unwrap().is_none()
                && services.get_opt("e2e").await.unwrap().is_none()
        },
    )
    .await;

    let _ = stop.send(());
    let _ = controller.await;
    let _ = namespaces.delete(NAMESPACE, &DeleteParams::default()).await;
}
