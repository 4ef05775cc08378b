//! The desired VM pod of an `RvfMicroVm`: a pure function of the spec and the operator's
//! configuration. It never talks to the API; reconcile applies what it returns.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, HostPathVolumeSource,
    ImageVolumeSource, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Probe,
    ResourceRequirements, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{
    KvmMode, RvfMicroVm, RvfMicroVmSpec, AGENT_PORT, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB,
};

/// Label every child object carries with the name of its `RvfMicroVm`; the Service selects on it.
pub const VM_LABEL: &str = "rvf.ruvector.io/vm";
/// Annotation on the pod with the hash of the spec it was built from; a change means a new pod.
pub const SPEC_HASH_ANNOTATION: &str = "rvf.ruvector.io/spec-hash";
/// Annotation on the pod with how many pods this VM had before it (0 for the first).
pub const RUN_ANNOTATION: &str = "rvf.ruvector.io/run";
/// Name of the init container that downloads an http source.
pub const FETCH_CONTAINER: &str = "fetch";
/// Name of the init container that extracts the kernel from the RVF.
pub const EXTRACT_CONTAINER: &str = "extract";
/// Name of the container that runs the agent and QEMU.
pub const VM_CONTAINER: &str = "vm";
/// Seconds the pod's grace period adds to the guest's: the agent's `quit` and kill after the
/// ACPI power-down wait must fit before the kubelet sends SIGKILL.
pub const GRACE_MARGIN_SECONDS: i64 = 15;

const SOURCE_DIR: &str = "/vm/source";
const KERNEL_DIR: &str = "/vm/kernel";
const INITRAMFS_MOUNT: &str = "/vm/initramfs";
const DOWNLOADED_RVF: &str = "/vm/source/vm.rvf";
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Operator-wide settings that shape every VM pod, from the controller's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct VmPodConfig {
    /// Image with `rvf-operator` and QEMU, used by every container of the pod.
    pub image: String,
    /// Pull policy of that image.
    pub image_pull_policy: String,
    /// Extended resource that hands out `/dev/kvm` (a device plugin), e.g.
    /// `devices.kubevirt.io/kvm`; without it, `kvm: Required` mounts `/dev/kvm` from the host.
    pub kvm_resource_name: Option<String>,
    /// Node label (key, value) that marks KVM nodes; added to the node selector of
    /// `kvm: Required` VMs so they stay Pending (and say why) rather than fail on the wrong node.
    pub kvm_node_selector: Option<(String, String)>,
    /// Node labels every VM pod must match. A key the VM's own `spec.nodeSelector` also sets
    /// takes the VM's value; [`Self::kvm_node_selector`] goes on top of both.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations every VM pod carries, ahead of the VM's own `spec.tolerations`; a VM
    /// toleration equal to one of these is not repeated.
    pub tolerations: Vec<Toleration>,
    /// Whether the `vm` container runs privileged. A hostPath `/dev/kvm` needs it; with a
    /// device plugin it can be off.
    pub privileged: bool,
    /// MiB the pod asks for beyond guest RAM: QEMU's own memory (device model, TCG
    /// translation cache) and the agent.
    pub memory_overhead_mib: u32,
    /// CPU the pod requests per vCPU, in millicores. No CPU limit is set: a throttled TCG
    /// guest misses its own timers.
    pub cpu_request_millis_per_vcpu: u32,
    /// Allow `source.hostPath`.
    pub allow_host_path: bool,
    /// Allow `qemu.extraArgs`.
    pub allow_qemu_extra_args: bool,
}

impl Default for VmPodConfig {
    fn default() -> Self {
        Self {
            image: DEFAULT_VM_IMAGE.to_string(),
            image_pull_policy: "IfNotPresent".to_string(),
            kvm_resource_name: None,
            kvm_node_selector: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            privileged: true,
            memory_overhead_mib: DEFAULT_MEMORY_OVERHEAD_MIB,
            cpu_request_millis_per_vcpu: DEFAULT_CPU_REQUEST_MILLIS_PER_VCPU,
            allow_host_path: false,
            allow_qemu_extra_args: false,
        }
    }
}

