//! A small echo server: the demo's upstream, also handy in tests. It answers every request with
//! a JSON description of what it received.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;

use weft_body::ProxyBody;

/// Binds `address` and serves echo responses (HTTP/1.1 and h2c) until the runtime stops.
pub async fn spawn_echo(address: SocketAddr, name: &str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let name: std::sync::Arc<str> = name.into();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| echo(req, peer, name.clone()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn echo(
    req: Request<Incoming>,
    peer: SocketAddr,
    name: std::sync::Arc<str>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (parts, body) = req.into_parts();
    // Count the body without keeping it.
    let mut body = body;
    let mut length: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => length += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    // Repeated headers are joined with ", " in order, as a proxy would fold them.
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_owned(), json!(v));
            }
        }
    }
    let value = json!({
        "server": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": length,
        "peer": peer.to_string(),
    });
    let mut resp = Response::new(ProxyBody::full(
        serde_json::to_vec_pretty(&value).unwrap_or_default(),
    ));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
