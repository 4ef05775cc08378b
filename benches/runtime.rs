//! Runtime benchmarks: `cargo bench --bench runtime`.
//!
//! Prints three tables, each figure as min / median / max over N runs (env
//! `RVF_BENCH_RUNS`, default 5) with a baseline measured in the same run:
//!
//! 1. `rvf-operator extract` throughput and peak RSS, beside `cp` of the same file.
//! 2. Boot-to-ready seconds of `rvf-operator run --until-ready`, beside bare QEMU
//!    started with the argv the runtime builds and probed with HTTP GETs. TCG
//!    always; KVM once, bounded, when `/dev/kvm` opens read-write.
//! 3. Memory of `rvf-operator agent` and its QEMU child, for sizing the VM pod.
//!
//! Nothing is asserted: this prints figures. Every process it starts is stopped
//! and reaped before it moves on (it makes itself a child subreaper so a QEMU
//! orphaned by a killed `run` or `agent` is reaped here too). All sockets are on
//! 127.0.0.1.
//!
//! Other env knobs: `RVF_BENCH_KVM_RUNS` (default 1), `RVF_BENCH_KVM_TIMEOUT`
//! (seconds, default 30), `RVF_BENCH_TOUCH=0` skips the touched-memory run,
//! `RVF_BENCH_QEMU` (default `qemu-system-x86_64`), `RVF_BENCH_BIN` (the
//! `rvf-operator` binary).

#[path = "../tests/support/fixture.rs"]
mod fixture;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rvf_operator::runtime::accel::{self, KvmProbe};
use rvf_operator::runtime::kernel::ExtractedKernel;
use rvf_operator::runtime::qemu::{PortForward, QemuConfig};
use rvf_operator::runtime::status::Accelerator;
use rvf_operator::runtime::vm::guest_cmdline;
use serde_json::Value;

const GUEST_RAM_MIB: u32 = 128;
const TB_SIZE_MIB: u32 = 32;
const MIB: f64 = 1024.0 * 1024.0;
const MB: f64 = 1_000_000.0;
/// TCG boots take about 3 s here; anything past this is a hung boot.
const TCG_BOOT_LIMIT: Duration = Duration::from_secs(60);

fn main() {
    // `cargo bench` passes `--bench`; a harness=false target just ignores its args.
    let runs = env_u32("RVF_BENCH_RUNS", 5).max(1) as usize;
    let kvm_runs = env_u32("RVF_BENCH_KVM_RUNS", 1) as usize;
    let kvm_timeout = env_u32("RVF_BENCH_KVM_TIMEOUT", 30).max(1) as u64;
    let touch = std::env::var("RVF_BENCH_TOUCH").map_or(true, |v| v != "0");
    let qemu = std::env::var("RVF_BENCH_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());

    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "warning: cannot become a child subreaper; an orphaned QEMU would not be reaped here"
        );
    }

    let bin = locate_binary();
    let fx = fixture::hello();
    let work = tempfile::Builder::new()
        .prefix("rvf-bench-")
        .tempdir()
        .expect("temporary directory");
    let kernel_dir = work.path().join("kernel");
    run_ok(
        Command::new(&bin)
            .arg("extract")
            .arg("--rvf")
            .arg(&fx.rvf)
            .arg("--out")
            .arg(&kernel_dir)
            .arg("--termination-log")
            .arg(work.path().join("no-termination-log")),
    );
    let kernel = ExtractedKernel::load(&kernel_dir).expect("extracted kernel");
    let kvm_probe = accel::probe_kvm(Path::new("/dev/kvm"));
    let started = Instant::now();

    println!("# rvf-operator runtime benchmark");
    println!();
    println!(
        "- date: {}",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC")
    );
    println!("- host: {}", host_note());
    println!("- binary: {}", bin.display());
    println!(
        "- fixture: {} ({:.1} MB)",
        fx.rvf.display(),
        file_len(&fx.rvf) as f64 / MB
    );
    println!("- runs: {runs} (RVF_BENCH_RUNS); KVM runs: {kvm_runs}, bounded to {kvm_timeout} s");
    println!(
        "- /dev/kvm: {}",
        match &kvm_probe {
            KvmProbe::Usable => "opens read-write, KVM_GET_API_VERSION = 12".to_string(),
            KvmProbe::Unusable(why) => format!("unusable ({why})"),
        }
    );
    println!("- other QEMU processes at start: {}", other_qemus());
    println!();

    let mut noise = Noise::default();
    extraction(&bin, &fx.rvf, &kernel_dir, work.path(), runs, &mut noise);
    boot(
        &bin,
        &qemu,
        &fx.rvf,
        &kernel,
        work.path(),
        runs,
        kvm_runs,
        kvm_timeout,
        matches!(kvm_probe, KvmProbe::Usable),
        &mut noise,
    );
    overhead(
        &bin,
        &fx.rvf,
        &kernel_dir,
        work.path(),
        runs,
        touch,
        &mut noise,
    );

    println!(
        "Total {:.0} s. Other QEMU processes seen before a measurement: at most {}{} \
         (0 means the figures were not disturbed by other VMs); load average at the end: {}.",
        started.elapsed().as_secs_f64(),
        noise.max_other_qemus,
        if noise.seen_in.is_empty() {
            String::new()
        } else {
            format!(", in section {}", noise.seen_in.join(", "))
        },
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    reap_orphans();
}

