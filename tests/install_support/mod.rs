//! Shared helpers of the install tests: reading manifests, typing them with k8s-openapi, and
//! running the real Helm binary that `scripts/helm.sh` installs.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, PersistentVolumeClaim, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use rvf_operator::crd::RvfMicroVm;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart folder.
pub fn chart() -> PathBuf {
    repo().join("charts/rvf-operator")
}

/// Every YAML document in `text`, as JSON values; empty documents are skipped.
pub fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .filter_map(|(i, doc)| {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{origin}: document {i} is not YAML: {e}"));
            (!value.is_null()).then(|| serde_json::to_value(value).expect("YAML to JSON"))
        })
        .collect()
}

/// YAML files under `dir`, recursively, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `kind` of a document, for messages and filtering.
pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("<no kind>")
}

/// `metadata.name` of a document.
pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("<no name>")
}

/// Checks that `doc` is a well-formed object of its kind: it deserializes into the project's
/// k8s-openapi (or CRD) type, and serializing that back keeps every field the document had,
/// so a misspelled or misplaced field fails instead of being dropped silently.
///
/// Returns an error for kinds the project has no type for, except those in `untyped_ok`.
pub fn check_typed(doc: &Value, origin: &str, untyped_ok: &[&str]) -> Result<(), String> {
    let what = format!("{origin}: {} {}", kind(doc), name(doc));
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    match (api_version, kind(doc)) {
        ("v1", "Namespace") => roundtrip::<Namespace>(doc, &what),
        ("v1", "ServiceAccount") => roundtrip::<ServiceAccount>(doc, &what),
        ("v1", "Service") => roundtrip::<Service>(doc, &what),
        ("v1", "PersistentVolumeClaim") => roundtrip::<PersistentVolumeClaim>(doc, &what),
        ("apps/v1", "Deployment") => roundtrip::<Deployment>(doc, &what),
        ("networking.k8s.io/v1", "NetworkPolicy") => roundtrip::<NetworkPolicy>(doc, &what),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip::<ClusterRole>(doc, &what),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            roundtrip::<ClusterRoleBinding>(doc, &what)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => roundtrip::<Role>(doc, &what),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip::<RoleBinding>(doc, &what),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            roundtrip::<CustomResourceDefinition>(doc, &what)
        }
        ("rvf.ruvector.io/v1alpha1", "RvfMicroVm") => roundtrip::<RvfMicroVm>(doc, &what),
        (_, k) if untyped_ok.contains(&k) => {
            if doc["metadata"]["name"].is_string() && doc["spec"].is_object() {
                Ok(())
            } else {
                Err(format!("{what}: needs metadata.name and spec"))
            }
        }
        (v, k) => Err(format!("{what}: no Kubernetes type known for {v} {k}")),
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| format!("{what}: {e}"))?;
    let back = serde_json::to_value(&typed).expect("serialize a typed object");
    subset(doc, &back, "").map_err(|path| {
        format!("{what}: field {path} is not part of the type or has the wrong shape")
    })
}

/// `Ok` when every field of `original` is in `typed` with the same value (defaults may add).
fn subset(original: &Value, typed: &Value, path: &str) -> Result<(), String> {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => o.iter().try_for_each(|(k, v)| {
            let here = format!("{path}.{k}");
            match t.get(k) {
                Some(tv) => subset(v, tv, &here),
                None => Err(here),
            }
        }),
        (Value::Array(o), Value::Array(t)) if o.len() == t.len() => o
            .iter()
            .zip(t)
            .enumerate()
            .try_for_each(|(i, (a, b))| subset(a, b, &format!("{path}[{i}]"))),
        // YAML tools print 65535.0 as 65535 and k8s-openapi keeps schema bounds as f64.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        (a, b) if a == b => Ok(()),
        _ => Err(path.to_owned()),
    }
}

/// Path of the Helm binary: `$HELM`, else `target/tools/helm` from `scripts/helm.sh`.
///
/// Panics with a message naming `scripts/helm.sh` when neither exists: these tests never pass
/// without running the real Helm.
pub fn helm() -> PathBuf {
    tool("HELM", "helm")
}

/// Path of kubectl: `$KUBECTL`, else `target/tools/kubectl` from `scripts/helm.sh`.
pub fn kubectl() -> PathBuf {
    tool("KUBECTL", "kubectl")
}

fn tool(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let path = repo().join("target/tools").join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: run scripts/helm.sh first (it installs the real helm and kubectl \
         into target/tools/), or set ${env}",
        path.display()
    );
    path
}

/// Runs a tool; returns (success, stdout, stderr).
pub fn run(program: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", program.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of the chart (CRDs included) with extra arguments; panics on failure.
pub fn helm_template(extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        "rvf",
        chart.to_str().unwrap(),
        "--namespace",
        "rvf-system",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = run(&helm(), &args);
    assert!(ok, "helm template {extra:?} failed:\n{stderr}");
    stdout
}
