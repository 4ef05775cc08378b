//! The test/demo guest: a Debian cloud kernel plus a busybox initramfs that
//! serves the rvf-server HTTP API, packed into an RVF file's KERNEL_SEG.
//!
//! Used by integration tests as `#[path = "support/fixture.rs"] mod fixture;`
//! and by `examples/make_fixture.rs`. Host inputs (kernel, modules, busybox)
//! come from `scripts/guest-inputs.sh`; nothing binary is committed.
//!
//! The initramfs travels inside the segment's image, after the bzImage:
//! `image = kernel || initramfs || trailer`, where the 32-byte trailer is
//! `b"RVFINITR" || version u32 LE (1) || reserved u32 LE (0) ||
//! kernel_len u64 LE || initramfs_len u64 LE`. Bytes after a bzImage are
//! ignored by QEMU's `-kernel`, so an image that is not split still boots
//! (without the guest userland).

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rvf_runtime::{RvfOptions, RvfStore};
use rvf_types::kernel::{
    KERNEL_FLAG_HAS_NETWORKING, KERNEL_FLAG_HAS_QUERY_API, KERNEL_FLAG_HAS_VIRTIO_BLK,
    KERNEL_FLAG_HAS_VIRTIO_NET,
};
use rvf_types::KernelBinding;
use sha2::{Digest, Sha256};

/// Command line embedded in the fixture. The runtime appends what depends on
/// the host (e.g. `tsc_early_khz` under TCG); tests append `rvf.*` words.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1 reboot=t";
pub const API_PORT: u16 = 8080;
pub const ARCH_X86_64: u8 = 0;
pub const KERNEL_TYPE_MICRO_LINUX: u8 = 1;
pub const KERNEL_FLAGS: u32 = KERNEL_FLAG_HAS_NETWORKING
    | KERNEL_FLAG_HAS_QUERY_API
    | KERNEL_FLAG_HAS_VIRTIO_NET
    | KERNEL_FLAG_HAS_VIRTIO_BLK;

pub const DIMENSION: u16 = 3;
/// The vectors the guest answers queries from; the same set is ingested into
/// the RVF so a host-side `RvfStore::query` gives the same answer.
pub const VECTORS: [(u64, [f32; 3]); 4] = [
    (0, [0.0, 0.0, 0.0]),
    (1, [1.0, 0.0, 0.0]),
    (2, [0.0, 2.0, 0.0]),
    (3, [0.0, 0.0, 3.0]),
];

/// Loaded by the guest's init in this order (Debian has no modules.dep in
/// the archive we build, and these are modules, not built in).
pub const MODULES: [&str; 9] = [
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
    "button",
    "evdev",
];

const GUEST_INIT: &str = include_str!("guest/init");
const GUEST_HTTP: &str = include_str!("guest/rvf-http");
const GUEST_STATUS_SCAN: &str = include_str!("guest/rvf-status-scan");
const GUEST_QUERY_AWK: &str = include_str!("guest/query.awk");

/// Bumped when the build recipe changes in a way the hashed inputs miss.
const RECIPE_VERSION: &str = "rvf-guest-fixture/1";
const RVF_NAME: &str = "hello.rvf";
const INITRAMFS_NAME: &str = "initramfs.cpio";
const KERNEL_NAME: &str = "vmlinuz";
const CMDLINE_NAME: &str = "cmdline";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `embed_kernel`: header || image || cmdline.
    Plain,
    /// `embed_kernel_with_binding`: header || binding || cmdline || image.
    WithBinding,
}

#[derive(Debug, Clone)]
pub struct GuestFixture {
    pub rvf: PathBuf,
    /// The bzImage alone, as also stored (before the initramfs) in the RVF.
    pub kernel: PathBuf,
    /// The newc archive alone, as also stored (after the kernel) in the RVF.
    pub initramfs: PathBuf,
    pub cmdline: String,
}

#[derive(Debug, Clone)]
pub struct GuestInputs {
    pub kernel: PathBuf,
    /// The `lib/modules/VERSION` directory of that kernel.
    pub modules: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
}

impl GuestInputs {
    /// `$RVF_GUEST_INPUTS/inputs.env`, else `target/guest-inputs/inputs.env`
    /// under the crate root.
    pub fn env_file() -> PathBuf {
        match std::env::var_os("RVF_GUEST_INPUTS") {
            Some(dir) => PathBuf::from(dir).join("inputs.env"),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest-inputs/inputs.env"),
        }
    }

    pub fn locate() -> io::Result<Self> {
        Self::from_env_file(&Self::env_file())
    }

    pub fn from_env_file(path: &Path) -> io::Result<Self> {
        let text = fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut vars = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                vars.insert(k.trim(), v.trim());
            }
        }
        let get = |key: &str| -> io::Result<PathBuf> {
            let v = vars
                .get(key)
                .ok_or_else(|| invalid(format!("{}: no {key}= line", path.display())))?;
            let p = PathBuf::from(v);
            if !p.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: {key}={} does not exist", path.display(), p.display()),
                ));
            }
            Ok(p)
        };
        Ok(Self {
            kernel: get("KERNEL")?,
            modules: get("MODULES")?,
            busybox: get("BUSYBOX")?,
        })
    }
}

