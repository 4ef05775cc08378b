//! The supervisor of one VM: boots it, watches it, reports it, stops it gracefully.
//!
//! It owns the QEMU process and the QMP connection for the VM's whole life and is
//! the only writer of the VM's [`StatusBoard`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::watch;

use super::accel::{self, KvmMode, KvmProbe};
use super::kernel::ExtractedKernel;
use super::probe::GuestProbe;
use super::qemu::{ConsoleSink, PortForward, QemuConfig, QemuProcess};
use super::qmp::{QmpClient, QmpEvent};
use super::status::{
    condition, Accelerator, ConditionStatus, ExitInfo, Phase, QmpState, StatusBoard,
};

/// How long QEMU may take to open its QMP socket after start.
const QMP_CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long QEMU may take to exit after `quit` before it is killed.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// How often `query-status` refreshes the QMP state while nothing else happens.
const QMP_REFRESH: Duration = Duration::from_secs(5);
/// Probe interval before the guest first answers, for an accurate boot time.
const BOOT_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Boot-time probes allowed in flight at once (see the probe loop in `attempt`).
const BOOT_PROBES_IN_FLIGHT: usize = 4;
/// Consecutive failed probes after which a ready guest counts as not ready.
const FAILURE_THRESHOLD: u32 = 3;

/// Readiness probing of the guest's HTTP API.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub path: String,
    pub period: Duration,
    pub timeout: Duration,
    /// How long a boot may take from QEMU start to the first HTTP answer.
    pub startup_timeout: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            path: "/v1/health".into(),
            period: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            startup_timeout: Duration::from_secs(120),
        }
    }
}

/// Everything the supervisor needs to run one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: ExtractedKernel,
    pub rvf: Option<PathBuf>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub kvm: KvmMode,
    pub kvm_device: PathBuf,
    /// Under `Auto`, a KVM boot whose console stays silent this long before the guest
    /// is ready falls back to TCG (nested KVM can stall a stock kernel for minutes).
    pub kvm_stall: Duration,
    pub api_port: u16,
    pub api_bind: IpAddr,
    pub api_host_port: u16,
    /// Guest SSH port, forwarded to the same port on the runtime's side.
    pub ssh_port: Option<u16>,
    pub kernel_args: String,
    pub readiness: Readiness,
    pub grace: Duration,
    pub qemu_binary: PathBuf,
    pub qemu_extra_args: Vec<String>,
    pub state_dir: PathBuf,
    pub console: ConsoleSink,
    pub tcg_tb_size_mib: u32,
    /// Extra TCG boots after one that timed out (a guest hung in early boot).
    pub boot_retries: u32,
    /// Stop the VM gracefully as soon as it is ready (`run --until-ready`).
    pub until_ready: bool,
}

/// How a VM run ended; [`VmExit::code`] is the agent's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered itself off.
    GuestShutdown,
    /// A stop was requested and done: by the guest's own poweroff, by `quit`, or by kill.
    StoppedOnRequest(StopHow),
    /// The guest panicked or reset (reboots are disabled).
    GuestCrashed(String),
    /// QEMU could not start or exited without a guest shutdown.
    QemuFailed(String),
    /// The guest never answered its readiness probe in time.
    NeverReady(String),
    /// The configuration cannot work on this host (KVM required but unusable, ...).
    Config(String),
}

/// How a requested stop was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHow {
    PoweredOff,
    Quit,
    Killed,
}

impl VmExit {
    /// 0 stopped cleanly, 2 guest crashed, 3 QEMU failed, 4 never ready, 5 bad config.
    pub fn code(&self) -> i32 {
        match self {
            VmExit::GuestShutdown | VmExit::StoppedOnRequest(_) => 0,
            VmExit::GuestCrashed(_) => 2,
            VmExit::QemuFailed(_) => 3,
            VmExit::NeverReady(_) => 4,
            VmExit::Config(_) => 5,
        }
    }

