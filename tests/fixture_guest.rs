//! Tests of the guest fixture itself, without the operator's runtime: the RVF
//! files it writes open with rvf-runtime, and its kernel + initramfs boot in
//! QEMU microvm (TCG) and serve the rvf-server API.
//!
//! Needs `scripts/guest-inputs.sh` to have run (the fixture panics saying so).

#[path = "support/fixture.rs"]
mod fixture;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fixture::{GuestFixture, Layout};
use rvf_operator::runtime::kernel::InitramfsTrailer;
use rvf_runtime::{QueryOptions, RvfStore};
use rvf_types::KernelHeader;
use serde_json::{json, Value};

/// Per boot attempt: TCG boots in about 3 s here, but CI may run other test
/// binaries beside this one.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const BOOT_ATTEMPTS: usize = 2;

#[test]
fn initramfs_trailer_round_trips() {
    let image = InitramfsTrailer::encode(b"KERNEL", b"INITRD!");
    assert_eq!(
        image.len(),
        6 + 7 + rvf_operator::runtime::kernel::TRAILER_LEN
    );
    assert_eq!(&image[13..21], b"RVFINITR");
    assert_eq!(&image[21..25], &1u32.to_le_bytes());
    assert_eq!(&image[25..29], &0u32.to_le_bytes());
    assert_eq!(&image[29..37], &6u64.to_le_bytes());
    assert_eq!(&image[37..45], &7u64.to_le_bytes());
    let (k, i) = InitramfsTrailer::decode(&image).unwrap().expect("trailer");
    assert_eq!((k, i), (&b"KERNEL"[..], &b"INITRD!"[..]));
    assert_eq!(InitramfsTrailer::decode(b"a plain bzImage"), Ok(None));
}

#[test]
fn rvf_of_each_layout_opens_and_holds_the_kernel() {
    let inputs = fixture::GuestInputs::locate()
        .unwrap_or_else(|e| panic!("{e}; run scripts/guest-inputs.sh"));
    let tmp = tempfile::tempdir().unwrap();
    for layout in [Layout::Plain, Layout::WithBinding] {
        let f = fixture::build(&tmp.path().join(format!("{layout:?}")), &inputs, layout).unwrap();
        let store = RvfStore::open_readonly(&f.rvf).expect("open_readonly");
        let (header, rest) = store.extract_kernel().unwrap().expect("a KERNEL_SEG");
        let h = KernelHeader::from_bytes(header.as_slice().try_into().unwrap()).unwrap();
        assert_eq!(h.arch, fixture::ARCH_X86_64);
        assert_eq!(h.kernel_type, fixture::KERNEL_TYPE_MICRO_LINUX);
        assert_eq!(h.kernel_flags, fixture::KERNEL_FLAGS);
        let image_len = h.image_size as usize;
        let cmdline_len = h.cmdline_length as usize;
        assert_eq!(cmdline_len, f.cmdline.len());
        // See FACTS: the two writers order the payload differently.
        let (image, cmdline) = match layout {
            Layout::Plain => (&rest[..image_len], &rest[image_len..]),
            Layout::WithBinding => {
                let binding = store.extract_kernel_binding().unwrap().expect("binding");
                assert_eq!(binding.binding_version, 1);
                (&rest[128 + cmdline_len..], &rest[128..128 + cmdline_len])
            }
        };
        assert_eq!(image.len(), image_len);
        assert_eq!(cmdline, f.cmdline.as_bytes());
        let (kernel, initramfs) = InitramfsTrailer::decode(image).unwrap().expect("trailer");
        assert_eq!(kernel, std::fs::read(&f.kernel).unwrap().as_slice());
        assert_eq!(initramfs, std::fs::read(&f.initramfs).unwrap().as_slice());
        assert_eq!(&kernel[0x202..0x206], b"HdrS", "bzImage setup header");
        assert_eq!(&initramfs[..6], b"070701", "newc archive");
        assert_eq!(store.status().total_vectors, fixture::VECTORS.len() as u64);
    }
}

