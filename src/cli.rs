//! Command-line wiring: parses arguments and hands each subcommand to its module.
//!
//! Owns process concerns only: logging, signals, exit codes, termination messages.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rvf_operator::runtime::accel::KvmMode;
use rvf_operator::runtime::kernel::{self, ExtractedKernel};
use rvf_operator::runtime::qemu::ConsoleSink;
use rvf_operator::runtime::status::{condition, StatusBoard, VmStatus};
use rvf_operator::runtime::vm::{self, Readiness, VmConfig, VmExit};
use rvf_operator::runtime::{agent_http, query};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "rvf-operator",
    version,
    about = "Run the kernel inside an RVF file as a QEMU microVM, locally or on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Kubernetes controller.
    Controller(rvf_operator::controller::ControllerArgs),
    /// Print the RvfMicroVm CustomResourceDefinition as YAML (what crds/rvfmicrovm.yaml holds).
    Crd,
    /// Download an RVF file over HTTP(S) and verify its SHA-256 (the `fetch` init container).
    Fetch(FetchArgs),
    /// Extract the kernel, initramfs and command line of an RVF file into a directory.
    Extract(ExtractArgs),
    /// Run an extracted kernel as a VM and serve its status (the VM pod's container).
    Agent(AgentArgs),
    /// Extract and run an RVF file locally, without a cluster.
    Run(RunArgs),
    /// Send a vector query to a running guest's API.
    Query(QueryArgs),
}

#[derive(Debug, Args)]
struct FetchArgs {
    /// http:// or https:// URL of the RVF file.
    #[arg(long)]
    url: String,
    /// Expected SHA-256 of the file, 64 hex digits.
    #[arg(long)]
    sha256: String,
    /// Where to write the file; it appears only once its digest matched.
    #[arg(long)]
    out: PathBuf,
    /// Seconds to wait for a connection, or for more bytes once connected.
    #[arg(long, default_value_t = 60)]
    timeout_seconds: u64,
    /// Where a failure message goes for Kubernetes (written only if the file exists).
    #[arg(long, default_value = "/dev/termination-log")]
    termination_log: PathBuf,
}

#[derive(Debug, Args)]
struct ExtractArgs {
    /// The RVF file to read (opened read-only).
    #[arg(long)]
    rvf: PathBuf,
    /// Directory to write kernel, initramfs, cmdline and kernel.json into.
    #[arg(long)]
    out: PathBuf,
    /// A separate initramfs; wins over one carried inside the RVF.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Where a failure message goes for Kubernetes (written only if the file exists).
    #[arg(long, default_value = "/dev/termination-log")]
    termination_log: PathBuf,
}