    /// Machine-readable reason for status and conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            VmExit::GuestShutdown => "GuestShutdown",
            VmExit::StoppedOnRequest(StopHow::PoweredOff) => "Stopped",
            VmExit::StoppedOnRequest(StopHow::Quit) => "StoppedByQuit",
            VmExit::StoppedOnRequest(StopHow::Killed) => "StoppedByKill",
            VmExit::GuestCrashed(_) => "GuestCrashed",
            VmExit::QemuFailed(_) => "QemuFailed",
            VmExit::NeverReady(_) => "GuestNeverReady",
            VmExit::Config(_) => "ConfigError",
        }
    }

    /// One sentence for a person.
    pub fn message(&self) -> String {
        match self {
            VmExit::GuestShutdown => "the guest powered off".into(),
            VmExit::StoppedOnRequest(StopHow::PoweredOff) => {
                "stopped on request: the guest powered off after the power button".into()
            }
            VmExit::StoppedOnRequest(StopHow::Quit) => {
                "stopped on request: the guest did not power off after the power button \
                 (grace period over, or a second stop request), so QEMU was told to quit"
                    .into()
            }
            VmExit::StoppedOnRequest(StopHow::Killed) => {
                "stopped on request: QEMU did not quit and was killed".into()
            }
            VmExit::GuestCrashed(m)
            | VmExit::QemuFailed(m)
            | VmExit::NeverReady(m)
            | VmExit::Config(m) => m.clone(),
        }
    }

    fn phase(&self) -> Phase {
        match self.code() {
            0 => Phase::Stopped,
            _ => Phase::Failed,
        }
    }
}

/// Builds the guest command line: the RVF's own, then the user's, then what the
/// runtime needs. Under TCG it adds `tsc_early_khz` so the guest skips PIT
/// calibration, which hangs about one TCG boot in four; under KVM it never does.
pub fn guest_cmdline(rvf: &str, user: &str, accel: Accelerator, tsc_khz: u64) -> String {
    // Words after `--` go to init, not the kernel: keep kernel parameters before it.
    let split = |line: &str| -> (Vec<String>, Vec<String>) {
        let mut words = line.split_whitespace().map(String::from);
        let kernel = words.by_ref().take_while(|w| w != "--").collect();
        (kernel, words.collect())
    };
    let (mut kernel, mut init) = split(rvf);
    let (user_kernel, user_init) = split(user);
    kernel.extend(user_kernel);
    init.extend(user_init);
    if !kernel.iter().any(|w| w.starts_with("console=")) {
        kernel.insert(0, "console=ttyS0".into());
    }
    if accel == Accelerator::Tcg && !kernel.iter().any(|w| w.starts_with("tsc_early_khz=")) {
        kernel.push(format!("tsc_early_khz={tsc_khz}"));
    }
    if !init.is_empty() {
        kernel.push("--".into());
        kernel.extend(init);
    }
    kernel.join(" ")
}

/// What QEMU's exit tells about the guest, when nobody asked it to stop.
pub fn classify_exit(
    status: Option<ExitStatus>,
    shutdown_reason: Option<&str>,
    panicked: bool,
    console_tail: &str,
    stderr_tail: &str,
) -> VmExit {
    if let Some(line) = console_tail.lines().find(|l| l.contains("Kernel panic")) {
        return VmExit::GuestCrashed(format!("the guest kernel panicked: {}", line.trim()));
    }
    if panicked || shutdown_reason == Some("guest-panic") {
        return VmExit::GuestCrashed("the guest kernel panicked (QMP GUEST_PANICKED)".into());
    }
    if shutdown_reason == Some("guest-reset") && !console_tail.contains("Linux version") {
        return VmExit::GuestCrashed(
            "the guest reset before its kernel printed anything; the usual cause is too little \
             guest memory for the kernel and initramfs (raise memory)"
                .into(),
        );
    }
    if shutdown_reason == Some("guest-reset") {
        return VmExit::GuestCrashed(
            "the guest reset itself; reboots are disabled, so the VM stopped (a panic with \
             panic=-1, or a triple fault)"
                .into(),
        );
    }
    let stderr = if stderr_tail.is_empty() {
        String::new()
    } else {
        format!(": {stderr_tail}")
    };
    match status {
        Some(s) if s.success() && shutdown_reason == Some("guest-shutdown") => {
            VmExit::GuestShutdown
        }
        Some(s) if s.success() => VmExit::QemuFailed(format!(
            "QEMU exited with status 0 but no guest shutdown was seen (too little memory for \
             this kernel?){stderr}"
        )),
        Some(s) => match s.code() {
            Some(code) => VmExit::QemuFailed(format!("QEMU exited with status {code}{stderr}")),
            None => VmExit::QemuFailed(format!("QEMU was killed by a signal ({s}){stderr}")),
        },
        None => VmExit::QemuFailed(format!("QEMU ended in an unknown way{stderr}")),
    }
}

