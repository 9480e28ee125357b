//! The admin server, on Envoy's port and with Envoy's names: `/ready`, `/live`, `/metrics`
//! (also `/stats/prometheus`; `/stats/plugin_metrics` maps plugin metric names), `/config_dump`, `/clusters`, `/plugins`, `/chains`, `/certs`,
//! `POST /reload`, `POST /plugins/<name>/reload`, `POST /quitquitquit`.
//!
//! The routes are here; what they show and do comes from an [`AdminApi`] that the assembly
//! (`weft-proxy`) implements, so this crate depends on no generation or reload machinery.
#![forbid(unsafe_code)]

pub mod sidecar;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use weft_body::ProxyBody;
use weft_extensions::{PluginRegistry, PluginVersion};
use weft_observe::exposition::{self, Format};
use weft_upstream::Cluster;

/// A boxed future borrowed from the API object.
pub type ApiFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the admin endpoints read and control; implemented by the running proxy.
pub trait AdminApi: Send + Sync + 'static {
    /// `/ready`: true once started and until draining begins.
    fn is_ready(&self) -> bool;
    /// `/metrics`: the exposition of every metric family in `format`.
    fn metrics(&self, format: Format) -> String;
    /// `/config_dump`: the live configuration; secrets (plugin configurations and
    /// environments) are shown as their sha256 unless `include_secrets`.
    fn config_dump(&self, include_secrets: bool) -> serde_json::Value;
    /// The live generation's clusters.
    fn clusters(&self) -> Arc<Vec<Arc<Cluster>>>;
    /// The plugin registry.
    fn plugins(&self) -> &PluginRegistry;
    /// Every listener's phase chains, in order (native phases and plugins).
    fn chains(&self) -> serde_json::Value;
    /// `/certs`: certificates in use.
    fn certs(&self) -> serde_json::Value;
    /// `POST /reload`: reloads the configuration; `Err((why, live generation))`.
    fn reload(&self) -> ApiFuture<'_, Result<u64, (String, u64)>>;
    /// `POST /plugins/<name>/reload`: swaps in plugin `name` from its file.
    fn reload_plugin<'a>(&'a self, name: &'a str) -> ApiFuture<'a, Result<usize, String>>;
    /// `POST /quitquitquit`: starts draining.
    fn shutdown(&self);
    /// `GET /healthz/ready` on the sidecar health port (15021): `Err(why)` until the
    /// configuration, the required plugins and (with `identity`) a valid certificate are in
    /// place, and while draining.
    fn sidecar_ready(&self) -> Result<(), String> {
        if self.is_ready() {
            Ok(())
        } else {
            Err("not ready".to_owned())
        }
    }
}