/// VM settings shared by `agent` and `run`.
#[derive(Debug, Args)]
struct VmArgs {
    /// Guest RAM in MiB (the Debian cloud kernel needs at least 72).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    memory_mib: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    vcpus: u32,
    /// KVM use: auto (KVM when /dev/kvm works, else TCG), required, disabled.
    #[arg(long, value_enum, default_value_t = KvmMode::Auto)]
    kvm: KvmMode,
    /// The KVM device to probe and use.
    #[arg(long, default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    /// Under kvm auto: a KVM boot whose console is silent this long before the guest
    /// is ready falls back to TCG.
    #[arg(long, default_value_t = 15)]
    kvm_stall_seconds: u64,
    /// Guest port of the RVF's HTTP API [default: the kernel header's, else 8080].
    #[arg(long)]
    api_port: Option<u16>,
    /// Guest SSH port to forward (off unless given).
    #[arg(long)]
    ssh_port: Option<u16>,
    /// Words appended to the RVF's own kernel command line.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    kernel_args: String,
    /// HTTP path the readiness probe requests from the guest.
    #[arg(long, default_value = "/v1/health")]
    readiness_path: String,
    /// Seconds between readiness probes once the guest is ready.
    #[arg(long, default_value_t = 2)]
    readiness_period_seconds: u64,
    /// Seconds one readiness probe may take.
    #[arg(long, default_value_t = 1)]
    readiness_timeout_seconds: u64,
    /// Seconds from QEMU start until the guest must answer, else the boot failed.
    #[arg(long, default_value_t = 120)]
    startup_timeout_seconds: u64,
    /// Extra boots after one that timed out (TCG guests can hang in early boot).
    #[arg(long, default_value_t = 1)]
    boot_retries: u32,
    /// Seconds the guest gets to power off after the power button, before `quit`.
    #[arg(long, default_value_t = 30)]
    grace_seconds: u64,
    /// The QEMU binary.
    #[arg(long, default_value = default_qemu())]
    qemu: PathBuf,
    /// Extra QEMU argument (repeatable); the operator passes these only when allowed.
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    qemu_args: Vec<String>,
    /// TCG translation cache size in MiB (QEMU's default costs far more memory).
    #[arg(long, default_value_t = 32)]
    tcg_tb_size_mib: u32,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Directory written by `rvf-operator extract`.
    #[arg(long)]
    kernel_dir: PathBuf,
    /// The RVF file, attached to the guest as a read-only virtio-blk drive.
    #[arg(long)]
    rvf: Option<PathBuf>,
    #[command(flatten)]
    vm: VmArgs,
    /// Address the guest's forwarded ports bind to in the pod.
    #[arg(long, default_value = "0.0.0.0")]
    api_bind: IpAddr,
    /// Pod port forwarded to the guest API port [default: the guest API port].
    #[arg(long)]
    api_host_port: Option<u16>,
    /// Address of the agent's HTTP server (/healthz, /readyz, /status, /metrics).
    #[arg(long, default_value = "0.0.0.0:9100")]
    listen: SocketAddr,
    /// Directory for the QMP socket [default: a fresh temporary directory].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where the final message goes for Kubernetes (written only if the file exists).
    #[arg(long, default_value = "/dev/termination-log")]
    termination_log: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The RVF file to boot.
    #[arg(long)]
    rvf: PathBuf,
    /// A separate initramfs; wins over one carried inside the RVF.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    #[command(flatten)]
    vm: VmArgs,
    /// Loopback port forwarded to the guest API port [default: a free port].
    #[arg(long)]
    api_host_port: Option<u16>,
    /// Stop the VM gracefully once it is Ready and exit 0; exit non-zero if it never is.
    #[arg(long)]
    until_ready: bool,
    /// text: progress lines on stderr, guest console on stdout; json: one status
    /// object per change on stdout, console on stderr.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Also serve the agent's HTTP endpoints on this address.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// Guest API address, host:port (an http:// prefix is accepted).
    #[arg(long)]
    addr: String,
    /// The query vector, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        required = true
    )]
    vector: Vec<f32>,
    /// How many neighbours to return.
    #[arg(short, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    k: u32,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 10)]
    timeout_seconds: u64,
}

const fn default_qemu() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "qemu-system-aarch64"
    } else {
        "qemu-system-x86_64"
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Run(_) | Command::Query(_) | Command::Crd => "warn",
        _ => "info",
    };
    init_logging(default_level);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match cli.command {
        Command::Crd => {
            print!("{}", rvf_operator::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Controller(args) => match rt.block_on(rvf_operator::controller::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}"), None),
        },
        Command::Fetch(args) => rt.block_on(fetch(args)),
        Command::Extract(args) => extract(args),
        Command::Agent(args) => rt.block_on(agent(args)),
        Command::Run(args) => rt.block_on(run(args)),
        Command::Query(args) => rt.block_on(query_cmd(args)),
    }
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Prints `msg`, records it for Kubernetes, and returns exit code 1.
fn fail(msg: &str, termination_log: Option<&Path>) -> ExitCode {
    eprintln!("error: {msg}");
    write_termination_log(termination_log, msg);
    ExitCode::FAILURE
}

/// Kubelet creates the termination log file; outside a pod it is absent and skipped.
fn write_termination_log(path: Option<&Path>, msg: &str) {
    if let Some(p) = path.filter(|p| p.exists()) {
        let _ = std::fs::write(p, msg);
    }
}

async fn fetch(args: FetchArgs) -> ExitCode {
    let timeout = Duration::from_secs(args.timeout_seconds);
    match rvf_operator::runtime::fetch::fetch(&args.url, &args.sha256, &args.out, timeout).await {
        Ok(bytes) => {
            tracing::info!(url = %args.url, out = %args.out.display(), bytes, "download verified");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), Some(&args.termination_log)),
    }
}

fn extract(args: ExtractArgs) -> ExitCode {
    match kernel::extract(&args.rvf, &args.out, args.initramfs.as_deref()) {
        Ok(k) => {
            tracing::info!(
                rvf = %args.rvf.display(),
                out = %args.out.display(),
                image_bytes = k.facts.image_bytes,
                initramfs_bytes = ?k.facts.initramfs_bytes,
                sha256 = %k.facts.sha256,
                "kernel extracted"
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), Some(&args.termination_log)),
    }
}

/// Where and how a VM runs: what differs between `agent` (in a pod) and `run` (local).
struct Site {
    api_bind: IpAddr,
    api_host_port: Option<u16>,
    state_dir: PathBuf,
    console: ConsoleSink,
    until_ready: bool,
}

