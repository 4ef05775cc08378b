//! RBAC is least privilege: the ClusterRole in `deploy/` and in the chart grants exactly the
//! calls the controller makes, each traced to the controller source that makes it.

mod install_support;

use std::collections::BTreeSet;

use install_support::{documents, helm_template, kind, repo};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use serde_json::Value;

/// (API group, resource, verb).
type Grant = (String, String, String);

/// One permission the controller needs, with the source text that shows the call.
struct Need {
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    /// All of these must appear in `src/controller/` (whitespace removed).
    evidence: &'static [&'static str],
    why: &'static str,
}

const CONTROLLER_NEEDS: &[Need] = &[
    Need {
        group: "rvf.ruvector.io",
        resource: "rvfmicrovms",
        verbs: &["list", "watch"],
        evidence: &["Controller::new("],
        why: "the controller watches every RvfMicroVm",
    },
    Need {
        group: "rvf.ruvector.io",
        resource: "rvfmicrovms",
        verbs: &["patch"],
        evidence: &["finalizer("],
        why: "kube-runtime's finalizer helper adds and removes the finalizer with a JSON patch",
    },
    Need {
        group: "rvf.ruvector.io",
        resource: "rvfmicrovms/status",
        verbs: &["update"],
        evidence: &["replace_status("],
        why: "status is written whole",
    },
    Need {
        group: "rvf.ruvector.io",
        resource: "rvfmicrovms/status",
        verbs: &["get"],
        evidence: &["get_status("],
        why: "status is re-read after a write conflict",
    },
    Need {
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        evidence: &[".owns(pods", "Api<Pod>"],
        why: "the controller owns the VM pods",
    },
    Need {
        group: "",
        resource: "pods",
        verbs: &["get"],
        evidence: &["Api<Pod>", "get_opt("],
        why: "the pod is read before it is replaced or stopped",
    },
    Need {
        group: "",
        resource: "pods",
        verbs: &["create", "patch"],
        evidence: &["Api<Pod>", "Patch::Apply("],
        why: "server-side apply of the pod (create when it does not exist yet)",
    },
    Need {
        group: "",
        resource: "pods",
        verbs: &["delete"],
        evidence: &["Api<Pod>", ".delete("],
        why: "a pod is deleted to stop a VM or to replace it after a spec change",
    },
    Need {
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
        evidence: &[".owns(services", "Api<Service>"],
        why: "the controller owns the VM Services",
    },
    Need {
        group: "",
        resource: "services",
        verbs: &["create", "patch"],
        evidence: &["Api<Service>", "Patch::Apply("],
        why: "server-side apply of the Service",
    },
    Need {
        group: "",
        resource: "persistentvolumeclaims",
        verbs: &["get"],
        evidence: &["Api<PersistentVolumeClaim>", "get_opt("],
        why: "a missing claim becomes a condition the user can act on",
    },
    Need {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        evidence: &["Recorder"],
        why: "kube-runtime's Recorder creates events and patches repeated ones",
    },
];

fn needed() -> BTreeSet<Grant> {
    CONTROLLER_NEEDS
        .iter()
        .flat_map(|n| {
            n.verbs
                .iter()
                .map(|v| (n.group.to_owned(), n.resource.to_owned(), (*v).to_owned()))
        })
        .collect()
}

fn expand(rules: &[PolicyRule], origin: &str) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "{origin}: non-resource URLs granted"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    grants.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    grants
}

