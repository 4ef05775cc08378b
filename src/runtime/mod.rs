//! The VM runtime: extract the kernel, run QEMU, speak QMP, probe the guest.
//!
//! Nothing here talks to Kubernetes; the same code serves the VM pod's agent and `run`.

pub mod accel;
pub mod agent_http;
pub mod fetch;
pub mod kernel;
pub mod probe;
pub mod qemu;
pub mod qmp;
pub mod query;
pub mod status;
pub mod vm;
