//! Observations (pod, agent `/status`, API answers) to the next pod action and the resource's
//! status: the controller's state machine, pure so every transition is tested without an API.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::pod::{
    pod_run, pod_spec_hash, PolicyViolation, EXTRACT_CONTAINER, FETCH_CONTAINER, VM_CONTAINER,
};
use crate::crd::{Endpoints, KvmMode, Phase, RunStrategy, RvfMicroVmSpec, RvfMicroVmStatus};
use crate::runtime::status::{ConditionStatus, VmStatus};

/// Condition types of the resource.
pub mod condition {
    pub use crate::runtime::status::condition::{GUEST_READY, KERNEL_EXTRACTED, READY};
    /// kstatus: the controller is still working towards the spec (present only while True).
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: the controller cannot make progress until someone acts (present only while True).
    pub const STALLED: &str = "Stalled";
}

/// Default of `--agent-unreachable-seconds`: four missed polls at the default 15 s period.
pub const DEFAULT_AGENT_STALE_AFTER: Duration = Duration::from_secs(60);

/// Delay before the first rerun of a failed VM; doubles with each rerun up to [`MAX_RERUN_DELAY`].
pub const FIRST_RERUN_DELAY: Duration = Duration::from_secs(10);
/// Longest delay between reruns of a VM that keeps failing.
pub const MAX_RERUN_DELAY: Duration = Duration::from_secs(300);

/// What one container of the VM pod is doing.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ContainerPhase {
    /// Not started yet, or no status reported.
    #[default]
    NotStarted,
    /// Waiting with the kubelet's reason (ImagePullBackOff, CreateContainerConfigError, ...).
    Waiting {
        reason: String,
        message: String,
    },
    Running,
    /// Ended; `message` is the termination message (the runtime writes one line there).
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
        finished_at: Option<Timestamp>,
    },
}

/// The facts of a VM pod the state machine needs, read from its status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodObservation {
    pub name: String,
    /// Pod phase: Pending, Running, Succeeded, Failed or Unknown.
    pub phase: String,
    pub deleting: bool,
    pub node_name: Option<String>,
    pub pod_ip: Option<String>,
    pub spec_hash: Option<String>,
    pub run: u32,
    /// The scheduler's message while PodScheduled is False with reason Unschedulable.
    pub unschedulable: Option<String>,
    /// The pod's Ready condition (the kubelet's probe of the agent's `/readyz`).
    pub ready: bool,
    pub fetch: Option<ContainerPhase>,
    pub extract: ContainerPhase,
    pub vm: ContainerPhase,
    /// Pod-level reason and message, e.g. `Evicted`.
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl PodObservation {
    /// Reads a pod as the API returned it.
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.clone().unwrap_or_default();
        let find = |list: &Option<Vec<ContainerStatus>>, name: &str| {
            list.as_ref()
                .and_then(|l| l.iter().find(|c| c.name == name))
                .map(container_phase)
        };
        let has_fetch = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.name == FETCH_CONTAINER));
        let conditions = status.conditions.unwrap_or_default();
        let unschedulable = conditions
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .filter(|c| c.reason.as_deref() == Some("Unschedulable"))
            .map(|c| c.message.clone().unwrap_or_default());
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            phase: status.phase.unwrap_or_else(|| "Pending".into()),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            pod_ip: status.pod_ip,
            spec_hash: pod_spec_hash(pod).map(str::to_string),
            run: pod_run(pod),
            unschedulable,
            ready: conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            fetch: has_fetch.then(|| {
                find(&status.init_container_statuses, FETCH_CONTAINER).unwrap_or_default()
            }),
            extract: find(&status.init_container_statuses, EXTRACT_CONTAINER).unwrap_or_default(),
            vm: find(&status.container_statuses, VM_CONTAINER).unwrap_or_default(),
            reason: status.reason,
            message: status.message,
        }
    }

    /// When the pod's last container ended, for the rerun delay.
    fn finished_at(&self) -> Option<Timestamp> {
        [self.fetch.as_ref(), Some(&self.extract), Some(&self.vm)]
            .into_iter()
            .flatten()
            .filter_map(|c| match c {
                ContainerPhase::Terminated { finished_at, .. } => *finished_at,
                _ => None,
            })
            .max()
    }
}

