//! GitOps integration: the Argo CD health check (run in a real Lua 5.1, the dialect of Argo CD's
//! gopher-lua) gives the documented health for each state, and the GitOps manifests parse.

mod install_support;

use install_support::{documents, kind, name, repo, yaml_files};
use mlua::{Lua, Table};
use rvf_operator::controller::metrics_server::VM_PHASES;
use serde_json::{json, Value};

fn health_lua() -> String {
    std::fs::read_to_string(repo().join("gitops/argocd/health.lua")).unwrap()
}

/// Converts JSON the way Argo CD hands objects to Lua: objects and arrays become tables,
/// nulls are left out.
fn to_lua(lua: &Lua, value: &Value) -> mlua::Value {
    match value {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => mlua::Value::Number(n.as_f64().unwrap()),
        Value::String(s) => mlua::Value::String(lua.create_string(s).unwrap()),
        Value::Array(items) => {
            let table = lua.create_table().unwrap();
            for (i, item) in items.iter().enumerate() {
                table.set(i + 1, to_lua(lua, item)).unwrap();
            }
            mlua::Value::Table(table)
        }
        Value::Object(map) => {
            let table = lua.create_table().unwrap();
            for (k, v) in map {
                table.set(k.as_str(), to_lua(lua, v)).unwrap();
            }
            mlua::Value::Table(table)
        }
    }
}

/// (status, message) the health check gives `obj`.
fn health(obj: &Value) -> (String, String) {
    let lua = Lua::new();
    lua.globals().set("obj", to_lua(&lua, obj)).unwrap();
    let hs: Table = lua
        .load(health_lua())
        .set_name("health.lua")
        .eval()
        .expect("health.lua runs");
    (hs.get("status").unwrap(), hs.get("message").unwrap())
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({ "type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z" })
}

fn vm(generation: i64, status: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": "rvf.ruvector.io/v1alpha1",
        "kind": "RvfMicroVm",
        "metadata": { "name": "vectors", "namespace": "rvf-demo", "generation": generation },
        "spec": { "source": { "http": { "url": "https://example.com/a.rvf", "sha256": "00" } } }
    });
    if let Some(status) = status {
        obj["status"] = status;
    }
    obj
}

fn observed(phase: &str, conditions: Vec<Value>) -> Value {
    vm(
        3,
        Some(json!({ "phase": phase, "observedGeneration": 3, "conditions": conditions })),
    )
}

#[test]
fn a_vm_without_status_is_progressing() {
    assert_eq!(health(&vm(1, None)).0, "Progressing");
}

#[test]
fn a_ready_vm_is_healthy() {
    let obj = observed(
        "Running",
        vec![condition(
            "Ready",
            "True",
            "GuestReady",
            "guest answers on port 8080",
        )],
    );

    assert_eq!(
        health(&obj),
        ("Healthy".into(), "guest answers on port 8080".into())
    );
}

#[test]
fn a_booting_vm_is_progressing_with_its_phase() {
    let obj = observed(
        "Booting",
        vec![
            condition(
                "Ready",
                "False",
                "Booting",
                "waiting for the guest's HTTP API",
            ),
            condition("Reconciling", "True", "Booting", "QEMU started"),
        ],
    );

    let (status, message) = health(&obj);

    assert_eq!(status, "Progressing");
    assert!(message.starts_with("Booting"), "{message}");
}

#[test]
fn a_failed_vm_is_degraded_with_the_reason() {
    let mut obj = observed(
        "Failed",
        vec![condition(
            "Ready",
            "False",
            "KernelInvalid",
            "no KERNEL_SEG in the RVF file",
        )],
    );
    obj["status"]["message"] = json!("no KERNEL_SEG in the RVF file");

    assert_eq!(
        health(&obj),
        ("Degraded".into(), "no KERNEL_SEG in the RVF file".into())
    );
}

