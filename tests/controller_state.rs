//! The status state machine: every phase and condition reached from some pod state.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use rvf_operator::controller::pod::{spec_hash, PolicyViolation, VmPodBuilder, VmPodConfig};
use rvf_operator::controller::state::{
    compute_status, plan, DeleteReason, Observations, PodAction, PodObservation, PodRejection,
    DEFAULT_AGENT_STALE_AFTER,
};
use rvf_operator::crd::{
    Accelerator, KvmMode, Phase, QmpState, RunStrategy, RvfMicroVm, RvfMicroVmSpec,
    RvfMicroVmStatus,
};
use rvf_operator::runtime::status::{ConditionStatus, VmStatus};
use serde_json::{json, Value};

fn spec() -> RvfMicroVmSpec {
    serde_json::from_value(
        json!({"source": {"persistentVolumeClaim": {"claimName": "c", "path": "x.rvf"}}}),
    )
    .unwrap()
}

/// A pod built by the real builder, with `status` merged in.
fn pod(spec: &RvfMicroVmSpec, status: Value) -> PodObservation {
    let mut vm = RvfMicroVm::new("hello", spec.clone());
    vm.metadata.namespace = Some("vms".into());
    let mut pod: Pod = VmPodBuilder::new(&vm, &VmPodConfig::default())
        .build()
        .unwrap();
    pod.status = Some(serde_json::from_value(status).unwrap());
    pod.spec.as_mut().unwrap().node_name = Some("node-1".into());
    PodObservation::from_pod(&pod)
}

fn terminated(code: i32, message: &str) -> Value {
    json!({"terminated": {"exitCode": code, "message": message, "finishedAt": "2026-01-01T00:00:00Z"}})
}

fn status_with(init: Value, vm: Value, ready: bool) -> Value {
    json!({
        "phase": "Pending",
        "podIP": "10.0.0.7",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        "initContainerStatuses": [ {"name": "extract", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": init} ],
        "containerStatuses": [ {"name": "vm", "image": "i", "imageID": "", "ready": ready, "restartCount": 0, "state": vm} ],
    })
}

fn obs<'a>(spec: &'a RvfMicroVmSpec, pod: Option<PodObservation>) -> Observations<'a> {
    Observations {
        spec,
        generation: Some(1),
        previous: None,
        desired_hash: spec_hash(spec),
        deleting: false,
        policy: None,
        pod,
        pod_rejected: None,
        pvc_missing: None,
        agent: None,
        agent_error: None,
        agent_unreachable_since: None,
        agent_stale_after: DEFAULT_AGENT_STALE_AFTER,
        service_name: Some("hello".into()),
        endpoints: None,
        kvm_markers: vec!["devices.kubevirt.io/kvm".into()],
        now: "2026-01-01T00:00:05Z".parse().unwrap(),
    }
}

fn run(o: &Observations) -> (PodAction, RvfMicroVmStatus) {
    let action = plan(o);
    let status = compute_status(o, &action);
    (action, status)
}

fn cond<'a>(s: &'a RvfMicroVmStatus, t: &str) -> Option<(&'a str, &'a str)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

#[test]
fn no_pod_yet_creates_one_and_is_pending_and_reconciling() {
    let s = spec();
    let (action, status) = run(&obs(&s, None));
    assert_eq!(action, PodAction::Create { run: 0 });
    assert_eq!(status.phase, Phase::Pending);
    assert_eq!(cond(&status, "Ready"), Some(("False", "Creating")));
    assert_eq!(cond(&status, "Reconciling"), Some(("True", "Creating")));
    assert_eq!(cond(&status, "KernelExtracted").unwrap().0, "Unknown");
    assert_eq!(status.observed_generation, Some(1));
}

#[test]
fn an_unschedulable_kvm_required_pod_says_no_kvm_node_and_stalls() {
    let mut s = spec();
    s.kvm = KvmMode::Required;
    let p = pod(
        &s,
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient devices.kubevirt.io/kvm."}]}),
    );
    let (action, status) = run(&obs(&s, Some(p)));
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Pending);
    assert_eq!(cond(&status, "Ready"), Some(("False", "NoKvmNode")));
    assert_eq!(cond(&status, "Stalled"), Some(("True", "NoKvmNode")));
    assert!(cond(&status, "Reconciling").is_none());
}

