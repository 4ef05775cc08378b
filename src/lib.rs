//! rvf-operator: runs the kernel inside an RVF file as a QEMU microVM, locally or on Kubernetes.
//!
//! `runtime` knows QEMU and RVF but nothing of Kubernetes; `controller` and `crd` know
//! Kubernetes and talk to the runtime only through the agent's HTTP status.

pub mod controller;
pub mod crd;
pub mod runtime;