#[test]
fn a_failed_vm_waiting_to_rerun_is_progressing_as_kstatus_says() {
    let mut obj = observed(
        "Failed",
        vec![
            condition(
                "Ready",
                "False",
                "GuestCrashed",
                "the guest kernel panicked",
            ),
            condition("Reconciling", "True", "RerunPending", "rerun in 20s"),
        ],
    );
    obj["status"]["message"] = json!("the guest kernel panicked");
    let (status, message) = health(&obj);
    assert_eq!(status, "Progressing");
    assert!(message.contains("rerun pending"), "{message}");
}

#[test]
fn a_stalled_vm_is_degraded_even_while_pending() {
    let obj = observed(
        "Pending",
        vec![
            condition("Ready", "False", "NoKvmNode", "no node offers KVM"),
            condition(
                "Stalled",
                "True",
                "NoKvmNode",
                "no node offers KVM; label one or use kvm: Auto",
            ),
        ],
    );

    let (status, message) = health(&obj);

    assert_eq!(status, "Degraded");
    assert!(message.contains("label one"), "{message}");
}

#[test]
fn a_stopped_vm_is_suspended() {
    let obj = observed(
        "Stopped",
        vec![condition(
            "Ready",
            "False",
            "Halted",
            "runStrategy is Halted",
        )],
    );

    assert_eq!(health(&obj).0, "Suspended");
}

#[test]
fn a_spec_change_not_yet_observed_is_progressing_even_if_ready() {
    let mut obj = observed(
        "Running",
        vec![condition("Ready", "True", "GuestReady", "ok")],
    );
    obj["metadata"]["generation"] = json!(4);

    let (status, message) = health(&obj);

    assert_eq!(status, "Progressing");
    assert!(message.contains("generation 4"), "{message}");
}

#[test]
fn every_phase_maps_to_an_argo_cd_health_status() {
    for phase in VM_PHASES {
        let (status, _) = health(&observed(phase, vec![]));
        let expected = match phase {
            "Failed" => "Degraded",
            "Stopped" => "Suspended",
            _ => "Progressing",
        };
        assert_eq!(status, expected, "phase {phase}");
    }
}

#[test]
fn the_argocd_cm_patch_carries_health_lua_verbatim() {
    let text = std::fs::read_to_string(repo().join("gitops/argocd/argocd-cm-patch.yaml")).unwrap();
    let patch = &documents(&text, "gitops/argocd/argocd-cm-patch.yaml")[0];
    let inline = patch["data"]["resource.customizations.health.rvf.ruvector.io_RvfMicroVm"]
        .as_str()
        .expect("health key for group rvf.ruvector.io, kind RvfMicroVm");

    assert!(
        inline == health_lua(),
        "gitops/argocd/argocd-cm-patch.yaml is stale: run scripts/sync-argocd-health.sh"
    );
}

#[test]
fn every_gitops_manifest_is_a_named_object() {
    let files = yaml_files(&repo().join("gitops"));
    assert!(files.len() >= 4, "{files:?}");

    for path in files {
        let origin = path.strip_prefix(repo()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in documents(&text, &origin) {
            if origin.ends_with("argocd-cm-patch.yaml") {
                continue; // a patch, not an object
            }
            assert!(doc["apiVersion"].is_string(), "{origin}: apiVersion");
            assert!(
                doc["spec"].is_object(),
                "{origin}: {} {} has no spec",
                kind(&doc),
                name(&doc)
            );
            assert_ne!(
                name(&doc),
                "<no name>",
                "{origin}: {} has no name",
                kind(&doc)
            );
        }
    }
}

#[test]
fn flux_health_checks_name_the_rvfmicrovm_kind_of_the_crd() {
    let text = std::fs::read_to_string(repo().join("gitops/flux/vms.yaml")).unwrap();
    let kustomization = &documents(&text, "gitops/flux/vms.yaml")[0];
    let check = &kustomization["spec"]["healthChecks"][0];

    assert_eq!(check["apiVersion"], json!("rvf.ruvector.io/v1alpha1"));
    assert_eq!(check["kind"], json!("RvfMicroVm"));
}