fn container_phase(status: &ContainerStatus) -> ContainerPhase {
    let Some(state) = &status.state else {
        return ContainerPhase::NotStarted;
    };
    if let Some(t) = &state.terminated {
        return ContainerPhase::Terminated {
            exit_code: t.exit_code,
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone().unwrap_or_default().trim().to_string(),
            finished_at: t.finished_at.as_ref().map(|f| f.0),
        };
    }
    if state.running.is_some() {
        return ContainerPhase::Running;
    }
    match &state.waiting {
        Some(w) => ContainerPhase::Waiting {
            reason: w.reason.clone().unwrap_or_default(),
            message: w.message.clone().unwrap_or_default(),
        },
        None => ContainerPhase::NotStarted,
    }
}

/// Why the API refused to create the VM pod (an apply answered 4xx).
#[derive(Debug, Clone, PartialEq)]
pub struct PodRejection {
    pub code: u16,
    pub message: String,
}

/// Everything the controller saw of one `RvfMicroVm` in one reconcile.
#[derive(Debug, Clone)]
pub struct Observations<'a> {
    pub spec: &'a RvfMicroVmSpec,
    pub generation: Option<i64>,
    pub previous: Option<&'a RvfMicroVmStatus>,
    /// Hash of the current spec, to compare with the pod's annotation.
    pub desired_hash: String,
    /// The resource carries a deletion timestamp.
    pub deleting: bool,
    pub policy: Option<PolicyViolation>,
    pub pod: Option<PodObservation>,
    pub pod_rejected: Option<PodRejection>,
    /// The claim named by a PVC source does not exist.
    pub pvc_missing: Option<String>,
    pub agent: Option<VmStatus>,
    pub agent_error: Option<String>,
    /// Since when the agent's `/status` has failed without a success in between (None while it
    /// answers, or when nothing runs to ask).
    pub agent_unreachable_since: Option<Timestamp>,
    /// How long the agent may stay unreachable before the status stops vouching for the guest:
    /// shorter, and one lost poll would flip a healthy VM; longer, and a VM the controller
    /// cannot see stays Ready.
    pub agent_stale_after: Duration,
    pub service_name: Option<String>,
    pub endpoints: Option<Endpoints>,
    /// Node label key of `--kvm-node-selector` and the `--kvm-resource-name`, to recognise an
    /// unschedulable pod that waits for KVM.
    pub kvm_markers: Vec<String>,
    pub now: Timestamp,
}

/// What reconcile does to the VM pod this round.
#[derive(Debug, Clone, PartialEq)]
pub enum PodAction {
    /// Leave it as it is.
    Keep,
    /// Apply a new pod with this run number.
    Create { run: u32 },
    /// Delete the pod gracefully (the agent powers the guest down on SIGTERM).
    Delete { why: DeleteReason },
    /// A rerun is due after this delay; nothing to do before.
    WaitForRerun { after: Duration },
}

/// Why a pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Its spec hash is not the current one.
    SpecChanged,
    /// It ended and the run strategy starts the VM again.
    Rerun,
    /// `runStrategy: Halted`.
    Halted,
    /// The resource is being deleted.
    ResourceDeleted,
    /// The operator refuses the spec.
    PolicyRefused,
}

/// How an ended pod ended.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    phase: Phase,
    reason: String,
    message: String,
    /// Running the same spec again would end the same way.
    permanent: bool,
}

