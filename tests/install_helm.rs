//! The Helm chart, checked with the real Helm binary (`scripts/helm.sh` installs it): lint,
//! render with default and non-default values, schema rejection, and typed parsing.

mod install_support;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use clap::{ArgMatches, Args, Command, FromArgMatches};
use install_support::{chart, check_typed, documents, helm, helm_template, kind, name, run};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Toleration;
use rvf_operator::controller::ControllerArgs;
use serde_json::{json, Value};

/// Values that change every switch away from its default.
fn non_default_values() -> Value {
    json!({
        "image": { "repository": "registry.example.com/rvf/rvf-operator", "tag": "0.1.0-rc1", "pullPolicy": "Always" },
        "replicaCount": 2,
        "fullnameOverride": "rvf",
        "logLevel": "rvf_operator=debug,info",
        "vm": {
            "image": "registry.example.com/rvf/rvf-vm:0.1.0",
            "imagePullPolicy": "Always",
            "privileged": false,
            "kvmResourceName": "devices.kubevirt.io/kvm",
            "kvmNodeSelector": "node.example.com/kvm=true",
            "allowHostPath": true,
            "allowQemuExtraArgs": true,
            "memoryOverheadMiB": 192,
            "cpuRequestMillisPerVcpu": 250,
            // A space and a quote check that the chart quotes what it renders.
            "nodeSelector": { "example.com/pool": "vms", "example.com/room": "a \"b\"" },
            "tolerations": [
                { "key": "dedicated", "operator": "Equal", "value": "vms", "effect": "NoSchedule" },
                { "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3600 }
            ]
        },
        "leaderElection": { "leaseName": "rvf-ha", "leaseDurationSeconds": 20, "renewGraceSeconds": 4 },
        "metrics": { "port": 9090, "serviceMonitor": { "enabled": true, "labels": { "release": "prom" } } },
        "health": { "port": 9091 },
        "networkPolicy": {
            "apiServerPorts": [6443],
            "metricsFrom": [{ "namespaceSelector": { "matchLabels": { "name": "monitoring" } } }]
        },
        "nodeSelector": { "kubernetes.io/os": "linux" },
        "podAnnotations": { "example.com/team": "vm" },
        "watchNamespace": "vms"
    })
}

/// Writes a values file (JSON is YAML) into a temporary folder kept alive by the caller.
fn values_file(values: &Value) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values.yaml");
    std::fs::write(&path, serde_json::to_vec_pretty(values).unwrap()).unwrap();
    (dir, path)
}

fn rendered(extra: &[&str]) -> Vec<Value> {
    documents(&helm_template(extra), "helm template")
}

fn only<'a>(docs: &'a [Value], kind_name: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| kind(d) == kind_name);
    let first = found
        .next()
        .unwrap_or_else(|| panic!("no {kind_name} rendered"));
    assert!(found.next().is_none(), "more than one {kind_name} rendered");
    first
}

fn controller_args(docs: &[Value]) -> Vec<String> {
    let deployment: Deployment = serde_json::from_value(only(docs, "Deployment").clone()).unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    pod.containers[0].args.clone().unwrap()
}

#[test]
fn helm_lint_passes_with_default_values() {
    let (ok, stdout, stderr) = run(&helm(), &["lint", "--strict", chart().to_str().unwrap()]);
    assert!(ok, "helm lint failed:\n{stdout}\n{stderr}");
}

#[test]
fn helm_lint_passes_with_non_default_values() {
    let (_dir, values) = values_file(&non_default_values());
    let (ok, stdout, stderr) = run(
        &helm(),
        &[
            "lint",
            "--strict",
            chart().to_str().unwrap(),
            "-f",
            values.to_str().unwrap(),
        ],
    );
    assert!(ok, "helm lint failed:\n{stdout}\n{stderr}");
}