/// The plain-layout fixture with the default command line, built once per
/// process and cached on disk under `target/fixture/`.
pub fn hello() -> &'static GuestFixture {
    static HELLO: OnceLock<GuestFixture> = OnceLock::new();
    HELLO.get_or_init(|| cached(Layout::Plain, DEFAULT_CMDLINE))
}

/// A fixture cached on disk under `target/fixture/<hash of inputs>/`.
/// Panics, naming the script to run, when the host inputs are missing.
pub fn cached(layout: Layout, cmdline: &str) -> GuestFixture {
    let inputs = GuestInputs::locate().unwrap_or_else(|e| {
        panic!(
            "guest fixture inputs missing ({e}); run `scripts/guest-inputs.sh` \
             (or set RVF_GUEST_INPUTS to a directory it filled)"
        )
    });
    cached_from(&fixture_root(), &inputs, layout, cmdline)
        .unwrap_or_else(|e| panic!("building the guest fixture failed: {e}"))
}

fn fixture_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("fixture")
}

fn cached_from(
    root: &Path,
    inputs: &GuestInputs,
    layout: Layout,
    cmdline: &str,
) -> io::Result<GuestFixture> {
    let key = input_hash(inputs, layout, cmdline)?;
    let dir = root.join(&key[..16]);
    let fixture = fixture_paths(&dir, cmdline);
    if dir.join(CMDLINE_NAME).is_file() {
        return Ok(fixture);
    }
    fs::create_dir_all(root)?;
    // Test binaries and the tests in one binary run in parallel: build
    // privately, then publish with one rename; whoever loses the race uses
    // the winner's copy.
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let tmp = root.join(format!(
        "{}.tmp-{}-{}",
        &key[..16],
        std::process::id(),
        BUILDS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&tmp);
    let built = build_with_cmdline(&tmp, inputs, layout, cmdline);
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if fs::rename(&tmp, &dir).is_err() {
        let _ = fs::remove_dir_all(&tmp);
        if !dir.join(CMDLINE_NAME).is_file() {
            return Err(invalid(format!("could not publish {}", dir.display())));
        }
    }
    Ok(fixture)
}

fn fixture_paths(dir: &Path, cmdline: &str) -> GuestFixture {
    GuestFixture {
        rvf: dir.join(RVF_NAME),
        kernel: dir.join(KERNEL_NAME),
        initramfs: dir.join(INITRAMFS_NAME),
        cmdline: cmdline.to_string(),
    }
}

fn input_hash(inputs: &GuestInputs, layout: Layout, cmdline: &str) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(RECIPE_VERSION.as_bytes());
    part(format!("{layout:?}").as_bytes());
    part(cmdline.as_bytes());
    for s in [GUEST_INIT, GUEST_HTTP, GUEST_STATUS_SCAN, GUEST_QUERY_AWK] {
        part(s.as_bytes());
    }
    part(vectors_table().as_bytes());
    // The binaries are keyed by path, size and mtime, as make would: hashing
    // 18 MB in an unoptimised test build costs half a second per test binary,
    // and the inputs script replaces files rather than editing them.
    let mut files = vec![inputs.kernel.clone(), inputs.busybox.clone()];
    files.extend(module_paths(&inputs.modules)?);
    for path in files {
        let meta = fs::metadata(&path)?;
        let mtime = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        part(path.as_os_str().as_encoded_bytes());
        part(&meta.len().to_le_bytes());
        part(&mtime.as_nanos().to_le_bytes());
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Builds the fixture into `out_dir` with the default command line.
pub fn build(out_dir: &Path, inputs: &GuestInputs, layout: Layout) -> io::Result<GuestFixture> {
    build_with_cmdline(out_dir, inputs, layout, DEFAULT_CMDLINE)
}

pub fn build_with_cmdline(
    out_dir: &Path,
    inputs: &GuestInputs,
    layout: Layout,
    cmdline: &str,
) -> io::Result<GuestFixture> {
    fs::create_dir_all(out_dir)?;
    let fixture = fixture_paths(out_dir, cmdline);

    let kernel = fs::read(&inputs.kernel)?;
    fs::write(&fixture.kernel, &kernel)?;
    let initramfs = build_initramfs(out_dir, inputs)?;
    fs::write(&fixture.initramfs, &initramfs)?;

    let image = rvf_operator::runtime::kernel::InitramfsTrailer::encode(&kernel, &initramfs);
    write_rvf(&fixture.rvf, &image, layout, cmdline)?;

    // Written last: its presence marks a complete fixture directory.
    fs::write(out_dir.join(CMDLINE_NAME), cmdline)?;
    Ok(fixture)
}

fn write_rvf(path: &Path, image: &[u8], layout: Layout, cmdline: &str) -> io::Result<()> {
    let rvf_err = |what: &str, e: rvf_types::RvfError| invalid(format!("{what}: {e:?}"));
    let _ = fs::remove_file(path);
    let mut store = RvfStore::create(
        path,
        RvfOptions {
            dimension: DIMENSION,
            ..Default::default()
        },
    )
    .map_err(|e| rvf_err("RvfStore::create", e))?;
    let vectors: Vec<&[f32]> = VECTORS.iter().map(|(_, v)| &v[..]).collect();
    let ids: Vec<u64> = VECTORS.iter().map(|(id, _)| *id).collect();
    store
        .ingest_batch(&vectors, &ids, None)
        .map_err(|e| rvf_err("ingest_batch", e))?;
    match layout {
        Layout::Plain => store.embed_kernel(
            ARCH_X86_64,
            KERNEL_TYPE_MICRO_LINUX,
            KERNEL_FLAGS,
            image,
            API_PORT,
            Some(cmdline),
        ),
        Layout::WithBinding => store.embed_kernel_with_binding(
            ARCH_X86_64,
            KERNEL_TYPE_MICRO_LINUX,
            KERNEL_FLAGS,
            image,
            API_PORT,
            Some(cmdline),
            // Zero hashes: the fixture binds to no particular manifest or
            // policy; it exists to exercise the second segment layout.
            &KernelBinding {
                manifest_root_hash: [0; 32],
                policy_hash: [0; 32],
                binding_version: 1,
                min_runtime_version: 0,
                _pad0: 0,
                allowed_segment_mask: 0,
                _reserved: [0; 48],
            },
        ),
    }
    .map_err(|e| rvf_err("embed_kernel", e))?;
    store.close().map_err(|e| rvf_err("close", e))
}

fn vectors_table() -> String {
    VECTORS
        .iter()
        .map(|(id, v)| format!("{id} {} {} {}\n", v[0], v[1], v[2]))
        .collect()
}

/// The `.ko` file of each of [`MODULES`], found anywhere under `dir`.
fn module_paths(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: HashMap<String, PathBuf> = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                found.insert(name.to_string(), path);
            }
        }
    }
    MODULES
        .iter()
        .map(|m| {
            if let Some(p) = found.get(&format!("{m}.ko")) {
                return Ok(p.clone());
            }
            let compressed = [".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .any(|ext| found.contains_key(&format!("{m}{ext}")));
            Err(invalid(if compressed {
                format!(
                    "module {m} is compressed under {}; busybox insmod needs a plain .ko",
                    dir.display()
                )
            } else {
                format!("module {m}.ko not found under {}", dir.display())
            }))
        })
        .collect()
}

