//! The VM runtime: extract the kernel, run QEMU, speak QMP, probe the guest.
//!
//! Nothing here talks to Kubernetes; the same code serves the VM pod's agent and `run`.

pub mod kernel;
pub mod status;
