//! The controller's `/metrics`, `/healthz` and `/readyz` served on loopback ports it binds itself.

use std::{sync::Arc, time::Duration};

use rvf_operator::controller::metrics_server::{
    Health, Metrics, MetricsServer, MetricsServerArgs, MetricsServerError,
};
use tokio::sync::oneshot;

fn loopback_args(metrics_port: u16, health_port: u16) -> MetricsServerArgs {
    MetricsServerArgs {
        metrics_addr: ([127, 0, 0, 1], metrics_port).into(),
        health_addr: ([127, 0, 0, 1], health_port).into(),
    }
}

struct Running {
    metrics_url: String,
    health_url: String,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), MetricsServerError>>,
}

async fn start(args: MetricsServerArgs) -> Running {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let server = MetricsServer::bind(&args, metrics.clone(), health.clone())
        .await
        .expect("bind loopback");
    let addrs = server.local_addrs();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let health_addr = addrs.last().copied().unwrap();
    Running {
        metrics_url: format!("http://{}", addrs[0]),
        health_url: format!("http://{health_addr}"),
        health,
        metrics,
        stop,
        task,
    }
}

async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url)
        .await
        .expect("request to the local server");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_are_served_in_the_openmetrics_format() {
    let server = start(loopback_args(0, 0)).await;
    server
        .metrics
        .reconcile_failed(Duration::from_millis(2), "AgentStatus");

    let (status, content_type, body) = get(&format!("{}/metrics", server.metrics_url)).await;

    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    for name in [
        "rvf_operator_reconciles_total 1",
        "rvf_operator_reconcile_errors_total{error=\"AgentStatus\"} 1",
        "rvf_operator_reconcile_duration_seconds_bucket",
        "rvf_operator_vms{phase=\"Running\"} 0",
        "rvf_operator_vm_create_to_ready_seconds_count 0",
        "rvf_operator_leader 0",
    ] {
        assert!(body.contains(name), "{name} missing in:\n{body}");
    }
    assert!(body.ends_with("# EOF\n"));
}

#[tokio::test]
async fn readyz_follows_the_health_flag_and_healthz_always_answers() {
    let server = start(loopback_args(0, 0)).await;

    assert_eq!(get(&format!("{}/healthz", server.health_url)).await.0, 200);
    assert_eq!(get(&format!("{}/readyz", server.health_url)).await.0, 503);
    server.health.set_ready(true);
    assert_eq!(get(&format!("{}/readyz", server.health_url)).await.0, 200);
}

#[tokio::test]
async fn health_is_not_served_on_a_separate_metrics_port() {
    let server = start(loopback_args(0, 0)).await;

    assert_ne!(server.metrics_url, server.health_url);
    assert_eq!(get(&format!("{}/healthz", server.metrics_url)).await.0, 404);
    assert_eq!(get(&format!("{}/metrics", server.health_url)).await.0, 404);
}

#[tokio::test]
async fn one_address_serves_metrics_and_health_together() {
    // Find a free port, release it, then ask for it on both flags.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = start(loopback_args(port, port)).await;

    assert_eq!(server.metrics_url, server.health_url);
    assert_eq!(get(&format!("{}/metrics", server.metrics_url)).await.0, 200);
    assert_eq!(get(&format!("{}/healthz", server.metrics_url)).await.0, 200);
}

#[tokio::test]
async fn shutdown_stops_the_server_cleanly() {
    let server = start(loopback_args(0, 0)).await;
    let url = format!("{}/healthz", server.health_url);
    assert_eq!(get(&url).await.0, 200);

    server.stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("server returns after shutdown")
        .unwrap();

    assert!(result.is_ok(), "{result:?}");
    assert!(
        reqwest::get(&url).await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn a_busy_port_fails_with_the_address_in_the_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();

    let err = MetricsServer::bind(
        &loopback_args(port, 0),
        Arc::new(Metrics::new()),
        Arc::new(Health::default()),
    )
    .await
    .err()
    .expect("bind must fail on a busy port");

    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.to_string().contains("metrics"), "{err}");
}