// ---------------------------------------------------------------------------
// 1. Extraction
// ---------------------------------------------------------------------------

fn extraction(
    bin: &Path,
    rvf: &Path,
    kernel_dir: &Path,
    work: &Path,
    runs: usize,
    noise: &mut Noise,
) {
    let size = file_len(rvf) as f64;
    let payload: u64 = ["kernel", "initramfs", "cmdline"]
        .iter()
        .map(|f| file_len(&kernel_dir.join(f)))
        .sum();
    let (mut ex_rate, mut ex_rss, mut cp_rate, mut cp_rss) = (vec![], vec![], vec![], vec![]);
    let mut ver_rss = vec![];
    for i in 0..runs {
        noise.sample("1 (extraction)");
        ver_rss.push(timed_rusage(Command::new(bin).arg("--version")).1);
        let out = work.join(format!("extract-{i}"));
        let (secs, rss) = timed_rusage(
            Command::new(bin)
                .arg("extract")
                .arg("--rvf")
                .arg(rvf)
                .arg("--out")
                .arg(&out)
                .arg("--termination-log")
                .arg(work.join("no-termination-log")),
        );
        ex_rate.push(size / MB / secs);
        ex_rss.push(rss);
        let _ = fs::remove_dir_all(&out);

        let copy = work.join(format!("copy-{i}.rvf"));
        let (secs, rss) = timed_rusage(Command::new("cp").arg(rvf).arg(&copy));
        cp_rate.push(size / MB / secs);
        cp_rss.push(rss);
        let _ = fs::remove_file(&copy);
    }
    let mut t = Table::new(
        "1. Extraction (page cache warm; wall time from spawn to exit, process start included)",
        &["measurement", "runs", "min", "median", "max"],
    );
    t.stats(
        "rvf-operator extract, MB/s of the RVF file",
        &ex_rate,
        runs,
        1,
    );
    t.stats("baseline: cp of the same file, MB/s", &cp_rate, runs, 1);
    t.stats("rvf-operator extract peak RSS, MiB", &ex_rss, runs, 1);
    t.stats("baseline: cp peak RSS, MiB", &cp_rss, runs, 1);
    t.stats(
        "baseline: rvf-operator --version peak RSS (fixed cost), MiB",
        &ver_rss,
        runs,
        1,
    );
    t.row(vec![
        "segment payload extracted (kernel + initramfs + cmdline), MiB".into(),
        "-".into(),
        format!("{:.1}", payload as f64 / MIB),
        "".into(),
        "".into(),
    ]);
    t.row(vec![
        "RVF file size, MiB".into(),
        "-".into(),
        format!("{:.1}", size / MIB),
        "".into(),
        "".into(),
    ]);
    t.print();
    println!(
        "MB = 10^6 bytes, MiB = 2^20. Peak RSS is ru_maxrss from wait4(2) of the process itself."
    );
    println!();
}

