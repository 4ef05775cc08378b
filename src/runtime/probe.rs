//! Guest readiness: an HTTP answer from the guest, never a bare TCP connect.
//!
//! QEMU user networking accepts a forwarded connection long before the guest listens
//! and parks it, so each probe is one request on a fresh connection with a short
//! timeout.

use std::time::Duration;

/// One HTTP readiness check against the guest's API.
#[derive(Debug, Clone)]
pub struct GuestProbe {
    client: reqwest::Client,
    url: String,
}

impl GuestProbe {
    /// A probe of `http://{addr}{path}` where each attempt gives up after `timeout`.
    pub fn new(addr: &str, path: &str, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // No pooling: a parked connection from an earlier try must not be reused.
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .expect("HTTP client with static settings");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Self {
            client,
            url: format!("http://{addr}{path}"),
        }
    }

    /// The URL being probed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Ready when the guest answers with a 2xx or 3xx status, as a Kubernetes HTTP probe.
    pub async fn check(&self) -> Result<u16, String> {
        match self.client.get(&self.url).send().await {
            Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => {
                Ok(resp.status().as_u16())
            }
            Ok(resp) => Err(format!("{} answered HTTP {}", self.url, resp.status())),
            Err(e) if e.is_timeout() => Err(format!("{} did not answer in time", self.url)),
            Err(e) => Err(format!("{}: {}", self.url, super::root_cause(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_listener_that_accepts_but_never_answers_is_not_ready() {
        // What QEMU's hostfwd does before the guest listens.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let parked = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let probe = GuestProbe::new(&addr, "/v1/health", Duration::from_millis(200));
        let err = probe.check().await.unwrap_err();
        assert!(err.contains("did not answer"), "{err}");
        parked.abort();
    }

    #[tokio::test]
    async fn an_http_answer_is_ready_and_a_500_is_not() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for status in ["200 OK", "500 Internal Server Error"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let probe = GuestProbe::new(&addr, "v1/health", Duration::from_secs(2));
        assert_eq!(probe.check().await, Ok(200));
        assert!(probe.check().await.unwrap_err().contains("HTTP 500"));
    }

    #[tokio::test]
    async fn refused_connection_is_reported() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let probe = GuestProbe::new(&addr, "/", Duration::from_secs(1));
        assert!(probe.check().await.is_err());
    }
}