#[test]
fn guest_boots_serves_the_api_and_obeys_the_power_button() {
    let f = fixture::hello();
    let (mut vm, ready_after) = boot_until_healthy(f);
    eprintln!("first HTTP 200 after {ready_after:?}");
    let base = format!("http://127.0.0.1:{}", vm.port);
    let agent = http_agent(Duration::from_secs(20));

    let health = request(&agent, "GET", &format!("{base}/v1/health"), None);
    assert_eq!(
        (health.status, health.json.clone()),
        (200, json!({"status": "ok"}))
    );

    // The guest reads these from the RVF on /dev/vda; they must be what the
    // host sees in the same file.
    let status = request(&agent, "GET", &format!("{base}/v1/status"), None);
    assert_eq!(status.status, 200);
    let store = RvfStore::open_readonly(&f.rvf).unwrap();
    let host = store.status();
    assert_eq!(status.json["total_vectors"], host.total_vectors);
    assert_eq!(status.json["total_segments"], host.total_segments);
    assert_eq!(status.json["file_size"], host.file_size);
    assert_eq!(status.json["current_epoch"], host.current_epoch);

    let q = [0.9f32, 0.1, 0.4];
    let expected = brute_force(&q);
    let body = json!({"vector": q, "k": 3}).to_string();
    let v1 = request(&agent, "POST", &format!("{base}/v1/query"), Some(&body));
    assert_eq!(v1.status, 200, "{}", v1.text);
    let results = parse_results(&v1.json["results"]);
    assert_eq!(results.len(), 3);
    assert_matches(&results, &expected[..3]);
    let on_host = store.query(&q, 3, &QueryOptions::default()).unwrap();
    let on_host: Vec<(u64, f32)> = on_host.iter().map(|r| (r.id, r.distance)).collect();
    assert_matches(&results, &on_host);

    let body = json!({"vector": [0.0, 1.9, 0.2], "k": 10}).to_string();
    let bare = request(&agent, "POST", &format!("{base}/query"), Some(&body));
    assert_eq!(bare.status, 200, "{}", bare.text);
    assert!(bare.json.is_array(), "bare array expected: {}", bare.text);
    let results = parse_results(&bare.json);
    assert_eq!(results.len(), fixture::VECTORS.len());
    assert_eq!(results[0].0, 2);
    assert_matches(&results, &brute_force(&[0.0, 1.9, 0.2]));

    for bad in [
        "not json",
        r#"{"vector":[1,2]}"#,
        r#"{"vector":[1,"x",3],"k":1}"#,
    ] {
        let r = request(&agent, "POST", &format!("{base}/v1/query"), Some(bad));
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.json["code"], 400);
        assert!(r.json["error"].is_string());
    }
    let r = request(&agent, "GET", &format!("{base}/no/such/route"), None);
    assert_eq!((r.status, r.json["code"].clone()), (404, json!(404)));

    let started = Instant::now();
    let mut qmp = Qmp::connect(&vm.qmp).expect("QMP");
    qmp.execute("system_powerdown").expect("system_powerdown");
    let exit = vm
        .wait_exit(Duration::from_secs(30))
        .expect("QEMU exits after the power button");
    eprintln!(
        "QEMU exited {exit} {:?} after system_powerdown",
        started.elapsed()
    );
    assert!(exit.success());
    let console = vm.console();
    assert!(
        console.contains("rvf-guest: power button pressed, powering off"),
        "console:\n{console}"
    );
}

fn brute_force(q: &[f32; 3]) -> Vec<(u64, f32)> {
    let mut d: Vec<(u64, f32)> = fixture::VECTORS
        .iter()
        .map(|(id, v)| (*id, v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum()))
        .collect();
    d.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    d
}

fn parse_results(v: &Value) -> Vec<(u64, f32)> {
    let items = v
        .as_array()
        .unwrap_or_else(|| panic!("results array expected: {v}"));
    items
        .iter()
        .map(|r| {
            let id = r["id"].as_u64().unwrap_or_else(|| panic!("id in {r}"));
            let d = r["distance"]
                .as_f64()
                .unwrap_or_else(|| panic!("distance in {r}"));
            (id, d as f32)
        })
        .collect()
}

fn assert_matches(got: &[(u64, f32)], want: &[(u64, f32)]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for w in got.windows(2) {
        assert!(w[0].1 <= w[1].1, "not sorted ascending: {got:?}");
    }
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0, "{got:?} vs {want:?}");
        assert!(
            (g.1 - w.1).abs() <= 1e-4 * w.1.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

struct Reply {
    status: u16,
    text: String,
    json: Value,
}

fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        // Only ever the loopback forward this test set up, whatever the
        // environment says about proxies.
        .proxy(None)
        .build()
        .into()
}

