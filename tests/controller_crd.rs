//! The generated CRD: that `crds/` is current, its schema bounds, and its CEL rules evaluated
//! the way the apiserver would (kube's client-side CEL validator).

use kube::core::cel::{compile_schema, CompiledSchema, Validator};
use kube::CustomResourceExt;
use rvf_operator::crd::{crd_yaml, KvmMode, RunStrategy, RvfMicroVm, RvfMicroVmSpec};
use serde_json::{json, Value};

fn schema() -> Value {
    let crd = RvfMicroVm::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD carries an openAPIV3Schema");
    serde_json::to_value(schema).unwrap()
}

fn vm(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "rvf.ruvector.io/v1alpha1",
        "kind": "RvfMicroVm",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

/// The messages of every rule the object breaks; empty when the apiserver would accept it.
fn rejections(object: Value) -> Vec<String> {
    match Validator::new().validate(&schema(), &object, None) {
        Ok(()) => vec![],
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn pvc_source() -> Value {
    json!({"persistentVolumeClaim": {"claimName": "rvfs", "path": "hello.rvf"}})
}

#[test]
fn crd_file_in_repo_matches_the_generated_crd() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/rvfmicrovm.yaml");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == crd_yaml(),
        "crds/rvfmicrovm.yaml is out of date with src/crd.rs; regenerate it with \
         `cargo run -- crd > crds/rvfmicrovm.yaml` and commit the result"
    );
}

#[test]
fn crd_names_group_version_and_short_name() {
    let crd = RvfMicroVm::crd();
    assert_eq!(crd.spec.group, "rvf.ruvector.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["rvfvm".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
}

#[test]
fn printer_columns_are_phase_ready_qmp_accel_node_age() {
    let crd = RvfMicroVm::crd();
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap();
    let names: Vec<_> = columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Phase", "Ready", "QMP", "Accel", "Node", "Age"]);
    assert_eq!(
        columns[1].json_path,
        ".status.conditions[?(@.type==\"Ready\")].status"
    );
}

#[test]
fn schema_bounds_memory_vcpus_and_ports() {
    let spec = &schema()["properties"]["spec"]["properties"];
    assert_eq!(spec["memoryMiB"]["minimum"], 72.0);
    assert_eq!(spec["memoryMiB"]["maximum"], 65536.0);
    assert_eq!(spec["memoryMiB"]["default"], 128);
    assert_eq!(spec["vcpus"]["minimum"], 1.0);
    assert_eq!(spec["vcpus"]["maximum"], 64.0);
    assert_eq!(spec["apiPort"]["minimum"], 1.0);
    assert_eq!(spec["apiPort"]["maximum"], 65535.0);
    assert_eq!(spec["ssh"]["properties"]["port"]["minimum"], 1.0);
    assert_eq!(spec["ssh"]["properties"]["port"]["maximum"], 65535.0);
    let sha = &spec["source"]["properties"]["http"]["properties"]["sha256"];
    assert_eq!(sha["pattern"], "^[0-9a-f]{64}$");
}

#[test]
fn every_cel_rule_compiles() {
    fn walk(node: &CompiledSchema, path: &str, failures: &mut Vec<String>) {
        for err in node.compilation_errors() {
            failures.push(format!("{path}: {err}"));
        }
        for (name, child) in &node.properties {
            walk(child, &format!("{path}.{name}"), failures);
        }
        if let Some(items) = &node.items {
            walk(items, &format!("{path}[]"), failures);
        }
    }
    let compiled = compile_schema(&schema());
    let mut failures = vec![];
    walk(&compiled, "", &mut failures);
    assert!(
        failures.is_empty(),
        "rules that do not compile: {failures:?}"
    );
    let text = crd_yaml();
    assert!(text.matches("x-kubernetes-validations").count() >= 6);
}

#[test]
fn a_minimal_spec_gets_the_upstream_launcher_defaults() {
    let spec: RvfMicroVmSpec = serde_json::from_value(json!({"source": pvc_source()})).unwrap();
    assert_eq!(spec.memory_mib, 128);
    assert_eq!(spec.vcpus, 1);
    assert_eq!(spec.api_port, None);
    assert_eq!(spec.service_api_port(), 8080);
    assert_eq!(spec.ssh_port(), None);
    assert_eq!(spec.kvm, KvmMode::Auto);
    assert_eq!(spec.run_strategy, RunStrategy::Always);
    assert_eq!(spec.termination_grace_period_seconds, 30);
    assert_eq!(spec.readiness.path, "/v1/health");
    assert_eq!(spec.readiness.period_seconds, 2);
    assert_eq!(spec.readiness.timeout_seconds, 1);
    assert_eq!(spec.readiness.startup_timeout_seconds, 120);
}

#[test]
fn each_kind_of_source_alone_is_accepted() {
    let sha = "a".repeat(64);
    for source in [
        pvc_source(),
        json!({"http": {"url": "https://example.invalid/x.rvf", "sha256": sha}}),
        json!({"image": {"reference": "registry.invalid/rvf:1", "path": "vm/hello.rvf"}}),
        json!({"hostPath": {"path": "/var/lib/rvf/hello.rvf"}, "initramfsPath": "/var/lib/rvf/i.cpio"}),
    ] {
        let errors = rejections(vm("hello", json!({ "source": source.clone() })));
        assert!(errors.is_empty(), "{source} was rejected: {errors:?}");
    }
}

#[test]
fn a_source_with_no_kind_is_rejected() {
    let errors = rejections(vm("hello", json!({"source": {}})));
    assert!(
        errors
            .iter()
            .any(|m| m.starts_with("exactly one of source")),
        "{errors:?}"
    );
}

#[test]
fn a_source_with_two_kinds_is_rejected() {
    let mut source = pvc_source();
    source["hostPath"] = json!({"path": "/x.rvf"});
    let errors = rejections(vm("hello", json!({ "source": source })));
    assert!(
        errors
            .iter()
            .any(|m| m.starts_with("exactly one of source")),
        "{errors:?}"
    );
}

#[test]
fn an_initramfs_path_beside_an_http_source_is_rejected() {
    let source = json!({
        "http": {"url": "https://example.invalid/x.rvf", "sha256": "b".repeat(64)},
        "initramfsPath": "initramfs.cpio",
    });
    let errors = rejections(vm("hello", json!({ "source": source })));
    assert!(
        errors.iter().any(|m| m.contains("an http source has none")),
        "{errors:?}"
    );
}

#[test]
fn a_volume_path_that_climbs_out_with_dot_dot_is_rejected() {
    let source = json!({"persistentVolumeClaim": {"claimName": "c", "path": "a/../../etc/x.rvf"}});
    let errors = rejections(vm("hello", json!({ "source": source })));
    assert!(errors.iter().any(|m| m.contains("'..'")), "{errors:?}");

    let source = json!({"image": {"reference": "r", "path": "/abs.rvf"}});
    let errors = rejections(vm("hello", json!({ "source": source })));
    assert!(
        errors
            .iter()
            .any(|m| m.contains("relative to the image root")),
        "{errors:?}"
    );
}

#[test]
fn a_relative_host_path_is_rejected() {
    let source = json!({"hostPath": {"path": "hello.rvf"}});
    let errors = rejections(vm("hello", json!({ "source": source })));
    assert!(
        errors.iter().any(|m| m.contains("absolute path")),
        "{errors:?}"
    );
}

#[test]
fn an_http_url_with_another_scheme_is_rejected() {
    let source = json!({"http": {"url": "file:///etc/passwd", "sha256": "c".repeat(64)}});
    let errors = rejections(vm("hello", json!({ "source": source })));
    assert!(
        errors.iter().any(|m| m.contains("https:// or http://")),
        "{errors:?}"
    );
}

#[test]
fn guest_ports_that_collide_with_the_agent_or_each_other_are_rejected() {
    let errors = rejections(vm(
        "hello",
        json!({"source": pvc_source(), "apiPort": 9100}),
    ));
    assert!(
        errors.iter().any(|m| m.starts_with("apiPort 9100")),
        "{errors:?}"
    );

    let errors = rejections(vm(
        "hello",
        json!({"source": pvc_source(), "apiPort": 2222, "ssh": {"enabled": true, "port": 2222}}),
    ));
    assert!(
        errors.iter().any(|m| m.contains("must differ")),
        "{errors:?}"
    );

    let errors = rejections(vm(
        "hello",
        json!({"source": pvc_source(), "ssh": {"enabled": true, "port": 8080}}),
    ));
    assert!(
        errors.iter().any(|m| m.contains("default apiPort")),
        "{errors:?}"
    );

    let ok = rejections(vm(
        "hello",
        json!({"source": pvc_source(), "ssh": {"enabled": false, "port": 8080}}),
    ));
    assert!(ok.is_empty(), "disabled ssh must not be checked: {ok:?}");
}

#[test]
fn a_name_that_cannot_be_a_service_name_is_rejected() {
    let errors = rejections(vm("my.vm", json!({"source": pvc_source()})));
    assert!(errors.iter().any(|m| m.contains("DNS-1035")), "{errors:?}");
    let errors = rejections(vm(&"a".repeat(64), json!({"source": pvc_source()})));
    assert!(errors.iter().any(|m| m.contains("DNS-1035")), "{errors:?}");
}
