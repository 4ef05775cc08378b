//! Pulling the VM agent's `/status` from the pod IP; the controller's only view into QEMU.
//!
//! Behind a trait so reconcile tests answer for the agent without any network.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::runtime::status::VmStatus;

/// Where the controller gets a VM's runtime status from.
pub trait AgentStatusSource: Send + Sync {
    /// The agent's `/status` of the VM pod at `pod_ip`, or a one-line reason it did not answer.
    fn status<'a>(&'a self, pod_ip: &'a str) -> BoxFuture<'a, Result<VmStatus, String>>;
}

/// Reads `/status` over HTTP from the agent port of the pod, with a short timeout so a hung
/// agent slows one reconcile by at most that long.
pub struct HttpAgent {
    client: reqwest::Client,
    port: u16,
}

impl HttpAgent {
    /// An agent reader for `port` with a whole-request `timeout`.
    pub fn new(port: u16, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Pod IPs are reached directly; a proxy from the environment would not route them.
            .no_proxy()
            .build()
            .expect("a reqwest client with rustls and no proxy builds");
        Self { client, port }
    }
}

impl AgentStatusSource for HttpAgent {
    fn status<'a>(&'a self, pod_ip: &'a str) -> BoxFuture<'a, Result<VmStatus, String>> {
        Box::pin(async move {
            let host = if pod_ip.contains(':') {
                format!("[{pod_ip}]")
            } else {
                pod_ip.to_string()
            };
            let url = format!("http://{host}:{}/status", self.port);
            let response = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url} failed: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("GET {url} answered {}", response.status()));
            }
            response
                .json::<VmStatus>()
                .await
                .map_err(|e| format!("GET {url} returned a body that is not a VM status: {e}"))
        })
    }
}
