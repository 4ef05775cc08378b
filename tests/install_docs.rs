//! docs/install.md stays true to what ships: every metric the controller exports is listed,
//! and the sections users look for exist.

use std::path::PathBuf;

use rvf_operator::controller::metrics_server::Metrics;

fn install_md() -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/install.md"))
        .unwrap()
}

#[test]
fn every_exported_metric_is_documented() {
    let docs = install_md();
    let metrics = Metrics::new();
    // A labelled family with no series yet is not rendered: give each one a series.
    metrics.reconcile_failed(std::time::Duration::ZERO, "Example");
    let rendered = metrics.render();
    let families: Vec<(&str, &str)> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert!(families.len() >= 6, "{rendered}");

    for (family, kind) in families {
        // OpenMetrics names a counter family without `_total`; Prometheus users see it with.
        let shown = if kind == "counter" {
            format!("{family}_total")
        } else {
            family.to_owned()
        };
        assert!(
            docs.contains(&format!("`{shown}`")),
            "docs/install.md does not list {shown}"
        );
    }
}

#[test]
fn the_install_guide_has_every_section() {
    let docs = install_md();
    for heading in [
        "## Install with kubectl",
        "## Install with Helm",
        "## Install with Argo CD or Flux",
        "## Upgrade",
        "## Uninstall",
        "## Metrics and health",
    ] {
        assert!(
            docs.lines().any(|l| l == heading),
            "missing section {heading}"
        );
    }
}