/// Image of the VM pod when `--vm-image` is not given.
pub const DEFAULT_VM_IMAGE: &str = "ghcr.io/rvf-operator/rvf-operator:0.1.0";
/// Default of `--memory-overhead-mib`. Measured by `cargo bench --bench runtime` (TCG,
/// `tb-size=32`, 128 MiB guest touching all its RAM): QEMU and the agent use about 103 MiB
/// beyond guest RAM (agent about 12 MiB). 160 leaves room for the page cache of the RVF and
/// the extracted kernel, which count against the same limit (docs/benchmarks.md).
pub const DEFAULT_MEMORY_OVERHEAD_MIB: u32 = 160;
/// Default of `--cpu-request-millis-per-vcpu`.
pub const DEFAULT_CPU_REQUEST_MILLIS_PER_VCPU: u32 = 100;

/// A resource the operator refuses to run; the user fixes it by changing the resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error("source.hostPath is refused: the operator runs without --allow-host-path (hostPath is for single-node development)")]
    HostPathNotAllowed,
    #[error("qemu.extraArgs is refused: the operator runs without --allow-qemu-extra-args (extra QEMU arguments in a privileged pod can reach the host)")]
    QemuExtraArgsNotAllowed,
    /// The name cannot name the VM's Service (a resource stored before the CRD checked it).
    #[error("metadata.name {0:?} must be a DNS-1035 label (at most 63 lower-case letters, digits or '-', starting with a letter) because the VM's Service carries it; recreate the VM under such a name")]
    InvalidName(String),
    /// A spec field is outside what the VM agent accepts (a resource stored before the CRD
    /// had its bounds, or applied with validation off); the text names the field.
    #[error("{0}")]
    InvalidSpec(String),
}

impl PolicyViolation {
    /// The condition reason for this violation.
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyViolation::HostPathNotAllowed => "HostPathNotAllowed",
            PolicyViolation::QemuExtraArgsNotAllowed => "QemuExtraArgsNotAllowed",
            PolicyViolation::InvalidName(_) => "InvalidName",
            PolicyViolation::InvalidSpec(_) => "InvalidSpec",
        }
    }
}

/// Checks everything about `vm` that would otherwise fail later and less clearly: its name
/// (the Service carries it), the bounds of the spec (the agent's flags refuse values outside
/// them, and an agent that refuses its arguments exits like a crashed guest), then the
/// operator's policy. The CRD schema enforces the same bounds at `kubectl apply`; this
/// catches resources stored before it did.
pub fn check_resource(vm: &RvfMicroVm, config: &VmPodConfig) -> Result<(), PolicyViolation> {
    let name = vm.name_any();
    if !is_dns1035_label(&name) {
        return Err(PolicyViolation::InvalidName(name));
    }
    check_spec_bounds(&vm.spec).map_err(PolicyViolation::InvalidSpec)?;
    check_policy(&vm.spec, config)
}