/// Decides what to do with the pod.
pub fn plan(obs: &Observations) -> PodAction {
    let strategy = obs.spec.run_strategy;
    let Some(pod) = &obs.pod else {
        let stopped_for_good = obs.deleting
            || obs.policy.is_some()
            || strategy == RunStrategy::Halted
            || obs.pvc_missing.is_some()
            || (strategy == RunStrategy::Once && once_has_run(obs));
        return if stopped_for_good {
            PodAction::Keep
        } else {
            PodAction::Create {
                run: obs.previous.map_or(0, |s| s.restarts),
            }
        };
    };
    if pod.deleting {
        return PodAction::Keep;
    }
    let delete = |why| PodAction::Delete { why };
    if obs.deleting {
        return delete(DeleteReason::ResourceDeleted);
    }
    if obs.policy.is_some() {
        return delete(DeleteReason::PolicyRefused);
    }
    if strategy == RunStrategy::Halted {
        return delete(DeleteReason::Halted);
    }
    if pod.spec_hash.as_deref() != Some(obs.desired_hash.as_str()) {
        return delete(DeleteReason::SpecChanged);
    }
    let Some(outcome) = outcome(pod, obs.spec) else {
        return PodAction::Keep;
    };
    let rerun = match strategy {
        RunStrategy::Always => !outcome.permanent,
        RunStrategy::RerunOnFailure => outcome.phase == Phase::Failed && !outcome.permanent,
        RunStrategy::Once | RunStrategy::Halted => false,
    };
    if !rerun {
        return PodAction::Keep;
    }
    let delay = if outcome.phase == Phase::Failed {
        rerun_delay(pod.run)
    } else {
        Duration::ZERO
    };
    let since = pod
        .finished_at()
        .map(|t| obs.now.duration_since(t).unsigned_abs())
        .unwrap_or(delay);
    if since < delay {
        PodAction::WaitForRerun {
            after: delay - since,
        }
    } else {
        delete(DeleteReason::Rerun)
    }
}

/// Delay before starting a VM again after its `run`-th pod failed.
pub fn rerun_delay(run: u32) -> Duration {
    let factor = 2u32.saturating_pow(run.min(8));
    (FIRST_RERUN_DELAY * factor).min(MAX_RERUN_DELAY)
}

fn once_has_run(obs: &Observations) -> bool {
    obs.previous.is_some_and(|s| {
        s.phase.is_terminal() && s.observed_generation == obs.generation && s.pod_name.is_some()
    })
}

