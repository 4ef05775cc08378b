//! The VM's observable state: phase, conditions, QMP status, boot facts.
//!
//! The agent serves this as `/status` and `run --output json` prints it; field names
//! match the `RvfMicroVm` status so the controller copies rather than translates.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::kernel::KernelFacts;

/// Lifecycle phase of one VM, in the order a healthy VM goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Extracting,
    Booting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl Phase {
    /// True once the VM can no longer change on its own.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Stopped | Phase::Failed)
    }
}

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        })
    }
}

/// Condition status as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// Condition types the runtime reports.
pub mod condition {
    /// The VM is running and its guest answers HTTP.
    pub const READY: &str = "Ready";
    /// The kernel (and initramfs) were extracted from the RVF.
    pub const KERNEL_EXTRACTED: &str = "KernelExtracted";
    /// The guest answers the readiness probe.
    pub const GUEST_READY: &str = "GuestReady";
}

/// One condition, in the shape of `metav1.Condition` less `observedGeneration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    pub last_transition_time: Timestamp,
}

/// What QMP `query-status` last said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QmpState {
    /// QEMU's run state: running, paused, shutdown, guest-panicked, internal-error, ...
    pub status: String,
    pub running: bool,
    pub updated_at: Timestamp,
}

/// How the VM ended, once it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    /// Process exit code the agent uses (see `VmExit::code`).
    pub code: i32,
    /// Machine-readable reason, e.g. `GuestShutdown`, `GuestPanicked`, `QemuExited`.
    pub reason: String,
    pub message: String,
}

/// Full runtime status of one VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmStatus {
    pub phase: Phase,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp: Option<QmpState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<Accelerator>,
    /// Seconds from QEMU start to the first successful readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelFacts>,
    /// Where the guest API answers from the runtime's side (host:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_endpoint: Option<String>,
    /// Times QEMU was started again for this VM (KVM fallback, boot retry).
    #[serde(default)]
    pub restarts: u32,
    /// Whether a QEMU process is alive right now.
    #[serde(default)]
    pub qemu_alive: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// One human sentence on the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl VmStatus {
    /// The condition of `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// True when `type_` is set and `True`.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_)
            .is_some_and(|c| c.status == ConditionStatus::True)
    }

    /// Sets a condition; its transition time moves only when its status changes.
    pub fn set_condition(&mut self, type_: &str, status: ConditionStatus, reason: &str, msg: &str) {
        let now = Timestamp::now();
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now;
                }
                c.status = status;
                c.reason = reason.to_string();
                c.message = msg.to_string();
            }
            None => self.conditions.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message: msg.to_string(),
                last_transition_time: now,
            }),
        }
    }

    /// Sets `GuestReady` and `Ready` together: inside the runtime a VM is ready exactly
    /// when its guest answers (the controller adds pod-level reasons of its own).
    pub fn set_guest_readiness(&mut self, status: ConditionStatus, reason: &str, msg: &str) {
        self.set_condition(condition::GUEST_READY, status, reason, msg);
        self.set_condition(condition::READY, status, reason, msg);
    }

    /// The same status with timestamps removed, to tell real changes from refreshes.
    fn change_key(&self) -> VmStatus {
        let mut s = self.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Timestamp::UNIX_EPOCH;
        }
        if let Some(q) = &mut s.qmp {
            q.updated_at = Timestamp::UNIX_EPOCH;
        }
        s
    }
}

/// The single writer of a VM's status; readers take snapshots or follow every change.
///
/// A refresh that changes only timestamps (a periodic `query-status` with the same
/// answer) is stored but not announced, so `run --output json` prints one line per
/// real change. Changes go out in order on a broadcast channel, so a reader sees a
/// short-lived state (Ready just before Stopping) even if it was slow to look.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    current: watch::Sender<VmStatus>,
    changes: broadcast::Sender<VmStatus>,
}

/// How many unread changes a follower may fall behind before it loses some.
const CHANGE_BACKLOG: usize = 1024;

impl Default for StatusBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusBoard {
    /// A board holding the default (Pending) status.
    pub fn new() -> Self {
        Self {
            current: watch::Sender::new(VmStatus::default()),
            changes: broadcast::channel(CHANGE_BACKLOG).0,
        }
    }

    /// Applies `f` to the status and announces it if anything but a timestamp changed.
    pub fn update(&self, f: impl FnOnce(&mut VmStatus)) {
        let mut announced = None;
        self.current.send_if_modified(|s| {
            let before = s.change_key();
            f(s);
            let changed = s.change_key() != before;
            if changed {
                announced = Some(s.clone());
            }
            changed
        });
        if let Some(s) = announced {
            // Nobody following is fine: snapshots still see the change.
            let _ = self.changes.send(s);
        }
    }

    /// The current status.
    pub fn snapshot(&self) -> VmStatus {
        self.current.borrow().clone()
    }

    /// Every announced change from now on, in order.
    pub fn follow(&self) -> broadcast::Receiver<VmStatus> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_transition_time_moves_only_on_status_change() {
        let mut s = VmStatus::default();
        s.set_condition("Ready", ConditionStatus::False, "Booting", "a");
        let t0 = s.condition("Ready").unwrap().last_transition_time;
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.set_condition("Ready", ConditionStatus::False, "StillBooting", "b");
        assert_eq!(s.condition("Ready").unwrap().last_transition_time, t0);
        assert_eq!(s.condition("Ready").unwrap().reason, "StillBooting");
        s.set_condition("Ready", ConditionStatus::True, "GuestAnswered", "c");
        assert!(s.condition("Ready").unwrap().last_transition_time > t0);
        assert!(s.is_true("Ready"));
    }

    #[test]
    fn board_announces_real_changes_but_not_timestamp_refreshes() {
        let board = StatusBoard::new();
        let mut rx = board.follow();
        let qmp = |at| QmpState {
            status: "running".into(),
            running: true,
            updated_at: at,
        };
        board.update(|s| s.qmp = Some(qmp(Timestamp::now())));
        board.update(|s| s.qmp.as_mut().unwrap().updated_at = Timestamp::now());
        board.update(|s| s.phase = Phase::Running);
        assert!(rx.try_recv().unwrap().qmp.is_some());
        assert_eq!(rx.try_recv().unwrap().phase, Phase::Running);
        assert!(rx.try_recv().is_err(), "a timestamp refresh was announced");
    }

    #[test]
    fn a_slow_follower_still_sees_a_short_lived_state() {
        let board = StatusBoard::new();
        let mut rx = board.follow();
        board.update(|s| s.phase = Phase::Running);
        board.update(|s| s.phase = Phase::Stopping);
        board.update(|s| s.phase = Phase::Stopped);
        let seen: Vec<Phase> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|s| s.phase)
            .collect();
        assert_eq!(seen, [Phase::Running, Phase::Stopping, Phase::Stopped]);
        assert_eq!(board.snapshot().phase, Phase::Stopped);
    }

    #[test]
    fn status_serializes_with_resource_field_names() {
        let mut s = VmStatus {
            phase: Phase::Running,
            accelerator: Some(Accelerator::Tcg),
            boot_seconds: Some(3.2),
            ..Default::default()
        };
        s.set_condition(
            condition::READY,
            ConditionStatus::True,
            "GuestAnswered",
            "ok",
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["phase"], "Running");
        assert_eq!(v["accelerator"], "tcg");
        assert_eq!(v["bootSeconds"], 3.2);
        assert_eq!(v["conditions"][0]["type"], "Ready");
        assert_eq!(v["conditions"][0]["status"], "True");
        assert!(v["conditions"][0]["lastTransitionTime"].is_string());
        let back: VmStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
