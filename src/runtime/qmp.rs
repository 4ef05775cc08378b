//! A QMP client over QEMU's unix socket: one reader for the whole connection.
//!
//! QEMU sends asynchronous events at any time, also between a command and its reply,
//! so a single task reads every line, routes replies by `id` and forwards events. A
//! reader per command would lose whatever the previous one had buffered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, Mutex as AsyncMutex};

/// How long a single command may wait for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures talking QMP.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path} did not accept a connection within {waited:?}: {last}")]
    Connect {
        path: PathBuf,
        waited: Duration,
        last: String,
    },
    #[error("QMP on {path}: no greeting within {0:?} (another client holds the socket?)", path = .1.display())]
    NoGreeting(Duration, PathBuf),
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP connection closed (QEMU exited?)")]
    Disconnected,
    #[error("QMP command {0} got no reply within {REPLY_TIMEOUT:?}")]
    Timeout(String),
}

/// An asynchronous QMP event such as SHUTDOWN, STOP, RESUME or GUEST_PANICKED.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
}

impl QmpEvent {
    /// The `reason` of a SHUTDOWN event (guest-shutdown, guest-reset, host-qmp-quit, ...).
    pub fn shutdown_reason(&self) -> Option<&str> {
        (self.name == "SHUTDOWN")
            .then(|| self.data.get("reason").and_then(Value::as_str))
            .flatten()
    }
}

/// QEMU's answer to `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RunState {
    pub status: String,
    pub running: bool,
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>>;

/// A negotiated QMP connection. Cheap to share behind an `Arc`.
pub struct QmpClient {
    writer: AsyncMutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
}

impl QmpClient {
    /// Connects to `path`, waiting up to `wait` for QEMU to create the socket, then
    /// reads the greeting and leaves negotiation mode.
    pub async fn connect(path: &Path, wait: Duration) -> Result<Self, QmpError> {
        let deadline = tokio::time::Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        waited: wait,
                        last: e.to_string(),
                    })
                }
                // QEMU creates the socket shortly after it starts; not there yet is normal.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (read, write) = stream.into_split();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        Self::handshake(read, write, left.max(Duration::from_secs(2)), path).await
    }

    /// Runs the greeting and capability negotiation over any byte stream.
    pub async fn handshake<R, W>(
        read: R,
        write: W,
        greeting_wait: Duration,
        path: &Path,
    ) -> Result<Self, QmpError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let mut lines = BufReader::new(read).lines();
        // The QMP socket serves one client; a second one gets no greeting at all.
        let greeting = tokio::time::timeout(greeting_wait, lines.next_line())
            .await
            .map_err(|_| QmpError::NoGreeting(greeting_wait, path.to_path_buf()))?
            .map_err(|e| QmpError::Protocol(e.to_string()))?
            .ok_or(QmpError::Disconnected)?;
        let greeting: Value = serde_json::from_str(&greeting)
            .map_err(|e| QmpError::Protocol(format!("bad greeting {greeting:?}: {e}")))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected a greeting, got {greeting}"
            )));
        }

        let (events, _) = broadcast::channel(256);
        let client = Self {
            writer: AsyncMutex::new(Box::new(write)),
            pending: Arc::new(Mutex::new(Some(HashMap::new()))),
            next_id: AtomicU64::new(1),
            events: events.clone(),
        };
        tokio::spawn(read_loop(lines, client.pending.clone(), events));
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Subscribes to events that arrive from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Sends a command and waits for its reply, whatever events come in between.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().expect("pending lock").as_mut() {
            Some(map) => map.insert(id, tx),
            None => return Err(QmpError::Disconnected),
        };
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        {
            let mut w = self.writer.lock().await;
            if w.write_all(line.as_bytes()).await.is_err() || w.flush().await.is_err() {
                self.forget(id);
                return Err(QmpError::Disconnected);
            }
        }
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(QmpError::Disconnected),
            Err(_) => {
                self.forget(id);
                Err(QmpError::Timeout(command.to_string()))
            }
        };
        reply.map_err(|e| match e {
            QmpError::Command { class, desc, .. } => QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            },
            other => other,
        })
    }

    /// `query-status`: QEMU's run state.
    pub async fn query_status(&self) -> Result<RunState, QmpError> {
        let v = self.execute("query-status", None).await?;
        serde_json::from_value(v).map_err(|e| QmpError::Protocol(e.to_string()))
    }

    /// `system_powerdown`: presses the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once; a connection closed before the reply counts as done.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn forget(&self, id: u64) {
        if let Some(map) = self.pending.lock().expect("pending lock").as_mut() {
            map.remove(&id);
        }
    }
}