/// Runs `cmd` to completion; wall seconds and peak RSS (MiB) from `wait4`.
fn timed_rusage(cmd: &mut Command) -> (f64, f64) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; zero is a valid value for every field.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; `pid` is our own unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert!(
            err.kind() == std::io::ErrorKind::Interrupted,
            "wait4 {pid}: {err}"
        );
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed (wait status {status:#x})"
    );
    // `child` was reaped by wait4 above; dropping a std Child neither waits nor kills.
    drop(child);
    (secs, ru.ru_maxrss as f64 / 1024.0)
}

// ---------------------------------------------------------------------------
// 2. Boot to ready
// ---------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn boot(
    bin: &Path,
    qemu: &str,
    rvf: &Path,
    kernel: &ExtractedKernel,
    work: &Path,
    runs: usize,
    kvm_runs: usize,
    kvm_timeout: u64,
    kvm_usable: bool,
    noise: &mut Noise,
) {
    let mut t = Table::new(
        "2. Boot to ready, seconds (guest 128 MiB, 1 vCPU)",
        &["path", "accel", "ok/runs", "min", "median", "max"],
    );
    let mut notes: Vec<String> = Vec::new();

    let mut passes = vec![(Accelerator::Tcg, runs, TCG_BOOT_LIMIT)];
    if kvm_usable && kvm_runs > 0 {
        passes.push((Accelerator::Kvm, kvm_runs, Duration::from_secs(kvm_timeout)));
    } else if !kvm_usable {
        notes.push("KVM: /dev/kvm does not open read-write here; KVM rows skipped.".into());
    }
    for (accel, n, limit) in passes {
        let (mut boot_s, mut wall_s, mut bare_s) = (vec![], vec![], vec![]);
        let (mut run_fail, mut bare_fail) = (None, None);
        for i in 0..n {
            noise.sample("2 (boot)");
            match runtime_boot(bin, rvf, work, accel, limit, i) {
                Ok((b, w)) => {
                    boot_s.push(b);
                    wall_s.push(w);
                }
                Err(e) => run_fail = Some(e),
            }
            noise.sample("2 (boot)");
            match bare_boot(qemu, kernel, rvf, work, accel, limit, i) {
                Ok(s) => bare_s.push(s),
                Err(e) => bare_fail = Some(e),
            }
        }
        let a = accel.to_string();
        t.boot_row(
            "rvf-operator run: bootSeconds (QEMU start -> probe 200)",
            &a,
            &boot_s,
            n,
        );
        t.boot_row(
            "rvf-operator run: wall, spawn -> Ready line",
            &a,
            &wall_s,
            n,
        );
        t.boot_row(
            "baseline: bare QEMU, spawn -> first 200 on /v1/health",
            &a,
            &bare_s,
            n,
        );
        if let Some(e) = run_fail {
            notes.push(format!("{a}: rvf-operator run did not boot: {e}"));
        }
        if let Some(e) = bare_fail {
            notes.push(format!("{a}: bare QEMU did not boot: {e}"));
        }
    }
    t.print();
    println!(
        "The runtime probes every 250 ms with a 1 s timeout; the baseline GETs on a fresh \
         connection every 50 ms with a 500 ms timeout, so it resolves readiness more finely. \
         Wall time adds process start, extraction of the kernel and the QMP handshake."
    );
    for n in notes {
        println!("- {n}");
    }
    println!();
}

