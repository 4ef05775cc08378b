//! The QEMU command line for a microvm guest, and the running QEMU process.
//!
//! Building the argv is pure; `QemuProcess` owns the child and keeps draining its
//! stdout and stderr, because a guest whose console nobody reads stops making progress.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::status::Accelerator;

/// How much of the console and of QEMU's stderr is kept for error messages.
const TAIL_BYTES: usize = 16 * 1024;

/// A guest TCP port reachable from the runtime's side through QEMU user networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    pub bind: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
}

/// Everything QEMU needs to boot one guest.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub accel: Accelerator,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// The full guest command line (RVF's own, user additions, runtime additions).
    pub cmdline: String,
    /// The RVF file, attached read-only as virtio-blk so the guest can read its data.
    pub rvf_drive: Option<PathBuf>,
    pub forwards: Vec<PortForward>,
    pub qmp_socket: PathBuf,
    /// TCG translation cache in MiB; QEMU's default makes RSS far larger than needed.
    pub tcg_tb_size_mib: u32,
    pub extra_args: Vec<String>,
}

impl QemuConfig {
    /// The argument vector (without the binary).
    pub fn argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        // `-machine microvm,accel=` cannot be combined with `-accel`, so accel goes apart.
        push("-machine");
        push("microvm");
        push("-accel");
        match self.accel {
            Accelerator::Kvm => push("kvm"),
            Accelerator::Tcg => push(&format!("tcg,tb-size={}", self.tcg_tb_size_mib)),
        }
        push("-m");
        push(&self.memory_mib.to_string());
        push("-smp");
        push(&self.vcpus.to_string());
        for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            push(flag);
        }
        push("-display");
        push("none");
        push("-serial");
        push("stdio");
        push("-kernel");
        a.push(self.kernel.clone().into_os_string());
        if let Some(initrd) = &self.initramfs {
            a.push("-initrd".into());
            a.push(initrd.clone().into_os_string());
        }
        a.push("-append".into());
        a.push(self.cmdline.clone().into());
        if let Some(rvf) = &self.rvf_drive {
            a.push("-drive".into());
            a.push(
                format!(
                    "id=rvf,file={},format=raw,if=none,readonly=on",
                    qemu_escape(rvf)
                )
                .into(),
            );
            a.push("-device".into());
            a.push("virtio-blk-device,drive=rvf".into());
        }
        a.push("-netdev".into());
        let mut netdev = String::from("user,id=net0");
        for f in &self.forwards {
            // `hostfwd=tcp::P:-:G` (the upstream form) is rejected by QEMU as a bad host port.
            netdev.push_str(&format!(
                ",hostfwd=tcp:{}:{}-:{}",
                f.bind, f.host_port, f.guest_port
            ));
        }
        a.push(netdev.into());
        a.push("-device".into());
        a.push("virtio-net-device,netdev=net0".into());
        a.push("-qmp".into());
        a.push(format!("unix:{},server=on,wait=off", qemu_escape(&self.qmp_socket)).into());
        a.extend(self.extra_args.iter().map(OsString::from));
        a
    }
}

/// Escapes a path for a QEMU option value, where a comma separates options.
fn qemu_escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The end of a byte stream, kept for messages about why QEMU or the guest stopped.
#[derive(Debug, Clone, Default)]
pub struct Tail(Arc<Mutex<TailInner>>);

#[derive(Debug, Default)]
struct TailInner {
    bytes: VecDeque<u8>,
    last_write: Option<Instant>,
}

impl Tail {
    fn push(&self, bytes: &[u8]) {
        let mut t = self.0.lock().expect("tail lock");
        t.bytes.extend(bytes);
        let excess = t.bytes.len().saturating_sub(TAIL_BYTES);
        t.bytes.drain(..excess);
        t.last_write = Some(Instant::now());
    }

    /// The kept bytes as lossy text.
    pub fn text(&self) -> String {
        let t = self.0.lock().expect("tail lock");
        String::from_utf8_lossy(&t.bytes.iter().copied().collect::<Vec<_>>()).into_owned()
    }

    /// When the stream last carried anything.
    pub fn last_write(&self) -> Option<Instant> {
        self.0.lock().expect("tail lock").last_write
    }

