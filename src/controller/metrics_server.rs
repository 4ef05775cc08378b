//! The controller's Prometheus metrics and its `/metrics`, `/healthz` and `/readyz` HTTP endpoints.
//!
//! It only records what the controller reports and serves it; it never talks to the Kubernetes API.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use futures::FutureExt;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::net::TcpListener;
use tracing::info;

/// The VM phases always exported by `rvf_operator_vms`, at zero when no VM is in them.
pub const VM_PHASES: [&str; 7] = [
    "Pending",
    "Extracting",
    "Booting",
    "Running",
    "Stopping",
    "Stopped",
    "Failed",
];

/// Content type of the Prometheus text exposition format served on `/metrics`.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Command-line options of the metrics and health server, flattened into `ControllerArgs`.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsServerArgs {
    /// Address `/metrics` is served on.
    #[arg(
        long = "metrics-addr",
        env = "RVF_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,

    /// Address `/healthz` and `/readyz` are served on; may equal `--metrics-addr`.
    #[arg(
        long = "health-addr",
        env = "RVF_HEALTH_ADDR",
        default_value = "0.0.0.0:8081"
    )]
    pub health_addr: SocketAddr,
}

/// Failures of the metrics and health server; each names the address it is about.
#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    /// The address is in use or not allowed.
    #[error("failed to listen on {addr} for the {purpose} endpoint")]
    Bind {
        /// The address from the flags.
        addr: SocketAddr,
        /// `metrics` or `health`.
        purpose: &'static str,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },

    /// Accepting connections failed after the server had started.
    #[error("the HTTP server on {addr} stopped")]
    Serve {
        /// The bound address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

/// All metrics of the controller process, registered under the `rvf_operator` prefix.
///
/// Cheap to share behind an `Arc`; every method is safe to call from any reconcile task.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    vms: Family<PhaseLabels, Gauge>,
    create_to_ready: Histogram,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric, with all VM phases at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rvf_operator");

        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Reconciliations of RvfMicroVm objects, successful or not",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciliations, by error kind",
            reconcile_errors.clone(),
        );
        // 1 ms to about 33 s: a reconcile is a few API calls plus one agent status pull.
        let reconcile_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconciliation took",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let vms = Family::<PhaseLabels, Gauge>::default();
        registry.register("vms", "RvfMicroVm objects by status phase", vms.clone());
        // Pod scheduling, image pull, kernel extraction and a TCG boot: 0.5 s to 15 minutes.
        let create_to_ready = Histogram::new([
            0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0,
        ]);
        registry.register_with_unit(
            "vm_create_to_ready",
            "Time from RvfMicroVm creation to its first Ready=True",
            Unit::Seconds,
            create_to_ready.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader election Lease, else 0",
            leader.clone(),
        );

        let metrics = Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            vms,
            create_to_ready,
            leader,
        };
        metrics.set_vms_by_phase(&BTreeMap::new());
        metrics
    }

    /// Records one successful reconciliation that took `elapsed`.
    pub fn reconcile_succeeded(&self, elapsed: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// Records one failed reconciliation that took `elapsed`.
    ///
    /// `error` becomes a label value: pass the error's kind (an enum variant name), never a
    /// message with object names in it, or the series count grows with every object.
    pub fn reconcile_failed(&self, elapsed: Duration, error: &str) {
        self.reconciles.inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                error: error.to_owned(),
            })
            .inc();
    }

    /// Replaces the VM counts by phase; phases missing from `counts` are exported as zero.
    pub fn set_vms_by_phase(&self, counts: &BTreeMap<String, i64>) {
        for phase in VM_PHASES {
            let count = counts.get(phase).copied().unwrap_or(0);
            self.vms
                .get_or_create(&PhaseLabels {
                    phase: phase.to_owned(),
                })
                .set(count);
        }
        for (phase, count) in counts
            .iter()
            .filter(|(p, _)| !VM_PHASES.contains(&p.as_str()))
        {
            self.vms
                .get_or_create(&PhaseLabels {
                    phase: phase.clone(),
                })
                .set(*count);
        }
    }

    /// Records how long a VM took from the creation of its object to its first `Ready=True`.
    pub fn observe_create_to_ready(&self, elapsed: Duration) {
        self.create_to_ready.observe(elapsed.as_secs_f64());
    }

    /// Marks whether this replica is the leader.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}

