//! The VM pod and Service builders: pure functions of spec and operator configuration.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Toleration};
use kube::api::ObjectMeta;
use rvf_operator::controller::pod::{
    pod_name, spec_hash, PolicyViolation, VmPodBuilder, VmPodConfig, GRACE_MARGIN_SECONDS,
    SPEC_HASH_ANNOTATION,
};
use rvf_operator::controller::service::build_service;
use rvf_operator::crd::{
    HostPathSource, HttpSource, KvmMode, PvcSource, QemuSpec, RunStrategy, RvfMicroVm,
    RvfMicroVmSpec, SshSpec, VmSource,
};

fn vm_with(source: VmSource) -> RvfMicroVm {
    let spec: RvfMicroVmSpec = serde_json::from_value(serde_json::json!({"source": {}})).unwrap();
    let mut vm = RvfMicroVm::new("hello", RvfMicroVmSpec { source, ..spec });
    vm.metadata = ObjectMeta {
        name: Some("hello".into()),
        namespace: Some("vms".into()),
        uid: Some("uid-1".into()),
        ..Default::default()
    };
    vm
}

fn pvc_vm() -> RvfMicroVm {
    vm_with(VmSource {
        persistent_volume_claim: Some(PvcSource {
            claim_name: "rvfs".into(),
            path: "images/hello.rvf".into(),
        }),
        ..Default::default()
    })
}

fn http_vm() -> RvfMicroVm {
    vm_with(VmSource {
        http: Some(HttpSource {
            url: "https://example.invalid/hello.rvf".into(),
            sha256: "ab".repeat(32),
        }),
        ..Default::default()
    })
}

fn build(vm: &RvfMicroVm, config: &VmPodConfig) -> Pod {
    VmPodBuilder::new(vm, config)
        .build()
        .expect("the pod builds")
}

