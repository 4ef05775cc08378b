//! The ClusterIP Service in front of a VM's guest ports: a pure function of the spec.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::pod::{child_labels, VM_LABEL};
use crate::crd::RvfMicroVm;

/// The Service of `vm`: named like the resource, port `api` (and `ssh` when enabled), selecting
/// the VM pod. The agent port is left off: only the controller needs it, at the pod IP.
pub fn build_service(vm: &RvfMicroVm) -> Service {
    let name = vm.name_any();
    let port = |name: &str, number: u16| ServicePort {
        name: Some(name.into()),
        port: number.into(),
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut ports = vec![port("api", vm.spec.service_api_port())];
    if let Some(ssh) = vm.spec.ssh_port() {
        ports.push(port("ssh", ssh));
    }
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: vm.namespace(),
            labels: Some(child_labels(&name)),
            owner_references: vm.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some([(VM_LABEL.to_string(), name)].into()),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

/// `host:port` of the guest API (and SSH) through the Service, for `status.endpoints`.
pub fn service_endpoints(vm: &RvfMicroVm) -> crate::crd::Endpoints {
    let host = format!(
        "{}.{}.svc",
        vm.name_any(),
        vm.namespace().unwrap_or_else(|| "default".into())
    );
    crate::crd::Endpoints {
        api: Some(format!("{host}:{}", vm.spec.service_api_port())),
        ssh: vm.spec.ssh_port().map(|p| format!("{host}:{p}")),
    }
}
