//! Reconcile against a fake API server behind `tower_test::mock`: an in-memory store of one
//! RvfMicroVm, its pod and Service, that records every request so tests can check what the
//! controller wrote. No sockets: the client's service is the mock itself.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use rvf_operator::controller::agent::AgentStatusSource;
use rvf_operator::controller::metrics_server::Metrics;
use rvf_operator::controller::pod::VmPodConfig;
use rvf_operator::controller::reconcile::{reconcile, Context, ReconcileError, FINALIZER};
use rvf_operator::crd::{Accelerator, Phase, QmpState, RvfMicroVm};
use rvf_operator::runtime::status::VmStatus;
use serde_json::{json, Value};

const VM_PATH: &str = "/apis/rvf.ruvector.io/v1alpha1/namespaces/vms/rvfmicrovms/hello";
const POD_PATH: &str = "/api/v1/namespaces/vms/pods/hello-vm";
const SERVICE_PATH: &str = "/api/v1/namespaces/vms/services/hello";

/// One request the controller sent.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

/// What the fake API server holds, and how it misbehaves on purpose.
#[derive(Default)]
struct World {
    vm: Value,
    pod: Option<Value>,
    /// Status the kubelet would report for the next pod created.
    pod_status: Value,
    /// 409 answers still to give to status writes.
    status_conflicts: u32,
    /// Answer pod creation with this (code, message).
    reject_pod: Option<(u16, String)>,
    seen: Vec<Seen>,
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message})
}

impl World {
    fn answer(&mut self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        // Paths follow the resource's name, so tests may rename it.
        let name = self.vm["metadata"]["name"]
            .as_str()
            .unwrap_or("hello")
            .to_string();
        let vm_path = format!("/apis/rvf.ruvector.io/v1alpha1/namespaces/vms/rvfmicrovms/{name}");
        let pod_path = format!("/api/v1/namespaces/vms/pods/{name}-vm");
        let service_path = format!("/api/v1/namespaces/vms/services/{name}");
        match (method, path) {
            ("PATCH", p) if p == service_path => (200, body.clone()),
            ("GET", p) if p == pod_path => match &self.pod {
                Some(p) => (200, p.clone()),
                None => (
                    404,
                    status_body(404, "NotFound", "pods \"hello-vm\" not found"),
                ),
            },
            ("PATCH", p) if p == pod_path => {
                if let Some((code, message)) = &self.reject_pod {
                    return (*code, status_body(*code, "Forbidden", message));
                }
                let mut pod = body.clone();
                pod["metadata"]["uid"] = json!("pod-uid");
                pod["status"] = self.pod_status.clone();
                self.pod = Some(pod.clone());
                (200, pod)
            }
            ("DELETE", p) if p == pod_path => match self.pod.take() {
                Some(p) => (200, p),
                None => (
                    404,
                    status_body(404, "NotFound", "pods \"hello-vm\" not found"),
                ),
            },
            ("PATCH", p) if p == vm_path => {
                apply_json_patch(&mut self.vm, body);
                (200, self.vm.clone())
            }
            ("GET", p) if p == format!("{vm_path}/status") => (200, self.vm.clone()),
            ("PUT", p) if p == format!("{vm_path}/status") => {
                if self.status_conflicts > 0 {
                    self.status_conflicts -= 1;
                    return (
                        409,
                        status_body(409, "Conflict", "the object has been modified"),
                    );
                }
                self.vm["status"] = body["status"].clone();
                (200, self.vm.clone())
            }
            ("POST", "/apis/events.k8s.io/v1/namespaces/vms/events") => (201, body.clone()),
            ("GET", p) if p.contains("/persistentvolumeclaims/") => (
                200,
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "rvfs"}}),
            ),
            _ => (
                404,
                status_body(404, "NotFound", &format!("fake API has no {method} {path}")),
            ),
        }
    }

    fn requests(&self, method: &str, path: &str) -> Vec<&Seen> {
        self.seen
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .collect()
    }
}

/// Enough of RFC 6902 for the finalizer helper: test, add and remove on metadata.finalizers.
fn apply_json_patch(target: &mut Value, patch: &Value) {
    for op in patch.as_array().expect("a JSON patch") {
        let path = op["path"].as_str().unwrap();
        match op["op"].as_str().unwrap() {
            "add" if path == "/metadata/finalizers" => {
                target["metadata"]["finalizers"] = op["value"].clone()
            }
            "add" if path == "/metadata/finalizers/-" => target["metadata"]["finalizers"]
                .as_array_mut()
                .unwrap()
                .push(op["value"].clone()),
            "remove" => {
                let index: usize = path.rsplit('/').next().unwrap().parse().unwrap();
                target["metadata"]["finalizers"]
                    .as_array_mut()
                    .unwrap()
                    .remove(index);
            }
            "test" => {}
            other => panic!("unexpected patch op {other} on {path}"),
        }
    }
}