/// How a pod ended, or `None` while it has not.
fn outcome(pod: &PodObservation, spec: &RvfMicroVmSpec) -> Option<Outcome> {
    let failed = |reason: &str, message: String, permanent| Outcome {
        phase: Phase::Failed,
        reason: reason.into(),
        message,
        permanent,
    };
    for (container, phase) in [
        (FETCH_CONTAINER, pod.fetch.as_ref()),
        (EXTRACT_CONTAINER, Some(&pod.extract)),
        (VM_CONTAINER, Some(&pod.vm)),
    ] {
        if let Some(ContainerPhase::Terminated {
            exit_code, message, ..
        }) = phase
        {
            if arguments_rejected(*exit_code, message) {
                return Some(arguments_rejected_outcome(container, message));
            }
        }
    }
    if let Some(ContainerPhase::Terminated {
        exit_code, message, ..
    }) = &pod.fetch
    {
        if *exit_code != 0 {
            // A checksum mismatch repeats on every download; a network failure may not.
            let permanent = message.contains("sha256") || message.contains("checksum");
            let msg = or_default(message, "the fetch init container failed without a message");
            return Some(failed(
                "FetchFailed",
                format!("downloading the RVF file failed: {msg}"),
                permanent,
            ));
        }
    }
    if let ContainerPhase::Terminated {
        exit_code, message, ..
    } = &pod.extract
    {
        if *exit_code != 0 {
            let msg = or_default(
                message,
                "the extract init container failed without a message",
            );
            return Some(failed(
                "KernelExtractFailed",
                format!("extracting the kernel failed: {msg}"),
                true,
            ));
        }
    }
    if let ContainerPhase::Terminated {
        exit_code,
        reason,
        message,
        ..
    } = &pod.vm
    {
        let message = message.clone();
        return Some(match (*exit_code, reason.as_str()) {
            (_, "OOMKilled") => failed(
                "OOMKilled",
                format!(
                    "the VM pod ran out of memory with {} MiB of guest RAM; raise the operator's \
                     --memory-overhead-mib or set resources.limits.memory",
                    spec.memory_mib
                ),
                false,
            ),
            (0, _) => Outcome {
                phase: Phase::Stopped,
                reason: "GuestShutdown".into(),
                message: or_default(&message, "the guest powered off"),
                permanent: false,
            },
            (2, _) => failed(
                "GuestCrashed",
                or_default(&message, "the guest panicked or reset"),
                false,
            ),
            (3, _) => failed(
                "QemuFailed",
                or_default(&message, "QEMU exited unexpectedly"),
                false,
            ),
            (4, _) => failed(
                "GuestNeverReady",
                or_default(&message, "the guest never answered its readiness probe"),
                false,
            ),
            (5, _) => failed(
                "ConfigurationError",
                or_default(&message, "the VM configuration cannot run on this node"),
                true,
            ),
            (code, _) => failed(
                "AgentFailed",
                or_default(&message, &format!("the VM agent exited with code {code}")),
                false,
            ),
        });
    }
    match pod.phase.as_str() {
        "Failed" => Some(failed(
            pod.reason.as_deref().unwrap_or("PodFailed"),
            pod.message
                .clone()
                .unwrap_or_else(|| "the VM pod failed".into()),
            false,
        )),
        "Succeeded" => Some(Outcome {
            phase: Phase::Stopped,
            reason: "GuestShutdown".into(),
            message: "the VM pod completed".into(),
            permanent: false,
        }),
        _ => None,
    }
}

/// True when a container's exit looks like clap refusing its arguments (exit code 2 and clap's
/// usage text in the log tail the kubelet kept): the VM image's `rvf-operator` does not
/// understand what this controller passes, usually an image older than the controller.
/// Exit code 2 is also the agent's "guest crashed", so the text decides.
fn arguments_rejected(exit_code: i32, message: &str) -> bool {
    exit_code == 2
        && (message.contains("For more information, try '--help'")
            || message.contains("Usage: rvf-operator"))
}

fn arguments_rejected_outcome(container: &str, message: &str) -> Outcome {
    Outcome {
        phase: Phase::Failed,
        reason: "ArgumentsRejected".into(),
        message: format!(
            "rvf-operator in container {container} refused the arguments the controller passed \
             (is --vm-image older than the controller?): {}",
            or_default(message, "no message")
        ),
        permanent: true,
    }
}

fn or_default(message: &str, default: &str) -> String {
    if message.trim().is_empty() {
        default.to_string()
    } else {
        message.trim().to_string()
    }
}

/// The state the VM is in, with the reason and message every condition draws from.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    phase: Phase,
    reason: String,
    message: String,
    /// KernelExtracted: (status, reason).
    extracted: (ConditionStatus, &'static str),
    guest_ready: bool,
    /// Still progressing on its own (kstatus Reconciling).
    progressing: bool,
    /// Needs someone to act (kstatus Stalled).
    stalled: bool,
}

impl Verdict {
    fn new(phase: Phase, reason: &str, message: impl Into<String>) -> Self {
        Self {
            phase,
            reason: reason.into(),
            message: message.into(),
            extracted: (ConditionStatus::Unknown, "NotStarted"),
            guest_ready: false,
            progressing: !phase.is_terminal(),
            stalled: false,
        }
    }

    fn stalled(mut self) -> Self {
        self.stalled = true;
        self.progressing = false;
        self
    }