/// How one QEMU process ended.
enum Attempt {
    /// Failed before the guest was ready; `hang` when it simply never answered.
    BootFailed {
        reason: String,
        hang: bool,
    },
    Ended(VmExit),
}

/// How many times a stop was requested: 1 stops gracefully, 2 or more cut the grace
/// period short (a second Ctrl-C or SIGTERM).
pub type StopSignal = watch::Receiver<u32>;

/// Runs the VM until it ends or a stop is requested; always leaves QEMU reaped.
pub async fn run(cfg: VmConfig, board: StatusBoard, stop: StopSignal) -> VmExit {
    let facts = cfg.kernel.facts.clone();
    board.update(|s| {
        s.kernel = Some(facts.clone());
        s.set_condition(
            condition::KERNEL_EXTRACTED,
            ConditionStatus::True,
            "Extracted",
            &format!(
                "kernel {} bytes, sha256 {}",
                facts.image_bytes, facts.sha256
            ),
        );
    });

    let exit = supervise(&cfg, &board, stop).await;
    let ready_reason = exit.reason();
    board.update(|s| {
        s.phase = exit.phase();
        s.qemu_alive = false;
        // QEMU is gone, so QMP cannot be asked; its last state follows from the exit.
        if s.qmp.is_some() {
            let panicked = exit.message().contains("panicked");
            s.qmp = Some(QmpState {
                status: if panicked {
                    "guest-panicked"
                } else {
                    "shutdown"
                }
                .into(),
                running: false,
                updated_at: Timestamp::now(),
            });
        }
        s.exit = Some(ExitInfo {
            code: exit.code(),
            reason: exit.reason().into(),
            message: exit.message(),
        });
        s.message = Some(exit.message());
        s.set_guest_readiness(ConditionStatus::False, ready_reason, &exit.message());
    });
    exit
}

async fn supervise(cfg: &VmConfig, board: &StatusBoard, stop: StopSignal) -> VmExit {
    let requires_kvm = cfg.kernel.facts.requires_kvm();
    if cfg.kernel.facts.min_memory_mib > cfg.memory_mib {
        return VmExit::Config(format!(
            "the kernel needs at least {} MiB but the VM has {} MiB",
            cfg.kernel.facts.min_memory_mib, cfg.memory_mib
        ));
    }
    let probe = match cfg.kvm {
        KvmMode::Disabled => KvmProbe::Unusable("kvm mode is Disabled".into()),
        _ => accel::probe_kvm(&cfg.kvm_device),
    };
    let mut accel = match accel::choose(cfg.kvm, requires_kvm, &probe) {
        Ok(a) => a,
        Err(e) => return VmExit::Config(e.to_string()),
    };
    if let (Accelerator::Tcg, KvmProbe::Unusable(why)) = (accel, &probe) {
        tracing::info!(%why, "using TCG (software emulation)");
    }

    let mut fell_back = false;
    let mut retries_left = cfg.boot_retries;
    let mut first = true;
    loop {
        if !first {
            board.update(|s| s.restarts += 1);
        }
        first = false;
        match attempt(cfg, board, accel, stop.clone()).await {
            Attempt::Ended(exit) => return exit,
            Attempt::BootFailed { reason, .. }
                if accel == Accelerator::Kvm
                    && !fell_back
                    && accel::may_fall_back(cfg.kvm, requires_kvm) =>
            {
                let msg = format!(
                    "KVM opened but could not run the guest ({reason}); falling back to TCG"
                );
                tracing::warn!("{msg}");
                board.update(|s| s.message = Some(msg));
                accel = Accelerator::Tcg;
                fell_back = true;
            }
            Attempt::BootFailed { reason, hang: true } if retries_left > 0 => {
                tracing::warn!(%reason, "boot timed out; starting QEMU again");
                retries_left -= 1;
            }
            Attempt::BootFailed { reason, hang: true } => return VmExit::NeverReady(reason),
            Attempt::BootFailed {
                reason,
                hang: false,
            } => {
                return if reason.contains("panicked") || reason.contains("reset itself") {
                    VmExit::GuestCrashed(reason)
                } else {
                    VmExit::QemuFailed(reason)
                }
            }
        }
    }
}

