//! A client for the guest's vector query API, in both dialects found in the field.
//!
//! `rvf-server` answers `POST /v1/query` with `{"results": [...]}`; the upstream
//! launcher's guests answer `POST /query` with a bare array. Try the first, fall back
//! to the second when the path does not exist.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One nearest neighbour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neighbour {
    pub id: u64,
    pub distance: f32,
}

/// Which API answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Dialect {
    /// `POST /v1/query` -> `{"results": [...]}`.
    V1,
    /// `POST /query` -> `[...]`.
    Launcher,
}

/// Failures of a query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot reach the guest API at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the guest at {addr} rejected the query ({status}): {message}")]
    Rejected {
        addr: String,
        status: u16,
        message: String,
    },
    #[error(
        "the guest at {addr} answered {path} with something that is not a result list: {body}"
    )]
    BadAnswer {
        addr: String,
        path: &'static str,
        body: String,
    },
    #[error("the guest at {addr} serves neither POST /v1/query nor POST /query (both 404)")]
    NoQueryApi { addr: String },
}

/// Sends `vector` to the guest at `addr` (host:port) and returns the `k` nearest.
pub async fn query(
    addr: &str,
    vector: &[f32],
    k: u32,
    timeout: Duration,
) -> Result<(Dialect, Vec<Neighbour>), QueryError> {
    // Accept `http://host:port/` as well as `host:port`: both are what a user copies.
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    if k == 0 {
        return Err(QueryError::Rejected {
            addr: addr.to_string(),
            status: 0,
            message: "k must be at least 1".into(),
        });
    }
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .expect("HTTP client with static settings");
    let body = json!({ "vector": vector, "k": k });
    for (dialect, path) in [(Dialect::V1, "/v1/query"), (Dialect::Launcher, "/query")] {
        let resp = client
            .post(format!("http://{addr}{path}"))
            .json(&body)
            .send()
            .await
            .map_err(|e| QueryError::Unreachable {
                addr: addr.to_string(),
                reason: super::root_cause(&e),
            })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::NOT_FOUND {
            continue;
        }
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
                .unwrap_or(text);
            return Err(QueryError::Rejected {
                addr: addr.to_string(),
                status: status.as_u16(),
                message,
            });
        }
        return parse_results(&text, dialect)
            .map(|r| (dialect, r))
            .ok_or_else(|| QueryError::BadAnswer {
                addr: addr.to_string(),
                path,
                body: text.chars().take(200).collect(),
            });
    }
    Err(QueryError::NoQueryApi {
        addr: addr.to_string(),
    })
}

/// Parses either dialect's answer; accepts both shapes whatever the path.
pub fn parse_results(body: &str, dialect: Dialect) -> Option<Vec<Neighbour>> {
    let v: Value = serde_json::from_str(body).ok()?;
    let list = match (dialect, &v) {
        (_, Value::Array(_)) => v,
        (_, Value::Object(o)) => o.get("results")?.clone(),
        _ => return None,
    };
    serde_json::from_value(list).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use axum::{Json, Router};

    async fn serve(app: Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr
    }

    #[tokio::test]
    async fn v1_dialect_is_preferred() {
        let app = Router::new().route(
            "/v1/query",
            post(|| async { Json(json!({"results": [{"id": 3, "distance": 0.5}]})) }),
        );
        let addr = serve(app).await;
        let (d, r) = query(&addr, &[0.1, 0.2], 1, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(d, Dialect::V1);
        assert_eq!(
            r,
            vec![Neighbour {
                id: 3,
                distance: 0.5
            }]
        );
    }

    #[tokio::test]
    async fn launcher_dialect_is_used_when_v1_is_missing() {
        let app = Router::new().route(
            "/query",
            post(|Json(b): Json<Value>| async move {
                assert_eq!(b["k"], 2);
                Json(json!([{"id": 1, "distance": 0.0}, {"id": 2, "distance": 1.5}]))
            }),
        );
        let addr = serve(app).await;
        let (d, r) = query(&addr, &[1.0], 2, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(d, Dialect::Launcher);
        assert_eq!(r.len(), 2);
    }

    #[tokio::test]
    async fn guest_error_message_is_passed_on() {
        let app = Router::new().route(
            "/v1/query",
            post(|| async {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    Json(json!({"error": "dimension mismatch", "code": 400})),
                )
            }),
        );
        let addr = serve(app).await;
        let err = query(&addr, &[1.0], 1, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("dimension mismatch"), "{err}");
    }

    #[tokio::test]
    async fn an_address_given_as_a_url_works_too() {
        let app = Router::new().route("/v1/query", post(|| async { Json(json!({"results": []})) }));
        let addr = serve(app).await;
        let (d, _) = query(
            &format!("http://{addr}/"),
            &[1.0],
            1,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(d, Dialect::V1);
    }

    #[tokio::test]
    async fn a_server_without_either_path_is_named() {
        let addr = serve(Router::new()).await;
        let err = query(&addr, &[1.0], 1, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, QueryError::NoQueryApi { .. }), "{err}");
    }
}