fn cluster_roles() -> Vec<(String, ClusterRole)> {
    let deploy = std::fs::read_to_string(repo().join("deploy/rbac.yaml")).unwrap();
    let rendered = helm_template(&[]);
    [("deploy/rbac.yaml", deploy), ("helm template", rendered)]
        .into_iter()
        .flat_map(|(origin, text)| {
            documents(&text, origin)
                .into_iter()
                .filter(|d| kind(d) == "ClusterRole")
                .map(move |d| (origin.to_owned(), serde_json::from_value(d).unwrap()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn roles(kind_name: &str) -> Vec<(String, Value)> {
    let deploy = std::fs::read_to_string(repo().join("deploy/rbac.yaml")).unwrap();
    let rendered = helm_template(&[]);
    [("deploy/rbac.yaml", deploy), ("helm template", rendered)]
        .into_iter()
        .flat_map(|(origin, text)| {
            documents(&text, origin)
                .into_iter()
                .filter(|d| kind(d) == kind_name)
                .map(move |d| (origin.to_owned(), d))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The controller's source (without the leader election and metrics modules, which do not
/// touch these resources), with all whitespace removed so formatting does not matter.
fn controller_source() -> String {
    let dir = repo().join("src/controller");
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.extension().is_some_and(|e| e == "rs")
            && file != "leader.rs"
            && file != "metrics_server.rs"
        {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

#[test]
fn the_cluster_role_grants_exactly_what_the_controller_calls() {
    let needed = needed();
    let roles = cluster_roles();
    assert_eq!(
        roles.len(),
        2,
        "one ClusterRole in deploy/ and one in the chart"
    );

    for (origin, role) in roles {
        let granted = expand(role.rules.as_deref().unwrap_or_default(), &origin);
        let extra: Vec<_> = granted.difference(&needed).collect();
        let missing: Vec<_> = needed.difference(&granted).collect();
        assert!(
            extra.is_empty(),
            "{origin} grants what the controller never calls: {extra:?}"
        );
        assert!(
            missing.is_empty(),
            "{origin} lacks what the controller calls: {missing:?}"
        );
    }
}

#[test]
fn every_needed_permission_is_traced_to_a_call_in_the_controller_source() {
    let source = controller_source();
    if !source.contains("Controller::new(") {
        // The controller loop is not in the tree yet: only the grant table above is checked.
        eprintln!("src/controller/ has no Controller::new yet; skipping the source trace");
        return;
    }

    let untraced: Vec<String> = CONTROLLER_NEEDS
        .iter()
        .filter(|n| {
            !n.evidence
                .iter()
                .all(|e| source.contains(&e.replace(' ', "")))
        })
        .map(|n| {
            format!(
                "{}/{} {:?} ({}): expected {:?}",
                n.group, n.resource, n.verbs, n.why, n.evidence
            )
        })
        .collect();

    assert!(
        untraced.is_empty(),
        "permissions no longer backed by a call in src/controller/ (drop them from deploy/rbac.yaml \
         and the chart, or update CONTROLLER_NEEDS):\n{}",
        untraced.join("\n")
    );
}

#[test]
fn no_role_uses_wildcards_or_touches_secrets() {
    for (origin, doc) in roles("ClusterRole").into_iter().chain(roles("Role")) {
        let text = doc["rules"].to_string();
        assert!(!text.contains("\"*\""), "{origin}: wildcard in {text}");
        for forbidden in [
            "secrets",
            "escalate",
            "bind",
            "impersonate",
            "nodes/proxy",
            "pods/exec",
        ] {
            assert!(!text.contains(forbidden), "{origin}: grants {forbidden}");
        }
    }
}

/// `tests/install_leader_election.rs` shows the elector only GETs, creates and PATCHes its
/// Lease; the Role grants that, on the one Lease where resourceNames can apply.
#[test]
fn the_leader_election_role_covers_only_the_lease() {
    let found = roles("Role");
    assert_eq!(
        found.len(),
        2,
        "one Lease Role in deploy/ and one in the chart"
    );

    for (origin, doc) in found {
        let role: Role = serde_json::from_value(doc).unwrap();
        let rules = role.rules.unwrap();
        let granted = expand(&rules, &origin);
        let expected: BTreeSet<Grant> = ["create", "get", "patch"]
            .iter()
            .map(|v| {
                (
                    "coordination.k8s.io".to_owned(),
                    "leases".to_owned(),
                    (*v).to_owned(),
                )
            })
            .collect();
        assert_eq!(granted, expected, "{origin}");

        for rule in rules
            .iter()
            .filter(|r| r.verbs.iter().any(|v| v != "create"))
        {
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&["rvf-operator".to_owned()][..]),
                "{origin}: get and patch must name the Lease"
            );
        }
    }
}

#[test]
fn bindings_name_the_service_account_the_operator_runs_as() {
    for kind_name in ["ClusterRoleBinding", "RoleBinding"] {
        for (origin, doc) in roles(kind_name) {
            let subject = &doc["subjects"][0];
            assert_eq!(subject["kind"], "ServiceAccount", "{origin} {kind_name}");
            assert_eq!(subject["namespace"], "rvf-system", "{origin} {kind_name}");
            let account = subject["name"].as_str().unwrap();
            let deployments = if origin == "deploy/rbac.yaml" {
                std::fs::read_to_string(repo().join("deploy/deployment.yaml")).unwrap()
            } else {
                helm_template(&[])
            };
            let runs_as = documents(&deployments, &origin)
                .into_iter()
                .find(|d| kind(d) == "Deployment")
                .unwrap()["spec"]["template"]["spec"]["serviceAccountName"]
                .clone();
            assert_eq!(runs_as, account, "{origin}: {kind_name} binds {account}");
        }
    }
}