#[test]
fn the_default_render_parses_as_kubernetes_objects() {
    let docs = rendered(&[]);

    let errors: Vec<String> = docs
        .iter()
        .filter_map(|doc| check_typed(doc, "helm template (defaults)", &[]).err())
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    let kinds: Vec<&str> = docs.iter().map(kind).collect();
    for expected in [
        "CustomResourceDefinition",
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
            kinds.contains(&expected),
            "{expected} not rendered: {kinds:?}"
        );
    }
    assert!(
        !kinds.contains(&"ServiceMonitor"),
        "ServiceMonitor is off by default"
    );
}

#[test]
fn the_non_default_render_parses_and_carries_the_values() {
    let (_dir, values) = values_file(&non_default_values());
    let docs = rendered(&["-f", values.to_str().unwrap()]);

    let errors: Vec<String> = docs
        .iter()
        .filter_map(|doc| {
            check_typed(doc, "helm template (non-default)", &["ServiceMonitor"]).err()
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    let deployment = only(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], json!(2));
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        json!("registry.example.com/rvf/rvf-operator:0.1.0-rc1")
    );
    let args = controller_args(&docs);
    for expected in [
        "--vm-image=registry.example.com/rvf/rvf-vm:0.1.0",
        "--image-pull-policy=Always",
        "--vm-privileged=false",
        "--kvm-resource-name=devices.kubevirt.io/kvm",
        "--kvm-node-selector=node.example.com/kvm=true",
        "--allow-host-path",
        "--allow-qemu-extra-args",
        "--memory-overhead-mib=192",
        "--cpu-request-millis-per-vcpu=250",
        "--vm-node-selector=example.com/pool=vms",
        "--leader-election-lease-name=rvf-ha",
        "--metrics-addr=0.0.0.0:9090",
        "--health-addr=0.0.0.0:9091",
    ] {
        assert!(
            args.iter().any(|a| a == expected),
            "{expected} not in {args:?}"
        );
    }

    let monitor = only(&docs, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], json!("prom"));
    let lease_role = docs
        .iter()
        .find(|d| {
            kind(d) == "Role"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-leader-election"))
        })
        .expect("the Lease Role");
    assert_eq!(lease_role["rules"][1]["resourceNames"], json!(["rvf-ha"]));
}

/// Parses `args` (starting with `controller`) with the controller's own flag definitions.
///
/// Goes through clap's `ArgMatches` by argument id rather than through `ControllerArgs`
/// fields, so this file compiles whatever fields the controller has.
fn parse_controller_args(args: &[String]) -> Result<ArgMatches, String> {
    assert_eq!(
        args.first().map(String::as_str),
        Some("controller"),
        "{args:?}"
    );
    ControllerArgs::augment_args(Command::new("controller"))
        .try_get_matches_from(args.iter())
        .map_err(|e| format!("{args:?}: {e}"))
}

/// Every argument the chart renders is one the controller's own flag definitions accept.
#[test]
fn rendered_arguments_parse_as_controller_flags() {
    let (_dir, values) = values_file(&non_default_values());

    let defaults = parse_controller_args(&controller_args(&rendered(&[]))).unwrap();
    let custom = parse_controller_args(&controller_args(&rendered(&[
        "-f",
        values.to_str().unwrap(),
    ])))
    .unwrap();

    assert_eq!(
        defaults.get_one::<bool>("enabled"),
        Some(&true),
        "leader election on"
    );
    assert_eq!(defaults.get_one::<bool>("vm_privileged"), Some(&true));
    assert!(!defaults.get_flag("allow_host_path"));
    assert_eq!(
        custom
            .get_one::<String>("kvm_resource_name")
            .map(String::as_str),
        Some("devices.kubevirt.io/kvm")
    );
    assert_eq!(custom.get_one::<u64>("lease_duration_seconds"), Some(&20));
    assert_eq!(
        custom
            .get_one::<SocketAddr>("metrics_addr")
            .map(|a| a.port()),
        Some(9090)
    );
    assert_eq!(
        custom
            .get_one::<String>("watch_namespace")
            .map(String::as_str),
        Some("vms")
    );
    assert_eq!(custom.get_one::<bool>("vm_privileged"), Some(&false));
    assert!(custom.get_flag("allow_host_path") && custom.get_flag("allow_qemu_extra_args"));
}

