//! The `RvfMicroVm` custom resource: spec, status and the generated CRD.
//!
//! Owns the resource's wire format and its schema validation; it holds no controller logic.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::runtime::kernel::KernelFacts;
pub use crate::runtime::status::{Accelerator, Phase, QmpState};

/// API group of every resource this operator serves.
pub const GROUP: &str = "rvf.ruvector.io";
/// Port the agent serves `/healthz`, `/readyz`, `/status` and `/metrics` on inside the VM pod.
///
/// The guest's own ports must differ from it; the CRD refuses specs where they do not.
pub const AGENT_PORT: u16 = 9100;
/// Guest API port used when neither the spec nor the RVF kernel header names one.
pub const DEFAULT_API_PORT: u16 = 8080;
/// Smallest guest RAM the reference RVF kernel boots with; below it the kernel panics early.
pub const MIN_MEMORY_MIB: u32 = 72;
/// Largest guest RAM the schema accepts.
pub const MAX_MEMORY_MIB: u32 = 65536;
/// Largest vCPU count the schema accepts.
pub const MAX_VCPUS: u32 = 64;

/// A microVM that boots the kernel carried inside an RVF file.
///
/// The controller runs one pod per resource (init containers extract the kernel, the `vm`
/// container runs QEMU under the agent) and a Service for the guest's API port.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "rvf.ruvector.io",
    version = "v1alpha1",
    kind = "RvfMicroVm",
    plural = "rvfmicrovms",
    singular = "rvfmicrovm",
    shortname = "rvfvm",
    category = "rvf",
    namespaced,
    status = "RvfMicroVmStatus",
    derive = "PartialEq",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "QMP", type_ = "string", json_path = ".status.qmp.status"),
    printcolumn(name = "Accel", type_ = "string", json_path = ".status.accelerator"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.nodeName"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')")
        .message("metadata.name must be a DNS-1035 label (at most 63 lower-case letters, digits or '-', starting with a letter): the VM's Service carries the same name")
)]
#[x_kube(
    validation = Rule::new("!has(self.apiPort) || self.apiPort != 9100")
        .message("apiPort 9100 is taken by the VM agent inside the pod; pick another guest port"),
    validation = Rule::new("!has(self.ssh) || !self.ssh.enabled || self.ssh.port != 9100")
        .message("ssh.port 9100 is taken by the VM agent inside the pod; pick another guest port"),
    validation = Rule::new("!has(self.ssh) || !self.ssh.enabled || !has(self.apiPort) || self.ssh.port != self.apiPort")
        .message("ssh.port and apiPort must differ: both are forwarded to the pod"),
    validation = Rule::new("!has(self.ssh) || !self.ssh.enabled || has(self.apiPort) || self.ssh.port != 8080")
        .message("ssh.port 8080 collides with the default apiPort; set apiPort or pick another ssh.port")
)]
#[serde(rename_all = "camelCase")]
pub struct RvfMicroVmSpec {
    /// Where the RVF file comes from; exactly one kind of source.
    pub source: VmSource,

    /// Guest RAM in MiB. The VM pod asks for this plus the operator's memory overhead.
    #[serde(rename = "memoryMiB", default = "default_memory_mib")]
    #[schemars(range(min = 72, max = 65536))]
    pub memory_mib: u32,

    /// Virtual CPUs of the guest.
    #[serde(default = "default_vcpus")]
    #[schemars(range(min = 1, max = 64))]
    pub vcpus: u32,

    /// Guest port of the RVF's HTTP API. Unset: the port in the RVF kernel header, else 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub api_port: Option<u16>,

    /// SSH into the guest, forwarded through the pod and exposed on the Service. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshSpec>,

    /// Whether QEMU uses KVM.
    #[serde(default)]
    pub kvm: KvmMode,

    /// Appended to the kernel command line the RVF carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,

    /// How the agent decides that the guest is ready.
    #[serde(default)]
    pub readiness: ReadinessSpec,

    /// What happens when the VM stops.
    #[serde(default)]
    pub run_strategy: RunStrategy,

    /// Seconds the guest gets to power down after ACPI shutdown before QEMU is stopped.
    #[serde(default = "default_grace_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub termination_grace_period_seconds: i64,