#[test]
fn a_missing_claim_is_reported_and_no_pod_is_created() {
    let s = spec();
    let mut o = obs(&s, None);
    o.pvc_missing = Some("c".into());
    let (action, status) = run(&o);
    assert_eq!(action, PodAction::Keep);
    assert_eq!(cond(&status, "Ready"), Some(("False", "PvcMissing")));
    assert_eq!(cond(&status, "Stalled"), Some(("True", "PvcMissing")));
    assert!(status.message.unwrap().contains("PersistentVolumeClaim c"));
}

#[test]
fn a_pod_security_rejection_fails_the_vm_with_its_own_reason() {
    let s = spec();
    let mut o = obs(&s, None);
    o.pod_rejected = Some(PodRejection {
        code: 403,
        message:
            "pods \"hello-vm\" is forbidden: violates PodSecurity \"baseline:latest\": privileged"
                .into(),
    });
    let status = compute_status(&o, &PodAction::Keep);
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(
        cond(&status, "Ready"),
        Some(("False", "PodSecurityRejected"))
    );
    assert_eq!(
        cond(&status, "Stalled"),
        Some(("True", "PodSecurityRejected"))
    );
}

#[test]
fn a_refused_spec_fails_and_its_pod_is_deleted() {
    let s = spec();
    let mut o = obs(&s, Some(pod(&s, json!({"phase": "Running"}))));
    o.policy = Some(PolicyViolation::HostPathNotAllowed);
    let (action, _) = run(&o);
    assert_eq!(
        action,
        PodAction::Delete {
            why: DeleteReason::PolicyRefused
        }
    );
    o.pod = None;
    let (action, status) = run(&o);
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(
        cond(&status, "Ready"),
        Some(("False", "HostPathNotAllowed"))
    );
}

#[test]
fn a_running_extract_container_is_extracting() {
    let s = spec();
    let p = pod(
        &s,
        status_with(
            json!({"running": {}}),
            json!({"waiting": {"reason": "PodInitializing"}}),
            false,
        ),
    );
    let (_, status) = run(&obs(&s, Some(p)));
    assert_eq!(status.phase, Phase::Extracting);
    assert_eq!(
        cond(&status, "KernelExtracted"),
        Some(("False", "Extracting"))
    );
    assert_eq!(status.node_name.as_deref(), Some("node-1"));
}

#[test]
fn an_rvf_without_a_kernel_fails_with_the_extract_message_and_is_not_rerun() {
    let s = spec();
    let msg = "RVF file /vm/source/x.rvf has no KERNEL_SEG: it carries no kernel to boot";
    let mut st = status_with(
        terminated(1, msg),
        json!({"waiting": {"reason": "PodInitializing"}}),
        false,
    );
    st["phase"] = json!("Failed");
    let (action, status) = run(&obs(&s, Some(pod(&s, st))));
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(
        cond(&status, "KernelExtracted"),
        Some(("False", "KernelExtractFailed"))
    );
    assert_eq!(
        cond(&status, "Stalled"),
        Some(("True", "KernelExtractFailed"))
    );
    assert!(status.message.unwrap().contains("no KERNEL_SEG"));
}

#[test]
fn a_checksum_mismatch_in_fetch_fails_for_good() {
    let mut s = spec();
    s.source = serde_json::from_value(
        json!({"http": {"url": "https://h.invalid/x", "sha256": "a".repeat(64)}}),
    )
    .unwrap();
    let mut st = status_with(json!({"waiting": {}}), json!({"waiting": {}}), false);
    st["phase"] = json!("Failed");
    st["initContainerStatuses"] = json!([
        {"name": "fetch", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
         "state": terminated(1, "sha256 of https://h.invalid/x is 00ff, expected aaaa")},
    ]);
    let (action, status) = run(&obs(&s, Some(pod(&s, st))));
    assert_eq!(action, PodAction::Keep);
    assert_eq!(cond(&status, "Ready"), Some(("False", "FetchFailed")));
    assert_eq!(cond(&status, "Stalled").unwrap().0, "True");
}