/// The chart's VM scheduling values arrive in the controller's pod configuration intact.
#[test]
fn vm_node_selector_and_tolerations_reach_the_vm_pod_config() {
    let (_dir, values) = values_file(&non_default_values());
    let args = controller_args(&rendered(&["-f", values.to_str().unwrap()]));

    let matches = parse_controller_args(&args).unwrap();
    let config = ControllerArgs::from_arg_matches(&matches)
        .unwrap()
        .pod_config();

    assert_eq!(
        config.node_selector,
        BTreeMap::from([
            ("example.com/pool".to_owned(), "vms".to_owned()),
            ("example.com/room".to_owned(), "a \"b\"".to_owned()),
        ])
    );
    assert_eq!(
        config.tolerations,
        vec![
            Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("vms".into()),
                effect: Some("NoSchedule".into()),
                toleration_seconds: None,
            },
            Toleration {
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(3600),
                ..Default::default()
            },
        ]
    );
}

#[test]
fn default_values_give_vm_pods_no_operator_node_selector_or_tolerations() {
    let args = controller_args(&rendered(&[]));

    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--vm-node-selector") || a.starts_with("--vm-toleration")),
        "{args:?}"
    );
}

/// The same for the plain manifests in deploy/.
#[test]
fn deploy_arguments_parse_as_controller_flags() {
    let text =
        std::fs::read_to_string(install_support::repo().join("deploy/deployment.yaml")).unwrap();
    let args = controller_args(&documents(&text, "deploy/deployment.yaml"));

    let parsed = parse_controller_args(&args).unwrap();

    assert_eq!(
        parsed.get_one::<bool>("enabled"),
        Some(&true),
        "leader election on"
    );
    assert_ne!(
        parsed.get_one::<SocketAddr>("metrics_addr"),
        parsed.get_one::<SocketAddr>("health_addr")
    );
}

#[test]
fn disabling_leader_election_drops_the_lease_role() {
    let docs = rendered(&["--set", "leaderElection.enabled=false"]);

    assert!(
        docs.iter().all(|d| kind(d) != "Role"),
        "no Lease Role without election"
    );
    assert!(controller_args(&docs).contains(&"--leader-election=false".to_owned()));
}

#[test]
fn watching_one_namespace_grants_a_role_there_instead_of_a_cluster_role() {
    let cluster = rendered(&[]);
    let scoped = rendered(&["--set", "watchNamespace=vms"]);
    assert!(scoped
        .iter()
        .all(|d| kind(d) != "ClusterRole" && kind(d) != "ClusterRoleBinding"));

    let role = scoped
        .iter()
        .find(|d| kind(d) == "Role" && d["metadata"]["namespace"] == "vms")
        .expect("a Role in the watched namespace");
    assert_eq!(
        role["rules"],
        only(&cluster, "ClusterRole")["rules"],
        "same rights, narrower scope"
    );
    let binding = scoped
        .iter()
        .find(|d| kind(d) == "RoleBinding" && d["metadata"]["namespace"] == "vms")
        .expect("a RoleBinding in the watched namespace");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert!(controller_args(&scoped).iter().any(|a| a.contains("vms")));
}