/// True for a DNS-1035 label: what a Service name must be.
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn check_spec_bounds(spec: &RvfMicroVmSpec) -> Result<(), String> {
    let within = |field: &str, value: i64, min: i64, max: i64| {
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(format!(
                "{field} is {value}; it must be between {min} and {max}"
            ))
        }
    };
    within(
        "memoryMiB",
        spec.memory_mib.into(),
        MIN_MEMORY_MIB.into(),
        MAX_MEMORY_MIB.into(),
    )?;
    within("vcpus", spec.vcpus.into(), 1, MAX_VCPUS.into())?;
    within(
        "terminationGracePeriodSeconds",
        spec.termination_grace_period_seconds,
        0,
        3600,
    )?;
    let r = &spec.readiness;
    within("readiness.periodSeconds", r.period_seconds.into(), 1, 300)?;
    within("readiness.timeoutSeconds", r.timeout_seconds.into(), 1, 300)?;
    within(
        "readiness.startupTimeoutSeconds",
        r.startup_timeout_seconds.into(),
        1,
        3600,
    )?;
    if !r.path.starts_with('/') {
        return Err(format!("readiness.path {:?} must start with '/'", r.path));
    }
    let api = spec.service_api_port();
    let ports = [("apiPort", Some(api)), ("ssh.port", spec.ssh_port())];
    for (field, port) in ports {
        match port {
            Some(0) => return Err(format!("{field} must be between 1 and 65535")),
            Some(AGENT_PORT) => {
                return Err(format!(
                    "{field} {AGENT_PORT} is taken by the VM agent inside the pod; pick another guest port"
                ))
            }
            _ => {}
        }
    }
    if spec.ssh_port() == Some(api) {
        return Err(format!(
            "ssh.port and apiPort are both {api}; they must differ: both are forwarded to the pod"
        ));
    }
    Ok(())
}

/// Checks the spec against what the operator allows.
pub fn check_policy(spec: &RvfMicroVmSpec, config: &VmPodConfig) -> Result<(), PolicyViolation> {
    if spec.source.host_path.is_some() && !config.allow_host_path {
        return Err(PolicyViolation::HostPathNotAllowed);
    }
    if !spec.qemu_extra_args().is_empty() && !config.allow_qemu_extra_args {
        return Err(PolicyViolation::QemuExtraArgsNotAllowed);
    }
    Ok(())
}

/// Name of the VM pod of the resource called `vm_name`.
pub fn pod_name(vm_name: &str) -> String {
    format!("{vm_name}-vm")
}

/// Hash of everything in the spec that shapes the pod: a running pod whose annotation differs
/// is replaced. `runStrategy` is left out: it decides whether a pod runs, not what it is.
/// The operator's [`VmPodConfig`] is left out too, so a new operator default (image, node
/// selector, tolerations) reaches a VM at its next restart or spec change, never all VMs at once.
pub fn spec_hash(spec: &RvfMicroVmSpec) -> String {
    let mut relevant = spec.clone();
    relevant.run_strategy = Default::default();
    let json = serde_json::to_vec(&relevant).expect("an RvfMicroVm spec serializes");
    let digest = Sha256::digest(&json);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the VM pod of one `RvfMicroVm`.
///
/// Guarantees: init container `fetch` only for an http source, `extract` always; the `vm`
/// container's memory request and limit are guest RAM plus the configured overhead; no
/// service-account token; a grace period of the spec's plus [`GRACE_MARGIN_SECONDS`]; the
/// operator's node selector and tolerations under the VM's own (the VM's value wins for a
/// node-selector key, tolerations are the union).
pub struct VmPodBuilder<'a> {
    vm: &'a RvfMicroVm,
    config: &'a VmPodConfig,
    run: u32,
}

/// Where the RVF (and initramfs) sit inside the pod, and the volumes that put them there.
struct SourceLayout {
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    rvf: String,
    initramfs: Option<String>,
}

impl<'a> VmPodBuilder<'a> {
    /// A builder for the first pod of `vm`.
    pub fn new(vm: &'a RvfMicroVm, config: &'a VmPodConfig) -> Self {
        Self { vm, config, run: 0 }
    }

    /// Marks the pod as the `run`-th rerun of this VM (0 for the first pod).
    pub fn run(mut self, run: u32) -> Self {
        self.run = run;
        self
    }