#[test]
fn a_downloading_fetch_container_is_extracting() {
    let mut s = spec();
    s.source = serde_json::from_value(
        json!({"http": {"url": "https://h.invalid/x", "sha256": "a".repeat(64)}}),
    )
    .unwrap();
    let mut st = status_with(json!({"waiting": {}}), json!({"waiting": {}}), false);
    st["initContainerStatuses"] = json!([
        {"name": "fetch", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"running": {}}},
    ]);
    let (_, status) = run(&obs(&s, Some(pod(&s, st))));
    assert_eq!(status.phase, Phase::Extracting);
    assert_eq!(
        cond(&status, "KernelExtracted"),
        Some(("False", "Fetching"))
    );
}

#[test]
fn an_image_pull_back_off_is_pending_with_the_kubelets_reason() {
    let s = spec();
    let st = status_with(
        json!({"waiting": {"reason": "ImagePullBackOff", "message": "back-off pulling"}}),
        json!({"waiting": {}}),
        false,
    );
    let (_, status) = run(&obs(&s, Some(pod(&s, st))));
    assert_eq!(status.phase, Phase::Pending);
    assert_eq!(cond(&status, "Ready"), Some(("False", "ImagePullBackOff")));
}

#[test]
fn a_started_vm_container_without_readiness_is_booting() {
    let s = spec();
    let mut st = status_with(terminated(0, ""), json!({"running": {}}), false);
    st["phase"] = json!("Running");
    let (_, status) = run(&obs(&s, Some(pod(&s, st))));
    assert_eq!(status.phase, Phase::Booting);
    assert_eq!(
        cond(&status, "KernelExtracted"),
        Some(("True", "Extracted"))
    );
    assert_eq!(cond(&status, "GuestReady").unwrap().0, "False");
    assert_eq!(cond(&status, "Reconciling"), Some(("True", "Booting")));
}

#[test]
fn a_ready_pod_with_agent_status_is_running_and_copies_qmp_and_kernel_facts() {
    let s = spec();
    let mut st = status_with(terminated(0, ""), json!({"running": {}}), true);
    st["phase"] = json!("Running");
    let mut o = obs(&s, Some(pod(&s, st)));
    o.agent = Some(VmStatus {
        phase: Phase::Running,
        accelerator: Some(Accelerator::Tcg),
        boot_seconds: Some(2.5),
        qmp: Some(QmpState {
            status: "running".into(),
            running: true,
            updated_at: Timestamp::now(),
        }),
        restarts: 1,
        qemu_alive: true,
        ..Default::default()
    });
    let (action, status) = run(&o);
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(cond(&status, "Ready"), Some(("True", "GuestReady")));
    assert_eq!(cond(&status, "GuestReady"), Some(("True", "GuestAnswered")));
    assert!(cond(&status, "Reconciling").is_none() && cond(&status, "Stalled").is_none());
    assert_eq!(status.qmp.unwrap().status, "running");
    assert_eq!(status.accelerator, Some(Accelerator::Tcg));
    assert_eq!(status.boot_seconds, Some(2.5));
    assert_eq!(status.restarts, 1);
}

#[test]
fn a_clean_guest_poweroff_is_stopped_unless_the_strategy_is_always() {
    let mut s = spec();
    let mut st = status_with(terminated(0, ""), terminated(0, "guest powered off"), false);
    st["phase"] = json!("Succeeded");
    s.run_strategy = RunStrategy::RerunOnFailure;
    let (action, status) = run(&obs(&s, Some(pod(&s, st.clone()))));
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Stopped);
    assert_eq!(cond(&status, "Ready"), Some(("False", "GuestShutdown")));
    assert_eq!(status.qmp, None);

    s.run_strategy = RunStrategy::Always;
    let (action, status) = run(&obs(&s, Some(pod(&s, st))));
    assert_eq!(
        action,
        PodAction::Delete {
            why: DeleteReason::Rerun
        }
    );
    assert_eq!(status.phase, Phase::Stopping);
    assert_eq!(status.restarts, 1);
}