fn init_names(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

fn vm_container(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers.iter().find(|c| c.name == "vm").unwrap()
}

fn args(c: &Container) -> Vec<String> {
    c.args.clone().unwrap()
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .map(|i| args[i + 1].as_str())
}

#[test]
fn an_http_source_gets_a_fetch_then_an_extract_init_container() {
    let pod = build(&http_vm(), &VmPodConfig::default());
    assert_eq!(init_names(&pod), ["fetch", "extract"]);
    let fetch = &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    let a = args(fetch);
    assert_eq!(a[0], "fetch");
    assert_eq!(flag(&a, "--sha256"), Some("ab".repeat(32).as_str()));
    assert_eq!(
        fetch.volume_mounts.as_ref().unwrap()[0].read_only,
        Some(false)
    );
}

#[test]
fn file_sources_get_only_the_extract_init_container() {
    let pod = build(&pvc_vm(), &VmPodConfig::default());
    assert_eq!(init_names(&pod), ["extract"]);
    let extract = &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    let a = args(extract);
    assert_eq!(flag(&a, "--rvf"), Some("/vm/source/images/hello.rvf"));
    assert_eq!(flag(&a, "--out"), Some("/vm/kernel"));
    assert_eq!(
        extract.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
}

#[test]
fn a_separate_initramfs_is_passed_to_extract() {
    let mut vm = pvc_vm();
    vm.spec.source.initramfs_path = Some("images/initramfs.cpio".into());
    let pod = build(&vm, &VmPodConfig::default());
    let extract = &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(
        flag(&args(extract), "--initramfs"),
        Some("/vm/source/images/initramfs.cpio")
    );
}

#[test]
fn kvm_required_runs_privileged_with_host_dev_kvm_as_a_char_device() {
    let mut vm = pvc_vm();
    vm.spec.kvm = KvmMode::Required;
    let pod = build(&vm, &VmPodConfig::default());
    let vm_c = vm_container(&pod);
    assert_eq!(
        vm_c.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    let volume = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "kvm")
        .expect("a kvm volume");
    let host = volume.host_path.as_ref().unwrap();
    assert_eq!(host.path, "/dev/kvm");
    assert_eq!(host.type_.as_deref(), Some("CharDevice"));
    assert!(vm_c
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == "/dev/kvm"));
    assert_eq!(flag(&args(vm_c), "--kvm"), Some("required"));
}

#[test]
fn the_vm_container_runs_as_root_so_qemu_can_open_a_root_kvm_group_dev_kvm() {
    let pod = build(&pvc_vm(), &VmPodConfig::default());
    let ctx = vm_container(&pod).security_context.as_ref().unwrap();
    assert_eq!(ctx.run_as_user, Some(0));
}

#[test]
fn kvm_auto_mounts_no_host_device_so_nodes_without_kvm_still_run_tcg() {
    let pod = build(&pvc_vm(), &VmPodConfig::default());
    let volumes = pod.spec.as_ref().unwrap().volumes.clone().unwrap();
    assert!(volumes.iter().all(|v| v.name != "kvm"));
    assert_eq!(flag(&args(vm_container(&pod)), "--kvm"), Some("auto"));
}

#[test]
fn a_kvm_device_plugin_resource_replaces_the_host_device() {
    let mut vm = pvc_vm();
    vm.spec.kvm = KvmMode::Required;
    let config = VmPodConfig {
        kvm_resource_name: Some("devices.kubevirt.io/kvm".into()),
        privileged: false,
        ..Default::default()
    };
    let pod = build(&vm, &config);
    let vm_c = vm_container(&pod);
    let resources = vm_c.resources.as_ref().unwrap();
    assert_eq!(
        resources.limits.as_ref().unwrap()["devices.kubevirt.io/kvm"].0,
        "1"
    );
    assert!(pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .all(|v| v.name != "kvm"));
    assert_eq!(
        vm_c.security_context.as_ref().unwrap().privileged,
        Some(false)
    );
}

#[test]
fn a_kvm_node_selector_applies_only_to_kvm_required_vms() {
    let config = VmPodConfig {
        kvm_node_selector: Some(("example.invalid/kvm".into(), "true".into())),
        ..Default::default()
    };
    let mut vm = pvc_vm();
    assert!(build(&vm, &config).spec.unwrap().node_selector.is_none());
    vm.spec.kvm = KvmMode::Required;
    let selector = build(&vm, &config).spec.unwrap().node_selector.unwrap();
    assert_eq!(selector["example.invalid/kvm"], "true");
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

fn selector(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_operators_node_selector_applies_to_every_vm_pod() {
    let config = VmPodConfig {
        node_selector: selector(&[("example.invalid/pool", "vms")]),
        ..Default::default()
    };

    let pod = build(&pvc_vm(), &config);

    assert_eq!(
        pod.spec.unwrap().node_selector,
        Some(selector(&[("example.invalid/pool", "vms")]))
    );
}

#[test]
fn the_vms_own_node_selector_wins_over_the_operators_for_the_same_key() {
    let config = VmPodConfig {
        node_selector: selector(&[("example.invalid/pool", "vms"), ("zone", "a")]),
        ..Default::default()
    };
    let mut vm = pvc_vm();
    vm.spec.node_selector = Some(selector(&[
        ("example.invalid/pool", "gpu"),
        ("disk", "ssd"),
    ]));

    let pod = build(&vm, &config);

    assert_eq!(
        pod.spec.unwrap().node_selector,
        Some(selector(&[
            ("disk", "ssd"),
            ("example.invalid/pool", "gpu"),
            ("zone", "a"),
        ]))
    );
}

#[test]
fn the_kvm_node_selector_still_applies_on_top_of_the_operators() {
    let config = VmPodConfig {
        node_selector: selector(&[("example.invalid/pool", "vms")]),
        kvm_node_selector: Some(("example.invalid/kvm".into(), "true".into())),
        ..Default::default()
    };
    let mut vm = pvc_vm();
    vm.spec.kvm = KvmMode::Required;

    let pod = build(&vm, &config);

    assert_eq!(
        pod.spec.unwrap().node_selector,
        Some(selector(&[
            ("example.invalid/kvm", "true"),
            ("example.invalid/pool", "vms"),
        ]))
    );
}

#[test]
fn tolerations_are_the_operators_then_the_vms_without_duplicates() {
    let config = VmPodConfig {
        tolerations: vec![
            toleration("dedicated", "NoSchedule"),
            toleration("spot", "NoExecute"),
        ],
        ..Default::default()
    };
    let mut vm = pvc_vm();
    vm.spec.tolerations = Some(vec![
        toleration("spot", "NoExecute"),
        toleration("gpu", "NoSchedule"),
        // Same key, other effect: a different toleration, kept.
        toleration("dedicated", "NoExecute"),
    ]);

    let pod = build(&vm, &config);

    assert_eq!(
        pod.spec.unwrap().tolerations,
        Some(vec![
            toleration("dedicated", "NoSchedule"),
            toleration("spot", "NoExecute"),
            toleration("gpu", "NoSchedule"),
            toleration("dedicated", "NoExecute"),
        ])
    );
}

#[test]
fn without_operator_defaults_the_pod_schedules_as_the_vm_says() {
    let mut vm = pvc_vm();
    let pod = build(&vm, &VmPodConfig::default());
    let spec = pod.spec.unwrap();
    assert_eq!((spec.node_selector, spec.tolerations), (None, None));

    vm.spec.node_selector = Some(selector(&[("disk", "ssd")]));
    vm.spec.tolerations = Some(vec![toleration("gpu", "NoSchedule")]);
    let spec = build(&vm, &VmPodConfig::default()).spec.unwrap();
    assert_eq!(spec.node_selector, vm.spec.node_selector);
    assert_eq!(spec.tolerations, vm.spec.tolerations);
}

#[test]
fn operator_scheduling_defaults_leave_the_spec_hash_alone() {
    let vm = pvc_vm();
    let config = VmPodConfig {
        node_selector: selector(&[("example.invalid/pool", "vms")]),
        tolerations: vec![toleration("dedicated", "NoSchedule")],
        ..Default::default()
    };

    let plain = build(&vm, &VmPodConfig::default());
    let scheduled = build(&vm, &config);

    assert_eq!(
        plain.metadata.annotations.unwrap()[SPEC_HASH_ANNOTATION],
        scheduled.metadata.annotations.unwrap()[SPEC_HASH_ANNOTATION]
    );
}

#[test]
fn the_readiness_probe_is_readyz_on_the_agent_port() {
    let mut vm = pvc_vm();
    vm.spec.readiness.period_seconds = 3;
    let pod = build(&vm, &VmPodConfig::default());
    let vm_c = vm_container(&pod);
    let probe = vm_c.readiness_probe.as_ref().unwrap();
    let get = probe.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/readyz"));
    assert_eq!(
        serde_json::to_value(&get.port).unwrap(),
        serde_json::json!("agent")
    );
    assert_eq!(probe.period_seconds, Some(3));
    let agent_port = vm_c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("agent"))
        .unwrap();
    assert_eq!(agent_port.container_port, 9100);
    assert_eq!(flag(&args(vm_c), "--listen"), Some("0.0.0.0:9100"));
}

#[test]
fn memory_request_and_limit_are_guest_ram_plus_the_overhead() {
    let mut vm = pvc_vm();
    vm.spec.memory_mib = 512;
    vm.spec.vcpus = 2;
    let config = VmPodConfig {
        memory_overhead_mib: 100,
        ..Default::default()
    };
    let pod = build(&vm, &config);
    let resources = vm_container(&pod).resources.clone().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "612Mi");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "612Mi");
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "200m");
    assert!(!resources.limits.unwrap().contains_key("cpu"));
    assert_eq!(flag(&args(vm_container(&pod)), "--memory-mib"), Some("512"));
    assert_eq!(flag(&args(vm_container(&pod)), "--vcpus"), Some("2"));
}