/// One `rvf-operator run --until-ready`; (bootSeconds, wall seconds to the Ready line).
fn runtime_boot(
    bin: &Path,
    rvf: &Path,
    work: &Path,
    accel: Accelerator,
    limit: Duration,
    i: usize,
) -> Result<(f64, f64), String> {
    let console = work.join(format!("run-{accel}-{i}.console"));
    let mode = match accel {
        Accelerator::Tcg => "disabled",
        Accelerator::Kvm => "required",
    };
    let start = Instant::now();
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--rvf")
        .arg(rvf)
        .args(["--until-ready", "--output", "json", "--kvm", mode])
        .args(["--memory-mib", &GUEST_RAM_MIB.to_string()])
        .args(["--startup-timeout-seconds", &limit.as_secs().to_string()])
        .args(["--boot-retries", "0", "--grace-seconds", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&console).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // The runtime gives up at `limit`; allow it time to say so and stop.
    let deadline = start + limit + Duration::from_secs(20);
    let mut ready = None;
    let mut last: Option<Value> = None;
    while ready.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if is_ready(&v) {
                    ready = Some((v["bootSeconds"].as_f64(), (at - start).as_secs_f64()));
                }
                last = Some(v);
            }
            Err(_) => break,
        }
    }
    let exit = stop_tree(&mut child, Duration::from_secs(30));
    let _ = reader.join();
    match ready {
        Some((Some(b), w)) => Ok((b, w)),
        Some((None, _)) => Err("Ready line without bootSeconds".into()),
        None => {
            let msg = last
                .as_ref()
                .and_then(|v| v["message"].as_str())
                .unwrap_or("no status line")
                .to_string();
            Err(format!(
                "after {:.1} s, {exit}: {}; last console line: {}",
                start.elapsed().as_secs_f64(),
                shorten(&msg, 300),
                shorten(&last_line(&console), 120)
            ))
        }
    }
}