#[test]
fn values_that_break_the_schema_are_rejected() {
    let cases: BTreeMap<&str, Value> = BTreeMap::from([
        ("an unknown top-level key", json!({ "replicas": 2 })),
        (
            "a misspelled nested key",
            json!({ "vm": { "privilegd": true } }),
        ),
        (
            "a string where an integer belongs",
            json!({ "vm": { "memoryOverheadMiB": "128" } }),
        ),
        (
            "an unknown pull policy",
            json!({ "image": { "repository": "x", "pullPolicy": "Sometimes" } }),
        ),
        (
            "a port out of range",
            json!({ "metrics": { "port": 70000 } }),
        ),
        (
            "a malformed KVM node selector",
            json!({ "vm": { "kvmNodeSelector": "no-equals-sign" } }),
        ),
        (
            "a toleration effect that is not a string",
            json!({ "vm": { "tolerations": [{ "key": "dedicated", "effect": 5 }] } }),
        ),
        (
            "a misspelled toleration field",
            json!({ "vm": { "tolerations": [{ "key": "dedicated", "efect": "NoSchedule" }] } }),
        ),
        (
            "a VM node selector value that is not a string",
            json!({ "vm": { "nodeSelector": { "example.com/pool": 3 } } }),
        ),
        (
            "a non-boolean switch",
            json!({ "leaderElection": { "enabled": "yes" } }),
        ),
    ]);

    for (case, values) in cases {
        let (_dir, file) = values_file(&values);
        let (ok, _, stderr) = run(
            &helm(),
            &[
                "template",
                "rvf",
                chart().to_str().unwrap(),
                "-f",
                file.to_str().unwrap(),
            ],
        );
        assert!(!ok, "{case}: helm template accepted {values}");
        assert!(
            stderr.contains("schema"),
            "{case}: not rejected by the schema:\n{stderr}"
        );
    }
}

#[test]
fn a_renew_grace_not_below_the_lease_duration_is_rejected() {
    let (ok, _, stderr) = run(
        &helm(),
        &[
            "template",
            "rvf",
            chart().to_str().unwrap(),
            "--set",
            "leaderElection.leaseDurationSeconds=5",
            "--set",
            "leaderElection.renewGraceSeconds=5",
        ],
    );
    assert!(!ok, "helm template accepted grace == duration");
    assert!(
        stderr.contains("renewGraceSeconds must be less"),
        "{stderr}"
    );
}

#[test]
fn two_replicas_without_leader_election_are_rejected() {
    let (ok, _, stderr) = run(
        &helm(),
        &[
            "template",
            "rvf",
            chart().to_str().unwrap(),
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "replicaCount=2",
        ],
    );
    assert!(!ok, "helm template accepted two unelected replicas");
    assert!(stderr.contains("needs leaderElection.enabled"), "{stderr}");
}

#[test]
fn the_rendered_operator_pod_runs_without_privilege() {
    let (_dir, values) = values_file(&non_default_values());
    for docs in [rendered(&[]), rendered(&["-f", values.to_str().unwrap()])] {
        let deployment: Deployment =
            serde_json::from_value(only(&docs, "Deployment").clone()).unwrap();
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let sc = pod.security_context.unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let csc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(csc.privileged, Some(false));
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(csc.read_only_root_filesystem, Some(true));
        assert_eq!(csc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
    }
}

#[test]
fn the_rendered_crd_is_the_generated_crd() {
    let generated = documents(
        &std::fs::read_to_string(install_support::repo().join("crds/rvfmicrovm.yaml")).unwrap(),
        "crds/rvfmicrovm.yaml",
    );
    let docs = rendered(&[]);
    let rendered_crds: Vec<&Value> = docs
        .iter()
        .filter(|d| kind(d) == "CustomResourceDefinition")
        .collect();

    assert_eq!(rendered_crds.len(), generated.len());
    for crd in generated {
        let twin = rendered_crds
            .iter()
            .find(|r| name(r) == name(&crd))
            .unwrap_or_else(|| panic!("{} not rendered", name(&crd)));
        assert_eq!(
            **twin,
            crd,
            "the chart's CRD {} differs from crds/",
            name(&crd)
        );
    }
}

#[test]
fn notes_tell_the_user_how_to_create_a_first_vm() {
    let (ok, stdout, stderr) = run(
        &helm(),
        &[
            "install",
            "rvf",
            chart().to_str().unwrap(),
            "--dry-run=client",
            "--namespace",
            "rvf-system",
        ],
    );
    assert!(ok, "helm install --dry-run=client failed:\n{stderr}");
    assert!(
        stdout.contains("kind: RvfMicroVm"),
        "NOTES lack a first VM:\n{stdout}"
    );
    assert!(
        stdout.contains("kubectl -n rvf-demo get rvfvm"),
        "NOTES lack how to watch it"
    );
}
