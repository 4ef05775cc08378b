//! The plain manifests in `deploy/`: they parse as Kubernetes objects, `kubectl kustomize`
//! builds them with the CRD, the CRD copies match `crds/`, and the operator pod is unprivileged.

mod install_support;

use std::collections::BTreeSet;

use install_support::{check_typed, documents, kind, kubectl, repo, run, yaml_files};
use k8s_openapi::api::{apps::v1::Deployment, networking::v1::NetworkPolicy};
use serde_json::Value;

fn deploy_documents() -> Vec<(String, Value)> {
    yaml_files(&repo().join("deploy"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .flat_map(|path| {
            let origin = path.strip_prefix(repo()).unwrap().display().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            documents(&text, &origin)
                .into_iter()
                .map(move |doc| (origin.clone(), doc))
        })
        .collect()
}

fn deploy_doc(kind_name: &str) -> Value {
    deploy_documents()
        .into_iter()
        .find(|(origin, doc)| !origin.contains("examples") && kind(doc) == kind_name)
        .unwrap_or_else(|| panic!("no {kind_name} in deploy/"))
        .1
}

#[test]
fn every_deploy_document_parses_as_its_kubernetes_type() {
    let docs = deploy_documents();
    assert!(
        docs.len() >= 10,
        "deploy/ looks empty: {} documents",
        docs.len()
    );

    let errors: Vec<String> = docs
        .iter()
        .filter_map(|(origin, doc)| check_typed(doc, origin, &[]).err())
        .collect();

    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn examples_cover_the_pvc_http_and_host_path_sources() {
    let sources: BTreeSet<String> = deploy_documents()
        .iter()
        .filter(|(_, doc)| kind(doc) == "RvfMicroVm")
        .flat_map(|(_, doc)| {
            doc["spec"]["source"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();

    for source in ["persistentVolumeClaim", "http", "hostPath"] {
        assert!(
            sources.contains(source),
            "no example with source.{source}: {sources:?}"
        );
    }
}

#[test]
fn kustomization_lists_every_manifest_but_the_examples() {
    let deploy = repo().join("deploy");
    let text = std::fs::read_to_string(deploy.join("kustomization.yaml")).unwrap();
    let kustomization = &documents(&text, "deploy/kustomization.yaml")[0];
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();

    let present: BTreeSet<String> = yaml_files(&deploy)
        .iter()
        .map(|p| p.strip_prefix(&deploy).unwrap().display().to_string())
        .filter(|p| p != "kustomization.yaml" && !p.starts_with("examples/"))
        .collect();

    assert_eq!(
        listed, present,
        "deploy/kustomization.yaml resources vs files in deploy/"
    );
}

#[test]
fn deploy_crds_are_a_copy_of_the_generated_crds() {
    assert_same_files("deploy/crds");
}

#[test]
fn chart_crds_are_a_copy_of_the_generated_crds() {
    assert_same_files("charts/rvf-operator/crds");
}

fn assert_same_files(copy: &str) {
    let names = |dir: &str| -> BTreeSet<String> {
        yaml_files(&repo().join(dir))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names("crds"),
        names(copy),
        "{copy}/ must hold the same files as crds/: run scripts/sync-crds.sh"
    );
    for name in names("crds") {
        let original = std::fs::read(repo().join("crds").join(&name)).unwrap();
        let copied = std::fs::read(repo().join(copy).join(&name)).unwrap();
        assert!(
            original == copied,
            "{copy}/{name} differs from crds/{name}: run scripts/sync-crds.sh"
        );
    }
}

/// Pruning the CRD from Git would delete every VM; the built CRD opts out of Flux and
/// Argo CD pruning.
#[test]
fn the_built_crd_is_kept_out_of_gitops_pruning() {
    let (ok, stdout, stderr) = run(&kubectl(), &["kustomize", "deploy"]);
    assert!(ok, "kubectl kustomize deploy failed:\n{stderr}");
    let docs = documents(&stdout, "kubectl kustomize deploy");
    let crd = docs
        .iter()
        .find(|d| kind(d) == "CustomResourceDefinition")
        .expect("the CRD");
    let annotations = &crd["metadata"]["annotations"];
    assert_eq!(annotations["kustomize.toolkit.fluxcd.io/prune"], "disabled");
    let argo = annotations["argocd.argoproj.io/sync-options"]
        .as_str()
        .unwrap();
    assert!(
        argo.contains("Prune=false") && argo.contains("Delete=false"),
        "{argo}"
    );
}

/// `kubectl apply -k deploy/` works only if kustomize can build the folder with its default
/// load restrictor (no file outside deploy/).
#[test]
fn kubectl_kustomize_builds_deploy_with_the_crd() {
    let (ok, stdout, stderr) = run(&kubectl(), &["kustomize", "deploy"]);
    assert!(ok, "kubectl kustomize deploy failed:\n{stderr}");

    let docs = documents(&stdout, "kubectl kustomize deploy");
    let kinds: BTreeSet<&str> = docs.iter().map(kind).collect();
    for expected in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(
            kinds.contains(expected),
            "{expected} missing from the build: {kinds:?}"
        );
    }
    for doc in &docs {
        check_typed(doc, "kubectl kustomize deploy", &[]).unwrap();
    }
}

/// Asserts the controller pod has no privilege: non-root, read-only root filesystem, no
/// privilege escalation, every capability dropped, the runtime's seccomp profile.
pub fn assert_unprivileged(deployment: &Deployment, origin: &str) {
    let pod = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let pod_sc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_sc.run_as_non_root, Some(true), "{origin}: runAsNonRoot");
    assert!(
        pod_sc.run_as_user.is_some_and(|u| u != 0),
        "{origin}: runAsUser must not be 0"
    );
    assert_eq!(
        pod_sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault"),
        "{origin}: seccomp"
    );
    for container in &pod.containers {
        let sc = container
            .security_context
            .as_ref()
            .expect("container securityContext");
        let who = format!("{origin}: container {}", container.name);
        assert_eq!(sc.privileged, Some(false), "{who}: privileged");
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{who}: allowPrivilegeEscalation"
        );
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{who}: readOnlyRootFilesystem"
        );
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "{who}: drop ALL"
        );
        assert!(caps.add.is_none(), "{who}: adds capabilities");
    }
}

#[test]
fn the_operator_pod_runs_without_privilege() {
    let deployment: Deployment = serde_json::from_value(deploy_doc("Deployment")).unwrap();
    assert_unprivileged(&deployment, "deploy/deployment.yaml");
}

#[test]
fn the_network_policy_lets_the_operator_reach_the_agent_port() {
    let policy: NetworkPolicy = serde_json::from_value(deploy_doc("NetworkPolicy")).unwrap();
    let egress = policy.spec.unwrap().egress.unwrap();
    let agent = i32::from(rvf_operator::crd::AGENT_PORT);

    let reaches_agents = egress.iter().any(|rule| {
        let port = rule.ports.iter().flatten().any(|p| {
            p.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(agent))
        });
        let to_vm_pods = rule.to.iter().flatten().any(|peer| {
            peer.pod_selector
                .as_ref()
                .and_then(|s| s.match_expressions.as_ref())
                .is_some_and(|e| {
                    e.iter()
                        .any(|e| e.key == rvf_operator::controller::pod::VM_LABEL)
                })
        });
        port && to_vm_pods
    });

    assert!(reaches_agents, "no egress rule to VM pods on port {agent}");
}

#[test]
fn a_misspelled_field_fails_the_typed_check() {
    let mut deployment = deploy_doc("Deployment");
    deployment["spec"]["replcas"] = serde_json::json!(2);

    let err = check_typed(&deployment, "mutated deployment", &[]).expect_err("typo must fail");

    assert!(err.contains(".spec.replcas"), "{err}");
}

#[test]
fn an_unknown_kind_fails_the_typed_check() {
    let doc = serde_json::json!({ "apiVersion": "example.com/v1", "kind": "Widget", "metadata": { "name": "w" } });
    assert!(check_typed(&doc, "test", &[]).is_err());
}