#[test]
fn the_default_overhead_is_the_measured_overhead_plus_margin_160_mib() {
    assert_eq!(VmPodConfig::default().memory_overhead_mib, 160);
    let pod = build(&pvc_vm(), &VmPodConfig::default());
    let resources = vm_container(&pod).resources.clone().unwrap();
    assert_eq!(resources.limits.unwrap()["memory"].0, "288Mi");
}

#[test]
fn resource_overrides_from_the_spec_win() {
    let mut vm = pvc_vm();
    vm.spec.resources =
        Some(serde_json::from_value(serde_json::json!({"limits": {"memory": "1Gi"}})).unwrap());
    let pod = build(&vm, &VmPodConfig::default());
    let resources = vm_container(&pod).resources.clone().unwrap();
    assert_eq!(resources.limits.unwrap()["memory"].0, "1Gi");
    assert_eq!(resources.requests.unwrap()["memory"].0, "288Mi");
}

#[test]
fn the_pod_mounts_no_service_account_token_and_is_never_restarted_by_the_kubelet() {
    let pod = build(&pvc_vm(), &VmPodConfig::default());
    let spec = pod.spec.unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
}

#[test]
fn the_grace_period_is_the_guests_plus_a_margin_and_reaches_the_agent() {
    let mut vm = pvc_vm();
    vm.spec.termination_grace_period_seconds = 45;
    let pod = build(&vm, &VmPodConfig::default());
    assert_eq!(
        pod.spec.as_ref().unwrap().termination_grace_period_seconds,
        Some(45 + GRACE_MARGIN_SECONDS)
    );
    assert_eq!(
        flag(&args(vm_container(&pod)), "--grace-seconds"),
        Some("45")
    );
}