    /// The last `n` non-empty lines, joined with " | ", for one-line messages.
    pub fn last_lines(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleSink {
    Stdout,
    Stderr,
    Discard,
}

/// A running QEMU with its output being drained.
pub struct QemuProcess {
    child: Child,
    /// The guest's serial console (QEMU's stdout).
    pub console: Tail,
    /// QEMU's own diagnostics.
    pub stderr: Tail,
    /// How many of the two output drains have reached end of file.
    drained: tokio::sync::watch::Receiver<u8>,
}

/// How long to wait, once QEMU exited, for the last of its output to be read.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// QEMU could not be started at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot start QEMU {binary}: {source}")]
pub struct SpawnError {
    pub binary: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl QemuProcess {
    /// Starts QEMU; the console is copied to `sink` and kept in [`QemuProcess::console`].
    pub fn spawn(config: &QemuConfig, sink: ConsoleSink) -> Result<Self, SpawnError> {
        let _ = std::fs::remove_file(&config.qmp_socket);
        let mut command = Command::new(&config.binary);
        // SAFETY: prctl is async-signal-safe and touches only the child being created.
        // A QEMU in its own process group would outlive a killed supervisor; the death
        // signal ties it to the spawning thread, a runtime worker that lives as long as
        // the supervisor does.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .args(config.argv())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a terminal's Ctrl-C goes to the whole foreground
            // group, and QEMU must not die of it before the guest is powered down.
            .process_group(0)
            .spawn()
            .map_err(|source| SpawnError {
                binary: config.binary.clone(),
                source,
            })?;
        let console = Tail::default();
        let stderr = Tail::default();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let (done, drained) = tokio::sync::watch::channel(0u8);
        tokio::spawn(drain(out, console.clone(), sink, done.clone()));
        tokio::spawn(drain(err, stderr.clone(), ConsoleSink::Stderr, done));
        Ok(Self {
            child,
            console,
            stderr,
            drained,
        })
    }

    /// The OS process id, while QEMU runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for QEMU to exit.
    ///
    /// Returns once QEMU's last words are in [`QemuProcess::console`] and
    /// [`QemuProcess::stderr`]: the process can be reaped before its pipes are read dry.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        let _ = tokio::time::timeout(DRAIN_WAIT, self.drained.wait_for(|n| *n >= 2)).await;
        Ok(status)
    }

    /// The exit status if QEMU has already exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Sends SIGKILL and reaps the process.
    pub async fn kill(&mut self) -> std::io::Result<ExitStatus> {
        let _ = self.child.start_kill();
        self.wait().await
    }
}

/// Copies `from` to the sink until EOF; never stops reading, even if the sink fails.
async fn drain(
    mut from: impl AsyncRead + Unpin,
    tail: Tail,
    sink: ConsoleSink,
    done: tokio::sync::watch::Sender<u8>,
) {
    let mut out: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = match sink {
        ConsoleSink::Stdout => Some(Box::new(tokio::io::stdout())),
        ConsoleSink::Stderr => Some(Box::new(tokio::io::stderr())),
        ConsoleSink::Discard => None,
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        tail.push(&buf[..n]);
        if let Some(w) = out.as_mut() {
            // A closed stdout must not stall the guest: drop the sink, keep draining.
            if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
                out = None;
            }
        }
    }
    done.send_modify(|n| *n += 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn config() -> QemuConfig {
        QemuConfig {
            binary: "qemu-system-x86_64".into(),
            accel: Accelerator::Tcg,
            memory_mib: 128,
            vcpus: 2,
            kernel: "/k/kernel".into(),
            initramfs: Some("/k/initramfs".into()),
            cmdline: "console=ttyS0 panic=-1".into(),
            rvf_drive: Some("/data/my,file.rvf".into()),
            forwards: vec![PortForward {
                bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
                host_port: 18080,
                guest_port: 8080,
            }],
            qmp_socket: "/run/vm/qmp.sock".into(),
            tcg_tb_size_mib: 32,
            extra_args: vec![],
        }
    }

    fn argv(c: &QemuConfig) -> Vec<String> {
        c.argv()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    fn value_after<'a>(a: &'a [String], flag: &str) -> &'a str {
        let i = a
            .iter()
            .position(|x| x == flag)
            .unwrap_or_else(|| panic!("{flag} missing"));
        &a[i + 1]
    }

    #[test]
    fn tcg_argv_uses_microvm_and_a_bounded_translation_cache() {
        let a = argv(&config());
        assert_eq!(value_after(&a, "-machine"), "microvm");
        assert_eq!(value_after(&a, "-accel"), "tcg,tb-size=32");
        assert_eq!(value_after(&a, "-m"), "128");
        assert_eq!(value_after(&a, "-smp"), "2");
        assert_eq!(value_after(&a, "-serial"), "stdio");
        assert_eq!(value_after(&a, "-initrd"), "/k/initramfs");
        assert!(a.contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn kvm_argv_does_not_ask_for_host_cpu() {
        let mut c = config();
        c.accel = Accelerator::Kvm;
        let a = argv(&c);
        assert_eq!(value_after(&a, "-accel"), "kvm");
        // `-cpu host` aborts QEMU on nested KVM (kvm-pvm); QEMU's default model boots.
        assert!(!a.contains(&"-cpu".to_string()), "{a:?}");
    }

    #[test]
    fn hostfwd_uses_the_form_qemu_accepts() {
        let a = argv(&config());
        assert_eq!(
            value_after(&a, "-netdev"),
            "user,id=net0,hostfwd=tcp:127.0.0.1:18080-:8080"
        );
    }

    #[test]
    fn rvf_is_attached_read_only_with_commas_escaped() {
        let a = argv(&config());
        assert_eq!(
            value_after(&a, "-drive"),
            "id=rvf,file=/data/my,,file.rvf,format=raw,if=none,readonly=on"
        );
    }

    #[test]
    fn qmp_listens_on_a_unix_socket_without_waiting() {
        let a = argv(&config());
        assert_eq!(
            value_after(&a, "-qmp"),
            "unix:/run/vm/qmp.sock,server=on,wait=off"
        );
    }

    #[test]
    fn tail_keeps_only_the_end() {
        let t = Tail::default();
        t.push(&vec![b'a'; TAIL_BYTES]);
        t.push(b"\nlast line\n");
        assert_eq!(t.text().len(), TAIL_BYTES);
        assert_eq!(t.last_lines(1), "last line");
    }
}
