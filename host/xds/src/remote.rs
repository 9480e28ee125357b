//! Wasm code of `vm_config.code.remote`: fetched over HTTP/1.1 through the cluster
//! `http_uri.cluster` names (its first endpoint), checked against `sha256`, and kept in the
//! cache directory (`xds.wasm_cache_dir`) as `<sha256>.wasm`, where the plugin loads it from.
//! A file already there with the right digest is not fetched again.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty, Limited};
use sha2::{Digest, Sha256};

use crate::translate::wasm::Remote;

/// The most bytes a module may have.
const MAX_MODULE_BYTES: usize = 64 * 1024 * 1024;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cached file of `remote`, fetched from `address` (`host:port`) if not there yet.
pub(crate) async fn ensure(dir: &Path, remote: &Remote, address: &str) -> Result<PathBuf, String> {
    let file = dir.join(format!("{}.wasm", remote.sha256));
    if let Ok(have) = tokio::fs::read(&file).await
        && hex(&Sha256::digest(&have)) == remote.sha256
    {
        return Ok(file);
    }
    let body = tokio::time::timeout(remote.timeout, fetch(&remote.uri, address))
        .await
        .map_err(|_| {
            format!(
                "{}: fetching {} through {address}: timed out after {:?}",
                remote.path, remote.uri, remote.timeout
            )
        })?
        .map_err(|e| {
            format!(
                "{}: fetching {} through {address}: {e}",
                remote.path, remote.uri
            )
        })?;
    let got = hex(&Sha256::digest(&body));
    if got != remote.sha256 {
        return Err(format!(
            "{}.sha256: {} has SHA-256 {got}, not {}",
            remote.path, remote.uri, remote.sha256
        ));
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("wasm cache {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp", remote.sha256, fastrand::u64(..)));
    tokio::fs::write(&tmp, &body)
        .await
        .map_err(|e| format!("wasm cache {}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, &file)
        .await
        .map_err(|e| format!("wasm cache {}: {e}", file.display()))?;
    Ok(file)
}

async fn fetch(uri: &str, address: &str) -> Result<Vec<u8>, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("bad uri: {e}"))?;
    let authority = parsed
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or("the uri has no host")?;
    let path = parsed
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "weft-xds")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    if status != http::StatusCode::OK {
        driver.abort();
        return Err(format!("status {status}"));
    }
    let body = Limited::new(response.into_body(), MAX_MODULE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok(body.to_vec())
}
