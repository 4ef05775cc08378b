//! One reconcile of an `RvfMicroVm`: observe the pod, decide, act, write status.
//!
//! The side effects live here and are few: server-side apply of the pod and Service, a
//! graceful pod delete, a status write, Events. Decisions come from [`super::state`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use super::agent::AgentStatusSource;
use super::events::transition_events;
use super::metrics_server::Metrics;
use super::pod::{check_resource, pod_name, spec_hash, PolicyViolation, VmPodBuilder, VmPodConfig};
use super::service::{build_service, service_endpoints};
use super::state::{
    compute_status, condition, plan, requeue_after, ContainerPhase, Observations, PodAction,
    PodObservation, PodRejection, DEFAULT_AGENT_STALE_AFTER,
};
use crate::crd::{Phase, RvfMicroVm, RvfMicroVmStatus};

/// The one field manager every server-side apply of this controller uses.
pub const FIELD_MANAGER: &str = "rvf-operator";
/// Finalizer that holds an `RvfMicroVm` until its VM has powered down.
pub const FINALIZER: &str = "rvf.ruvector.io/stop-vm";
/// Label selecting the children this controller watches.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=rvf-operator";
/// Times a status write is retried after a 409 Conflict, each time on a fresh read.
pub const STATUS_CONFLICT_RETRIES: usize = 3;
/// Seconds past a pod's deletion deadline after which cleanup stops waiting for it (a pod on
/// a lost node never goes away by itself and must not block deletion of its resource).
pub const STUCK_POD_SECONDS: i64 = 60;

/// Failures of one reconcile; each names the object it is about.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("RvfMicroVm {0} has no namespace")]
    NoNamespace(String),
    #[error("failed to apply Service {namespace}/{name}: {source}")]
    ApplyService {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to read pod {namespace}/{name}: {source}")]
    ReadPod {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to read PersistentVolumeClaim {namespace}/{name}: {source}")]
    ReadClaim {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to apply pod {namespace}/{name}: {source}")]
    ApplyPod {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to delete pod {namespace}/{name}: {source}")]
    DeletePod {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write the status of RvfMicroVm {namespace}/{name}: {source}")]
    WriteStatus {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("VM pod {namespace}/{name} is still powering down; the RvfMicroVm is deleted once it is gone")]
    StillStopping { namespace: String, name: String },
    #[error("finalizer {FINALIZER}: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ReconcileError>>),
}

impl ReconcileError {
    /// A short kind for the error metric's label (no object names).
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::NoNamespace(_) => "NoNamespace",
            ReconcileError::ApplyService { .. } => "ApplyService",
            ReconcileError::ReadPod { .. } => "ReadPod",
            ReconcileError::ReadClaim { .. } => "ReadClaim",
            ReconcileError::ApplyPod { .. } => "ApplyPod",
            ReconcileError::DeletePod { .. } => "DeletePod",
            ReconcileError::WriteStatus { .. } => "WriteStatus",
            ReconcileError::StillStopping { .. } => "StillStopping",
            ReconcileError::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.kind(),
                _ => "Finalizer",
            },
        }
    }
}

/// Everything a reconcile needs besides the object.
pub struct Context {
    pub client: Client,
    pub pod_config: VmPodConfig,
    pub agent: Arc<dyn AgentStatusSource>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// How often a Running VM is looked at again, to keep `qmp.status` fresh.
    pub running_requeue: Duration,
    /// How long the agent's `/status` may fail before the status stops claiming Ready.
    pub agent_stale_after: Duration,
    /// Since when each VM's agent has not answered, for `agent_stale_after`.
    agent_unreachable: Mutex<HashMap<ObjectRef<RvfMicroVm>, Timestamp>>,
    /// Reconcile failures in a row per object, for the error backoff.
    failures: Mutex<HashMap<ObjectRef<RvfMicroVm>, u32>>,
    /// Last phase of every VM seen, for the VMs-by-phase gauge.
    phases: Mutex<HashMap<ObjectRef<RvfMicroVm>, Phase>>,
}

impl Context {
    /// A context reporting Events as `rvf-operator` (with `instance`, e.g. the pod name).
    pub fn new(
        client: Client,
        pod_config: VmPodConfig,
        agent: Arc<dyn AgentStatusSource>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "rvf-operator".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            pod_config,
            agent,
            metrics,
            running_requeue: Duration::from_secs(15),
            agent_stale_after: DEFAULT_AGENT_STALE_AFTER,
            agent_unreachable: Mutex::default(),
            failures: Mutex::default(),
            phases: Mutex::default(),
        }
    }

    /// Records one poll of the agent: `None` for an answer (or nothing to ask), `Some(now)` for
    /// a failure; returns since when it has been failing.
    fn agent_poll(&self, vm: &RvfMicroVm, failed_at: Option<Timestamp>) -> Option<Timestamp> {
        let mut map = self.agent_unreachable.lock().expect("agent map lock");
        let key = ObjectRef::from_obj(vm);
        match failed_at {
            Some(now) => Some(*map.entry(key).or_insert(now)),
            None => {
                map.remove(&key);
                None
            }
        }
    }

    fn record_phase(&self, vm: &RvfMicroVm, phase: Option<Phase>) {
        let mut phases = self.phases.lock().expect("phase map lock");
        match phase {
            Some(p) => phases.insert(ObjectRef::from_obj(vm), p),
            None => phases.remove(&ObjectRef::from_obj(vm)),
        };
        let mut counts = BTreeMap::new();
        for p in phases.values() {
            *counts.entry(format!("{p:?}")).or_insert(0) += 1;
        }
        self.metrics.set_vms_by_phase(&counts);
    }
}