/// Liveness and readiness of the controller process, as `/healthz` and `/readyz` report them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Sets what `/readyz` answers.
    ///
    /// Mark ready once the API client works and the replica is campaigning or leading: a
    /// standby must be ready too, or a rolling update of two replicas never completes.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// What `/readyz` answers now.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The HTTP router serving `/metrics`.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(metrics)
}

/// The HTTP router serving `/healthz` (the process answers) and `/readyz` ([`Health::is_ready`]).
pub fn health_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(serve_readyz))
        .with_state(health)
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        metrics.render(),
    )
}

async fn serve_readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// The metrics and health endpoints, bound and ready to serve.
pub struct MetricsServer {
    listeners: Vec<(TcpListener, Router)>,
}

impl MetricsServer {
    /// Binds the metrics and health addresses (one socket when they are equal and not port 0).
    ///
    /// Binding happens here, before the controller starts, so a busy port fails the process
    /// at once with the address in the message.
    pub async fn bind(
        args: &MetricsServerArgs,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, MetricsServerError> {
        let bind = |addr: SocketAddr, purpose: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| MetricsServerError::Bind {
                    addr,
                    purpose,
                    source,
                })
        };

        // Port 0 asks for two distinct ephemeral ports, not one shared socket.
        let shared = args.metrics_addr == args.health_addr && args.metrics_addr.port() != 0;
        let listeners = if shared {
            let router = metrics_router(metrics).merge(health_router(health));
            vec![(bind(args.metrics_addr, "metrics").await?, router)]
        } else {
            vec![
                (
                    bind(args.metrics_addr, "metrics").await?,
                    metrics_router(metrics),
                ),
                (
                    bind(args.health_addr, "health").await?,
                    health_router(health),
                ),
            ]
        };
        Ok(Self { listeners })
    }

    /// The addresses actually bound (useful with port 0), metrics first.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MetricsServerError> {
        let shutdown = shutdown.shared();
        let servers = self.listeners.into_iter().map(|(listener, router)| {
            let shutdown = shutdown.clone();
            async move {
                let addr = listener
                    .local_addr()
                    .map_err(|source| MetricsServerError::Serve {
                        addr: ([0, 0, 0, 0], 0).into(),
                        source,
                    })?;
                info!(%addr, "serving metrics and health endpoints");
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(|source| MetricsServerError::Serve { addr, source })
            }
        });
        futures::future::try_join_all(servers).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_registry_exports_every_phase_at_zero() {
        let text = Metrics::new().render();
        for phase in VM_PHASES {
            assert!(
                text.contains(&format!("rvf_operator_vms{{phase=\"{phase}\"}} 0")),
                "{phase} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn a_failed_reconcile_counts_as_a_reconcile_and_an_error() {
        let metrics = Metrics::new();
        metrics.reconcile_succeeded(Duration::from_millis(3));
        metrics.reconcile_failed(Duration::from_millis(5), "PodApply");
        let text = metrics.render();
        assert!(text.contains("rvf_operator_reconciles_total 2"), "{text}");
        assert!(
            text.contains("rvf_operator_reconcile_errors_total{error=\"PodApply\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rvf_operator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
    }

    #[test]
    fn phase_counts_replace_the_previous_ones() {
        let metrics = Metrics::new();
        metrics.set_vms_by_phase(&BTreeMap::from([("Running".to_owned(), 3)]));
        metrics.set_vms_by_phase(&BTreeMap::from([("Failed".to_owned(), 1)]));
        let text = metrics.render();
        assert!(
            text.contains("rvf_operator_vms{phase=\"Running\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("rvf_operator_vms{phase=\"Failed\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn create_to_ready_and_leader_are_exported() {
        let metrics = Metrics::new();
        metrics.observe_create_to_ready(Duration::from_secs_f64(3.2));
        metrics.set_leader(true);
        let text = metrics.render();
        assert!(
            text.contains("rvf_operator_vm_create_to_ready_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("rvf_operator_leader 1"), "{text}");
    }
}