#[test]
fn the_pod_is_owned_by_its_vm_and_named_after_it() {
    let pod = build(&pvc_vm(), &VmPodConfig::default());
    assert_eq!(pod.metadata.name.as_deref(), Some("hello-vm"));
    assert_eq!(pod_name("hello"), "hello-vm");
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "RvfMicroVm");
    assert_eq!(owner.controller, Some(true));
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()[SPEC_HASH_ANNOTATION],
        spec_hash(&pvc_vm().spec)
    );
}

#[test]
fn guest_ports_and_ssh_reach_the_agent_and_the_service() {
    let mut vm = pvc_vm();
    vm.spec.api_port = Some(9000);
    vm.spec.ssh = Some(SshSpec {
        enabled: true,
        port: 2222,
    });
    vm.spec.kernel_args = Some("quiet loglevel=3".into());
    let pod = build(&vm, &VmPodConfig::default());
    let a = args(vm_container(&pod));
    assert_eq!(flag(&a, "--api-port"), Some("9000"));
    assert_eq!(flag(&a, "--api-host-port"), Some("9000"));
    assert_eq!(flag(&a, "--ssh-port"), Some("2222"));
    assert_eq!(flag(&a, "--kernel-args"), Some("quiet loglevel=3"));

    let service = build_service(&vm);
    let ports = service.spec.unwrap().ports.unwrap();
    let named: Vec<_> = ports
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.port))
        .collect();
    assert_eq!(
        named,
        [("api".to_string(), 9000), ("ssh".to_string(), 2222)]
    );
}

#[test]
fn without_an_api_port_the_agent_takes_the_kernel_headers_and_the_pod_uses_8080() {
    let pod = build(&pvc_vm(), &VmPodConfig::default());
    let a = args(vm_container(&pod));
    assert_eq!(flag(&a, "--api-port"), None);
    assert_eq!(flag(&a, "--api-host-port"), Some("8080"));
    assert_eq!(flag(&a, "--ssh-port"), None);
    let service = build_service(&pvc_vm());
    assert_eq!(service.spec.unwrap().ports.unwrap().len(), 1);
}