/// Binds the admin server and serves it until shutdown; returns the bound address.
pub async fn start(proxy: Arc<dyn AdminApi>, address: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "admin server listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(route(proxy, req).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

pub(crate) fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The metrics in the format the `Accept` header prefers; `HEAD` gets the headers only.
fn metrics(proxy: &dyn AdminApi, req: &Request<Incoming>) -> Response<ProxyBody> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = exposition::negotiate(accept);
    let body = proxy.metrics(format);
    let length = body.len();
    let mut r = if req.method() == Method::HEAD {
        text(StatusCode::OK, bytes::Bytes::new())
    } else {
        text(StatusCode::OK, body)
    };
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(format.content_type()),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, http::HeaderValue::from(length));
    r
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(proxy: Arc<dyn AdminApi>, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match (req.method(), path) {
        (&Method::GET, "/ready") => {
            if proxy.is_ready() {
                text(StatusCode::OK, "LIVE\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
            }
        }
        (&Method::GET, "/live") => text(StatusCode::OK, "OK\n"),
        (&Method::GET | &Method::HEAD, "/metrics" | "/stats/prometheus") => metrics(&*proxy, &req),
        (&Method::GET, "/config_dump") => json_response(
            StatusCode::OK,
            &proxy.config_dump(query_flag(query, "include_secrets")),
        ),
        (&Method::GET, "/clusters") => clusters(&*proxy, query.contains("format=json")),
        (&Method::POST, "/reload") => match proxy.reload().await {
            Ok(id) => json_response(StatusCode::OK, &json!({ "generation": id })),
            Err((e, live)) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "error": e, "generation": live }),
            ),
        },
        (&Method::GET, "/plugins") => plugins(&*proxy),
        (&Method::GET, "/stats/plugin_metrics") => json_response(
            StatusCode::OK,
            &json!(weft_extensions::metrics::plugin_metric_names(
                proxy.plugins()
            )),
        ),
        (&Method::GET, "/chains") => json_response(StatusCode::OK, &proxy.chains()),
        (&Method::GET, "/certs") => json_response(StatusCode::OK, &proxy.certs()),
        (&Method::POST, p) if p.starts_with("/plugins/") && p.ends_with("/reload") => {
            let name = &p["/plugins/".len()..p.len() - "/reload".len()];
            if !proxy.plugins().handles().iter().any(|h| h.name == name) {
                return json_response(
                    StatusCode::NOT_FOUND,
                    &json!({ "error": format!("no plugin `{name}`") }),
                );
            }
            match proxy.reload_plugin(name).await {
                Ok(n) => json_response(StatusCode::OK, &json!({ "plugin": name, "swapped": n })),
                Err(e) => json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({ "plugin": name, "error": e, "serving": "previous version" }),
                ),
            }
        }
        (&Method::POST, "/quitquitquit") => {
            proxy.shutdown();
            text(StatusCode::OK, "OK\n")
        }
        (&Method::GET, "/") => text(
            StatusCode::OK,
            "weft admin\n  GET  /ready\n  GET  /live\n  GET  /metrics\n  GET  /stats/plugin_metrics\n  GET  /config_dump[?include_secrets=true]\n  GET  /clusters[?format=json]\n  GET  /plugins\n  GET  /chains\n  GET  /certs\n  POST /plugins/<name>/reload\n  POST /reload\n  POST /quitquitquit\n",
        ),
        (
            _,
            "/ready" | "/live" | "/metrics" | "/config_dump" | "/clusters" | "/chains" | "/certs"
            | "/reload" | "/quitquitquit",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; GET / lists the endpoints\n",
        ),
    }
}