/// An agent that answers from a fixed status, without any network.
struct FixedAgent(Option<VmStatus>);

impl AgentStatusSource for FixedAgent {
    fn status<'a>(&'a self, _pod_ip: &'a str) -> BoxFuture<'a, Result<VmStatus, String>> {
        Box::pin(async move {
            self.0
                .clone()
                .ok_or_else(|| "connection refused".to_string())
        })
    }
}

struct Harness {
    world: Arc<Mutex<World>>,
    ctx: Arc<Context>,
}

impl Harness {
    fn new(vm: Value, agent: Option<VmStatus>) -> Self {
        Self::with_context(vm, agent, |_| {})
    }

    /// A harness whose reconcile context `tune` adjusts first.
    fn with_context(vm: Value, agent: Option<VmStatus>, tune: impl FnOnce(&mut Context)) -> Self {
        let world = Arc::new(Mutex::new(World {
            vm,
            pod_status: json!({"phase": "Pending"}),
            ..Default::default()
        }));
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server_world = world.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (code, answer) = {
                    let mut w = server_world.lock().unwrap();
                    w.seen.push(Seen {
                        method: method.clone(),
                        path: path.clone(),
                        body: body.clone(),
                    });
                    w.answer(&method, &path, &body)
                };
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        let client = Client::new(service, "default");
        let mut ctx = Context::new(
            client,
            VmPodConfig::default(),
            Arc::new(FixedAgent(agent)),
            Arc::new(Metrics::new()),
            Some("test".into()),
        );
        tune(&mut ctx);
        Self {
            world,
            ctx: Arc::new(ctx),
        }
    }

    async fn reconcile(&self) -> Result<Action, ReconcileError> {
        let vm: RvfMicroVm = serde_json::from_value(self.world.lock().unwrap().vm.clone()).unwrap();
        reconcile(Arc::new(vm), self.ctx.clone()).await
    }

    fn vm_status(&self) -> Value {
        self.world.lock().unwrap().vm["status"].clone()
    }

    fn ready(&self) -> (String, String) {
        let status = self.vm_status();
        let c = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        (
            c["status"].as_str().unwrap().into(),
            c["reason"].as_str().unwrap().into(),
        )
    }
}

fn vm_object(finalizers: &[&str]) -> Value {
    json!({
        "apiVersion": "rvf.ruvector.io/v1alpha1",
        "kind": "RvfMicroVm",
        "metadata": {"name": "hello", "namespace": "vms", "uid": "vm-uid", "generation": 1,
                     "resourceVersion": "7", "finalizers": finalizers,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"source": {"image": {"reference": "registry.invalid/rvf/hello:1", "path": "hello.rvf"}}},
    })
}

fn running_pod_status() -> Value {
    json!({
        "phase": "Running",
        "podIP": "192.0.2.10",
        "conditions": [{"type": "Ready", "status": "True"}],
        "initContainerStatuses": [{"name": "extract", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": 0}}}],
        "containerStatuses": [{"name": "vm", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                               "state": {"running": {}}}],
    })
}

fn running_agent() -> VmStatus {
    VmStatus {
        phase: Phase::Running,
        accelerator: Some(Accelerator::Kvm),
        boot_seconds: Some(0.8),
        qmp: Some(QmpState {
            status: "running".into(),
            running: true,
            updated_at: jiff::Timestamp::now(),
        }),
        qemu_alive: true,
        ..Default::default()
    }
}

/// Every write to the RvfMicroVm itself goes to /status or only touches metadata.finalizers.
fn assert_spec_never_written(world: &World) {
    for s in &world.seen {
        if !s.path.starts_with(VM_PATH) || s.method == "GET" {
            continue;
        }
        let to_status = s.path == format!("{VM_PATH}/status");
        let finalizer_only = s.method == "PATCH"
            && s.path == VM_PATH
            && s.body.as_array().is_some_and(|ops| {
                ops.iter().all(|op| {
                    op["path"]
                        .as_str()
                        .unwrap()
                        .starts_with("/metadata/finalizers")
                })
            });
        assert!(
            to_status || finalizer_only,
            "the controller wrote the resource outside /status: {s:?}"
        );
    }
}

#[tokio::test]
async fn a_vm_without_the_finalizer_gets_it_and_nothing_else() {
    let h = Harness::new(vm_object(&[]), None);
    let action = h.reconcile().await.unwrap();
    assert_eq!(action, Action::await_change());
    let w = h.world.lock().unwrap();
    assert_eq!(w.vm["metadata"]["finalizers"], json!([FINALIZER]));
    assert!(w.pod.is_none());
    assert_spec_never_written(&w);
}

#[tokio::test]
async fn pod_and_service_are_applied_with_the_right_shape() {
    let h = Harness::new(vm_object(&[FINALIZER]), None);
    h.reconcile().await.unwrap();
    let w = h.world.lock().unwrap();
    let service = &w.requests("PATCH", SERVICE_PATH)[0].body;
    assert_eq!(service["spec"]["selector"]["rvf.ruvector.io/vm"], "hello");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    let pod = w.pod.as_ref().expect("a pod was applied");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "vm-uid");
    assert_eq!(
        pod["spec"]["volumes"][0]["image"]["reference"],
        "registry.invalid/rvf/hello:1"
    );
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "extract");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    let apply = &w.requests("PATCH", POD_PATH)[0];
    assert_eq!(apply.body["kind"], "Pod");
    drop(w);
    assert_eq!(h.vm_status()["phase"], "Pending");
    assert_eq!(h.vm_status()["podName"], "hello-vm");
    assert_eq!(h.vm_status()["serviceName"], "hello");
    assert_spec_never_written(&h.world.lock().unwrap());
}