fn request(agent: &ureq::Agent, method: &str, url: &str, body: Option<&str>) -> Reply {
    let result = match (method, body) {
        ("GET", None) => agent.get(url).call(),
        ("POST", Some(b)) => agent.post(url).content_type("application/json").send(b),
        _ => unreachable!(),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{method} {url}: no {name} header"))
    };
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("connection"), "close");
    let length: usize = header("content-length").parse().unwrap();
    let text = resp.body_mut().read_to_string().unwrap();
    assert_eq!(text.len(), length);
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {url}: body is not JSON ({e}): {text}"));
    Reply { status, text, json }
}

/// A QEMU process that is killed when dropped, with its console drained into
/// memory (an unread pipe would stall the guest's console writer).
struct Vm {
    child: Child,
    port: u16,
    qmp: PathBuf,
    console: Arc<Mutex<Vec<u8>>>,
    drains: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Vm {
    fn spawn(f: &GuestFixture) -> std::io::Result<Vm> {
        let dir = tempfile::tempdir()?;
        let qmp = dir.path().join("qmp.sock");
        let port = free_port()?;
        let mut append = f.cmdline.clone();
        append.push_str(&format!(
            " tsc_early_khz={}",
            rvf_operator::runtime::accel::host_tsc_khz()
        ));
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-machine", "microvm", "-accel", "tcg", "-m", "256"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&f.kernel)
            .arg("-initrd")
            .arg(&f.initramfs)
            .args(["-append", &append])
            .args([
                "-netdev",
                &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8080"),
            ])
            .args(["-device", "virtio-net-device,netdev=n0"])
            .args([
                "-drive",
                &format!(
                    "id=rvf,file={},format=raw,if=none,readonly=on",
                    f.rvf.display()
                ),
            ])
            .args(["-device", "virtio-blk-device,drive=rvf"])
            .args(["-qmp", &format!("unix:{},server,nowait", qmp.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let drains = vec![
            drain(child.stdout.take().unwrap(), console.clone()),
            drain(child.stderr.take().unwrap(), console.clone()),
        ];
        Ok(Vm {
            child,
            port,
            qmp,
            console,
            drains,
            _dir: dir,
        })
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().ok()? {
                for d in self.drains.drain(..) {
                    let _ = d.join();
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// A port that was free a moment ago; QEMU failing to bind it just costs a
/// retry.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Boots until `/v1/health` answers 200, retrying a boot that hangs (FACTS:
/// TCG + microvm can stall in early timer calibration).
fn boot_until_healthy(f: &GuestFixture) -> (Vm, Duration) {
    // A probe on a fresh connection each time with a short timeout: the
    // forward accepts long before the guest listens and then parks requests.
    let probe = http_agent(Duration::from_millis(500));
    let mut consoles = Vec::new();
    for attempt in 1..=BOOT_ATTEMPTS {
        let started = Instant::now();
        let mut vm = Vm::spawn(f).expect("spawning qemu-system-x86_64");
        let url = format!("http://127.0.0.1:{}/v1/health", vm.port);
        while started.elapsed() < BOOT_TIMEOUT {
            if let Ok(Some(status)) = vm.child.try_wait() {
                consoles.push(format!("attempt {attempt}: QEMU exited {status}"));
                break;
            }
            if let Ok(r) = probe.get(&url).call() {
                if r.status() == 200 {
                    return (vm, started.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        consoles.push(format!("attempt {attempt} console:\n{}", vm.console()));
    }
    panic!("guest never answered /v1/health:\n{}", consoles.join("\n"));
}

/// Just enough QMP for one command: greeting, capabilities, command, reply
/// (events may arrive before the reply and are skipped).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> std::io::Result<Qmp> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut q = Qmp {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        };
        let greeting = q.read_message()?;
        assert!(greeting.get("QMP").is_some(), "QMP greeting: {greeting}");
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    fn execute(&mut self, command: &str) -> std::io::Result<Value> {
        writeln!(self.writer, "{}", json!({ "execute": command }))?;
        for _ in 0..100 {
            let msg = self.read_message()?;
            if msg.get("return").is_some() || msg.get("error").is_some() {
                return Ok(msg);
            }
        }
        Err(std::io::Error::other("no QMP reply"))
    }

    fn read_message(&mut self) -> std::io::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }
}