/// Envoy's `/clusters` text format (`cluster::endpoint::stat::value`), or JSON.
fn clusters(proxy: &dyn AdminApi, as_json: bool) -> Response<ProxyBody> {
    let clusters = proxy.clusters();
    let now = weft_upstream::clock::now_ms();
    if as_json {
        let list: Vec<_> = clusters
            .iter()
            .map(|c| {
                let eps = c.endpoints();
                json!({
                    "name": &*c.name,
                    "lb_policy": c.policy,
                    "circuit_breakers": {
                        "max_requests": c.resilience.breaker.max_requests,
                        "max_retries": c.resilience.breaker.max_retries,
                        "rq_active": c.resilience.breaker.active_requests(),
                        "rq_retry_active": c.resilience.breaker.active_retries(),
                        "max_connections": c.resilience.breaker.max_connections(),
                        "rq_pending": c.resilience.breaker.pending(),
                    },
                    "endpoints": eps.endpoints.iter().map(|e| json!({
                        "address": e.addr.to_string(),
                        "weight": e.weight,
                        "health": e.health.flags(now),
                        "times_ejected": e.health.times_ejected.load(Ordering::Relaxed),
                        "ejections_total": e.health.ejections_total.load(Ordering::Relaxed),
                        "rq_active": e.active.load(Ordering::Relaxed),
                        "rq_total": e.rq_total.load(Ordering::Relaxed),
                        "rq_error": e.rq_error.load(Ordering::Relaxed),
                        "cx_connect_fail": e.cx_connect_fail.load(Ordering::Relaxed),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return json_response(StatusCode::OK, &json!({ "clusters": list }));
    }
    let mut out = String::new();
    for c in clusters.iter() {
        let b = &c.resilience.breaker;
        let n = &c.name;
        let _ = writeln!(
            out,
            "{n}::default_priority::max_requests::{}",
            b.max_requests
        );
        let _ = writeln!(out, "{n}::default_priority::max_retries::{}", b.max_retries);
        if let Some(max) = b.max_connections() {
            let _ = writeln!(out, "{n}::default_priority::max_connections::{max}");
            let _ = writeln!(
                out,
                "{n}::default_priority::max_pending_requests::{}",
                b.max_pending
            );
            let _ = writeln!(out, "{n}::default_priority::rq_pending::{}", b.pending());
        }
        let _ = writeln!(
            out,
            "{n}::default_priority::rq_active::{}",
            b.active_requests()
        );
        let _ = writeln!(
            out,
            "{n}::default_priority::rq_retry_active::{}",
            b.active_retries()
        );
        for e in c.endpoints().endpoints.iter() {
            let n = &c.name;
            let a = e.addr;
            let _ = writeln!(out, "{n}::{a}::weight::{}", e.weight);
            let _ = writeln!(out, "{n}::{a}::health_flags::{}", e.health.flags(now));
            let _ = writeln!(
                out,
                "{n}::{a}::times_ejected::{}",
                e.health.times_ejected.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "{n}::{a}::ejections_total::{}",
                e.health.ejections_total.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "{n}::{a}::rq_active::{}",
                e.active.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "{n}::{a}::rq_total::{}",
                e.rq_total.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "{n}::{a}::rq_error::{}",
                e.rq_error.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "{n}::{a}::cx_connect_fail::{}",
                e.cx_connect_fail.load(Ordering::Relaxed)
            );
        }
    }
    text(StatusCode::OK, out)
}

/// Every plugin with its version and state, and the effective chain of every route.
fn plugins(proxy: &dyn AdminApi) -> Response<ProxyBody> {
    let list: Vec<_> = proxy
        .plugins()
        .handles()
        .iter()
        .map(|h| {
            let (version, stats) = match &*h.current() {
                PluginVersion::Loaded(p) => (
                    json!({
                        "sha256": p.sha256,
                        "abi_version": p.abi_version,
                        "state": p.state(),
                        "healthy_instances": p.healthy_instances(),
                        "loaded_at": weft_observe::access_log::rfc3339(p.loaded_at()),
                        "last_failure": p.last_error(),
                    }),
                    json!({
                        "streams": p.stats.streams.load(Ordering::Relaxed),
                        "traps": p.stats.traps.load(Ordering::Relaxed),
                        "deadlines": p.stats.deadlines.load(Ordering::Relaxed),
                        "out_of_memory": p.stats.out_of_memory.load(Ordering::Relaxed),
                        "skipped": p.stats.skipped.load(Ordering::Relaxed),
                        "rejected": p.stats.rejected.load(Ordering::Relaxed),
                        "instances_replaced": p.stats.replaced.load(Ordering::Relaxed),
                        "logs_dropped": p.logs_dropped(),
                    }),
                ),
                PluginVersion::Failed { error } => {
                    (json!({ "state": "failed", "error": error }), json!({}))
                }
            };
            json!({
                "name": h.name,
                "label": h.label(),
                "file": h.file.display().to_string(),
                "failure_policy": h.policy(),
                "phase": h.config.phase,
                "priority": h.config.priority,
                "version": version,
                "stats": stats,
                "swaps": h.swaps.load(Ordering::Relaxed),
                "rejected_versions": h.rejected_versions.load(Ordering::Relaxed),
                "last_error": h.last_error(),
            })
        })
        .collect();
    let chains = proxy.chains();
    json_response(
        StatusCode::OK,
        &json!({ "plugins": list, "chains": chains }),
    )
}

/// Whether `name=true` (or `name=1`, or a bare `name`) is in the query string.
fn query_flag(query: &str, name: &str) -> bool {
    query.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
        k == name && matches!(v, "true" | "1")
    })
}