async fn read_loop<R>(
    mut lines: tokio::io::Lines<BufReader<R>>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
) where
    R: AsyncRead + Unpin,
{
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(line, "QMP sent a line that is not JSON; ignoring it");
            continue;
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let event = QmpEvent {
                name: name.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            };
            tracing::debug!(event = %event.name, data = %event.data, "QMP event");
            // No subscriber is fine: events nobody asked for are dropped.
            let _ = events.send(event);
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            tracing::warn!(%msg, "QMP reply without an id; ignoring it");
            continue;
        };
        let result = match (msg.get("return"), msg.get("error")) {
            (Some(ret), _) => Ok(ret.clone()),
            (None, Some(err)) => Err(QmpError::Command {
                command: String::new(),
                class: err["class"].as_str().unwrap_or("GenericError").to_string(),
                desc: err["desc"].as_str().unwrap_or("").to_string(),
            }),
            (None, None) => Err(QmpError::Protocol(format!(
                "reply without return or error: {msg}"
            ))),
        };
        let waiter = pending
            .lock()
            .expect("pending lock")
            .as_mut()
            .and_then(|m| m.remove(&id));
        if let Some(tx) = waiter {
            let _ = tx.send(result);
        }
    }
    // Closing the map fails every waiter and every later command with Disconnected.
    pending.lock().expect("pending lock").take();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A scripted QMP server on an in-memory pipe: answers each command with `reply`,
    /// after first sending every event in `before`.
    async fn fake_qemu(
        stream: tokio::io::DuplexStream,
        script: Vec<(&'static str, Vec<&'static str>, &'static str)>,
    ) {
        let (r, mut w) = tokio::io::split(stream);
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .await
            .unwrap();
        for (expect, before, reply) in script {
            let line = lines.next_line().await.unwrap().unwrap();
            let msg: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(msg["execute"], expect);
            let id = &msg["id"];
            let mut out = String::new();
            for ev in before {
                out.push_str(ev);
                out.push_str("\r\n");
            }
            out.push_str(&reply.replace("ID", &id.to_string()));
            out.push_str("\r\n");
            // One write: events and reply land in the client's buffer together.
            w.write_all(out.as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn events_between_command_and_reply_are_delivered_and_reply_still_arrives() {
        let (client_end, server_end) = duplex(4096);
        let server = tokio::spawn(fake_qemu(
            server_end,
            vec![
                ("qmp_capabilities", vec![], r#"{"return": {}, "id": ID}"#),
                (
                    "stop",
                    vec![
                        r#"{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}"#,
                    ],
                    r#"{"return": {}, "id": ID}"#,
                ),
                (
                    "query-status",
                    vec![r#"{"event": "RESUME", "data": {}}"#],
                    r#"{"return": {"status": "paused", "singlestep": false, "running": false}, "id": ID}"#,
                ),
            ],
        ));
        let (r, w) = tokio::io::split(client_end);
        let qmp = QmpClient::handshake(r, w, Duration::from_secs(2), Path::new("mem"))
            .await
            .unwrap();
        let mut events = qmp.events();
        qmp.execute("stop", None).await.unwrap();
        let st = qmp.query_status().await.unwrap();
        assert_eq!(
            st,
            RunState {
                status: "paused".into(),
                running: false
            }
        );
        assert_eq!(events.recv().await.unwrap().name, "STOP");
        assert_eq!(events.recv().await.unwrap().name, "RESUME");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn command_error_carries_class_and_description() {
        let (client_end, server_end) = duplex(4096);
        tokio::spawn(fake_qemu(
            server_end,
            vec![
                ("qmp_capabilities", vec![], r#"{"return": {}, "id": ID}"#),
                (
                    "bogus",
                    vec![],
                    r#"{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": ID}"#,
                ),
            ],
        ));
        let (r, w) = tokio::io::split(client_end);
        let qmp = QmpClient::handshake(r, w, Duration::from_secs(2), Path::new("mem"))
            .await
            .unwrap();
        let err = qmp.execute("bogus", None).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "QMP command bogus failed: CommandNotFound: The command bogus has not been found"
        );
    }

    #[tokio::test]
    async fn closed_connection_fails_waiting_commands_and_quit_counts_as_done() {
        let (client_end, server_end) = duplex(4096);
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(server_end);
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {}}\n").await.unwrap();
            let line = lines.next_line().await.unwrap().unwrap();
            let id = serde_json::from_str::<Value>(&line).unwrap()["id"].clone();
            w.write_all(format!("{{\"return\": {{}}, \"id\": {id}}}\n").as_bytes())
                .await
                .unwrap();
            // Read `quit`, then hang up without a reply, as QEMU may.
            lines.next_line().await.unwrap();
        });
        let (r, w) = tokio::io::split(client_end);
        let qmp = QmpClient::handshake(r, w, Duration::from_secs(2), Path::new("mem"))
            .await
            .unwrap();
        qmp.quit().await.unwrap();
        let err = qmp.query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::Disconnected), "{err}");
    }

    #[tokio::test]
    async fn silent_socket_times_out_waiting_for_greeting() {
        let (client_end, _server_end) = duplex(64);
        let (r, w) = tokio::io::split(client_end);
        let err = QmpClient::handshake(r, w, Duration::from_millis(100), Path::new("/run/q.sock"))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("no greeting"), "{err}");
    }

    #[tokio::test]
    async fn connect_waits_for_a_socket_that_is_not_there_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let p = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let listener = tokio::net::UnixListener::bind(&p).unwrap();
            let (s, _) = listener.accept().await.unwrap();
            fake_qemu_unix(s).await;
        });
        let qmp = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(qmp.query_status().await.unwrap().status, "running");
    }

    async fn fake_qemu_unix(s: UnixStream) {
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"{\"QMP\": {}}\n").await.unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            let id = serde_json::from_str::<Value>(&line).unwrap()["id"].clone();
            let reply = format!(
                "{{\"return\": {{\"status\": \"running\", \"running\": true}}, \"id\": {id}}}\n"
            );
            w.write_all(reply.as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn connect_gives_up_with_the_socket_path_in_the_error() {
        let err = QmpClient::connect(
            Path::new("/nonexistent/qmp.sock"),
            Duration::from_millis(200),
        )
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("/nonexistent/qmp.sock"), "{err}");
    }

    #[test]
    fn shutdown_reason_is_read_from_shutdown_events_only() {
        let ev = QmpEvent {
            name: "SHUTDOWN".into(),
            data: json!({"guest": true, "reason": "guest-reset"}),
        };
        assert_eq!(ev.shutdown_reason(), Some("guest-reset"));
        let other = QmpEvent {
            name: "STOP".into(),
            data: json!({"reason": "x"}),
        };
        assert_eq!(other.shutdown_reason(), None);
    }
}