fn vm_config(
    vm: VmArgs,
    kernel: ExtractedKernel,
    rvf: Option<PathBuf>,
    site: Site,
) -> std::io::Result<VmConfig> {
    let Site {
        api_bind,
        api_host_port,
        state_dir,
        console,
        until_ready,
    } = site;
    let api_port = vm.api_port.unwrap_or(match kernel.facts.api_port {
        0 => 8080,
        p => p,
    });
    let api_host_port = match api_host_port {
        Some(p) => p,
        None if api_bind.is_loopback() => free_port(api_bind)?,
        None => api_port,
    };
    Ok(VmConfig {
        kernel,
        rvf,
        memory_mib: vm.memory_mib,
        vcpus: vm.vcpus,
        kvm: vm.kvm,
        kvm_device: vm.kvm_device,
        kvm_stall: Duration::from_secs(vm.kvm_stall_seconds),
        api_port,
        api_bind,
        api_host_port,
        ssh_port: vm.ssh_port,
        kernel_args: vm.kernel_args,
        readiness: Readiness {
            path: vm.readiness_path,
            period: Duration::from_secs(vm.readiness_period_seconds.max(1)),
            timeout: Duration::from_secs(vm.readiness_timeout_seconds.max(1)),
            startup_timeout: Duration::from_secs(vm.startup_timeout_seconds),
        },
        grace: Duration::from_secs(vm.grace_seconds),
        qemu_binary: vm.qemu,
        qemu_extra_args: vm.qemu_args,
        state_dir,
        console,
        tcg_tb_size_mib: vm.tcg_tb_size_mib,
        boot_retries: vm.boot_retries,
        until_ready,
    })
}

/// A port that was free a moment ago; QEMU binds it next.
fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Counts SIGTERM and SIGINT: the first stops the VM gracefully, a second hurries it.
fn stop_on_signals() -> vm::StopSignal {
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; the VM can only be killed");
            return;
        };
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "stop requested");
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}

async fn agent(args: AgentArgs) -> ExitCode {
    let log = args.termination_log.clone();
    let kernel = match ExtractedKernel::load(&args.kernel_dir) {
        Ok(k) => k,
        Err(e) => return exit_with(VmExit::Config(e.to_string()), Some(&log)),
    };
    let (_state_tmp, state_dir) = match state_dir(args.state_dir) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot create a state directory: {e}"), Some(&log)),
    };
    let site = Site {
        api_bind: args.api_bind,
        api_host_port: args.api_host_port,
        state_dir,
        console: ConsoleSink::Stdout,
        until_ready: false,
    };
    let cfg = match vm_config(args.vm, kernel, args.rvf, site) {
        Ok(c) => c,
        Err(e) => return fail(&format!("cannot pick a port: {e}"), Some(&log)),
    };
    let board = StatusBoard::new();
    match agent_http::serve(args.listen, board.clone()).await {
        Ok(addr) => tracing::info!(%addr, "agent HTTP serving /healthz /readyz /status /metrics"),
        Err(e) => {
            return fail(
                &format!("cannot listen on {}: {e}", args.listen),
                Some(&log),
            )
        }
    }
    let exit = vm::run(cfg, board, stop_on_signals()).await;
    exit_with(exit, Some(&log))
}

fn state_dir(given: Option<PathBuf>) -> std::io::Result<(Option<tempfile::TempDir>, PathBuf)> {
    match given {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            Ok((None, d))
        }
        None => {
            let t = tempfile::Builder::new().prefix("rvf-vm-").tempdir()?;
            let p = t.path().to_path_buf();
            Ok((Some(t), p))
        }
    }
}

