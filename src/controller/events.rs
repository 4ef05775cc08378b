//! Kubernetes Events for a VM's transitions: which ones to emit is a pure function of the
//! status before and after a reconcile.

use kube::runtime::events::{Event, EventType};

use super::state::condition;
use crate::crd::{Phase, RvfMicroVmStatus};

/// The Events that tell a user what changed between `before` and `after`: one per phase
/// change, and a Warning when a failure reason appears or changes.
pub fn transition_events(
    before: Option<&RvfMicroVmStatus>,
    after: &RvfMicroVmStatus,
) -> Vec<Event> {
    let ready_reason = |s: &RvfMicroVmStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .map(|c| c.reason.clone())
    };
    let before_phase = before.map(|s| s.phase);
    let before_reason = before.and_then(ready_reason);
    let after_reason = ready_reason(after).unwrap_or_default();
    let message = after.message.clone();

    let mut events = vec![];
    let warning = matches!(after.phase, Phase::Failed)
        || after
            .conditions
            .iter()
            .any(|c| c.type_ == condition::STALLED && c.status == "True");
    if before_phase != Some(after.phase) {
        events.push(Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: if warning {
                after_reason.clone()
            } else {
                format!("{:?}", after.phase)
            },
            note: message.clone(),
            action: "Reconcile".into(),
            secondary: None,
        });
    } else if warning && before_reason.as_deref() != Some(after_reason.as_str()) {
        events.push(Event {
            type_: EventType::Warning,
            reason: after_reason,
            note: message,
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    events
}