    /// Node labels the VM pod must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of the VM pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Affinity of the VM pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Overrides of the `vm` container's resources; unset entries keep the computed values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// QEMU settings for experts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuSpec>,
}

/// Where the RVF file comes from.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("[has(self.persistentVolumeClaim), has(self.http), has(self.image), has(self.hostPath)].filter(x, x).size() == 1")
        .message("exactly one of source.persistentVolumeClaim, source.http, source.image or source.hostPath must be set"),
    validation = Rule::new("!has(self.initramfsPath) || !has(self.http)")
        .message("source.initramfsPath names a file beside the RVF; an http source has none"),
    validation = Rule::new("!has(self.initramfsPath) || !has(self.hostPath) || self.initramfsPath.startsWith('/')")
        .message("with a hostPath source, initramfsPath must be an absolute path on the node"),
    validation = Rule::new("!has(self.initramfsPath) || has(self.hostPath) || (!self.initramfsPath.startsWith('/') && !self.initramfsPath.matches('(^|/)[.][.](/|$)'))")
        .message("initramfsPath must be relative to the source volume and must not contain '..'")
)]
#[serde(rename_all = "camelCase")]
pub struct VmSource {
    /// An RVF file on a PersistentVolumeClaim in the resource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcSource>,

    /// An RVF file downloaded by the `fetch` init container and checked against its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,

    /// An RVF file inside an OCI image, mounted as an image volume (beta in Kubernetes 1.33,
    /// on by default from 1.35; alpha behind the `ImageVolume` gate in 1.31 and 1.32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSource>,

    /// An RVF file on the node itself; for single-node development only, refused unless the
    /// operator runs with `--allow-host-path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathSource>,

    /// An initramfs beside the RVF file that replaces the one inside the RVF, if any.
    /// Relative to the volume for PVC and image sources, absolute on the node for hostPath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub initramfs_path: Option<String>,
}

/// An RVF file on a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the claim, in the resource's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,

    /// Path of the RVF file inside the volume.
    #[x_kube(
        validation = Rule::new("!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')")
            .message("path must be relative to the volume and must not contain '..'")
    )]
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

/// An RVF file served over HTTP(S).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// Where to download the RVF file from.
    #[x_kube(
        validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')")
            .message("url must start with https:// or http://")
    )]
    #[schemars(length(min = 8, max = 4096))]
    pub url: String,

    /// Expected SHA-256 of the file, 64 lower-case hex digits; a mismatch fails the VM.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
}

/// An RVF file inside an OCI image.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    /// Image reference, e.g. `registry.example/rvf/hello:1.0`.
    #[schemars(length(min = 1, max = 4096))]
    pub reference: String,

    /// Path of the RVF file inside the image.
    #[x_kube(
        validation = Rule::new("!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')")
            .message("path must be relative to the image root and must not contain '..'")
    )]
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

/// An RVF file on the node.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostPathSource {
    /// Absolute path of the RVF file on the node.
    #[x_kube(
        validation = Rule::new("self.startsWith('/') && !self.endsWith('/')")
            .message("hostPath.path must be the absolute path of a file on the node")
    )]
    #[schemars(length(min = 2, max = 4096))]
    pub path: String,
}

/// SSH forwarding into the guest.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SshSpec {
    /// Forward the guest's SSH port.
    #[serde(default)]
    pub enabled: bool,

    /// Guest SSH port; the pod and the Service use the same number.
    #[serde(default = "default_ssh_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// Whether QEMU runs the guest under KVM.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvmMode {
    /// KVM when `/dev/kvm` opens read-write in the pod, else TCG (unless the kernel header
    /// says the kernel requires KVM).
    #[default]
    Auto,
    /// KVM or nothing: the pod is scheduled only where KVM is offered, and fails otherwise.
    Required,
    /// Always TCG (software emulation).
    Disabled,
}

impl KvmMode {
    /// The spelling of the agent's `--kvm` flag.
    pub fn agent_flag(self) -> &'static str {
        match self {
            KvmMode::Auto => "auto",
            KvmMode::Required => "required",
            KvmMode::Disabled => "disabled",
        }
    }
}