/// Per-process state while QEMU runs.
#[derive(Default)]
struct Observed {
    shutdown_reason: Option<String>,
    panicked: bool,
    ready: bool,
    failures: u32,
}

async fn attempt(
    cfg: &VmConfig,
    board: &StatusBoard,
    accel: Accelerator,
    mut stop: StopSignal,
) -> Attempt {
    let qemu_cfg = qemu_config(cfg, accel);
    let cmdline = qemu_cfg.cmdline.clone();
    board.update(|s| {
        s.phase = Phase::Booting;
        s.accelerator = Some(accel);
        s.qmp = None;
        s.api_endpoint = Some(format!("{}:{}", cfg.api_bind, cfg.api_host_port));
        let msg = format!("booting under {accel}");
        s.set_guest_readiness(ConditionStatus::False, "Booting", &msg);
    });
    tracing::info!(%accel, memory_mib = cfg.memory_mib, vcpus = cfg.vcpus, %cmdline, "starting QEMU");

    let started = Instant::now();
    let mut qemu = match QemuProcess::spawn(&qemu_cfg, cfg.console) {
        Ok(q) => q,
        Err(e) => return Attempt::Ended(VmExit::Config(e.to_string())),
    };
    board.update(|s| s.qemu_alive = true);

    let qmp = tokio::select! {
        r = QmpClient::connect(&qemu_cfg.qmp_socket, QMP_CONNECT_WAIT) => r,
        status = qemu.wait() => {
            let status = status.ok();
            let exit = classify_exit(status, None, false, &qemu.console.text(), &qemu.stderr.last_lines(5));
            return Attempt::BootFailed { reason: format!("right after start: {}", exit.message()), hang: false };
        }
    };
    let qmp = match qmp {
        Ok(q) => Arc::new(q),
        Err(e) => {
            // QEMU that dies at start may accept the QMP connection and then reset it;
            // its exit status and stderr explain more than the socket error.
            let reason = match tokio::time::timeout(QUIT_WAIT, qemu.wait()).await {
                Ok(status) => {
                    let exit = classify_exit(
                        status.ok(),
                        None,
                        false,
                        &qemu.console.text(),
                        &qemu.stderr.last_lines(5),
                    );
                    format!("right after start: {}", exit.message())
                }
                Err(_) => {
                    let _ = qemu.kill().await;
                    e.to_string()
                }
            };
            return Attempt::BootFailed {
                reason,
                hang: false,
            };
        }
    };
    let mut events = qmp.events();
    refresh_qmp(&qmp, board).await;

    let probe = GuestProbe::new(
        &format!("{}:{}", probe_host(cfg.api_bind), cfg.api_host_port),
        &cfg.readiness.path,
        cfg.readiness.timeout,
    );
    let mut probe_tick = tokio::time::interval(BOOT_PROBE_INTERVAL);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // During boot, probes overlap: one parked on a connection QEMU accepted before the
    // guest listened must not delay noticing the guest's first answer by its timeout.
    // Each result says whether its probe started after the guest was first ready.
    let mut probes: tokio::task::JoinSet<(bool, Result<u16, String>)> = tokio::task::JoinSet::new();
    let mut qmp_tick = tokio::time::interval(QMP_REFRESH);
    let startup_deadline = tokio::time::Instant::now() + cfg.readiness.startup_timeout;
    let watch_stall =
        accel == Accelerator::Kvm && accel::may_fall_back(cfg.kvm, cfg.kernel.facts.requires_kvm());
    let mut stall_tick = tokio::time::interval(Duration::from_secs(1));
    let mut obs = Observed::default();
    let mut last_probe_error = String::from("no probe yet");

    let end: Result<(), Attempt> = loop {
        tokio::select! {
            status = qemu.wait() => {
                let status = status.ok();
                drain_events(&mut events, &mut obs);
                let exit = classify_exit(
                    status,
                    obs.shutdown_reason.as_deref(),
                    obs.panicked,
                    &qemu.console.text(),
                    &qemu.stderr.last_lines(5),
                );
                if !obs.ready && exit.code() != 0 {
                    break Err(Attempt::BootFailed { reason: exit.message(), hang: false });
                }
                break Err(Attempt::Ended(exit));
            }
            ev = events.recv() => match ev {
                Ok(ev) => {
                    note_event(&ev, &mut obs);
                    refresh_qmp(&qmp, board).await;
                }
                // A closed channel means QMP is gone; QEMU's exit is handled above.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    events = tokio::sync::broadcast::channel(1).1;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            },
            _ = qmp_tick.tick() => {
                if let Some(state) = refresh_qmp(&qmp, board).await {
                    if matches!(state.as_str(), "internal-error" | "guest-panicked") {
                        let why = format!("QEMU reports run state {state}");
                        obs.panicked |= state == "guest-panicked";
                        let _ = qmp.quit().await;
                        let _ = tokio::time::timeout(QUIT_WAIT, qemu.wait()).await;
                        let _ = qemu.kill().await;
                        if !obs.ready {
                            break Err(Attempt::BootFailed { reason: why, hang: false });
                        }
                        break Err(Attempt::Ended(VmExit::GuestCrashed(why)));
                    }
                }
            }
            _ = probe_tick.tick() => {
                let limit = if obs.ready { 1 } else { BOOT_PROBES_IN_FLIGHT };
                if probes.len() < limit {
                    let (probe, after_ready) = (probe.clone(), obs.ready);
                    probes.spawn(async move { (after_ready, probe.check().await) });
                }
            }
            Some(joined) = probes.join_next(), if !probes.is_empty() => {
                let Ok((after_ready, result)) = joined else { continue };
                match result {
                    Ok(_) if !obs.ready => {
                        obs.ready = true;
                        obs.failures = 0;
                        probes.abort_all();
                        let secs = started.elapsed().as_secs_f64();
                        tracing::info!(boot_seconds = format!("{secs:.2}"), url = probe.url(), "guest is ready");
                        board.update(|s| {
                            s.phase = Phase::Running;
                            s.boot_seconds = Some((secs * 1000.0).round() / 1000.0);
                            let msg = format!("guest answered {} after {secs:.2}s", probe.url());
                            s.message = Some(msg.clone());
                            s.set_guest_readiness(ConditionStatus::True, "GuestAnswered", &msg);
                        });
                        probe_tick = tokio::time::interval(cfg.readiness.period);
                        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        probe_tick.tick().await;
                        if cfg.until_ready {
                            break Ok(());
                        }
                    }
                    Ok(_) => {
                        if obs.failures >= FAILURE_THRESHOLD {
                            let msg = format!("guest answers {} again", probe.url());
                            board.update(|s| {
                                s.set_guest_readiness(ConditionStatus::True, "GuestAnswered", &msg);
                            });
                        }
                        obs.failures = 0;
                    }
                    // A boot-time probe that failed late says nothing about a ready guest.
                    Err(_) if obs.ready && !after_ready => {}
                    Err(e) if obs.ready => {
                        obs.failures += 1;
                        if obs.failures == FAILURE_THRESHOLD {
                            tracing::warn!(error = %e, "guest stopped answering its readiness probe");
                            board.update(|s| {
                                s.set_guest_readiness(ConditionStatus::False, "ProbeFailed", &e);
                            });
                        }
                    }
                    Err(e) => last_probe_error = e,
                }
            }
            _ = tokio::time::sleep_until(startup_deadline), if !obs.ready => {
                let _ = qemu.kill().await;
                break Err(Attempt::BootFailed {
                    reason: format!(
                        "the guest did not answer {} within the startup timeout of {}s (last: {last_probe_error}); console: {}",
                        probe.url(), cfg.readiness.startup_timeout.as_secs(), qemu.console.last_lines(3)
                    ),
                    hang: true,
                });
            }
            _ = stall_tick.tick(), if watch_stall && !obs.ready => {
                let silent = qemu.console.last_write().map_or(started, |t| t.max(started)).elapsed();
                if silent >= cfg.kvm_stall {
                    let _ = qemu.kill().await;
                    break Err(Attempt::BootFailed {
                        reason: format!(
                            "the guest console was silent for {}s before the guest was ready (last: {})",
                            cfg.kvm_stall.as_secs(), qemu.console.last_lines(1)
                        ),
                        hang: true,
                    });
                }
            }
            _ = stop_requested(&mut stop) => break Ok(()),
        }
    };
    if let Err(end) = end {
        board.update(|s| s.qemu_alive = false);
        return end;
    }

    let how = shutdown(&mut qemu, &qmp, cfg.grace, board, &mut stop).await;
    Attempt::Ended(VmExit::StoppedOnRequest(how))
}

/// Power button, grace period, `quit`, kill: each step only if the one before failed.
async fn shutdown(
    qemu: &mut QemuProcess,
    qmp: &QmpClient,
    grace: Duration,
    board: &StatusBoard,
    stop: &mut StopSignal,
) -> StopHow {
    board.update(|s| {
        s.phase = Phase::Stopping;
        s.message = Some(format!(
            "stopping: power button pressed, waiting up to {}s",
            grace.as_secs()
        ));
        s.set_condition(
            condition::READY,
            ConditionStatus::False,
            "Stopping",
            "the VM is being stopped",
        );
    });
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "stopping the VM: pressing the ACPI power button"
    );
    if let Err(e) = qmp.system_powerdown().await {
        tracing::warn!(error = %e, "system_powerdown failed; asking QEMU to quit");
    } else {
        tokio::select! {
            r = tokio::time::timeout(grace, qemu.wait()) => match r {
                Ok(Ok(_)) => return StopHow::PoweredOff,
                _ => tracing::warn!(
                    grace_seconds = grace.as_secs(),
                    "the guest ignored the power button; asking QEMU to quit"
                ),
            },
            _ = stop.wait_for(|n| *n >= 2) => {
                tracing::warn!("second stop request: asking QEMU to quit without waiting");
            }
        }
    }
    let _ = qmp.quit().await;
    if let Ok(Ok(_)) = tokio::time::timeout(QUIT_WAIT, qemu.wait()).await {
        return StopHow::Quit;
    }
    tracing::error!("QEMU did not quit; killing it");
    let _ = qemu.kill().await;
    StopHow::Killed
}