    /// The pod, or the policy the spec breaks.
    pub fn build(&self) -> Result<Pod, PolicyViolation> {
        let spec = &self.vm.spec;
        check_resource(self.vm, self.config)?;
        let name = self.vm.name_any();
        let source = self.source_layout();

        let mut volumes = source.volumes.clone();
        volumes.push(Volume {
            name: "kernel".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        let kvm_host_device =
            spec.kvm == KvmMode::Required && self.config.kvm_resource_name.is_none();
        if kvm_host_device {
            volumes.push(Volume {
                name: "kvm".into(),
                host_path: Some(HostPathVolumeSource {
                    path: "/dev/kvm".into(),
                    // CharDevice makes the kubelet refuse a node without KVM instead of
                    // creating an empty /dev/kvm directory there.
                    type_: Some("CharDevice".into()),
                }),
                ..Default::default()
            });
        }

        let resources = self.resources();
        let mut init_containers = vec![];
        if let Some(http) = &spec.source.http {
            init_containers.push(self.base_container(
                FETCH_CONTAINER,
                vec![
                    "fetch".into(),
                    "--url".into(),
                    http.url.clone(),
                    "--sha256".into(),
                    http.sha256.clone(),
                    "--out".into(),
                    DOWNLOADED_RVF.into(),
                    "--termination-log".into(),
                    TERMINATION_LOG.into(),
                ],
                mounts_with(&source.mounts, false),
                resources.clone(),
            ));
        }
        let mut extract_args = vec![
            "extract".into(),
            "--rvf".into(),
            source.rvf.clone(),
            "--out".into(),
            KERNEL_DIR.into(),
        ];
        if let Some(initramfs) = &source.initramfs {
            extract_args.extend(["--initramfs".into(), initramfs.clone()]);
        }
        extract_args.extend(["--termination-log".into(), TERMINATION_LOG.into()]);
        let mut extract_mounts = mounts_with(&source.mounts, true);
        extract_mounts.push(mount("kernel", KERNEL_DIR, false));
        init_containers.push(self.base_container(
            EXTRACT_CONTAINER,
            extract_args,
            extract_mounts,
            resources.clone(),
        ));

        let mut vm_mounts = mounts_with(&source.mounts, true);
        vm_mounts.push(mount("kernel", KERNEL_DIR, true));
        if kvm_host_device {
            vm_mounts.push(mount("kvm", "/dev/kvm", false));
        }
        let mut vm =
            self.base_container(VM_CONTAINER, self.agent_args(&source), vm_mounts, resources);
        vm.ports = Some(self.container_ports());
        vm.readiness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::String("agent".into()),
                ..Default::default()
            }),
            period_seconds: Some(spec.readiness.period_seconds as i32),
            timeout_seconds: Some(spec.readiness.timeout_seconds as i32),
            ..Default::default()
        });
        vm.security_context = Some(SecurityContext {
            privileged: Some(self.config.privileged),
            // The image runs as an unprivileged user; /dev/kvm is root:kvm 0660 on most
            // hosts, so QEMU needs root to open it (the container is privileged anyway).
            run_as_user: Some(0),
            ..Default::default()
        });

        let node_selector = self.node_selector();
        let tolerations = self.tolerations();

        Ok(Pod {
            metadata: ObjectMeta {
                name: Some(pod_name(&name)),
                namespace: self.vm.namespace(),
                labels: Some(child_labels(&name)),
                annotations: Some(BTreeMap::from([
                    (SPEC_HASH_ANNOTATION.to_string(), spec_hash(spec)),
                    (RUN_ANNOTATION.to_string(), self.run.to_string()),
                ])),
                owner_references: self.vm.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                // The controller, not the kubelet, decides about a new run (runStrategy).
                restart_policy: Some("Never".into()),
                // The agent never calls the API: the controller pulls /status from the pod.
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                termination_grace_period_seconds: Some(
                    spec.termination_grace_period_seconds + GRACE_MARGIN_SECONDS,
                ),
                node_selector: (!node_selector.is_empty()).then_some(node_selector),
                tolerations: (!tolerations.is_empty()).then_some(tolerations),
                affinity: spec.affinity.clone(),
                volumes: Some(volumes),
                init_containers: Some(init_containers),
                containers: vec![vm],
                ..Default::default()
            }),
            status: None,
        })
    }

    /// The operator's node selector, overridden key by key by the VM's, then the KVM label
    /// for `kvm: Required`.
    fn node_selector(&self) -> BTreeMap<String, String> {
        let spec = &self.vm.spec;
        let mut selector = self.config.node_selector.clone();
        selector.extend(spec.node_selector.clone().unwrap_or_default());
        if spec.kvm == KvmMode::Required {
            if let Some((key, value)) = &self.config.kvm_node_selector {
                selector.insert(key.clone(), value.clone());
            }
        }
        selector
    }

    /// The operator's tolerations, then the VM's, each one once.
    fn tolerations(&self) -> Vec<Toleration> {
        let own = self.vm.spec.tolerations.iter().flatten();
        let mut tolerations: Vec<Toleration> = vec![];
        for toleration in self.config.tolerations.iter().chain(own) {
            if !tolerations.contains(toleration) {
                tolerations.push(toleration.clone());
            }
        }
        tolerations
    }

    fn source_layout(&self) -> SourceLayout {
        let source = &self.vm.spec.source;
        let in_volume = |p: &str| format!("{SOURCE_DIR}/{}", p.trim_start_matches('/'));
        let volume = |v: Volume| vec![v];
        let source_mount = vec![mount("source", SOURCE_DIR, true)];
        if let Some(pvc) = &source.persistent_volume_claim {
            SourceLayout {
                volumes: volume(Volume {
                    name: "source".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: pvc.claim_name.clone(),
                        read_only: Some(true),
                    }),
                    ..Default::default()
                }),
                mounts: source_mount,
                rvf: in_volume(&pvc.path),
                initramfs: source.initramfs_path.as_deref().map(in_volume),
            }
        } else if let Some(image) = &source.image {
            SourceLayout {
                volumes: volume(Volume {
                    name: "source".into(),
                    image: Some(ImageVolumeSource {
                        reference: Some(image.reference.clone()),
                        pull_policy: Some(self.config.image_pull_policy.clone()),
                    }),
                    ..Default::default()
                }),
                mounts: source_mount,
                rvf: in_volume(&image.path),
                initramfs: source.initramfs_path.as_deref().map(in_volume),
            }
        } else if let Some(host) = &source.host_path {
            let mut volumes = volume(host_file_volume("source", &host.path));
            let mut mounts = vec![mount("source", DOWNLOADED_RVF, true)];
            let initramfs = source.initramfs_path.as_ref().map(|p| {
                volumes.push(host_file_volume("initramfs", p));
                mounts.push(mount("initramfs", INITRAMFS_MOUNT, true));
                INITRAMFS_MOUNT.to_string()
            });
            SourceLayout {
                volumes,
                mounts,
                rvf: DOWNLOADED_RVF.into(),
                initramfs,
            }
        } else {
            // http, and (never admitted by the CRD) no source at all: an emptyDir the fetch
            // container fills; with no fetch container, extract reports the missing file.
            SourceLayout {
                volumes: volume(Volume {
                    name: "source".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                }),
                mounts: source_mount,
                rvf: DOWNLOADED_RVF.into(),
                initramfs: None,
            }
        }
    }

    fn agent_args(&self, source: &SourceLayout) -> Vec<String> {
        let spec = &self.vm.spec;
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--kernel-dir".into(),
            KERNEL_DIR.into(),
            "--rvf".into(),
            source.rvf.clone(),
            "--memory-mib".into(),
            spec.memory_mib.to_string(),
            "--vcpus".into(),
            spec.vcpus.to_string(),
            "--kvm".into(),
            spec.kvm.agent_flag().into(),
            "--api-host-port".into(),
            spec.service_api_port().to_string(),
        ];
        if let Some(port) = spec.api_port {
            args.extend(["--api-port".into(), port.to_string()]);
        }
        if let Some(port) = spec.ssh_port() {
            args.extend(["--ssh-port".into(), port.to_string()]);
        }
        if let Some(kernel_args) = spec.kernel_args.as_deref().filter(|a| !a.is_empty()) {
            args.extend(["--kernel-args".into(), kernel_args.to_string()]);
        }
        let r = &spec.readiness;
        args.extend([
            "--readiness-path".into(),
            r.path.clone(),
            "--readiness-period-seconds".into(),
            r.period_seconds.to_string(),
            "--readiness-timeout-seconds".into(),
            r.timeout_seconds.to_string(),
            "--startup-timeout-seconds".into(),
            r.startup_timeout_seconds.to_string(),
            "--grace-seconds".into(),
            spec.termination_grace_period_seconds.to_string(),
            "--listen".into(),
            format!("0.0.0.0:{AGENT_PORT}"),
        ]);
        for arg in spec.qemu_extra_args() {
            args.extend(["--qemu-arg".into(), arg.clone()]);
        }
        args
    }

    fn container_ports(&self) -> Vec<ContainerPort> {
        let spec = &self.vm.spec;
        let port = |name: &str, number: u16| ContainerPort {
            name: Some(name.into()),
            container_port: number.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        };
        let mut ports = vec![
            port("agent", AGENT_PORT),
            port("api", spec.service_api_port()),
        ];
        if let Some(ssh) = spec.ssh_port() {
            ports.push(port("ssh", ssh));
        }
        ports
    }

    fn resources(&self) -> ResourceRequirements {
        let spec = &self.vm.spec;
        let memory = Quantity(format!(
            "{}Mi",
            u64::from(spec.memory_mib) + u64::from(self.config.memory_overhead_mib)
        ));
        let cpu = Quantity(format!(
            "{}m",
            u64::from(spec.vcpus) * u64::from(self.config.cpu_request_millis_per_vcpu)
        ));
        let mut requests = BTreeMap::from([
            ("memory".to_string(), memory.clone()),
            ("cpu".to_string(), cpu),
        ]);
        let mut limits = BTreeMap::from([("memory".to_string(), memory)]);
        if spec.kvm == KvmMode::Required {
            if let Some(resource) = &self.config.kvm_resource_name {
                requests.insert(resource.clone(), Quantity("1".into()));
                limits.insert(resource.clone(), Quantity("1".into()));
            }
        }
        if let Some(overrides) = &spec.resources {
            requests.extend(overrides.requests.clone().unwrap_or_default());
            limits.extend(overrides.limits.clone().unwrap_or_default());
        }
        ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..Default::default()
        }
    }

    fn base_container(
        &self,
        name: &str,
        args: Vec<String>,
        mounts: Vec<VolumeMount>,
        resources: ResourceRequirements,
    ) -> Container {
        Container {
            name: name.into(),
            image: Some(self.config.image.clone()),
            image_pull_policy: Some(self.config.image_pull_policy.clone()),
            command: Some(vec!["rvf-operator".into()]),
            args: Some(args),
            volume_mounts: Some(mounts),
            resources: Some(resources),
            termination_message_path: Some(TERMINATION_LOG.into()),
            // A crash before the message is written still leaves the log tail in the status.
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        }
    }
}

/// The source mounts, writable only for the fetch container of an http source.
fn mounts_with(mounts: &[VolumeMount], read_only: bool) -> Vec<VolumeMount> {
    mounts
        .iter()
        .cloned()
        .map(|mut m| {
            m.read_only = Some(read_only);
            m
        })
        .collect()
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn host_file_volume(name: &str, path: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some("File".into()),
        }),
        ..Default::default()
    }
}

/// Labels of the VM's pod and Service.
pub fn child_labels(vm_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (VM_LABEL.to_string(), vm_name.to_string()),
        (
            "app.kubernetes.io/name".to_string(),
            "rvf-microvm".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            vm_name.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "rvf-operator".to_string(),
        ),
    ])
}

/// Reads the run number a pod was created with (0 when the annotation is missing or garbled).
pub fn pod_run(pod: &Pod) -> u32 {
    pod.annotations()
        .get(RUN_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The spec hash a pod was built from, if it carries one.
pub fn pod_spec_hash(pod: &Pod) -> Option<&str> {
    pod.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(SPEC_HASH_ANNOTATION))
        .map(String::as_str)
}