    fn extracted(mut self, status: ConditionStatus, reason: &'static str) -> Self {
        self.extracted = (status, reason);
        self
    }
}

fn verdict(obs: &Observations, action: &PodAction) -> Verdict {
    use ConditionStatus::{False, True};
    if let Some(policy) = &obs.policy {
        return Verdict::new(Phase::Failed, policy.reason(), policy.to_string()).stalled();
    }
    if let Some(rejection) = &obs.pod_rejected {
        let reason = if rejection.message.contains("PodSecurity") {
            "PodSecurityRejected"
        } else {
            "PodRejected"
        };
        let message = format!(
            "the API refused the VM pod ({}): {}",
            rejection.code, rejection.message
        );
        return Verdict::new(Phase::Failed, reason, message).stalled();
    }
    match action {
        PodAction::Delete { why } => {
            let message = match why {
                DeleteReason::SpecChanged => "replacing the VM pod: the spec changed",
                DeleteReason::Rerun => "starting the VM again (runStrategy)",
                DeleteReason::Halted => "powering the VM down: runStrategy is Halted",
                DeleteReason::ResourceDeleted => "powering the VM down before deletion",
                DeleteReason::PolicyRefused => "stopping a VM whose spec the operator refuses",
            };
            return Verdict::new(Phase::Stopping, "Stopping", message);
        }
        PodAction::WaitForRerun { after } => {
            let ended = obs.pod.as_ref().and_then(|p| outcome(p, obs.spec));
            let (reason, message) = ended
                .map(|o| (o.reason, o.message))
                .unwrap_or_else(|| ("Stopped".into(), "the VM stopped".into()));
            let mut v = Verdict::new(
                Phase::Failed,
                &reason,
                format!("{message}; starting it again in {}s", after.as_secs()),
            );
            // A rerun is coming without anyone acting: kstatus must not read this as done.
            v.progressing = true;
            return v;
        }
        PodAction::Create { .. } => {
            return Verdict::new(Phase::Pending, "Creating", "creating the VM pod");
        }
        PodAction::Keep => {}
    }
    let Some(pod) = &obs.pod else {
        if let Some(claim) = &obs.pvc_missing {
            let message = format!(
                "PersistentVolumeClaim {claim} does not exist in this namespace; create it or fix source.persistentVolumeClaim.claimName"
            );
            return Verdict::new(Phase::Pending, "PvcMissing", message).stalled();
        }
        if obs.deleting {
            return Verdict::new(
                Phase::Stopped,
                "Deleted",
                "the VM pod is gone; the resource is being deleted",
            );
        }
        if obs.spec.run_strategy == RunStrategy::Halted {
            return Verdict::new(
                Phase::Stopped,
                "Halted",
                "runStrategy is Halted: no VM runs",
            );
        }
        if let Some(previous) = obs
            .previous
            .filter(|_| obs.spec.run_strategy == RunStrategy::Once)
        {
            let mut v = Verdict::new(
                previous.phase,
                ready_reason(previous).unwrap_or("Completed"),
                previous
                    .message
                    .clone()
                    .unwrap_or_else(|| "the VM ran once".into()),
            );
            v.stalled = previous.phase == Phase::Failed;
            return v;
        }
        return Verdict::new(Phase::Pending, "Creating", "creating the VM pod");
    };
    if pod.deleting {
        return Verdict::new(
            Phase::Stopping,
            "Stopping",
            "waiting for the VM pod to power down and go away",
        );
    }
    if let Some(ended) = outcome(pod, obs.spec) {
        let extracted = if matches!(pod.extract, ContainerPhase::Terminated { exit_code: 0, .. }) {
            (True, "Extracted")
        } else if ended.reason == "KernelExtractFailed" {
            (False, "KernelExtractFailed")
        } else {
            (False, "NotExtracted")
        };
        let v = Verdict::new(ended.phase, &ended.reason, ended.message)
            .extracted(extracted.0, extracted.1);
        return if ended.phase == Phase::Failed
            && (ended.permanent || obs.spec.run_strategy != RunStrategy::Always)
        {
            v.stalled()
        } else {
            v
        };
    }
    if pod.phase == "Unknown" {
        let node = pod.node_name.as_deref().unwrap_or("its node");
        let phase = match obs.previous.map(|p| p.phase) {
            Some(p @ (Phase::Booting | Phase::Running)) => p,
            _ => Phase::Booting,
        };
        let message = format!(
            "the kubelet on {node} stopped reporting the VM pod (node lost or partitioned); \
             the VM's state is unknown"
        );
        let v = Verdict::new(phase, "NodeUnreachable", message);
        return if matches!(pod.extract, ContainerPhase::Terminated { exit_code: 0, .. }) {
            v.extracted(True, "Extracted")
        } else {
            v
        };
    }
    if let Some(message) = &pod.unschedulable {
        let waits_for_kvm = obs.spec.kvm == KvmMode::Required
            && obs.kvm_markers.iter().any(|m| message.contains(m.as_str()));
        let claim_missing =
            message.contains("persistentvolumeclaim") && message.contains("not found");
        let (reason, text) = if waits_for_kvm {
            (
                "NoKvmNode",
                format!("no node offers KVM for this kvm: Required VM: {message}"),
            )
        } else if claim_missing {
            (
                "PvcMissing",
                format!("the RVF volume's claim does not exist: {message}"),
            )
        } else {
            (
                "Unschedulable",
                format!("the VM pod cannot be scheduled: {message}"),
            )
        };
        return Verdict::new(Phase::Pending, reason, text).stalled();
    }
    for (container, phase) in [
        (FETCH_CONTAINER, pod.fetch.as_ref()),
        (EXTRACT_CONTAINER, Some(&pod.extract)),
        (VM_CONTAINER, Some(&pod.vm)),
    ] {
        if let Some(ContainerPhase::Waiting { reason, message }) = phase {
            let user_fixable = matches!(
                reason.as_str(),
                "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "CreateContainerConfigError"
                    | "CreateContainerError"
            );
            if user_fixable {
                let text = format!("container {container} cannot start ({reason}): {message}");
                let v = Verdict::new(Phase::Pending, reason, text);
                return if reason == "InvalidImageName" || reason.starts_with("CreateContainer") {
                    v.stalled()
                } else {
                    v
                };
            }
        }
    }
    if let Some(fetch) = &pod.fetch {
        if !matches!(fetch, ContainerPhase::Terminated { exit_code: 0, .. }) {
            let phase = if *fetch == ContainerPhase::Running {
                Phase::Extracting
            } else {
                Phase::Pending
            };
            return Verdict::new(phase, "Fetching", "downloading the RVF file")
                .extracted(False, "Fetching");
        }
    }
    match &pod.extract {
        ContainerPhase::Terminated { exit_code: 0, .. } => {}
        ContainerPhase::Running => {
            return Verdict::new(
                Phase::Extracting,
                "Extracting",
                "extracting the kernel from the RVF file",
            )
            .extracted(False, "Extracting");
        }
        _ => {
            let message = if pod.node_name.is_some() {
                "the VM pod is starting on its node"
            } else {
                "the VM pod waits to be scheduled"
            };
            return Verdict::new(Phase::Pending, "PodPending", message)
                .extracted(False, "NotStarted");
        }
    }
    let v = if pod.vm == ContainerPhase::Running {
        running_verdict(obs, pod)
    } else {
        Verdict::new(Phase::Booting, "Starting", "the vm container is starting")
    };
    v.extracted(True, "Extracted")
}