/// Resolves once a stop was asked for; never, if the sender went away without asking.
async fn stop_requested(stop: &mut StopSignal) {
    if stop.wait_for(|n| *n >= 1).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn note_event(ev: &QmpEvent, obs: &mut Observed) {
    if let Some(reason) = ev.shutdown_reason() {
        tracing::info!(reason, "QMP SHUTDOWN");
        obs.shutdown_reason = Some(reason.to_string());
    }
    if ev.name == "GUEST_PANICKED" {
        tracing::warn!(data = %ev.data, "QMP GUEST_PANICKED");
        obs.panicked = true;
    }
}

fn drain_events(events: &mut tokio::sync::broadcast::Receiver<QmpEvent>, obs: &mut Observed) {
    while let Ok(ev) = events.try_recv() {
        note_event(&ev, obs);
    }
}

/// Asks `query-status` and records it; returns the run state when QMP answered.
async fn refresh_qmp(qmp: &QmpClient, board: &StatusBoard) -> Option<String> {
    let state = qmp.query_status().await.ok()?;
    board.update(|s| {
        s.qmp = Some(QmpState {
            status: state.status.clone(),
            running: state.running,
            updated_at: Timestamp::now(),
        })
    });
    Some(state.status)
}

/// The address to probe: a wildcard bind is probed over loopback.
fn probe_host(bind: IpAddr) -> String {
    match bind {
        IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".into(),
        IpAddr::V6(a) if a.is_unspecified() => "[::1]".into(),
        IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    }
}

fn qemu_config(cfg: &VmConfig, accel: Accelerator) -> QemuConfig {
    let mut forwards = vec![PortForward {
        bind: cfg.api_bind,
        host_port: cfg.api_host_port,
        guest_port: cfg.api_port,
    }];
    if let Some(ssh) = cfg.ssh_port {
        forwards.push(PortForward {
            bind: cfg.api_bind,
            host_port: ssh,
            guest_port: ssh,
        });
    }
    QemuConfig {
        binary: cfg.qemu_binary.clone(),
        accel,
        memory_mib: cfg.memory_mib,
        vcpus: cfg.vcpus,
        kernel: cfg.kernel.kernel.clone(),
        initramfs: cfg.kernel.initramfs.clone(),
        cmdline: guest_cmdline(
            &cfg.kernel.facts.cmdline,
            &cfg.kernel_args,
            accel,
            accel::host_tsc_khz(),
        ),
        rvf_drive: cfg.rvf.clone(),
        forwards,
        qmp_socket: cfg.state_dir.join("qmp.sock"),
        tcg_tb_size_mib: cfg.tcg_tb_size_mib,
        extra_args: cfg.qemu_extra_args.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exited(code: i32) -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(code << 8))
    }

    #[test]
    fn tcg_cmdline_gets_tsc_khz_and_kvm_does_not() {
        let tcg = guest_cmdline(
            "console=ttyS0 panic=-1",
            "rvf.x=1",
            Accelerator::Tcg,
            2_994_374,
        );
        assert_eq!(tcg, "console=ttyS0 panic=-1 rvf.x=1 tsc_early_khz=2994374");
        let kvm = guest_cmdline("console=ttyS0", "", Accelerator::Kvm, 2_994_374);
        assert_eq!(kvm, "console=ttyS0");
    }

    #[test]
    fn runtime_parameters_go_before_the_init_arguments() {
        let c = guest_cmdline(
            "console=ttyS0 -- a",
            "quiet -- --weird",
            Accelerator::Tcg,
            7,
        );
        assert_eq!(c, "console=ttyS0 quiet tsc_early_khz=7 -- a --weird");
    }

    #[test]
    fn a_reset_before_any_kernel_output_points_at_memory() {
        let e = classify_exit(
            exited(0),
            Some("guest-reset"),
            false,
            "Probing EDD... ok\n",
            "",
        );
        assert!(e.message().contains("too little guest memory"), "{e:?}");
    }

    #[test]
    fn cmdline_keeps_a_users_own_tsc_and_adds_a_console_when_missing() {
        let c = guest_cmdline("quiet", "tsc_early_khz=1000", Accelerator::Tcg, 5);
        assert_eq!(c, "console=ttyS0 quiet tsc_early_khz=1000");
    }

    #[test]
    fn guest_poweroff_is_a_clean_shutdown() {
        let e = classify_exit(exited(0), Some("guest-shutdown"), false, "", "");
        assert_eq!(e, VmExit::GuestShutdown);
        assert_eq!(e.code(), 0);
    }

    #[test]
    fn guest_reset_with_reboot_disabled_is_a_crash() {
        let e = classify_exit(exited(0), Some("guest-reset"), false, "", "");
        assert_eq!(e.code(), 2, "{e:?}");
    }

    #[test]
    fn panic_on_the_console_is_a_crash_even_with_exit_status_zero() {
        let console = "ok\n[    3.1] Kernel panic - not syncing: sysrq triggered crash\n";
        let e = classify_exit(exited(0), Some("guest-reset"), false, console, "");
        assert!(
            matches!(&e, VmExit::GuestCrashed(m) if m.contains("sysrq triggered crash")),
            "{e:?}"
        );
    }

    #[test]
    fn exit_zero_without_shutdown_event_is_a_qemu_failure() {
        let e = classify_exit(exited(0), None, false, "", "");
        assert!(
            matches!(&e, VmExit::QemuFailed(m) if m.contains("too little memory")),
            "{e:?}"
        );
    }

    #[test]
    fn nonzero_exit_carries_the_stderr_tail() {
        let e = classify_exit(
            exited(1),
            None,
            false,
            "",
            "qemu: could not load kernel '/k'",
        );
        assert_eq!(
            e.message(),
            "QEMU exited with status 1: qemu: could not load kernel '/k'"
        );
        assert_eq!(e.code(), 3);
    }

    #[test]
    fn killed_qemu_is_reported_as_killed() {
        let e = classify_exit(Some(ExitStatus::from_raw(9)), None, false, "", "");
        assert!(e.message().contains("killed by a signal"), "{e:?}");
    }

    #[test]
    fn wildcard_bind_is_probed_on_loopback() {
        assert_eq!(probe_host("0.0.0.0".parse().unwrap()), "127.0.0.1");
        assert_eq!(probe_host("::".parse().unwrap()), "[::1]");
        assert_eq!(probe_host("10.1.2.3".parse().unwrap()), "10.1.2.3");
    }
}