#[test]
fn a_crashed_guest_is_rerun_after_a_backoff_under_always() {
    let s = spec();
    let mut st = status_with(terminated(0, ""), terminated(2, "guest panicked"), false);
    st["phase"] = json!("Failed");
    let mut o = obs(&s, Some(pod(&s, st)));
    let (action, status) = run(&o);
    assert_eq!(
        action,
        PodAction::WaitForRerun {
            after: Duration::from_secs(5)
        }
    );
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(cond(&status, "Ready"), Some(("False", "GuestCrashed")));
    assert!(cond(&status, "Stalled").is_none());
    o.now = "2026-01-01T00:01:00Z".parse().unwrap();
    assert_eq!(
        plan(&o),
        PodAction::Delete {
            why: DeleteReason::Rerun
        }
    );
}

#[test]
fn qemu_exits_and_never_ready_guests_have_their_own_reasons() {
    let mut s = spec();
    s.run_strategy = RunStrategy::Once;
    for (code, reason) in [
        (3, "QemuFailed"),
        (4, "GuestNeverReady"),
        (5, "ConfigurationError"),
    ] {
        let mut st = status_with(terminated(0, ""), terminated(code, "x"), false);
        st["phase"] = json!("Failed");
        let (action, status) = run(&obs(&s, Some(pod(&s, st))));
        assert_eq!(action, PodAction::Keep, "exit {code}");
        assert_eq!(status.phase, Phase::Failed);
        assert_eq!(cond(&status, "Ready"), Some(("False", reason)));
        assert_eq!(cond(&status, "Stalled").unwrap().0, "True");
    }
}

#[test]
fn a_configuration_error_is_not_rerun_even_under_always() {
    let s = spec();
    let mut st = status_with(
        terminated(0, ""),
        terminated(5, "KVM required but /dev/kvm is missing"),
        false,
    );
    st["phase"] = json!("Failed");
    let (action, status) = run(&obs(&s, Some(pod(&s, st))));
    assert_eq!(action, PodAction::Keep);
    assert_eq!(
        cond(&status, "Stalled"),
        Some(("True", "ConfigurationError"))
    );
}

#[test]
fn a_once_vm_that_ran_is_not_started_again_when_its_pod_is_gone() {
    let mut s = spec();
    s.run_strategy = RunStrategy::Once;
    let previous = RvfMicroVmStatus {
        phase: Phase::Stopped,
        observed_generation: Some(1),
        pod_name: Some("hello-vm".into()),
        ..Default::default()
    };
    let mut o = obs(&s, None);
    o.previous = Some(&previous);
    let (action, status) = run(&o);
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Stopped);
}

#[test]
fn a_spec_change_replaces_the_pod() {
    let s = spec();
    let mut p = pod(&s, json!({"phase": "Running"}));
    p.spec_hash = Some("stale".into());
    let (action, status) = run(&obs(&s, Some(p)));
    assert_eq!(
        action,
        PodAction::Delete {
            why: DeleteReason::SpecChanged
        }
    );
    assert_eq!(status.phase, Phase::Stopping);
    assert_eq!(cond(&status, "Reconciling"), Some(("True", "Stopping")));
}

#[test]
fn a_terminating_pod_is_stopping_and_left_alone() {
    let s = spec();
    let mut p = pod(&s, json!({"phase": "Running"}));
    p.deleting = true;
    let (action, status) = run(&obs(&s, Some(p)));
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Stopping);
}

#[test]
fn halted_powers_a_running_vm_down_then_is_stopped() {
    let mut s = spec();
    s.run_strategy = RunStrategy::Halted;
    let (action, _) = run(&obs(&s, Some(pod(&s, json!({"phase": "Running"})))));
    assert_eq!(
        action,
        PodAction::Delete {
            why: DeleteReason::Halted
        }
    );
    let (action, status) = run(&obs(&s, None));
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Stopped);
    assert_eq!(cond(&status, "Ready"), Some(("False", "Halted")));
}

