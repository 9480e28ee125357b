//! Istio's sidecar ports, each its own small server: 15021 `GET /healthz/ready` (the
//! Kubernetes readiness probe), 15090 `GET /stats/prometheus` (the proxy's metrics, the admin's
//! handler) and 15020 `GET /stats/prometheus` (the application's metrics followed by the
//! proxy's). Nothing else is served on them: the admin endpoints stay on 127.0.0.1:15000.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use weft_body::ProxyBody;

use weft_observe::exposition::Format;

use crate::{AdminApi, text};

/// Which sidecar port a server is.
#[derive(Debug, Clone)]
pub enum SidecarPort {
    /// 15021: `/healthz/ready`.
    Health,
    /// 15090: `/stats/prometheus`, the proxy's metrics.
    Prometheus,
    /// 15020: `/stats/prometheus`, the application's metrics (from this URL) and the proxy's.
    Merged(Uri),
}

impl SidecarPort {
    /// The merged-metrics port scraping `url` (`None` when it is not a URL).
    pub fn merged(url: &str) -> Option<SidecarPort> {
        url.parse().ok().map(SidecarPort::Merged)
    }
}

/// The most bytes read from the application's metrics endpoint.
const APP_METRICS_MAX: usize = 16 * 1024 * 1024;
/// How long the application's metrics endpoint may take.
const APP_METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `address` and serves `port` on it until the process exits; returns the bound address.
pub async fn start(
    proxy: Arc<dyn AdminApi>,
    address: SocketAddr,
    port: SidecarPort,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, port = ?port, "sidecar port listening");
    let port = Arc::new(port);
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (proxy, port, client) = (proxy.clone(), port.clone(), client.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (proxy, port, client) = (proxy.clone(), port.clone(), client.clone());
                    async move { Ok::<_, Infallible>(route(proxy, &port, &client, req).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn route(
    proxy: Arc<dyn AdminApi>,
    port: &SidecarPort,
    client: &Client<HttpConnector, Empty<Bytes>>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match (port, req.uri().path()) {
        (SidecarPort::Health, "/healthz/ready") if get => match proxy.sidecar_ready() {
            Ok(()) => text(StatusCode::OK, ""),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        // The admin's own handler, so both ports always expose the same thing.
        (SidecarPort::Prometheus, "/stats/prometheus") if get => crate::route(proxy, req).await,
        (SidecarPort::Merged(url), "/stats/prometheus") if get => {
            merged(&*proxy, client, url).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The application's exposition followed by the proxy's, as one Prometheus text exposition
/// (Istio's metrics merging). An application that cannot be scraped leaves the proxy's alone
/// (and says so in a comment) rather than failing the scrape.
async fn merged(
    proxy: &dyn AdminApi,
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &Uri,
) -> Response<ProxyBody> {
    let app = match scrape(client, url).await {
        Ok(body) => body,
        Err(why) => {
            tracing::debug!(%url, error = %why, "application metrics unavailable");
            format!("# application metrics from {url} unavailable: {why}\n")
        }
    };
    let mut r = text(StatusCode::OK, merge(&app, &proxy.metrics(Format::Text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn scrape(client: &Client<HttpConnector, Empty<Bytes>>, url: &Uri) -> Result<String, String> {
    let req = Request::get(url.clone())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let fetch = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), APP_METRICS_MAX)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_owned())
    };
    tokio::time::timeout(APP_METRICS_TIMEOUT, fetch)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Concatenates two expositions into one: each ends with a newline, and an OpenMetrics
/// `# EOF` (which must come last, once) is dropped from both.
pub fn merge(app: &str, proxy: &str) -> String {
    let mut out = String::with_capacity(app.len() + proxy.len() + 2);
    for part in [app, proxy] {
        for line in part.lines() {
            if line.trim_end() == "# EOF" {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merging_keeps_every_line_once_and_no_eof_marker() {
        let app = "# TYPE app_requests counter\napp_requests 3";
        let proxy = "# TYPE weft_x counter\nweft_x_total 1\n# EOF\n";
        assert_eq!(
            merge(app, proxy),
            "# TYPE app_requests counter\napp_requests 3\n# TYPE weft_x counter\nweft_x_total 1\n"
        );
    }
}
