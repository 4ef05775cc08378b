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

/// The innermost cause of an error chain: for an HTTP failure, the line that says what
/// went wrong ("Connection refused") rather than the client's generic wrapper.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
