//! `rvf-operator extract` on real RVF files written with `rvf-runtime`.

#[path = "support/fixture.rs"]
mod fixture;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use rvf_runtime::{RvfOptions, RvfStore};

const BIN: &str = env!("CARGO_BIN_EXE_rvf-operator");

fn extract(rvf: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("extract")
        .arg("--rvf")
        .arg(rvf)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn kernel_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join("kernel.json")).unwrap()).unwrap()
}

fn assert_extracts_fixture(layout: fixture::Layout, expected_layout: &str) {
    let fx = fixture::cached(layout, fixture::DEFAULT_CMDLINE);
    let dir = tempfile::tempdir().unwrap();
    let out = extract(&fx.rvf, dir.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read(dir.path().join("kernel")).unwrap(),
        fs::read(&fx.kernel).unwrap()
    );
    assert_eq!(
        fs::read(dir.path().join("initramfs")).unwrap(),
        fs::read(&fx.initramfs).unwrap()
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("cmdline")).unwrap(),
        fx.cmdline
    );
    let facts = kernel_json(dir.path());
    assert_eq!(facts["layout"], expected_layout);
    assert_eq!(facts["arch"], "x86_64");
    assert_eq!(facts["apiPort"], 8080);
    let kernel = fs::read(&fx.kernel).unwrap();
    assert_eq!(facts["imageBytes"], kernel.len() as u64);
    assert_eq!(
        facts["sha256"],
        rvf_operator::runtime::kernel::sha256_hex(&kernel)
    );
}

#[test]
fn plain_layout_extracts_kernel_initramfs_and_cmdline_byte_for_byte() {
    assert_extracts_fixture(fixture::Layout::Plain, "plain");
}

#[test]
fn binding_layout_extracts_kernel_initramfs_and_cmdline_byte_for_byte() {
    assert_extracts_fixture(fixture::Layout::WithBinding, "withBinding");
}

#[test]
fn a_separate_initramfs_overrides_the_carried_one() {
    let fx = fixture::hello();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.cpio");
    fs::write(&other, b"not the carried initramfs").unwrap();
    let out = extract(
        &fx.rvf,
        &dir.path().join("k"),
        &["--initramfs", other.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read(dir.path().join("k/initramfs")).unwrap(),
        b"not the carried initramfs"
    );
}

#[test]
fn a_missing_file_is_named_and_recorded_in_the_termination_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    fs::write(&log, "").unwrap();
    let out = extract(
        &dir.path().join("absent.rvf"),
        &dir.path().join("k"),
        &["--termination-log", log.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let msg = fs::read_to_string(&log).unwrap();
    assert!(msg.contains("absent.rvf does not exist"), "{msg}");
    assert!(stderr(&out).contains("absent.rvf does not exist"));
}

#[test]
fn a_file_that_is_not_rvf_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.rvf");
    fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    let out = extract(&junk, &dir.path().join("k"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a readable RVF file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_rvf_without_kernel_seg_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vectors-only.rvf");
    let store = RvfStore::create(
        &path,
        RvfOptions {
            dimension: 3,
            ..Default::default()
        },
    )
    .unwrap();
    store.close().unwrap();
    let out = extract(&path, &dir.path().join("k"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no KERNEL_SEG"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("k/kernel.json").exists());
}

#[test]
fn a_truncated_rvf_is_refused_without_panicking() {
    let fx = fixture::hello();
    let dir = tempfile::tempdir().unwrap();
    let bytes = fs::read(&fx.rvf).unwrap();
    for keep in [bytes.len() / 2, bytes.len() - 4096, 100] {
        let cut = dir.path().join(format!("cut-{keep}.rvf"));
        fs::write(&cut, &bytes[..keep]).unwrap();
        let out = extract(&cut, &dir.path().join("k"), &[]);
        assert_eq!(out.status.code(), Some(1), "kept {keep}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(&format!("cut-{keep}.rvf")), "{err}");
    }
}

#[test]
fn a_kernel_for_another_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("arm.rvf");
    let mut store = RvfStore::create(
        &path,
        RvfOptions {
            dimension: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let arch = if std::env::consts::ARCH == "aarch64" {
        0
    } else {
        1
    };
    store
        .embed_kernel(
            arch,
            1,
            0,
            b"not really a kernel",
            8080,
            Some("console=ttyAMA0"),
        )
        .unwrap();
    store.close().unwrap();
    let out = extract(&path, &dir.path().join("k"), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("is built for") && err.contains(std::env::consts::ARCH),
        "{err}"
    );
}

/// Serves `body` at `/vm.rvf` on loopback from a background runtime; returns the URL.
fn serve_file(body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/vm.rvf", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new()
                .route("/vm.rvf", axum::routing::get(move || async move { body }));
            axum::serve(listener, app).await.unwrap();
        });
    });
    url
}

#[test]
fn fetch_then_extract_works_like_the_http_source_init_containers() {
    let fx = fixture::hello();
    let bytes = fs::read(&fx.rvf).unwrap();
    let sha = rvf_operator::runtime::kernel::sha256_hex(&bytes);
    let url = serve_file(bytes);
    let dir = tempfile::tempdir().unwrap();
    let rvf = dir.path().join("source/vm.rvf");
    let out = Command::new(BIN)
        .args(["fetch", "--url", &url, "--sha256", &sha, "--out"])
        .arg(&rvf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = extract(&rvf, &dir.path().join("kernel"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read(dir.path().join("kernel/kernel")).unwrap(),
        fs::read(&fx.kernel).unwrap()
    );
}

#[test]
fn fetch_with_a_wrong_checksum_fails_and_says_so_in_the_termination_log() {
    let url = serve_file(b"tampered".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    fs::write(&log, "").unwrap();
    let out = Command::new(BIN)
        .args(["fetch", "--url", &url, "--sha256", &"0".repeat(64), "--out"])
        .arg(dir.path().join("vm.rvf"))
        .arg("--termination-log")
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = fs::read_to_string(&log).unwrap();
    assert!(
        msg.starts_with("sha256 mismatch for http://127.0.0.1"),
        "{msg}"
    );
    assert!(!dir.path().join("vm.rvf").exists());
}