fn exit_with(exit: VmExit, log: Option<&Path>) -> ExitCode {
    let msg = exit.message();
    match exit.code() {
        0 => {
            tracing::info!(reason = exit.reason(), "{msg}");
            ExitCode::SUCCESS
        }
        code => {
            tracing::error!(reason = exit.reason(), code, "{msg}");
            write_termination_log(log, &format!("{}: {msg}", exit.reason()));
            ExitCode::from(code as u8)
        }
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let work = match tempfile::Builder::new().prefix("rvf-run-").tempdir() {
        Ok(t) => t,
        Err(e) => return fail(&format!("cannot create a work directory: {e}"), None),
    };
    let board = StatusBoard::new();
    let mut changes = board.follow();
    let output = args.output;
    let until_ready = args.until_ready;
    let mut printer = Progress::default();

    board.update(|s| s.phase = rvf_operator::runtime::status::Phase::Extracting);
    printer.show(output, &board.snapshot());
    let kernel = match kernel::extract(
        &args.rvf,
        &work.path().join("kernel"),
        args.initramfs.as_deref(),
    ) {
        Ok(k) => k,
        Err(e) => {
            board.update(|s| {
                s.phase = rvf_operator::runtime::status::Phase::Failed;
                s.set_condition(
                    condition::KERNEL_EXTRACTED,
                    rvf_operator::runtime::status::ConditionStatus::False,
                    "ExtractFailed",
                    &e.to_string(),
                );
                s.message = Some(e.to_string());
            });
            printer.show(output, &board.snapshot());
            return fail(&e.to_string(), None);
        }
    };
    let console = match output {
        Output::Text => ConsoleSink::Stdout,
        Output::Json => ConsoleSink::Stderr,
    };
    let site = Site {
        api_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        api_host_port: args.api_host_port,
        state_dir: work.path().to_path_buf(),
        console,
        until_ready,
    };
    let cfg = match vm_config(args.vm, kernel, Some(args.rvf.clone()), site) {
        Ok(c) => c,
        Err(e) => return fail(&format!("cannot pick a free port: {e}"), None),
    };
    if let Some(addr) = args.listen {
        if let Err(e) = agent_http::serve(addr, board.clone()).await {
            return fail(&format!("cannot listen on {addr}: {e}"), None);
        }
    }

    let vm_task = tokio::spawn(vm::run(cfg, board.clone(), stop_on_signals()));
    tokio::pin!(vm_task);
    let exit = loop {
        tokio::select! {
            res = &mut vm_task => break res,
            change = changes.recv() => match change {
                Ok(snap) => printer.show(output, &snap),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "status printer fell behind");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
        }
    };
    // The supervisor is done: print whatever it announced that was not printed yet.
    while let Ok(snap) = changes.try_recv() {
        printer.show(output, &snap);
    }
    let exit = match exit {
        Ok(e) => e,
        Err(e) => return fail(&format!("the VM supervisor crashed: {e}"), None),
    };
    if until_ready {
        // Set once, at the first readiness answer, and never cleared.
        let was_ready = board.snapshot().boot_seconds.is_some();
        if was_ready && exit.code() == 0 {
            return ExitCode::SUCCESS;
        }
        let msg = if was_ready {
            format!(
                "the VM became Ready but did not stop cleanly: {}",
                exit.message()
            )
        } else {
            format!("the VM never became Ready: {}", exit.message())
        };
        eprintln!("error: {msg}");
        return ExitCode::from(exit.code().max(1) as u8);
    }
    exit_with(exit, None)
}

/// Prints status changes for `run`: a short line for people, or JSON for programs.
#[derive(Default)]
struct Progress {
    last_line: String,
    last_message: String,
    last_json: String,
}

impl Progress {
    fn show(&mut self, output: Output, s: &VmStatus) {
        match output {
            Output::Json => {
                let line = serde_json::to_string(s).expect("status serializes");
                if line != self.last_json {
                    println!("{line}");
                    self.last_json = line;
                }
            }
            Output::Text => {
                // The message repeats until the next one: say it once, with the state
                // it arrived in.
                let state = progress_line(s);
                let message = s.message.clone().unwrap_or_default();
                let new_message = message != self.last_message;
                if state != self.last_line || new_message {
                    match new_message && !message.is_empty() {
                        true => eprintln!("{state} - {message}"),
                        false => eprintln!("{state}"),
                    }
                    self.last_line = state;
                    self.last_message = message;
                }
            }
        }
    }
}

/// The state part of a progress line: phase, accelerator, QMP state, readiness, boot time.
fn progress_line(s: &VmStatus) -> String {
    let mut parts = vec![format!("[rvf] {:?}", s.phase)];
    if let Some(a) = s.accelerator {
        parts.push(format!("accel={a}"));
    }
    if let Some(q) = &s.qmp {
        parts.push(format!("qmp={}", q.status));
    }
    if s.is_true(condition::READY) {
        parts.push("ready".into());
        if let Some(addr) = &s.api_endpoint {
            parts.push(format!("api=http://{addr}"));
        }
    }
    if let Some(b) = s.boot_seconds {
        parts.push(format!("boot={b:.2}s"));
    }
    parts.join(" ")
}

async fn query_cmd(args: QueryArgs) -> ExitCode {
    let timeout = Duration::from_secs(args.timeout_seconds);
    match query::query(&args.addr, &args.vector, args.k, timeout).await {
        Ok((dialect, results)) => {
            let out = serde_json::json!({ "dialect": dialect, "results": results });
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), None),
    }
}