fn is_ready(v: &Value) -> bool {
    v["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Bare QEMU with the runtime's own argv; seconds from spawn to the first HTTP 200.
fn bare_boot(
    qemu: &str,
    kernel: &ExtractedKernel,
    rvf: &Path,
    work: &Path,
    accel: Accelerator,
    limit: Duration,
    i: usize,
) -> Result<f64, String> {
    let port = free_port();
    let qmp = work.join(format!("bare-{accel}-{i}.qmp"));
    let console = work.join(format!("bare-{accel}-{i}.console"));
    let stderr_file = work.join(format!("bare-{accel}-{i}.stderr"));
    let cfg = QemuConfig {
        binary: qemu.into(),
        accel,
        memory_mib: GUEST_RAM_MIB,
        vcpus: 1,
        kernel: kernel.kernel.clone(),
        initramfs: kernel.initramfs.clone(),
        cmdline: guest_cmdline(&kernel.facts.cmdline, "", accel, accel::host_tsc_khz()),
        rvf_drive: Some(rvf.to_path_buf()),
        forwards: vec![PortForward {
            bind: [127, 0, 0, 1].into(),
            host_port: port,
            guest_port: match kernel.facts.api_port {
                0 => 8080,
                p => p,
            },
        }],
        qmp_socket: qmp.clone(),
        tcg_tb_size_mib: TB_SIZE_MIB,
        extra_args: vec![],
    };
    let url = format!("http://127.0.0.1:{port}/v1/health");
    let start = Instant::now();
    let mut child = Command::new(&cfg.binary)
        .args(cfg.argv())
        .stdin(Stdio::null())
        .stdout(File::create(&console).map_err(|e| e.to_string())?)
        .stderr(File::create(&stderr_file).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start {qemu}: {e}"))?;
    let mut result = Err(format!("no HTTP 200 within {} s", limit.as_secs()));
    while start.elapsed() < limit {
        if let Ok(Some(st)) = child.try_wait() {
            result = Err(format!("QEMU exited early ({st})"));
            break;
        }
        if http_status(&url, Duration::from_millis(500)) == Some(200) {
            result = Ok(start.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = fs::remove_file(&qmp);
    result.map_err(|e| {
        format!(
            "{e}; QEMU stderr: {}; last console line: {}",
            shorten(&last_line(&stderr_file), 120),
            shorten(&last_line(&console), 120)
        )
    })
}

// ---------------------------------------------------------------------------
// 3. VM overhead
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Mem {
    agent: f64,
    qemu: f64,
    agent_hwm: f64,
    qemu_hwm: f64,
    /// Resident part of the guest RAM mapping, when it could be found in smaps.
    guest: Option<f64>,
    boot: f64,
}

fn overhead(
    bin: &Path,
    rvf: &Path,
    kernel_dir: &Path,
    work: &Path,
    runs: usize,
    touch: bool,
    noise: &mut Noise,
) {
    let mut samples = Vec::new();
    let mut failure = None;
    for i in 0..runs {
        noise.sample("3 (overhead)");
        match agent_memory(bin, rvf, kernel_dir, work, "", i) {
            Ok(m) => samples.push(m),
            Err(e) => failure = Some(e),
        }
    }
    let touched = if touch {
        noise.sample("3 (overhead)");
        Some(agent_memory(
            bin,
            rvf,
            kernel_dir,
            work,
            "init_on_free=1",
            runs,
        ))
    } else {
        None
    };

    let ram = f64::from(GUEST_RAM_MIB);
    let col = |f: &dyn Fn(&Mem) -> f64| samples.iter().map(f).collect::<Vec<_>>();
    let mut t = Table::new(
        &format!("3. VM overhead: rvf-operator agent, TCG (tb-size={TB_SIZE_MIB}), guest RAM {GUEST_RAM_MIB} MiB, MiB once /readyz is 200"),
        &["measurement", "runs", "min", "median", "max"],
    );
    t.stats("agent VmRSS", &col(&|m| m.agent), runs, 1);
    t.stats("QEMU VmRSS", &col(&|m| m.qemu), runs, 1);
    t.stats("agent + QEMU", &col(&|m| m.agent + m.qemu), runs, 1);
    t.stats(
        &format!("agent + QEMU - guest RAM ({GUEST_RAM_MIB})"),
        &col(&|m| m.agent + m.qemu - ram),
        runs,
        1,
    );
    t.stats(
        "peak (VmHWM) agent + QEMU",
        &col(&|m| m.agent_hwm + m.qemu_hwm),
        runs,
        1,
    );
    let with_guest: Vec<&Mem> = samples.iter().filter(|m| m.guest.is_some()).collect();
    let guest_of = |m: &Mem| m.guest.unwrap_or(0.0);
    let non_guest: Vec<f64> = with_guest
        .iter()
        .map(|m| m.agent_hwm.max(m.agent) + m.qemu_hwm.max(m.qemu) - guest_of(m))
        .collect();
    t.stats(
        "guest RAM resident (QEMU's guest RAM mapping, smaps Rss)",
        &with_guest.iter().map(|m| guest_of(m)).collect::<Vec<_>>(),
        runs,
        1,
    );
    t.stats(
        "non-guest overhead: peak agent + peak QEMU - guest RAM resident",
        &non_guest,
        runs,
        1,
    );
    t.stats(
        "(bootSeconds of these boots, s)",
        &col(&|m| m.boot),
        runs,
        2,
    );
    if let Some(touched) = &touched {
        match touched {
            Ok(m) => {
                t.row(vec![
                    "touched run (init_on_free=1): QEMU VmRSS / guest resident / agent + QEMU - guest RAM".into(),
                    "1".into(),
                    format!("{:.1}", m.qemu),
                    m.guest.map_or("?".into(), |g| format!("{g:.1}")),
                    format!("{:.1}", m.agent + m.qemu - ram),
                ]);
            }
            Err(e) => t.row(vec![
                format!("touched run failed: {}", shorten(e, 100)),
                "1".into(),
                "".into(),
                "".into(),
                "".into(),
            ]),
        }
    }
    t.print();

    let mut worst = non_guest.iter().copied().fold(f64::NAN, f64::max);
    // Without the guest mapping, fall back to the plain difference (an underestimate).
    let fallback = worst.is_nan();
    if fallback {
        worst = col(&|m| m.agent_hwm + m.qemu_hwm - ram)
            .into_iter()
            .fold(f64::NAN, f64::max);
    }
    if let Some(Ok(m)) = &touched {
        worst = worst.max(m.agent_hwm + m.qemu_hwm - m.guest.unwrap_or(ram));
    }
    if worst.is_finite() {
        let rounded = ((worst.max(0.0) / 32.0).ceil() * 32.0) as u32;
        let margin = 32;
        println!(
            "Recommended VM pod memory overhead above guest RAM: {} MiB (max observed {worst:.1} MiB \
             rounded up to 32 MiB = {rounded}, plus {margin} MiB margin); for a {GUEST_RAM_MIB} MiB \
             guest: request = limit = {} MiB.",
            rounded + margin,
            GUEST_RAM_MIB + rounded + margin
        );
    }
    println!(
        "Caveat: the test guest touches only part of its RAM (see 'guest RAM resident'), so \
         'agent + QEMU - guest RAM' understates what a guest that uses all its memory costs; \
         the recommendation therefore adds the full guest RAM to the non-guest overhead{}. \
         init_on_free=1 makes the guest kernel zero every page it frees at boot, which is \
         what the touched run relies on.",
        if fallback {
            " (smaps mapping not found: fell back to the plain difference)"
        } else {
            ""
        }
    );
    if let Some(e) = failure {
        println!("- a run failed: {e}");
    }
    println!();
}

/// One agent boot: memory of the agent and of its QEMU once ready, then SIGTERM.
fn agent_memory(
    bin: &Path,
    rvf: &Path,
    kernel_dir: &Path,
    work: &Path,
    kernel_args: &str,
    i: usize,
) -> Result<Mem, String> {
    let listen = format!("127.0.0.1:{}", free_port());
    let api = free_port().to_string();
    let state = work.join(format!("agent-{i}"));
    let mut child = Command::new(bin)
        .arg("agent")
        .arg("--kernel-dir")
        .arg(kernel_dir)
        .arg("--rvf")
        .arg(rvf)
        .args([
            "--listen",
            &listen,
            "--api-bind",
            "127.0.0.1",
            "--api-host-port",
            &api,
        ])
        .args([
            "--kvm",
            "disabled",
            "--memory-mib",
            &GUEST_RAM_MIB.to_string(),
        ])
        .args(["--grace-seconds", "10", "--boot-retries", "0"])
        .args([
            "--startup-timeout-seconds",
            &TCG_BOOT_LIMIT.as_secs().to_string(),
        ])
        .arg(format!("--kernel-args={kernel_args}"))
        .arg("--state-dir")
        .arg(&state)
        .arg("--termination-log")
        .arg(work.join("no-termination-log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start agent: {e}"))?;
    let result = (|| {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("agent exited early ({st})"));
            }
            if http_status(&format!("http://{listen}/readyz"), Duration::from_secs(1)) == Some(200)
            {
                break;
            }
            if start.elapsed() > TCG_BOOT_LIMIT + Duration::from_secs(10) {
                return Err("agent not ready in time".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Let the boot's last allocations settle.
        std::thread::sleep(Duration::from_secs(1));
        let status: Value = http_body(&format!("http://{listen}/status"))
            .and_then(|b| serde_json::from_str(&b).ok())
            .ok_or("no /status")?;
        let agent_pid = child.id() as i32;
        let qemu_pid = descendants(agent_pid)
            .into_iter()
            .find(|p| is_qemu(*p))
            .ok_or("no QEMU child of the agent")?;
        let field = |pid, name| {
            proc_status_kib(pid, name)
                .map(|k| k / 1024.0)
                .ok_or(format!("no {name} for {pid}"))
        };
        Ok(Mem {
            agent: field(agent_pid, "VmRSS")?,
            qemu: field(qemu_pid, "VmRSS")?,
            agent_hwm: field(agent_pid, "VmHWM")?,
            qemu_hwm: field(qemu_pid, "VmHWM")?,
            guest: guest_ram_resident(qemu_pid, GUEST_RAM_MIB),
            boot: status["bootSeconds"].as_f64().unwrap_or(f64::NAN),
        })
    })();
    let exit = stop_tree(&mut child, Duration::from_secs(30));
    let _ = fs::remove_dir_all(&state);
    result.map_err(|e| format!("{e} ({exit})"))
}

/// Rss of QEMU's guest RAM: the anonymous mapping of (about) the guest's size.
fn guest_ram_resident(pid: i32, ram_mib: u32) -> Option<f64> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let want = u64::from(ram_mib) * 1024;
    let mut best: Option<(u64, u64)> = None;
    let (mut anon, mut size) = (false, 0u64);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // "start-end perms offset dev inode [path]": anonymous when inode is 0 and no path.
            let rest: Vec<&str> = words.collect();
            anon = rest.len() == 4 && rest[3] == "0";
            size = 0;
        } else if first == "Size:" {
            size = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if first == "Rss:" && anon && size >= want && size <= want + 8 * 1024 {
            let rss: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if best.is_none_or(|(s, _)| size > s) {
                best = Some((size, rss));
            }
        }
    }
    best.map(|(_, rss)| rss as f64 / 1024.0)
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// SIGTERM, wait up to `grace`, SIGKILL; then kill and reap what it left behind
/// (descendants re-parented to us as subreaper). Returns how it ended.
fn stop_tree(child: &mut Child, grace: Duration) -> String {
    let pid = child.id() as i32;
    let left = descendants(pid);
    let mut how = match child.try_wait() {
        Ok(Some(st)) => format!("exited {st}"),
        _ => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            loop {
                match child.try_wait() {
                    Ok(Some(st)) => break format!("exited {st}"),
                    _ if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let st = child.wait().map(|s| s.to_string()).unwrap_or_default();
                        break format!("killed after {} s ({st})", grace.as_secs());
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    };
    let me = std::process::id() as i32;
    for d in left {
        // Only a process still ours (re-parented) or still the child's is touched.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match ppid(d) {
                Some(p) if p == me => {
                    if !is_zombie(d) {
                        let _ = kill(Pid::from_raw(d), Signal::SIGKILL);
                        how.push_str(&format!("; killed left-over {d}"));
                    }
                    let _ = nix::sys::wait::waitpid(Pid::from_raw(d), None);
                    break;
                }
                Some(p) if p == pid => std::thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
    }
    how
}

/// Reaps any zombie left to us as subreaper (none expected).
fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    for _ in 0..100 {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// All descendants of `pid`, from /proc/PID/task/*/children.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in text
                .split_whitespace()
                .filter_map(|w| w.parse::<i32>().ok())
            {
                if !out.contains(&c) {
                    out.push(c);
                    stack.push(c);
                }
            }
        }
    }
    out
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(String::from).collect())
}

fn ppid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f[0] == "Z")
}

fn is_qemu(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let argv0 = c.split(|b| *b == 0).next().unwrap_or(&[]);
        String::from_utf8_lossy(argv0).contains("qemu-system")
    })
}