/// Stages the guest's root file system and packs it as a newc archive with
/// busybox cpio (owner root, inode numbers renumbered).
fn build_initramfs(out_dir: &Path, inputs: &GuestInputs) -> io::Result<Vec<u8>> {
    let stage = out_dir.join("initramfs.d");
    let _ = fs::remove_dir_all(&stage);
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "etc/rvf",
        "lib/modules",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    let put = |rel: &str, bytes: &[u8], mode: u32| -> io::Result<()> {
        let p = stage.join(rel);
        fs::write(&p, bytes)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
    };
    put("bin/busybox", &fs::read(&inputs.busybox)?, 0o755)?;
    put("init", GUEST_INIT.as_bytes(), 0o755)?;
    put("bin/rvf-http", GUEST_HTTP.as_bytes(), 0o755)?;
    put("bin/rvf-status-scan", GUEST_STATUS_SCAN.as_bytes(), 0o755)?;
    put("etc/rvf/query.awk", GUEST_QUERY_AWK.as_bytes(), 0o644)?;
    put("etc/rvf/vectors", vectors_table().as_bytes(), 0o644)?;
    for (name, path) in MODULES.iter().zip(module_paths(&inputs.modules)?) {
        put(&format!("lib/modules/{name}.ko"), &fs::read(path)?, 0o644)?;
    }

    let mut list = Vec::new();
    list_tree(&stage, Path::new(""), &mut list)?;
    let mut child = Command::new(&inputs.busybox)
        .args([
            "cpio",
            "-o",
            "-H",
            "newc",
            "-R",
            "0:0",
            "--renumber-inodes",
            "--ignore-devno",
        ])
        .current_dir(&stage)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let names = list.join("\n") + "\n";
    // The archive goes to stdout while we still write names: feed them from
    // a thread so neither pipe can fill up and deadlock.
    let feeder = std::thread::spawn(move || stdin.write_all(names.as_bytes()));
    let out = child.wait_with_output()?;
    feeder.join().expect("cpio feeder thread")?;
    if !out.status.success() {
        return Err(invalid(format!(
            "busybox cpio failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    fs::remove_dir_all(&stage)?;
    Ok(out.stdout)
}

/// Relative paths under `root`, each directory before its contents, sorted
/// so the archive does not depend on directory order.
fn list_tree(root: &Path, rel: &Path, out: &mut Vec<String>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let child = rel.join(entry.file_name());
        out.push(child.to_string_lossy().into_owned());
        if entry.file_type()?.is_dir() {
            list_tree(root, &child, out)?;
        }
    }
    Ok(())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