/// Runs the controller on `namespace` (all namespaces when `None`) until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (vms, pods, services): (Api<RvfMicroVm>, Api<Pod>, Api<Service>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    let children = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    Controller::new(vms, watcher::Config::default())
        .owns(pods, children.clone())
        .owns(services, children)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(vm = %obj, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
}

/// Reconciles one `RvfMicroVm` under the finalizer.
#[instrument(skip_all, fields(vm = %format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any())))]
pub async fn reconcile(vm: Arc<RvfMicroVm>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let namespace = vm
        .namespace()
        .ok_or_else(|| ReconcileError::NoNamespace(vm.name_any()))?;
    let api: Api<RvfMicroVm> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, vm.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(vm) => apply(&vm, &ctx).await,
            FinalizerEvent::Cleanup(vm) => cleanup(&vm, &ctx).await,
        }
    })
    .await
    .map_err(|e| match *Box::new(e) {
        kube::runtime::finalizer::Error::ApplyFailed(inner)
        | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner,
        other => ReconcileError::Finalizer(Box::new(other)),
    });
    match &result {
        Ok(_) => {
            ctx.failures
                .lock()
                .expect("failure map lock")
                .remove(&ObjectRef::from_obj(vm.as_ref()));
            ctx.metrics.reconcile_succeeded(started.elapsed());
        }
        // Waiting for a pod to power down is progress, not a failure.
        Err(ReconcileError::StillStopping { .. }) => {
            ctx.metrics.reconcile_succeeded(started.elapsed())
        }
        Err(e) => ctx.metrics.reconcile_failed(started.elapsed(), e.kind()),
    }
    result
}

/// Requeues a failed reconcile with a per-object exponential backoff (1 s doubling to 5 min).
pub fn error_policy(vm: Arc<RvfMicroVm>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    if let ReconcileError::StillStopping { .. } = error {
        return Action::requeue(Duration::from_secs(2));
    }
    let mut failures = ctx.failures.lock().expect("failure map lock");
    let count = failures
        .entry(ObjectRef::from_obj(vm.as_ref()))
        .or_insert(0);
    *count += 1;
    let delay = backoff(*count);
    warn!(error = %error, retry_in_seconds = delay.as_secs(), "reconcile failed; retrying");
    Action::requeue(delay)
}

/// Delay before retrying after `failures` failed reconciles in a row.
pub fn backoff(failures: u32) -> Duration {
    let seconds = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(seconds.min(300))
}

