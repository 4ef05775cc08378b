//! Downloading an RVF file over HTTP(S) and verifying its SHA-256 (the `fetch` init container).
//!
//! The file appears under its final name only once its digest matched, so a consumer
//! never sees a partial or unverified download.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// What can go wrong fetching a file.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("sha256 {0:?} is not 64 hexadecimal digits")]
    BadDigest(String),
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("GET {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("sha256 mismatch for {url}: expected {expected}, got {actual} ({bytes} bytes); the file was not kept")]
    Mismatch {
        url: String,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Downloads `url` to `out` if its SHA-256 equals `sha256`; returns the byte count.
///
/// `timeout` bounds connecting and each pause between received bytes, not the whole
/// download, so a large file on a slow link still completes.
pub async fn fetch(
    url: &str,
    sha256: &str,
    out: &Path,
    timeout: Duration,
) -> Result<u64, FetchError> {
    let expected = sha256.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FetchError::BadDigest(sha256.to_string()));
    }
    let download = |reason: String| FetchError::Download {
        url: url.to_string(),
        reason,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .build()
        .map_err(|e| download(e.to_string()))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| download(super::root_cause(&e)))?;
    if !resp.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }

    let write_err = |source| FetchError::Write {
        path: out.to_path_buf(),
        source,
    };
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir).await.map_err(write_err)?;
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempfile_in(dir)
        .map_err(write_err)?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(write_err)?);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| download(super::root_cause(&e)))?
    {
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(write_err)?;
    }
    file.sync_all().await.map_err(write_err)?;
    drop(file);

    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != expected {
        return Err(FetchError::Mismatch {
            url: url.to_string(),
            expected,
            actual,
            bytes,
        });
    }
    tmp.persist(out).map_err(|e| write_err(e.error))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;

    const BODY: &[u8] = b"pretend this is an RVF file";

    async fn serve() -> String {
        let app = Router::new().route("/vm.rvf", get(|| async { BODY }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn digest(b: &[u8]) -> String {
        super::super::kernel::sha256_hex(b)
    }

    #[tokio::test]
    async fn a_matching_download_lands_under_its_final_name() {
        let base = serve().await;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("src/vm.rvf");
        let n = fetch(
            &format!("{base}/vm.rvf"),
            &digest(BODY).to_uppercase(),
            &out,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(n, BODY.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), BODY);
    }

    #[tokio::test]
    async fn a_checksum_mismatch_keeps_nothing_and_says_sha256() {
        let base = serve().await;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vm.rvf");
        let err = fetch(
            &format!("{base}/vm.rvf"),
            &digest(b"other"),
            &out,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().starts_with("sha256 mismatch for http://"),
            "{err}"
        );
        assert!(!out.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temporary file left"
        );
    }

    #[tokio::test]
    async fn an_http_error_status_is_reported_with_the_url() {
        let base = serve().await;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("{base}/missing.rvf");
        let err = fetch(
            &url,
            &digest(BODY),
            &dir.path().join("x"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), format!("GET {url} answered HTTP 404"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_download_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/vm.rvf", l.local_addr().unwrap());
        drop(l);
        let dir = tempfile::tempdir().unwrap();
        let err = fetch(
            &url,
            &digest(BODY),
            &dir.path().join("x"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, FetchError::Download { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_malformed_digest_is_refused_before_downloading() {
        let err = fetch(
            "http://127.0.0.1:9/x",
            "abc",
            Path::new("/tmp/never"),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, FetchError::BadDigest(_)), "{err}");
    }
}