/// What happens once the VM stops.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunStrategy {
    /// Keep a VM running: start it again whenever it stops, cleanly or not.
    #[default]
    Always,
    /// Start it again only when it fails; a clean guest poweroff leaves it Stopped.
    RerunOnFailure,
    /// Run it once; whatever the outcome, it stays Stopped or Failed.
    Once,
    /// Keep it stopped; a running VM is powered down.
    Halted,
}

/// Readiness of the guest: an HTTP answer on its API port, not a TCP connect.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessSpec {
    /// HTTP path on the guest API that answers once the guest is up.
    #[serde(default = "default_readiness_path")]
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub path: String,

    /// Seconds between probes.
    #[serde(default = "default_period_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub period_seconds: u32,

    /// Seconds one probe may take.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: u32,

    /// Seconds from QEMU start within which the guest must answer, else the VM fails.
    #[serde(default = "default_startup_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub startup_timeout_seconds: u32,
}

impl Default for ReadinessSpec {
    fn default() -> Self {
        Self {
            path: default_readiness_path(),
            period_seconds: default_period_seconds(),
            timeout_seconds: default_timeout_seconds(),
            startup_timeout_seconds: default_startup_timeout_seconds(),
        }
    }
}

/// QEMU settings for experts.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QemuSpec {
    /// Extra QEMU arguments. Refused unless the operator runs with `--allow-qemu-extra-args`:
    /// in a privileged pod they can reach the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

/// Observed state of an `RvfMicroVm`, written only by the controller.
///
/// Field names match the agent's `/status` JSON so values are copied, not translated.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RvfMicroVmStatus {
    /// Where the VM is in its life.
    #[serde(default)]
    pub phase: Phase,

    /// Ready, KernelExtracted, GuestReady, Reconciling and Stalled, each with reason and message.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The VM pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,

    /// The node the VM pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// The Service in front of the guest's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,

    /// Cluster-internal addresses of the guest's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,

    /// kvm or tcg, once QEMU runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<Accelerator>,

    /// What QMP `query-status` last said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp: Option<QmpState>,

    /// Facts about the kernel extracted from the RVF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelFacts>,

    /// Seconds from QEMU start to the guest's first HTTP answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_seconds: Option<f64>,

    /// Times the VM was started again: new pods under the run strategy plus QEMU restarts.
    #[serde(default)]
    pub restarts: u32,

    /// One sentence on the current state, for `kubectl describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Cluster-internal `host:port` addresses of the guest's ports, through the VM's Service.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// The guest HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The guest SSH server, when SSH is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
}

impl RvfMicroVmSpec {
    /// The SSH port to forward, when SSH is enabled.
    pub fn ssh_port(&self) -> Option<u16> {
        self.ssh.as_ref().filter(|s| s.enabled).map(|s| s.port)
    }

    /// The port the Service and the pod use for the guest API (the guest may use another
    /// when the spec leaves it to the kernel header; the agent forwards between them).
    pub fn service_api_port(&self) -> u16 {
        self.api_port.unwrap_or(DEFAULT_API_PORT)
    }

    /// The QEMU extra arguments the spec asks for (empty when none).
    pub fn qemu_extra_args(&self) -> &[String] {
        self.qemu.as_ref().map_or(&[], |q| q.extra_args.as_slice())
    }
}

fn default_memory_mib() -> u32 {
    128
}
fn default_vcpus() -> u32 {
    1
}
fn default_ssh_port() -> u16 {
    22
}
fn default_grace_seconds() -> i64 {
    30
}
fn default_readiness_path() -> String {
    "/v1/health".into()
}
fn default_period_seconds() -> u32 {
    2
}
fn default_timeout_seconds() -> u32 {
    1
}
fn default_startup_timeout_seconds() -> u32 {
    120
}

/// The CRD as YAML, exactly as `rvf-operator crd` prints it and `crds/rvfmicrovm.yaml` holds it.
pub fn crd_yaml() -> String {
    let yaml = serde_yaml::to_string(&RvfMicroVm::crd()).expect("the CRD serializes to YAML");
    format!(
        "# Generated by `rvf-operator crd > crds/rvfmicrovm.yaml`; do not edit by hand.\n{yaml}"
    )
}
