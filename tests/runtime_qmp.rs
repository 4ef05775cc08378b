//! The QMP client against a real QEMU running the fixture guest.

#[path = "support/fixture.rs"]
mod fixture;

use std::time::Duration;

use rvf_operator::runtime::qemu::{ConsoleSink, QemuConfig, QemuProcess};
use rvf_operator::runtime::qmp::QmpClient;
use rvf_operator::runtime::status::Accelerator;

fn qemu_config(dir: &std::path::Path) -> QemuConfig {
    let fx = fixture::hello();
    QemuConfig {
        binary: "qemu-system-x86_64".into(),
        accel: Accelerator::Tcg,
        memory_mib: 128,
        vcpus: 1,
        kernel: fx.kernel.clone(),
        initramfs: Some(fx.initramfs.clone()),
        cmdline: rvf_operator::runtime::vm::guest_cmdline(
            &fx.cmdline,
            "",
            Accelerator::Tcg,
            rvf_operator::runtime::accel::host_tsc_khz(),
        ),
        rvf_drive: Some(fx.rvf.clone()),
        forwards: vec![],
        qmp_socket: dir.join("qmp.sock"),
        tcg_tb_size_mib: 32,
        extra_args: vec![],
    }
}

#[tokio::test]
async fn stop_and_cont_events_arrive_around_their_replies_and_status_follows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = qemu_config(dir.path());
    let mut qemu = QemuProcess::spawn(&cfg, ConsoleSink::Discard).unwrap();
    let qmp = QmpClient::connect(&cfg.qmp_socket, Duration::from_secs(10))
        .await
        .unwrap();
    let mut events = qmp.events();

    assert_eq!(qmp.query_status().await.unwrap().status, "running");
    // QEMU sends STOP before the reply to `stop`; the reply must still arrive.
    qmp.execute("stop", None).await.unwrap();
    let st = qmp.query_status().await.unwrap();
    assert_eq!((st.status.as_str(), st.running), ("paused", false));
    qmp.execute("cont", None).await.unwrap();
    let st = qmp.query_status().await.unwrap();
    assert_eq!((st.status.as_str(), st.running), ("running", true));

    let first = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.name.as_str(), second.name.as_str()),
        ("STOP", "RESUME")
    );

    qmp.quit().await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), qemu.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    let shutdown = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    if let Ok(Ok(ev)) = shutdown {
        assert_eq!(ev.shutdown_reason(), Some("host-qmp-quit"));
    }
}

#[tokio::test]
async fn a_second_client_gets_no_greeting_while_the_first_holds_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = qemu_config(dir.path());
    let mut qemu = QemuProcess::spawn(&cfg, ConsoleSink::Discard).unwrap();
    let first = QmpClient::connect(&cfg.qmp_socket, Duration::from_secs(10))
        .await
        .unwrap();
    let second = QmpClient::connect(&cfg.qmp_socket, Duration::from_millis(1500)).await;
    let err = second.err().expect("second client must not get through");
    assert!(err.to_string().contains("no greeting"), "{err}");
    first.quit().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), qemu.wait()).await;
    let _ = qemu.kill().await;
}
