//! The agent's HTTP endpoints: `/healthz`, `/readyz`, `/status`, `/metrics`.
//!
//! Read-only views of the [`StatusBoard`]; nothing here can change the VM.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::status::{condition, Phase, StatusBoard, VmStatus};

/// The router serving `board`.
pub fn router(board: StatusBoard) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(board)
}

/// Binds `addr` and serves until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, board: StatusBoard) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(board)).await {
            tracing::error!(error = %e, "agent HTTP server stopped");
        }
    });
    Ok(local)
}

async fn healthz(State(board): State<StatusBoard>) -> Response {
    let s = board.snapshot();
    // Healthy while QEMU lives, and before it starts: a booting VM is not a dead one.
    if s.qemu_alive || matches!(s.phase, Phase::Pending | Phase::Extracting | Phase::Booting) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("QEMU is not running (phase {:?})\n", s.phase),
        )
            .into_response()
    }
}

async fn readyz(State(board): State<StatusBoard>) -> Response {
    let s = board.snapshot();
    if s.is_true(condition::READY) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = s
            .condition(condition::READY)
            .map_or_else(|| "not started".to_string(), |c| c.message.clone());
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    }
}

async fn status(State(board): State<StatusBoard>) -> Json<VmStatus> {
    Json(board.snapshot())
}

async fn metrics(State(board): State<StatusBoard>) -> Response {
    let text = render_metrics(&board.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The VM's metrics in OpenMetrics text, computed from one status snapshot.
pub fn render_metrics(s: &VmStatus) -> String {
    let mut registry = Registry::with_prefix("rvf_vm");
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        registry.register(name, help, g);
    };
    gauge(
        &mut registry,
        "qemu_up",
        "1 while the QEMU process is alive",
        s.qemu_alive as i64,
    );
    gauge(
        &mut registry,
        "ready",
        "1 while the guest answers its readiness probe",
        s.is_true(condition::READY) as i64,
    );
    gauge(
        &mut registry,
        "qmp_running",
        "1 while QMP query-status reports running",
        s.qmp.as_ref().is_some_and(|q| q.running) as i64,
    );
    gauge(
        &mut registry,
        "restarts",
        "QEMU starts after the first (KVM fallback, boot retries)",
        s.restarts as i64,
    );
    gauge(
        &mut registry,
        "kvm",
        "1 when the guest runs under KVM, 0 under TCG",
        (s.accelerator == Some(super::status::Accelerator::Kvm)) as i64,
    );
    let boot = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    boot.set(s.boot_seconds.unwrap_or(0.0));
    registry.register(
        "boot_seconds",
        "Seconds from QEMU start to the first readiness answer",
        boot,
    );
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::status::ConditionStatus;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(board: &StatusBoard, path: &str) -> (StatusCode, String) {
        let resp = router(board.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_the_ready_condition() {
        let board = StatusBoard::new();
        assert_eq!(
            get(&board, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        board.update(|s| {
            s.set_condition(
                condition::READY,
                ConditionStatus::True,
                "GuestAnswered",
                "ok",
            )
        });
        assert_eq!(get(&board, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn healthz_fails_once_qemu_is_gone() {
        let board = StatusBoard::new();
        board.update(|s| {
            s.phase = Phase::Running;
            s.qemu_alive = true;
        });
        assert_eq!(get(&board, "/healthz").await.0, StatusCode::OK);
        board.update(|s| {
            s.phase = Phase::Failed;
            s.qemu_alive = false;
        });
        let (code, body) = get(&board, "/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("Failed"), "{body}");
    }

    #[tokio::test]
    async fn status_is_the_board_as_json() {
        let board = StatusBoard::new();
        board.update(|s| s.boot_seconds = Some(2.5));
        let (code, body) = get(&board, "/status").await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["bootSeconds"], 2.5);
        assert_eq!(v["phase"], "Pending");
    }

    #[tokio::test]
    async fn metrics_report_readiness_and_boot_time() {
        let board = StatusBoard::new();
        board.update(|s| {
            s.boot_seconds = Some(3.25);
            s.set_condition(
                condition::READY,
                ConditionStatus::True,
                "GuestAnswered",
                "ok",
            );
        });
        let (_, body) = get(&board, "/metrics").await;
        assert!(body.contains("rvf_vm_ready 1"), "{body}");
        assert!(body.contains("rvf_vm_boot_seconds 3.25"), "{body}");
        assert!(body.contains("rvf_vm_qemu_up 0"), "{body}");
    }
}
