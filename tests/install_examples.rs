//! Every `RvfMicroVm` the project shows a user validates against the generated CRD schema,
//! read as the API server reads YAML: an unquoted `000…0` is a number, not a string.
//! The real kubectl (`kubectl kustomize`) does the reading, so its YAML rules apply.

mod install_support;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The openAPIV3Schema of the served version of the generated CRD.
fn schema() -> Value {
    let crd: Value = serde_yaml::from_str(&rvf_operator::crd::crd_yaml()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Structural check of `v` against `s`: types, required fields, unknown fields, enums
/// and numeric bounds. CEL rules and patterns are the API server's; not run here.
fn check(s: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    if v.is_null() && s["nullable"] == true {
        return;
    }
    if s["x-kubernetes-int-or-string"] == true {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errors.push(format!("{at}: {v} is neither an integer nor a string"));
        }
        return;
    }
    if let Some(allowed) = s["enum"].as_array() {
        if !allowed.contains(v) {
            errors.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    let ok = match s["type"].as_str() {
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{at}: {v} is not of type {}", s["type"]));
        return;
    }
    if let (Some(n), Some(min)) = (v.as_f64(), s["minimum"].as_f64()) {
        if n < min {
            errors.push(format!("{at}: {n} is below the minimum {min}"));
        }
    }
    if let (Some(n), Some(max)) = (v.as_f64(), s["maximum"].as_f64()) {
        if n > max {
            errors.push(format!("{at}: {n} is above the maximum {max}"));
        }
    }
    if let Some(items) = v.as_array() {
        for (i, item) in items.iter().enumerate() {
            check(&s["items"], item, &format!("{at}[{i}]"), errors);
        }
    }
    if let Some(obj) = v.as_object() {
        for req in s["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(req.as_str().unwrap()) {
                errors.push(format!("{at}: missing required field {req}"));
            }
        }
        for (key, value) in obj {
            let path = format!("{at}.{key}");
            match (&s["properties"][key], &s["additionalProperties"]) {
                (p, _) if !p.is_null() => check(p, value, &path, errors),
                (_, a) if a.is_object() => check(a, value, &path, errors),
                _ if s["x-kubernetes-preserve-unknown-fields"] == true => {}
                _ if s["properties"].is_null() => {}
                _ => errors.push(format!("{path}: unknown field")),
            }
        }
    }
}

fn validate(doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let mut body = doc.clone();
    // apiVersion, kind and metadata are the API server's own; the CRD types the rest.
    for k in ["apiVersion", "kind", "metadata"] {
        body.as_object_mut().unwrap().remove(k);
    }
    check(
        &schema()["properties"]["spec"],
        &body["spec"],
        "spec",
        &mut errors,
    );
    errors
}

/// RvfMicroVm documents in YAML text, as kubectl reads them.
fn vms_in_yaml(text: &str) -> Vec<Value> {
    if !text.contains("kind: RvfMicroVm") {
        return Vec::new();
    }
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("doc.yaml"), text).unwrap();
    fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: [doc.yaml]\n",
    )
    .unwrap();
    let kubectl = install_support::kubectl();
    let (ok, out, err) =
        install_support::run(&kubectl, &["kustomize", dir.path().to_str().unwrap()]);
    assert!(ok, "kubectl kustomize failed on:\n{text}\n{err}");
    serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| v["kind"] == "RvfMicroVm")
        .collect()
}

/// RvfMicroVm documents in the ```yaml blocks of a Markdown file.
fn vms_in_markdown(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap();
    text.split("```yaml")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .flat_map(vms_in_yaml)
        .collect()
}

#[test]
fn the_example_manifests_validate_against_the_crd_schema() {
    let dir = root().join("deploy/examples");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        for vm in vms_in_yaml(&fs::read_to_string(&path).unwrap()) {
            seen += 1;
            let errors = validate(&vm);
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        }
    }
    assert!(
        seen >= 3,
        "only {seen} RvfMicroVm examples found in {}",
        dir.display()
    );
}

#[test]
fn the_manifests_in_the_docs_validate_against_the_crd_schema() {
    let mut seen = 0;
    for doc in ["README.md", "docs/controller.md", "docs/install.md"] {
        for vm in vms_in_markdown(&root().join(doc)) {
            seen += 1;
            let errors = validate(&vm);
            assert!(errors.is_empty(), "{doc}: {errors:#?}");
        }
    }
    assert!(
        seen >= 2,
        "only {seen} RvfMicroVm manifests found in the docs"
    );
}

#[test]
fn an_unquoted_all_digit_checksum_is_caught_as_a_number() {
    let vm = vms_in_yaml(
        "apiVersion: rvf.ruvector.io/v1alpha1\nkind: RvfMicroVm\nmetadata: {name: x}\nspec:\n  source:\n    http:\n      url: https://example.org/x.rvf\n      sha256: 0000000000000000000000000000000000000000000000000000000000000000\n",
    );
    let errors = validate(&vm[0]);
    assert!(errors.iter().any(|e| e.contains("sha256")), "{errors:#?}");
}

#[test]
fn unknown_fields_and_out_of_range_values_are_caught() {
    let vm = vms_in_yaml(
        "apiVersion: rvf.ruvector.io/v1alpha1\nkind: RvfMicroVm\nmetadata: {name: x}\nspec:\n  source:\n    hostPath: {path: /x.rvf}\n  memoryMiB: 8\n  vcpu: 2\n",
    );
    let errors = validate(&vm[0]);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("spec.vcpu: unknown field")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("below the minimum")),
        "{errors:#?}"
    );
}
