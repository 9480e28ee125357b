//! Request mirroring: a copy of a share of a route's requests goes to a shadow cluster,
//! fire-and-forget. The copy's Host gets the suffix `-shadow` (`api:8080` → `api-shadow:8080`),
//! its response is read and discarded, and the primary request never waits for it.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};
use http_body_util::BodyExt;

use std::sync::Arc;

use weft_body::ProxyBody;
use weft_upstream::Cluster;

/// A shadow cluster and the share of requests it gets.
#[derive(Debug)]
pub struct Mirror {
    /// The shadow cluster.
    pub cluster: Arc<Cluster>,
    /// Percentage mirrored.
    pub percentage: f64,
}

/// `host[:port]` with `-shadow` appended to the host.
pub fn shadow_host(authority: &str) -> String {
    let (host, port) = weft_routing::split_host_port(authority);
    match port {
        Some(p) => format!("{host}-shadow:{p}"),
        None => format!("{host}-shadow"),
    }
}

/// What a mirrored request is made of.
pub(crate) struct Copy<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub authority: &'a str,
    pub path: &'a PathAndQuery,
    pub body: Option<&'a Bytes>,
    pub timeout: Option<Duration>,
    /// The downstream request's HTTP version (a `downstream` cluster follows it).
    pub version: Version,
}

/// Sends `copy` to `m`'s cluster if the dice say so; returns at once.
pub(crate) fn send(m: &Mirror, copy: &Copy<'_>) {
    if fastrand::f64() * 100.0 >= m.percentage {
        return;
    }
    let metrics = m.cluster.resilience.metrics.clone();
    let Some(body) = copy.body else {
        metrics.mirror_skipped.inc();
        return;
    };
    let Some(permit) = m.cluster.resilience.breaker.try_admit() else {
        metrics.mirror_skipped.inc();
        return;
    };
    let set = m.cluster.endpoints();
    let Some((_, endpoint)) = m.cluster.pick_endpoint(&set, None, 0, &[]) else {
        metrics.mirror_skipped.inc();
        return;
    };
    let uri = Uri::builder()
        .scheme("http")
        .authority(endpoint.authority.clone())
        .path_and_query(copy.path.clone())
        .build();
    let Ok(uri) = uri else {
        metrics.mirror_skipped.inc();
        return;
    };
    let mut headers = copy.headers.clone();
    if let Ok(v) = HeaderValue::from_str(&shadow_host(copy.authority)) {
        headers.insert(header::HOST, v);
    }
    let mut req = Request::new(ProxyBody::full(body.clone()));
    *req.method_mut() = copy.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    *req.version_mut() = m.cluster.upstream_version(copy.version);
    let client = m.cluster.client_for(req.version()).clone();
    let timeout = copy.timeout.unwrap_or(Duration::from_secs(15));
    tokio::spawn(async move {
        let _permit = permit;
        let exchange = async {
            let resp = client.request(req).await.ok()?;
            // Read and drop the body so the connection can be reused.
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame.ok()?;
            }
            Some(())
        };
        let counter = match tokio::time::timeout(timeout, exchange).await {
            Ok(Some(())) => &metrics.mirror_sent,
            _ => &metrics.mirror_failed,
        };
        counter.inc();
        drop(endpoint);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_host_keeps_the_port() {
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(
            shadow_host("api.example.com:8080"),
            "api.example.com-shadow:8080"
        );
    }
}