async fn apply(vm: &RvfMicroVm, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let now = Timestamp::now();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let apply_params = PatchParams::apply(FIELD_MANAGER).force();

    let policy = check_resource(vm, &ctx.pod_config).err();
    // A name the Service cannot carry would fail every apply; the status says why instead.
    let name_usable = !matches!(policy, Some(PolicyViolation::InvalidName(_)));
    if name_usable {
        let service = build_service(vm);
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
        services
            .patch(&name, &apply_params, &Patch::Apply(&service))
            .await
            .map_err(|source| ReconcileError::ApplyService {
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            })?;
    }

    let pod_name = pod_name(&name);
    let mut pod = read_pod(&pods, &namespace, &pod_name).await?;
    let pvc_missing = match (&vm.spec.source.persistent_volume_claim, &pod) {
        (Some(pvc), None) => claim_missing(ctx, &namespace, &pvc.claim_name).await?,
        _ => None,
    };

    let mut obs = Observations {
        spec: &vm.spec,
        generation: vm.metadata.generation,
        previous: vm.status.as_ref(),
        desired_hash: spec_hash(&vm.spec),
        deleting: false,
        policy,
        pod: pod.as_ref().map(PodObservation::from_pod),
        pod_rejected: None,
        pvc_missing,
        agent: None,
        agent_error: None,
        agent_unreachable_since: None,
        agent_stale_after: ctx.agent_stale_after,
        service_name: name_usable.then(|| name.clone()),
        endpoints: name_usable.then(|| service_endpoints(vm)),
        kvm_markers: kvm_markers(&ctx.pod_config),
        now,
    };
    let mut action = plan(&obs);
    match &action {
        PodAction::Create { run } => {
            let run = *run;
            match VmPodBuilder::new(vm, &ctx.pod_config).run(run).build() {
                Ok(desired) => match pods
                    .patch(&pod_name, &apply_params, &Patch::Apply(&desired))
                    .await
                {
                    Ok(created) => {
                        info!(pod = %pod_name, run, "created the VM pod");
                        pod = Some(created);
                        obs.pod = pod.as_ref().map(PodObservation::from_pod);
                        action = PodAction::Keep;
                    }
                    Err(kube::Error::Api(status))
                        if (400..500).contains(&status.code) && status.code != 409 =>
                    {
                        warn!(pod = %pod_name, code = status.code, message = %status.message, "the API refused the VM pod");
                        obs.pod_rejected = Some(PodRejection {
                            code: status.code,
                            message: status.message.clone(),
                        });
                        action = PodAction::Keep;
                    }
                    Err(source) => {
                        return Err(ReconcileError::ApplyPod {
                            namespace,
                            name: pod_name,
                            source,
                        })
                    }
                },
                // plan() never creates a pod for a refused spec; the status says why anyway.
                Err(violation) => obs.policy = Some(violation),
            }
        }
        PodAction::Delete { why } => {
            info!(pod = %pod_name, reason = ?why, "deleting the VM pod; the agent powers the guest down");
            delete_pod(&pods, &namespace, &pod_name).await?;
        }
        PodAction::Keep | PodAction::WaitForRerun { .. } => {}
    }

    let mut agent_failed_at = None;
    if let Some(ip) = pod.as_ref().and_then(running_vm_ip) {
        match ctx.agent.status(&ip).await {
            Ok(status) => obs.agent = Some(status),
            Err(e) => {
                debug!(pod = %pod_name, error = %e, "agent /status did not answer");
                obs.agent_error = Some(e);
                agent_failed_at = Some(now);
            }
        }
    }
    obs.agent_unreachable_since = ctx.agent_poll(vm, agent_failed_at);

    let status = compute_status(&obs, &action);
    publish_status(vm, ctx, status.clone()).await?;
    ctx.record_phase(vm, Some(status.phase));
    Ok(Action::requeue(requeue_after(
        &status,
        &action,
        ctx.running_requeue,
    )))
}

async fn cleanup(vm: &RvfMicroVm, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = vm.namespace().unwrap_or_default();
    let name = pod_name(&vm.name_any());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod = read_pod(&pods, &namespace, &name).await?;
    ctx.record_phase(vm, None);
    ctx.agent_poll(vm, None);
    let Some(pod) = pod else {
        info!("the VM pod is gone; releasing the RvfMicroVm");
        return Ok(Action::await_change());
    };
    let mut observed = PodObservation::from_pod(&pod);
    let finished = matches!(observed.phase.as_str(), "Succeeded" | "Failed")
        || matches!(observed.vm, ContainerPhase::Terminated { .. });
    if finished {
        // Nothing runs; the owner reference lets garbage collection remove the pod.
        info!(pod = %name, "the VM pod has ended; releasing the RvfMicroVm");
        return Ok(Action::await_change());
    }
    match &pod.metadata.deletion_timestamp {
        None => {
            info!(pod = %name, "powering the VM down before the RvfMicroVm goes");
            delete_pod(&pods, &namespace, &name).await?;
            observed.deleting = true;
        }
        Some(since) => {
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
            let deadline = since.0 + jiff::SignedDuration::from_secs(grace + STUCK_POD_SECONDS);
            if Timestamp::now() > deadline {
                warn!(pod = %name, "the VM pod outlived its grace period (is its node gone?); releasing the RvfMicroVm");
                return Ok(Action::await_change());
            }
        }
    }
    let obs = Observations {
        spec: &vm.spec,
        generation: vm.metadata.generation,
        previous: vm.status.as_ref(),
        desired_hash: spec_hash(&vm.spec),
        deleting: true,
        policy: None,
        pod: Some(observed),
        pod_rejected: None,
        pvc_missing: None,
        agent: None,
        agent_error: None,
        agent_unreachable_since: None,
        agent_stale_after: ctx.agent_stale_after,
        service_name: vm.status.as_ref().and_then(|s| s.service_name.clone()),
        endpoints: vm.status.as_ref().and_then(|s| s.endpoints.clone()),
        kvm_markers: vec![],
        now: Timestamp::now(),
    };
    let status = compute_status(&obs, &PodAction::Keep);
    publish_status(vm, ctx, status).await?;
    Err(ReconcileError::StillStopping { namespace, name })
}