#[tokio::test]
async fn a_ready_pod_and_agent_make_the_vm_running_and_ready() {
    let h = Harness::new(vm_object(&[FINALIZER]), Some(running_agent()));
    h.world.lock().unwrap().pod_status = running_pod_status();
    h.reconcile().await.unwrap();
    let status = h.vm_status();
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["qmp"]["status"], "running");
    assert_eq!(status["accelerator"], "kvm");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(h.ready(), ("True".into(), "GuestReady".into()));
    let w = h.world.lock().unwrap();
    assert!(!w
        .requests("POST", "/apis/events.k8s.io/v1/namespaces/vms/events")
        .is_empty());
}

#[tokio::test]
async fn an_extract_failure_in_the_pod_becomes_a_failed_status() {
    let h = Harness::new(vm_object(&[FINALIZER]), None);
    h.world.lock().unwrap().pod_status = json!({
        "phase": "Failed",
        "initContainerStatuses": [{"name": "extract", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "message": "RVF file /vm/source/hello.rvf has no KERNEL_SEG: it carries no kernel to boot"}}}],
    });
    h.reconcile().await.unwrap();
    h.reconcile().await.unwrap();
    assert_eq!(h.vm_status()["phase"], "Failed");
    assert_eq!(h.ready().1, "KernelExtractFailed");
    assert_eq!(
        h.world.lock().unwrap().requests("DELETE", POD_PATH).len(),
        0
    );
}

#[tokio::test]
async fn a_pod_security_rejection_is_a_condition_not_an_error() {
    let h = Harness::new(vm_object(&[FINALIZER]), None);
    h.world.lock().unwrap().reject_pod = Some((
        403,
        "pods \"hello-vm\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"vm\" must not set securityContext.privileged=true)".into(),
    ));
    h.reconcile().await.unwrap();
    assert_eq!(h.vm_status()["phase"], "Failed");
    assert_eq!(h.ready().1, "PodSecurityRejected");
}

#[tokio::test]
async fn a_spec_change_deletes_the_old_pod_then_creates_a_new_one() {
    let h = Harness::new(vm_object(&[FINALIZER]), None);
    h.reconcile().await.unwrap();
    h.world.lock().unwrap().vm["spec"]["memoryMiB"] = json!(512);
    h.world.lock().unwrap().vm["metadata"]["generation"] = json!(2);
    h.reconcile().await.unwrap();
    {
        let w = h.world.lock().unwrap();
        assert_eq!(w.requests("DELETE", POD_PATH).len(), 1);
        assert!(w.pod.is_none());
    }
    assert_eq!(h.vm_status()["phase"], "Stopping");
    h.reconcile().await.unwrap();
    let w = h.world.lock().unwrap();
    let pod = w.pod.as_ref().expect("a new pod");
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "672Mi"
    );
    assert_eq!(w.requests("PATCH", POD_PATH).len(), 2);
}

#[tokio::test]
async fn a_status_write_conflict_is_retried_on_a_fresh_read() {
    let h = Harness::new(vm_object(&[FINALIZER]), None);
    h.world.lock().unwrap().status_conflicts = 2;
    h.reconcile().await.unwrap();
    let w = h.world.lock().unwrap();
    assert_eq!(w.requests("PUT", &format!("{VM_PATH}/status")).len(), 3);
    assert_eq!(w.requests("GET", &format!("{VM_PATH}/status")).len(), 2);
    assert_eq!(w.vm["status"]["phase"], "Pending");
}

