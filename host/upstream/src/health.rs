//! Endpoint health: the per-endpoint state that active health checks and outlier detection
//! write and the balancer reads (`EndpointState::is_available`), and the active health checker
//! (HTTP or TCP), one background task per cluster, stopped when its cluster is dropped. A
//! cluster with `tls` is checked over TLS with its own client side (certificate, trust bundle,
//! SPIFFE identity check), as Envoy checks through the cluster's transport socket.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weft_config::resilience::HealthCheck;

use crate::endpoint::{Endpoint, EndpointSet};
use weft_observe::metrics::ClusterResilienceMetrics;

use crate::tls::UpstreamTls;

/// Whether `status` is among the inclusive `ranges`.
pub fn status_expected(status: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
}

/// The status code of an HTTP/1 response head's status line (`HTTP/1.1 200 OK`).
pub fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// What one check does.
#[derive(Debug, Clone)]
enum Probe {
    Tcp,
    Http {
        path: String,
        host: String,
        expected: Vec<(u16, u16)>,
        /// HTTP/2 (an `http2` cluster: prior knowledge, or ALPN `h2` over TLS).
        h2: bool,
    },
}

/// Starts the active health checker of a cluster; the task ends when the handle is aborted
/// (the cluster is dropped).
pub(crate) fn spawn_checker(
    cluster: &str,
    protocol: weft_config::schema::UpstreamProtocol,
    hc: &HealthCheck,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    metrics: Arc<ClusterResilienceMetrics>,
    tls: Option<Arc<UpstreamTls>>,
) -> tokio::task::JoinHandle<()> {
    let probe = match &hc.http {
        Some(h) => Probe::Http {
            path: h.path.clone(),
            host: h.host.clone().unwrap_or_else(|| cluster.to_owned()),
            expected: h
                .expected_statuses
                .iter()
                .filter_map(|s| s.range().ok())
                .collect(),
            h2: protocol == weft_config::schema::UpstreamProtocol::Http2,
        },
        None => Probe::Tcp,
    };
    let hc = hc.clone();
    let name = cluster.to_owned();
    tokio::spawn(async move {
        loop {
            let set = endpoints.load_full();
            let mut checks = tokio::task::JoinSet::new();
            for e in set.endpoints.iter() {
                let e = e.clone();
                let probe = probe.clone();
                let timeout = hc.timeout;
                let tls = tls.clone();
                checks.spawn(async move {
                    let passed = tokio::time::timeout(timeout, check(&probe, &e, tls.as_deref()))
                        .await
                        .unwrap_or(false);
                    (e, passed)
                });
            }
            while let Some(done) = checks.join_next().await {
                let Ok((e, passed)) = done else { continue };
                metrics.hc(passed);
                if let Some(failed) =
                    e.health
                        .record_check(passed, hc.healthy_threshold, hc.unhealthy_threshold)
                {
                    if failed {
                        tracing::warn!(cluster = %name, endpoint = %e.addr, "endpoint failed its health check");
                    } else {
                        tracing::info!(cluster = %name, endpoint = %e.addr, "endpoint passed its health check again");
                    }
                }
            }
            let healthy = set
                .endpoints
                .iter()
                .filter(|e| !e.health.failed_active_hc.load(Ordering::Relaxed))
                .count();
            metrics.healthy.set(healthy as i64);
            let jitter = if hc.interval_jitter.is_zero() {
                Duration::ZERO
            } else {
                hc.interval_jitter.mul_f64(fastrand::f64())
            };
            tokio::time::sleep(hc.interval.saturating_add(jitter)).await;
        }
    })
}

async fn check(probe: &Probe, e: &Endpoint, tls: Option<&UpstreamTls>) -> bool {
    let Ok(tcp) = tokio::net::TcpStream::connect(e.addr).await else {
        return false;
    };
    match tls.filter(|_| !e.plaintext) {
        None => probe_over(probe, tcp).await,
        Some(t) => {
            let name = t
                .sni
                .clone()
                .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(e.addr.ip().into()));
            match t.connector.connect(name, tcp).await {
                Ok(stream) => probe_over(probe, stream).await,
                Err(error) => {
                    tracing::debug!(endpoint = %e.addr, %error, "health check TLS handshake failed");
                    false
                }
            }
        }
    }
}

/// Runs the probe over an established connection (plain or TLS).
async fn probe_over<S>(probe: &Probe, mut stream: S) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (path, host, expected, h2) = match probe {
        Probe::Tcp => return true,
        Probe::Http {
            path,
            host,
            expected,
            h2,
        } => (path, host, expected, *h2),
    };
    if h2 {
        let io = hyper_util::rt::TokioIo::new(stream);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await
        else {
            return false;
        };
        let driver = tokio::spawn(conn);
        let passed = match http::Request::get(format!("http://{host}{path}"))
            .header(http::header::USER_AGENT, "weft-health-checker")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
        {
            Ok(req) => sender
                .send_request(req)
                .await
                .is_ok_and(|r| status_expected(r.status().as_u16(), expected)),
            Err(_) => false,
        };
        driver.abort();
        return passed;
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weft-health-checker\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    parse_status_line(&head).is_some_and(|s| status_expected(s, expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointHealth;

    #[test]
    fn thresholds_take_endpoints_out_and_bring_them_back() {
        let h = EndpointHealth::default();
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!(h.record_check(false, 2, 3), Some(true));
        assert!(!h.is_available(1));
        assert_eq!(h.flags(1), "/failed_active_hc");
        assert_eq!(h.record_check(true, 2, 3), None);
        assert_eq!(
            h.record_check(false, 2, 3),
            None,
            "a failure resets the passes"
        );
        assert_eq!(h.record_check(true, 2, 3), None);
        assert_eq!(h.record_check(true, 2, 3), Some(false));
        assert!(h.is_available(1));
        assert_eq!(h.flags(1), "healthy");
    }

    #[test]
    fn ejection_is_time_bound_and_flagged() {
        let h = EndpointHealth::default();
        h.ejected_until_ms.store(100, Ordering::Relaxed);
        assert!(!h.is_available(99));
        assert_eq!(h.flags(99), "/failed_outlier_check");
        assert!(h.is_available(100));
        h.failed_active_hc.store(true, Ordering::Relaxed);
        assert_eq!(h.flags(50), "/failed_active_hc/failed_outlier_check");
    }

    #[test]
    fn status_lines_and_ranges() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
        assert!(status_expected(204, &[(200, 299)]));
        assert!(!status_expected(301, &[(200, 299), (404, 404)]));
        assert!(status_expected(404, &[(200, 299), (404, 404)]));
    }
}