async fn read_pod(
    pods: &Api<Pod>,
    namespace: &str,
    name: &str,
) -> Result<Option<Pod>, ReconcileError> {
    pods.get_opt(name)
        .await
        .map_err(|source| ReconcileError::ReadPod {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })
}

async fn delete_pod(pods: &Api<Pod>, namespace: &str, name: &str) -> Result<(), ReconcileError> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::DeletePod {
            namespace: namespace.into(),
            name: name.into(),
            source,
        }),
    }
}

async fn claim_missing(
    ctx: &Context,
    namespace: &str,
    claim: &str,
) -> Result<Option<String>, ReconcileError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    match claims.get_opt(claim).await {
        Ok(Some(_)) => Ok(None),
        Ok(None) => Ok(Some(claim.to_string())),
        // Without RBAC on claims the scheduler's message still tells the user.
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(None),
        Err(source) => Err(ReconcileError::ReadClaim {
            namespace: namespace.into(),
            name: claim.into(),
            source,
        }),
    }
}

/// The pod IP, while the vm container runs (only then does the agent listen).
fn running_vm_ip(pod: &Pod) -> Option<String> {
    let observed = PodObservation::from_pod(pod);
    (observed.vm == ContainerPhase::Running && !observed.deleting)
        .then_some(observed.pod_ip)
        .flatten()
}

fn kvm_markers(config: &VmPodConfig) -> Vec<String> {
    let mut markers = vec![];
    markers.extend(config.kvm_resource_name.clone());
    markers.extend(config.kvm_node_selector.as_ref().map(|(k, _)| k.clone()));
    markers.push("node affinity/selector".into());
    markers
}

/// Writes `status` to the status subresource (PUT with the object's resourceVersion, so a
/// write computed from a stale read is refused); on 409 re-reads and tries again.
async fn publish_status(
    vm: &RvfMicroVm,
    ctx: &Context,
    status: RvfMicroVmStatus,
) -> Result<(), ReconcileError> {
    let namespace = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let before = vm.status.clone();
    let changed = before.as_ref() != Some(&status);
    if changed {
        let api: Api<RvfMicroVm> = Api::namespaced(ctx.client.clone(), &namespace);
        let mut object = vm.clone();
        object.status = Some(status.clone());
        let mut attempt = 0;
        loop {
            match api
                .replace_status(&name, &PostParams::default(), &object)
                .await
            {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < STATUS_CONFLICT_RETRIES => {
                    attempt += 1;
                    debug!(
                        attempt,
                        "status write conflicted; re-reading the RvfMicroVm"
                    );
                    object = api.get_status(&name).await.map_err(|source| {
                        ReconcileError::WriteStatus {
                            namespace: namespace.clone(),
                            name: name.clone(),
                            source,
                        }
                    })?;
                    object.status = Some(status.clone());
                }
                Err(source) => {
                    return Err(ReconcileError::WriteStatus {
                        namespace,
                        name,
                        source,
                    })
                }
            }
        }
    }

    if before.as_ref().map(|s| s.phase) != Some(status.phase) {
        info!(phase = ?status.phase, message = status.message.as_deref().unwrap_or(""), "VM changed phase");
    }
    let became_ready = |s: Option<&RvfMicroVmStatus>| {
        s.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == condition::READY && c.status == "True")
        })
    };
    if became_ready(Some(&status)) && !became_ready(before.as_ref()) && status.restarts == 0 {
        if let Some(created) = vm.metadata.creation_timestamp.as_ref() {
            let elapsed = Timestamp::now().duration_since(created.0);
            ctx.metrics.observe_create_to_ready(elapsed.unsigned_abs());
        }
    }
    let reference = vm.object_ref(&());
    for event in transition_events(before.as_ref(), &status) {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            // An Event is a courtesy; losing one must not fail the reconcile.
            debug!(error = %e, reason = %event.reason, "could not publish an Event");
        }
    }
    Ok(())
}