#[test]
fn host_path_is_refused_unless_the_operator_allows_it() {
    let vm = vm_with(VmSource {
        host_path: Some(HostPathSource {
            path: "/var/lib/rvf/hello.rvf".into(),
        }),
        ..Default::default()
    });
    let refused = VmPodBuilder::new(&vm, &VmPodConfig::default()).build();
    assert_eq!(refused.unwrap_err(), PolicyViolation::HostPathNotAllowed);

    let config = VmPodConfig {
        allow_host_path: true,
        ..Default::default()
    };
    let pod = build(&vm, &config);
    let volume = &pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
    let host = volume.host_path.as_ref().unwrap();
    assert_eq!(host.path, "/var/lib/rvf/hello.rvf");
    assert_eq!(host.type_.as_deref(), Some("File"));
}

#[test]
fn qemu_extra_args_are_refused_unless_the_operator_allows_them() {
    let mut vm = pvc_vm();
    vm.spec.qemu = Some(QemuSpec {
        extra_args: vec!["-d".into(), "int".into()],
    });
    let refused = VmPodBuilder::new(&vm, &VmPodConfig::default()).build();
    assert_eq!(
        refused.unwrap_err(),
        PolicyViolation::QemuExtraArgsNotAllowed
    );

    let config = VmPodConfig {
        allow_qemu_extra_args: true,
        ..Default::default()
    };
    let a = args(vm_container(&build(&vm, &config)));
    let passed: Vec<_> = a
        .windows(2)
        .filter(|w| w[0] == "--qemu-arg")
        .map(|w| w[1].clone())
        .collect();
    assert_eq!(passed, ["-d", "int"]);
}

#[test]
fn the_spec_hash_changes_with_memory_but_not_with_run_strategy() {
    let base = pvc_vm().spec;
    let mut halted = base.clone();
    halted.run_strategy = RunStrategy::Halted;
    assert_eq!(spec_hash(&base), spec_hash(&halted));
    let mut bigger = base.clone();
    bigger.memory_mib = 256;
    assert_ne!(spec_hash(&base), spec_hash(&bigger));
}

/// Every spec shape the CLI test runs: each source kind, and every optional agent flag.
fn specs_for_the_cli() -> Vec<RvfMicroVm> {
    let mut all_options = pvc_vm();
    all_options.spec.source.initramfs_path = Some("images/initramfs.cpio".into());
    all_options.spec.memory_mib = rvf_operator::crd::MAX_MEMORY_MIB;
    all_options.spec.vcpus = rvf_operator::crd::MAX_VCPUS;
    all_options.spec.api_port = Some(8443);
    all_options.spec.ssh = Some(SshSpec {
        enabled: true,
        port: 2222,
    });
    all_options.spec.kvm = KvmMode::Required;
    all_options.spec.kernel_args = Some("--debug quiet".into());
    all_options.spec.qemu = Some(QemuSpec {
        extra_args: vec!["-device".into(), "virtio-rng-pci".into()],
    });
    let mut smallest = http_vm();
    smallest.spec.memory_mib = rvf_operator::crd::MIN_MEMORY_MIB;
    smallest.spec.kvm = KvmMode::Disabled;
    smallest.spec.termination_grace_period_seconds = 0;
    let mut host = vm_with(VmSource {
        host_path: Some(HostPathSource {
            path: "/srv/rvf/hello.rvf".into(),
        }),
        initramfs_path: Some("/srv/rvf/initramfs.cpio".into()),
        ..Default::default()
    });
    host.spec.kvm = KvmMode::Auto;
    vec![pvc_vm(), all_options, smallest, host]
}

/// Accepts connections on a loopback port of its own and closes them at once, so `fetch`
/// fails fast with its own error and never reaches any other address.
fn closing_listener() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    addr
}