#[test]
fn a_condition_keeps_its_transition_time_while_its_status_holds() {
    let s = spec();
    let (_, first) = run(&obs(&s, None));
    let mut o = obs(&s, None);
    o.previous = Some(&first);
    o.now = "2026-01-01T01:00:00Z".parse().unwrap();
    let (_, second) = run(&o);
    let t = |s: &RvfMicroVmStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .last_transition_time
            .clone()
    };
    assert_eq!(t(&first), t(&second));
}

fn running_status_with(pod_ready: bool) -> Value {
    let mut st = status_with(terminated(0, ""), json!({"running": {}}), pod_ready);
    st["phase"] = json!("Running");
    st
}

/// The status of a VM that was Running and Ready at the last look.
fn was_running() -> RvfMicroVmStatus {
    let s = spec();
    let mut o = obs(&s, Some(pod(&s, running_status_with(true))));
    o.agent = Some(agent_ready(true));
    let (_, status) = run(&o);
    assert_eq!(cond(&status, "Ready"), Some(("True", "GuestReady")));
    status
}

/// What a live agent serves: phase Running, and Ready as its own guest probe says.
fn agent_ready(ready: bool) -> VmStatus {
    let mut agent = VmStatus {
        phase: Phase::Running,
        qemu_alive: true,
        ..Default::default()
    };
    let (status, reason) = if ready {
        (ConditionStatus::True, "GuestAnswered")
    } else {
        (ConditionStatus::False, "ProbeFailed")
    };
    agent.set_condition(
        "Ready",
        status,
        reason,
        "GET http://127.0.0.1:8080/v1/health failed",
    );
    agent
}

#[test]
fn a_guest_that_stopped_answering_is_running_but_not_ready() {
    let s = spec();
    // The kubelet has not caught up yet; the agent already says the guest stopped answering.
    let mut o = obs(&s, Some(pod(&s, running_status_with(true))));
    o.agent = Some(agent_ready(false));
    let (_, status) = run(&o);
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(cond(&status, "Ready"), Some(("False", "ProbeFailed")));
    assert_eq!(cond(&status, "GuestReady").unwrap().0, "False");
}

#[test]
fn one_missed_agent_poll_does_not_flip_a_running_vm_to_booting_or_failed() {
    let s = spec();
    let previous = was_running();
    for pod_ready in [true, false] {
        let mut o = obs(&s, Some(pod(&s, running_status_with(pod_ready))));
        o.previous = Some(&previous);
        o.agent_error = Some("GET http://10.0.0.7:9100/status failed: timed out".into());
        o.agent_unreachable_since = Some(o.now);
        let (action, status) = run(&o);
        assert_eq!(action, PodAction::Keep);
        assert_eq!(status.phase, Phase::Running, "pod ready {pod_ready}");
        let ready = if pod_ready { "True" } else { "False" };
        assert_eq!(cond(&status, "Ready").unwrap().0, ready);
    }
}

#[test]
fn an_agent_unreachable_for_long_is_no_longer_reported_ready() {
    let s = spec();
    let previous = was_running();
    let mut o = obs(&s, Some(pod(&s, running_status_with(true))));
    o.previous = Some(&previous);
    o.agent_error = Some("GET http://10.0.0.7:9100/status failed: timed out".into());
    o.agent_unreachable_since = Some(o.now - DEFAULT_AGENT_STALE_AFTER);
    let (action, status) = run(&o);
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(cond(&status, "Ready"), Some(("False", "AgentUnreachable")));
    assert_eq!(
        cond(&status, "Reconciling"),
        Some(("True", "AgentUnreachable"))
    );
    assert!(status.message.unwrap().contains("timed out"));
}