/// QEMU processes on the machine that are not ours.
fn other_qemus() -> usize {
    let mine = descendants(std::process::id() as i32);
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| !mine.contains(p) && is_qemu(*p))
                .count()
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Noise {
    max_other_qemus: usize,
    /// Sections during which another QEMU was running.
    seen_in: Vec<&'static str>,
}

impl Noise {
    fn sample(&mut self, section: &'static str) {
        let n = other_qemus();
        self.max_other_qemus = self.max_other_qemus.max(n);
        if n > 0 && !self.seen_in.contains(&section) {
            self.seen_in.push(section);
        }
    }
}

fn proc_status_kib(pid: i32, field: &str) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// HTTP (loopback only, fresh connection per request, no proxy)
// ---------------------------------------------------------------------------

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_idle_connections(0)
        .proxy(None)
        .build()
        .into()
}

fn http_status(url: &str, timeout: Duration) -> Option<u16> {
    agent(timeout)
        .get(url)
        .call()
        .ok()
        .map(|r| r.status().as_u16())
}

fn http_body(url: &str) -> Option<String> {
    let mut r = agent(Duration::from_secs(2)).get(url).call().ok()?;
    r.body_mut().read_to_string().ok()
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The `rvf-operator` binary cargo built for this bench run.
fn locate_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RVF_BENCH_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_rvf-operator").map(PathBuf::from) {
        if p.is_file() {
            return p;
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let candidates = [
        target.join("release/rvf-operator"),
        target.join("debug/rvf-operator"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "rvf-operator binary not found (looked at {}); build it with \
             `cargo build --release --bin rvf-operator` or set RVF_BENCH_BIN",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn last_line(p: &Path) -> String {
    fs::read(p)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(str::trim)
                // Skip the runtime's own messages (error lines, ANSI-coloured logs).
                .rfind(|l| !l.is_empty() && !l.starts_with("error:") && !l.contains('\u{1b}'))
                .unwrap_or("(empty)")
                .to_string()
        })
        .unwrap_or_else(|_| "(none)".into())
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

fn host_note() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let qemu_version = Command::new(
        std::env::var("RVF_BENCH_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
    )
    .arg("--version")
    .output()
    .ok()
    .and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .map(String::from)
    })
    .unwrap_or_else(|| "QEMU version unknown".into());
    format!("{cpus} cores ({model}), {qemu_version}")
}

/// min, median, max.
fn summary(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((s[0], median, s[n - 1]))
}

/// A table printed as Markdown, so the output can go into docs as is.
struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str, header: &[&str]) -> Self {
        Self {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: vec![],
        }
    }

    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    fn stats(&mut self, name: &str, v: &[f64], runs: usize, decimals: usize) {
        let mut r = vec![name.to_string(), format!("{}/{runs}", v.len())];
        match summary(v) {
            Some((a, b, c)) => r.extend([a, b, c].map(|x| format!("{x:.decimals$}"))),
            None => r.extend(["-".into(), "-".into(), "-".into()]),
        }
        self.rows.push(r);
    }

    fn boot_row(&mut self, name: &str, accel: &str, v: &[f64], runs: usize) {
        let mut r = vec![
            name.to_string(),
            accel.to_string(),
            format!("{}/{runs}", v.len()),
        ];
        match summary(v) {
            Some((a, b, c)) => r.extend([a, b, c].map(|x| format!("{x:.2}"))),
            None => r.extend(["did not boot".into(), "-".into(), "-".into()]),
        }
        self.rows.push(r);
    }

    fn print(&self) {
        let cols = self.header.len();
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let parts: Vec<String> = (0..cols)
                .map(|i| {
                    let c = cells.get(i).map_or("", String::as_str);
                    if i == 0 {
                        format!("{c:<width$}", width = w[i])
                    } else {
                        format!("{c:>width$}", width = w[i])
                    }
                })
                .collect();
            format!("| {} |", parts.join(" | "))
        };
        println!("{}", self.title);
        println!();
        println!("{}", line(&self.header));
        let sep: Vec<String> = (0..cols)
            .map(|i| {
                if i == 0 {
                    format!(":{}", "-".repeat(w[i] - 1))
                } else {
                    format!("{}:", "-".repeat(w[i] - 1))
                }
            })
            .collect();
        let sep: Vec<String> = sep.iter().map(|s| format!(" {s} ")).collect();
        println!("|{}|", sep.join("|"));
        for r in &self.rows {
            println!("{}", line(r));
        }
        println!();
    }
}