/// The verdict while the `vm` container runs: the agent's own view when it answered, else the
/// kubelet's readiness probe for a while, then no claim at all.
fn running_verdict(obs: &Observations, pod: &PodObservation) -> Verdict {
    let was_running = obs.previous.is_some_and(|p| p.phase == Phase::Running);
    let ready_verdict = || {
        let mut v = Verdict::new(
            Phase::Running,
            "GuestReady",
            "the guest answers HTTP on its API port",
        );
        v.guest_ready = true;
        v
    };
    if let Some(agent) = &obs.agent {
        // An agent without a Ready condition (an older one) is ready once it says Running.
        let agent_ready = agent
            .condition(condition::READY)
            .map_or(agent.phase == Phase::Running || pod.ready, |c| {
                c.status == ConditionStatus::True
            });
        if agent_ready {
            return ready_verdict();
        }
        let message = agent
            .message
            .clone()
            .unwrap_or_else(|| "QEMU is booting the guest".into());
        if agent.phase == Phase::Running {
            // The guest answered once and has stopped answering: still running, not ready.
            let (reason, message) = agent
                .condition(condition::READY)
                .map(|c| (c.reason.clone(), c.message.clone()))
                .unwrap_or_else(|| ("GuestNotAnswering".into(), message));
            return Verdict::new(Phase::Running, &reason, message);
        }
        return Verdict::new(Phase::Booting, "Booting", message);
    }
    let unreachable_for = obs.agent_unreachable_since.map_or(Duration::ZERO, |since| {
        obs.now.duration_since(since).unsigned_abs()
    });
    if obs.agent_unreachable_since.is_some() && unreachable_for >= obs.agent_stale_after {
        let error = obs.agent_error.as_deref().unwrap_or("no answer");
        let phase = if was_running || pod.ready {
            Phase::Running
        } else {
            Phase::Booting
        };
        let message = format!(
            "the VM agent's /status has not answered for {}s ({error}); the controller cannot \
             vouch for the guest (does a NetworkPolicy block port {}?)",
            unreachable_for.as_secs(),
            crate::crd::AGENT_PORT
        );
        return Verdict::new(phase, "AgentUnreachable", message);
    }
    // A missed poll or two: the kubelet's probe of the same agent still speaks for the guest,
    // and a VM that was Running stays Running rather than flapping to Booting.
    if pod.ready {
        return ready_verdict();
    }
    if was_running {
        return Verdict::new(
            Phase::Running,
            "GuestNotAnswering",
            "the VM pod is not ready: the agent's readiness probe of the guest fails",
        );
    }
    Verdict::new(Phase::Booting, "Booting", "QEMU is booting the guest")
}