/// Runs `rvf-operator` with the container's arguments, paths moved under `root`, and returns
/// (exit code, stderr). The container is expected to get past argument parsing and fail on
/// the missing files (or the closing listener), never on clap.
fn run_container_args(args: &[String], root: &std::path::Path, url: &str) -> (i32, String) {
    let mut rewritten = vec![];
    let mut previous = "";
    for arg in args {
        let new = if previous == "--listen" {
            "127.0.0.1:0".to_string()
        } else if previous == "--url" {
            url.to_string()
        } else if arg.starts_with("/vm/") || arg.starts_with("/dev/") || arg.starts_with("/srv/") {
            format!("{}{arg}", root.display())
        } else {
            arg.clone()
        };
        previous = arg;
        rewritten.push(new);
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rvf-operator"))
        .args(&rewritten)
        .env("RUST_LOG", "error")
        .output()
        .expect("the rvf-operator binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_container_s_arguments_parse_with_the_real_cli() {
    let config = VmPodConfig {
        allow_host_path: true,
        allow_qemu_extra_args: true,
        ..Default::default()
    };
    let url = format!("http://{}/hello.rvf", closing_listener());
    for vm in specs_for_the_cli() {
        let pod = build(&vm, &config);
        let spec = pod.spec.as_ref().unwrap();
        let containers = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers);
        for container in containers {
            let root = tempfile::tempdir().unwrap();
            let args = args(container);
            assert_eq!(
                container.command.as_deref(),
                Some(&["rvf-operator".to_string()][..])
            );
            let (code, stderr) = run_container_args(&args, root.path(), &url);
            let clap_refused =
                stderr.contains("For more information, try '--help'") || stderr.contains("Usage:");
            assert!(
                !clap_refused,
                "container {} of {:?}: the CLI refused {args:?}: {stderr}",
                container.name, vm.spec
            );
            // Past parsing, each fails on what the temp dir lacks: 1 for fetch and extract,
            // 5 (configuration) for the agent without an extracted kernel.
            let expected = if container.name == "vm" { 5 } else { 1 };
            assert_eq!(code, expected, "container {}: {stderr}", container.name);
        }
    }
}

#[test]
fn spec_values_outside_the_agents_flag_ranges_are_refused_before_a_pod_exists() {
    type Edit = fn(&mut RvfMicroVmSpec);
    let cases: [(&str, Edit); 6] = [
        ("memoryMiB", |s| s.memory_mib = 8),
        ("memoryMiB", |s| s.memory_mib = 2_000_000),
        ("vcpus", |s| s.vcpus = 0),
        ("vcpus", |s| s.vcpus = 300),
        ("apiPort", |s| s.api_port = Some(9100)),
        ("terminationGracePeriodSeconds", |s| {
            s.termination_grace_period_seconds = -1
        }),
    ];
    for (field, edit) in cases {
        let mut vm = pvc_vm();
        edit(&mut vm.spec);
        match VmPodBuilder::new(&vm, &VmPodConfig::default()).build() {
            Err(PolicyViolation::InvalidSpec(message)) => {
                assert!(message.contains(field), "{field}: {message}")
            }
            other => panic!("{field}: expected InvalidSpec, got {other:?}"),
        }
    }
}

#[test]
fn a_name_no_service_can_carry_is_refused() {
    for name in ["hello.world", "Hello", "9lives", &"a".repeat(64)] {
        let mut vm = pvc_vm();
        vm.metadata.name = Some(name.to_string());
        let refused = VmPodBuilder::new(&vm, &VmPodConfig::default()).build();
        assert_eq!(
            refused.unwrap_err(),
            PolicyViolation::InvalidName(name.to_string()),
            "{name}"
        );
    }
}

#[test]
fn the_longest_valid_name_still_gives_a_valid_pod_name_and_label_values() {
    let name = format!("a{}", "b".repeat(62));
    let mut vm = pvc_vm();
    vm.metadata.name = Some(name.clone());
    let pod = build(&vm, &VmPodConfig::default());
    let pod_name = pod.metadata.name.clone().unwrap();
    // Pod names are DNS subdomains (253); only the hostname is cut to 63 by the kubelet.
    assert_eq!(pod_name.len(), 66);
    assert!(pod_name.len() <= 253);
    for value in pod.metadata.labels.unwrap().values() {
        assert!(value.len() <= 63, "label value {value:?} is too long");
    }
    assert_eq!(
        build_service(&vm).metadata.name.as_deref(),
        Some(name.as_str())
    );
}
