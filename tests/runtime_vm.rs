//! The VM runtime against real QEMU and a real kernel inside a real RVF file.
//!
//! Every test boots the fixture guest (tests/support/guest) under TCG, except the one
//! that exercises KVM auto mode. Boots are serialised: two cores, one VM at a time.

#[path = "support/fixture.rs"]
mod fixture;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rvf-operator");

/// One VM at a time: parallel TCG guests on two cores would time each other out.
fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn rvf() -> &'static Path {
    &fixture::hello().rvf
}

/// `rvf-operator run --rvf <the fixture>`, for further arguments.
fn run_cmd() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("run").arg("--rvf").arg(rvf());
    cmd
}

/// `rvf-operator run ... --output json`, collecting status lines and the console.
fn run_json(extra: &[&str]) -> (Output, Vec<Value>) {
    let mut cmd = run_cmd();
    cmd.args(["--output", "json", "--kvm", "disabled"]);
    cmd.args(extra);
    let out = cmd.output().expect("run rvf-operator");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (out, lines)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn is_ready(status: &Value) -> bool {
    condition(status, "Ready").is_some_and(|c| c["status"] == "True")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Minimal HTTP GET with a blocking client, for tests that watch the agent.
fn http_get(url: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(url).call().ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.body_mut().read_to_string().unwrap_or_default()))
}