fn ready_reason(status: &RvfMicroVmStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.reason.as_str())
}

/// The status to write for these observations and this round's action.
pub fn compute_status(obs: &Observations, action: &PodAction) -> RvfMicroVmStatus {
    let v = verdict(obs, action);
    let previous = obs.previous.cloned().unwrap_or_default();
    let mut status = RvfMicroVmStatus {
        phase: v.phase,
        conditions: vec![],
        observed_generation: obs.generation,
        pod_name: obs
            .pod
            .as_ref()
            .map(|p| p.name.clone())
            .or(previous.pod_name.clone()),
        node_name: obs.pod.as_ref().and_then(|p| p.node_name.clone()),
        service_name: obs.service_name.clone(),
        endpoints: obs.endpoints.clone(),
        accelerator: previous.accelerator,
        qmp: previous.qmp.clone(),
        kernel: previous.kernel.clone(),
        boot_seconds: previous.boot_seconds,
        restarts: previous.restarts,
        message: Some(v.message.clone()),
    };
    if let Some(pod) = &obs.pod {
        let agent_restarts = obs.agent.as_ref().map_or(0, |a| a.restarts);
        status.restarts = status.restarts.max(pod.run + agent_restarts);
    }
    if *action
        == (PodAction::Delete {
            why: DeleteReason::Rerun,
        })
    {
        status.restarts += 1;
    }
    if let Some(agent) = &obs.agent {
        status.accelerator = agent.accelerator.or(status.accelerator);
        status.qmp = agent.qmp.clone().or(status.qmp);
        status.kernel = agent.kernel.clone().or(status.kernel);
        status.boot_seconds = agent.boot_seconds.or(status.boot_seconds);
    }
    if obs.pod.is_none() || v.phase.is_terminal() && obs.agent.is_none() {
        // Nothing runs: a stale "running" from the last pull would contradict the phase.
        if let Some(qmp) = status.qmp.as_mut() {
            qmp.running = false;
            qmp.status = "shutdown".into();
        }
    }
    if v.phase == Phase::Booting && obs.agent.is_none() {
        if let Some(err) = &obs.agent_error {
            status.message = Some(format!(
                "{}; the agent's /status did not answer: {err}",
                v.message
            ));
        }
    }

    let gen = obs.generation;
    let mut set = |type_: &str, s: ConditionStatus, reason: &str, message: &str| {
        set_condition(
            &mut status.conditions,
            &previous.conditions,
            type_,
            s,
            reason,
            message,
            gen,
            obs.now,
        );
    };
    let ready = v.phase == Phase::Running && v.guest_ready;
    set(
        condition::READY,
        if ready {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        &v.reason,
        &v.message,
    );
    let extracted_message = match v.extracted.0 {
        ConditionStatus::True => {
            "kernel, command line and kernel.json were extracted from the RVF file".to_string()
        }
        _ if v.extracted.1 == "KernelExtractFailed" => v.message.clone(),
        _ => "the kernel has not been extracted yet".to_string(),
    };
    set(
        condition::KERNEL_EXTRACTED,
        v.extracted.0,
        v.extracted.1,
        &extracted_message,
    );
    let (gr_status, gr_reason, gr_message) = if v.guest_ready {
        (
            ConditionStatus::True,
            "GuestAnswered",
            "the guest answers its readiness probe".to_string(),
        )
    } else if let Some(c) = obs
        .agent
        .as_ref()
        .and_then(|a| a.condition(condition::GUEST_READY))
    {
        (c.status, c.reason.as_str(), c.message.clone())
    } else {
        (ConditionStatus::False, v.reason.as_str(), v.message.clone())
    };
    let gr_status = if v.guest_ready {
        ConditionStatus::True
    } else if gr_status == ConditionStatus::True {
        ConditionStatus::False
    } else {
        gr_status
    };
    set(condition::GUEST_READY, gr_status, gr_reason, &gr_message);
    if v.progressing && !ready {
        set(
            condition::RECONCILING,
            ConditionStatus::True,
            &v.reason,
            &v.message,
        );
    }
    if v.stalled {
        set(
            condition::STALLED,
            ConditionStatus::True,
            &v.reason,
            &v.message,
        );
    }
    status
}

/// Adds a condition, keeping the previous transition time when its status did not change.
#[allow(clippy::too_many_arguments)]
fn set_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = match status {
        ConditionStatus::True => "True",
        ConditionStatus::False => "False",
        ConditionStatus::Unknown => "Unknown",
    };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.chars().take(32 * 1024).collect(),
        observed_generation: generation,
        last_transition_time: since,
    });
}

/// How long to wait before looking at this VM again.
pub fn requeue_after(
    status: &RvfMicroVmStatus,
    action: &PodAction,
    running_period: Duration,
) -> Duration {
    match action {
        PodAction::WaitForRerun { after } => *after + Duration::from_secs(1),
        PodAction::Delete { .. } | PodAction::Create { .. } => Duration::from_secs(2),
        PodAction::Keep => match status.phase {
            // While running, pull /status often enough that qmp.status stays fresh.
            Phase::Running => running_period,
            Phase::Stopping => Duration::from_secs(2),
            Phase::Pending | Phase::Extracting | Phase::Booting => Duration::from_secs(5),
            Phase::Stopped | Phase::Failed => Duration::from_secs(300),
        },
    }
}