#[tokio::test]
async fn deleting_a_vm_powers_its_pod_down_before_releasing_the_finalizer() {
    let h = Harness::new(vm_object(&[FINALIZER]), Some(running_agent()));
    h.world.lock().unwrap().pod_status = running_pod_status();
    h.reconcile().await.unwrap();
    h.world.lock().unwrap().vm["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:10:00Z");

    let err = h.reconcile().await.unwrap_err();
    assert!(matches!(err, ReconcileError::StillStopping { .. }), "{err}");
    {
        let w = h.world.lock().unwrap();
        assert_eq!(w.requests("DELETE", POD_PATH).len(), 1);
        assert_eq!(w.vm["metadata"]["finalizers"], json!([FINALIZER]));
    }
    assert_eq!(h.vm_status()["phase"], "Stopping");

    // The fake removed the pod on DELETE: the next round finds it gone and lets go.
    h.reconcile().await.unwrap();
    let w = h.world.lock().unwrap();
    assert_eq!(w.vm["metadata"]["finalizers"], json!([]));
    assert_spec_never_written(&w);
}

#[tokio::test]
async fn deleting_a_vm_whose_pod_is_already_gone_never_blocks() {
    let mut vm = vm_object(&[FINALIZER]);
    vm["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:10:00Z");
    let h = Harness::new(vm, None);
    h.reconcile().await.unwrap();
    let w = h.world.lock().unwrap();
    assert_eq!(w.vm["metadata"]["finalizers"], json!([]));
    assert_eq!(w.requests("DELETE", POD_PATH).len(), 0);
}

#[tokio::test]
async fn deleting_a_vm_whose_pod_failed_never_blocks() {
    let mut vm = vm_object(&[FINALIZER]);
    vm["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:10:00Z");
    let h = Harness::new(vm, None);
    h.world.lock().unwrap().pod = Some(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello-vm", "namespace": "vms"},
        "status": {"phase": "Failed"},
    }));
    h.reconcile().await.unwrap();
    assert_eq!(
        h.world.lock().unwrap().vm["metadata"]["finalizers"],
        json!([])
    );
}

#[tokio::test]
async fn a_refused_host_path_source_fails_without_creating_a_pod() {
    let mut vm = vm_object(&[FINALIZER]);
    vm["spec"]["source"] = json!({"hostPath": {"path": "/var/lib/rvf/hello.rvf"}});
    let h = Harness::new(vm, None);
    h.reconcile().await.unwrap();
    assert!(h.world.lock().unwrap().pod.is_none());
    assert_eq!(h.vm_status()["phase"], "Failed");
    assert_eq!(h.ready().1, "HostPathNotAllowed");
}

#[tokio::test]
async fn a_name_no_service_can_carry_gets_a_condition_instead_of_an_error_loop() {
    let mut vm = vm_object(&[FINALIZER]);
    // Stored before the CRD checked names: a DNS subdomain, not a DNS-1035 label.
    vm["metadata"]["name"] = json!("hello.v2");
    let h = Harness::new(vm, None);
    h.reconcile().await.unwrap();
    let w = h.world.lock().unwrap();
    assert!(
        w.seen.iter().all(|s| !s.path.contains("/services/")),
        "no Service apply for a name a Service cannot carry"
    );
    assert!(w.pod.is_none());
    drop(w);
    assert_eq!(h.vm_status()["phase"], "Failed");
    assert_eq!(h.ready(), ("False".into(), "InvalidName".into()));
    assert!(h.vm_status()["serviceName"].is_null());
}

#[tokio::test]
async fn a_vm_whose_agent_stays_unreachable_stops_being_ready_but_stays_running() {
    let h = Harness::with_context(vm_object(&[FINALIZER]), None, |ctx| {
        ctx.agent_stale_after = std::time::Duration::from_millis(50);
    });
    h.world.lock().unwrap().pod_status = running_pod_status();
    // The first missed poll: the kubelet's probe still vouches for the guest.
    h.reconcile().await.unwrap();
    assert_eq!(h.vm_status()["phase"], "Running");
    assert_eq!(h.ready(), ("True".into(), "GuestReady".into()));

    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    h.reconcile().await.unwrap();
    assert_eq!(h.vm_status()["phase"], "Running");
    assert_eq!(h.ready(), ("False".into(), "AgentUnreachable".into()));
}