#[test]
fn run_until_ready_boots_the_real_kernel_with_qmp_running_and_exits_zero() {
    let _vm = vm_lock();
    let (out, lines) = run_json(&["--until-ready"]);
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status,
        stderr(&out)
    );

    let ready = lines
        .iter()
        .find(|s| is_ready(s))
        .expect("a Ready status line");
    assert_eq!(ready["phase"], "Running");
    assert_eq!(ready["qmp"]["status"], "running");
    assert_eq!(ready["qmp"]["running"], true);
    assert_eq!(ready["accelerator"], "tcg");
    assert!(ready["bootSeconds"].as_f64().unwrap() > 0.0);
    let kernel = std::fs::read(&fixture::hello().kernel).unwrap();
    assert_eq!(ready["kernel"]["imageBytes"], kernel.len() as u64);
    assert_eq!(ready["kernel"]["apiPort"], 8080);
    assert_eq!(condition(ready, "GuestReady").unwrap()["status"], "True");
    assert_eq!(
        condition(ready, "KernelExtracted").unwrap()["status"],
        "True"
    );

    let last = lines.last().unwrap();
    assert_eq!(last["phase"], "Stopped", "{last}");
    assert_eq!(last["exit"]["reason"], "Stopped");
    // The guest's console goes to stderr in JSON mode.
    assert!(
        stderr(&out).contains("rvf-guest: http listening"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn text_output_shows_progress_and_the_guest_console() {
    let _vm = vm_lock();
    let out = run_cmd()
        .args(["--kvm", "disabled", "--until-ready"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(console.contains("Linux version"), "{console}");
    let progress = stderr(&out);
    assert!(
        progress.contains("[rvf] Running accel=tcg qmp=running ready"),
        "{progress}"
    );
    assert!(progress.contains("[rvf] Stopped"), "{progress}");
}

#[test]
fn readiness_waits_for_the_guest_http_server_not_the_forwarded_port() {
    let _vm = vm_lock();
    let mut child = run_cmd()
        .args(["--output", "json", "--kvm", "disabled", "--until-ready"])
        .args(["--kernel-args", "rvf.http_delay=6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut connected_while_booting = false;
    let mut ready_line = None;
    for line in stdout.lines() {
        let s: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if s["phase"] == "Booting" && !connected_while_booting {
            if let Some(addr) = s["apiEndpoint"].as_str() {
                // QEMU's host side accepts long before the guest listens.
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline && !connected_while_booting {
                    connected_while_booting = TcpStream::connect(addr).is_ok();
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        if is_ready(&s) && ready_line.is_none() {
            ready_line = Some(s);
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(
        connected_while_booting,
        "the forwarded port never accepted during boot"
    );
    let ready = ready_line.expect("became ready");
    let boot = ready["bootSeconds"].as_f64().unwrap();
    assert!(
        boot >= 6.0,
        "Ready after {boot}s, before the guest's 6 s HTTP delay ended"
    );
}

/// Starts `agent` on an extracted fixture; returns the child and its agent URL.
fn start_agent(dir: &Path, extra: &[&str], stdout: Stdio) -> (Child, String) {
    let kernel_dir = dir.join("kernel");
    let st = Command::new(BIN)
        .arg("extract")
        .arg("--rvf")
        .arg(rvf())
        .arg("--out")
        .arg(&kernel_dir)
        .status()
        .unwrap();
    assert!(st.success());
    let listen = format!("127.0.0.1:{}", free_port());
    let api = free_port().to_string();
    let child = Command::new(BIN)
        .arg("agent")
        .arg("--kernel-dir")
        .arg(&kernel_dir)
        .arg("--rvf")
        .arg(rvf())
        .args([
            "--kvm",
            "disabled",
            "--api-bind",
            "127.0.0.1",
            "--api-host-port",
            &api,
        ])
        .args(["--listen", &listen])
        .args(extra)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, format!("http://{listen}"))
}

fn wait_ready(agent: &str, child: &mut Child, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(code) = child.try_wait().unwrap() {
            panic!("agent exited early with {code}");
        }
        if let Some((200, _)) = http_get(&format!("{agent}/readyz")) {
            let (_, body) = http_get(&format!("{agent}/status")).unwrap();
            return serde_json::from_str(&body).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    panic!("agent at {agent} not ready within {limit:?}");
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("process did not exit within {limit:?}");
}

#[test]
fn sigterm_powers_the_guest_down_through_the_acpi_button() {
    let _vm = vm_lock();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, agent) = start_agent(dir.path(), &["--grace-seconds", "20"], Stdio::piped());
    let status = wait_ready(&agent, &mut child, Duration::from_secs(90));
    assert_eq!(status["qmp"]["status"], "running");
    assert_eq!(http_get(&format!("{agent}/healthz")).unwrap().0, 200);
    let metrics = http_get(&format!("{agent}/metrics")).unwrap().1;
    assert!(metrics.contains("rvf_vm_ready 1"), "{metrics}");

    let t = Instant::now();
    sigterm(&child);
    let st = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "graceful stop exits 0");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took the whole grace period"
    );
    let mut console = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut console)
        .unwrap();
    assert!(console.contains("power button pressed"), "{console}");
}

#[test]
fn a_guest_that_ignores_the_power_button_is_quit_after_the_grace_period() {
    let _vm = vm_lock();
    let t = Instant::now();
    let (out, lines) = run_json(&[
        "--until-ready",
        "--grace-seconds",
        "3",
        "--kernel-args",
        "rvf.ignore_powerdown=1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let last = lines.last().unwrap();
    assert_eq!(last["phase"], "Stopped");
    assert_eq!(last["exit"]["reason"], "StoppedByQuit", "{last}");
    assert!(t.elapsed() >= Duration::from_secs(3));
    assert!(
        stderr(&out).contains("the guest ignored the power button"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_chatty_console_is_drained_and_the_guest_keeps_serving() {
    let _vm = vm_lock();
    let dir = tempfile::tempdir().unwrap();
    let console_path = dir.path().join("console.log");
    let console = std::fs::File::create(&console_path).unwrap();
    // 2 MiB is 32 times what the console pipe holds before the guest's writer blocks.
    let (mut child, agent) = start_agent(
        dir.path(),
        &["--kernel-args", "rvf.chatty=2097152"],
        Stdio::from(console),
    );
    let status = wait_ready(&agent, &mut child, Duration::from_secs(90));
    let api = status["apiEndpoint"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&console_path).unwrap_or_default();
        if text.contains("rvf-guest: chatty: done") {
            assert!(text.len() >= 2_097_152, "console has {} bytes", text.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "guest never finished writing its console"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, body) = http_get(&format!("http://{api}/v1/health")).expect("guest answers");
    assert_eq!((code, body.trim()), (200, r#"{"status":"ok"}"#));
    sigterm(&child);
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(40)).code(),
        Some(0)
    );
}

#[test]
fn a_guest_panic_fails_the_vm_with_the_panic_in_the_message() {
    let _vm = vm_lock();
    let (out, lines) = run_json(&["--kernel-args", "rvf.panic_after=1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let last = lines.last().unwrap();
    assert_eq!(last["phase"], "Failed");
    assert_eq!(last["exit"]["reason"], "GuestCrashed");
    assert!(
        last["message"].as_str().unwrap().contains("Kernel panic"),
        "{last}"
    );
    assert!(lines.iter().any(is_ready), "was ready before the panic");
}

#[test]
fn a_guest_poweroff_on_its_own_is_a_clean_stop() {
    let _vm = vm_lock();
    let (out, lines) = run_json(&["--kernel-args", "rvf.poweroff_after=1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let last = lines.last().unwrap();
    assert_eq!(last["exit"]["reason"], "GuestShutdown", "{last}");
    assert_eq!(last["qmp"]["status"], "shutdown");
}

#[test]
fn a_guest_that_never_answers_fails_after_the_startup_timeout() {
    let _vm = vm_lock();
    let (out, lines) = run_json(&[
        "--until-ready",
        "--api-port",
        "9999",
        "--startup-timeout-seconds",
        "12",
        "--boot-retries",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let last = lines.last().unwrap();
    assert_eq!(last["phase"], "Failed");
    assert_eq!(last["exit"]["reason"], "GuestNeverReady");
    let msg = last["message"].as_str().unwrap();
    assert!(msg.contains("startup timeout of 12s"), "{msg}");
    assert!(
        stderr(&out).contains("never became Ready"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn qemu_exiting_at_once_reports_its_stderr() {
    let _vm = vm_lock();
    let (out, lines) = run_json(&["--until-ready", "--qemu-arg", "-no-such-option"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let msg = lines.last().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("-no-such-option"), "{msg}");
    assert!(msg.contains("right after start"), "{msg}");
}

#[test]
fn a_missing_qemu_binary_is_named() {
    let (out, lines) = run_json(&["--until-ready", "--qemu", "/nonexistent/qemu-system-x86_64"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let msg = lines.last().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("cannot start QEMU /nonexistent/qemu-system-x86_64"),
        "{msg}"
    );
}

#[test]
fn required_kvm_without_a_usable_device_is_a_config_error() {
    let out = run_cmd()
        .args([
            "--kvm",
            "required",
            "--kvm-device",
            "/nonexistent/kvm",
            "--until-ready",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("KVM is required (kvm: Required) but unusable"),
        "{err}"
    );
    assert!(err.contains("/nonexistent/kvm"), "{err}");
}

#[test]
fn kvm_auto_reaches_ready_under_kvm_or_falls_back_to_tcg_and_says_so() {
    let _vm = vm_lock();
    let out = run_cmd()
        .args([
            "--output",
            "json",
            "--until-ready",
            "--kvm-stall-seconds",
            "10",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ready = lines.iter().find(|s| is_ready(s)).expect("Ready");
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    match ready["accelerator"].as_str().unwrap() {
        "kvm" => assert!(kvm_opens),
        "tcg" if kvm_opens => {
            assert!(ready["restarts"].as_u64().unwrap() >= 1, "{ready}");
            let fell_back = lines.iter().any(|s| {
                s["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("falling back to TCG"))
            });
            assert!(fell_back, "status never said it fell back");
        }
        "tcg" => assert_eq!(ready["restarts"], 0),
        other => panic!("accelerator {other}"),
    }
}

#[test]
fn a_second_sigterm_cuts_the_grace_period_short() {
    let _vm = vm_lock();
    let mut child = run_cmd()
        .args([
            "--output",
            "json",
            "--kvm",
            "disabled",
            "--grace-seconds",
            "120",
        ])
        .args(["--kernel-args", "rvf.ignore_powerdown=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let line = lines.next().expect("status line").unwrap();
        if is_ready(&serde_json::from_str(&line).unwrap()) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
    }
    let t = Instant::now();
    sigterm(&child);
    std::thread::sleep(Duration::from_secs(2));
    sigterm(&child);
    let st = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(st.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "waited out the grace period"
    );
    let last: Value = serde_json::from_str(&lines.last().unwrap().unwrap()).unwrap();
    assert_eq!(last["exit"]["reason"], "StoppedByQuit", "{last}");
}

/// `run --output json` in its own process group, as a shell runs a foreground job.
fn spawn_run_group(
    extra: &[&str],
) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    use std::os::unix::process::CommandExt;
    let mut child = run_cmd()
        .args(["--output", "json", "--kvm", "disabled"])
        .args(extra)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let line = lines.next().expect("status line").unwrap();
        let s: Value = serde_json::from_str(&line).unwrap();
        if is_ready(&s) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
    }
    (child, lines)
}

#[test]
fn ctrl_c_to_the_whole_foreground_group_still_stops_the_guest_gracefully() {
    let _vm = vm_lock();
    let (mut child, lines) = spawn_run_group(&[]);
    // A terminal's Ctrl-C: SIGINT to every process of the group.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(40)).code(),
        Some(0)
    );
    let last: Value = serde_json::from_str(&lines.last().unwrap().unwrap()).unwrap();
    assert_eq!(last["exit"]["reason"], "Stopped", "{last}");
}

#[test]
fn a_killed_supervisor_takes_its_qemu_with_it() {
    let _vm = vm_lock();
    let (mut child, _lines) = spawn_run_group(&[]);
    let pid = child.id();
    // QEMU is spawned from one of the supervisor's threads; each lists its own children.
    let qemu = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).ok())
        .flat_map(|s| s.split_whitespace().map(String::from).collect::<Vec<_>>())
        .next()
        .expect("QEMU is a child of the supervisor");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{qemu}")).exists() {
        let zombie = std::fs::read_to_string(format!("/proc/{qemu}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true);
        if zombie {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU {qemu} outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_busy_api_host_port_is_reported_in_qemus_own_words() {
    let _vm = vm_lock();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let (out, lines) = run_json(&["--until-ready", "--api-host-port", &port]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let msg = lines.last().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("host forwarding rule"), "{msg}");
    assert!(msg.contains(&port), "{msg}");
}