#[test]
fn a_pod_on_a_lost_node_is_not_ready_and_says_so() {
    let s = spec();
    let previous = was_running();
    let mut st = running_status_with(false);
    st["phase"] = json!("Unknown");
    let mut o = obs(&s, Some(pod(&s, st)));
    o.previous = Some(&previous);
    let (action, status) = run(&o);
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(cond(&status, "Ready"), Some(("False", "NodeUnreachable")));
    assert!(status.message.unwrap().contains("node-1"));
    assert_eq!(status.node_name.as_deref(), Some("node-1"));
}

#[test]
fn arguments_the_vm_image_refuses_fail_for_good_instead_of_as_a_guest_crash() {
    let s = spec();
    let clap = "error: unexpected argument '--grace-seconds' found\n\nUsage: rvf-operator agent \
                --kernel-dir <KERNEL_DIR>\n\nFor more information, try '--help'.";
    let mut st = status_with(terminated(0, ""), terminated(2, clap), false);
    st["phase"] = json!("Failed");
    let o = obs(&s, Some(pod(&s, st)));
    let (action, status) = run(&o);
    assert_eq!(action, PodAction::Keep);
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(cond(&status, "Ready"), Some(("False", "ArgumentsRejected")));
    assert_eq!(
        cond(&status, "Stalled"),
        Some(("True", "ArgumentsRejected"))
    );
    assert!(status.message.unwrap().contains("--grace-seconds"));
}

#[test]
fn waiting_to_rerun_a_failed_vm_is_reconciling_not_done() {
    let s = spec();
    let mut st = status_with(terminated(0, ""), terminated(2, "guest panicked"), false);
    st["phase"] = json!("Failed");
    let (action, status) = run(&obs(&s, Some(pod(&s, st))));
    assert!(matches!(action, PodAction::WaitForRerun { .. }));
    assert_eq!(cond(&status, "Reconciling"), Some(("True", "GuestCrashed")));
    assert!(cond(&status, "Stalled").is_none());
}

#[test]
fn each_agent_exit_code_ends_in_its_phase_reason_and_rerun_decision() {
    // (exit code, pod phase, status phase, Ready reason, rerun under Always, under RerunOnFailure)
    let table = [
        (0, "Succeeded", Phase::Stopped, "GuestShutdown", true, false),
        (2, "Failed", Phase::Failed, "GuestCrashed", true, true),
        (3, "Failed", Phase::Failed, "QemuFailed", true, true),
        (4, "Failed", Phase::Failed, "GuestNeverReady", true, true),
        (
            5,
            "Failed",
            Phase::Failed,
            "ConfigurationError",
            false,
            false,
        ),
    ];
    for (code, pod_phase, phase, reason, always, on_failure) in table {
        for (strategy, reruns) in [
            (RunStrategy::Always, always),
            (RunStrategy::RerunOnFailure, on_failure),
            (RunStrategy::Once, false),
        ] {
            let mut s = spec();
            s.run_strategy = strategy;
            let mut st = status_with(terminated(0, ""), terminated(code, ""), false);
            st["phase"] = json!(pod_phase);
            let mut o = obs(&s, Some(pod(&s, st)));
            o.now = "2026-01-01T01:00:00Z".parse().unwrap();
            let (action, status) = run(&o);
            let rerun = action
                == PodAction::Delete {
                    why: DeleteReason::Rerun,
                };
            assert_eq!(rerun, reruns, "exit {code} under {strategy:?}: {action:?}");
            if !rerun {
                assert_eq!(status.phase, phase, "exit {code} under {strategy:?}");
                assert_eq!(cond(&status, "Ready"), Some(("False", reason)));
            }
        }
    }
}

#[test]
fn an_oom_killed_vm_container_says_so_and_names_the_overhead_flag() {
    let s = spec();
    let oom = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-01-01T00:00:00Z"}});
    let mut st = status_with(terminated(0, ""), oom, false);
    st["phase"] = json!("Failed");
    let (_, status) = run(&obs(&s, Some(pod(&s, st))));
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(cond(&status, "Ready"), Some(("False", "OOMKilled")));
    assert!(status.message.unwrap().contains("--memory-overhead-mib"));
}
