//! The admin server, on Envoy's port and with Envoy's names: `/ready`, `/live`, `/metrics`
//! (also `/stats/prometheus`), `/config_dump`, `/clusters`, `POST /reload`,
//! `POST /quitquitquit`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use crate::body::ProxyBody;
use crate::runtime::Proxy;

/// Binds the admin server and serves it until shutdown; returns the bound address.
pub async fn start(proxy: Proxy, address: SocketAddr) -> std::io::Result<SocketAddr> {
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

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
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

async fn route(proxy: Proxy, req: Request<Incoming>) -> Response<ProxyBody> {
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
        (&Method::GET, "/metrics" | "/stats/prometheus") => {
            let mut all = proxy.metrics().encode();
            // The registry's text ends with `# EOF`; plugin series go before it.
            let eof = all.rfind("# EOF").unwrap_or(all.len());
            all.insert_str(eof, &proxy.plugins().encode_metrics());
            let mut r = text(StatusCode::OK, all);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, "/config_dump") => {
            let g = proxy.generation();
            json_response(
                StatusCode::OK,
                &json!({
                    "generation": g.id,
                    "source": g.source,
                    "loaded_at": crate::access_log::rfc3339(g.loaded_at),
                    "last_reload_error": proxy.last_reload_error(),
                    "listeners": proxy.listener_addrs(),
                    "config": &*g.config,
                }),
            )
        }
        (&Method::GET, "/clusters") => clusters(&proxy, query.contains("format=json")),
        (&Method::POST, "/reload") => match proxy.reload().await {
            Ok(id) => json_response(StatusCode::OK, &json!({ "generation": id })),
            Err(e) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "error": e.to_string(), "generation": proxy.generation().id }),
            ),
        },
        (&Method::GET, "/plugins") => plugins(&proxy),
        (&Method::GET, "/certs") => {
            json_response(StatusCode::OK, &crate::tls::certs_json(&proxy.generation()))
        }
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
                    &json!({ "plugin": name, "error": e.to_string(), "serving": "previous version" }),
                ),
            }
        }
        (&Method::POST, "/quitquitquit") => {
            proxy.shutdown();
            text(StatusCode::OK, "OK\n")
        }
        (&Method::GET, "/") => text(
            StatusCode::OK,
            "weft admin\n  GET  /ready\n  GET  /live\n  GET  /metrics\n  GET  /config_dump\n  GET  /clusters[?format=json]\n  GET  /plugins\n  GET  /certs\n  POST /plugins/<name>/reload\n  POST /reload\n  POST /quitquitquit\n",
        ),
        (
            _,
            "/ready" | "/live" | "/metrics" | "/config_dump" | "/clusters" | "/reload"
            | "/quitquitquit",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; GET / lists the endpoints\n",
        ),
    }
}

/// Envoy's `/clusters` text format (`cluster::endpoint::stat::value`), or JSON.
fn clusters(proxy: &Proxy, as_json: bool) -> Response<ProxyBody> {
    let g = proxy.generation();
    let now = crate::health::now_ms();
    if as_json {
        let list: Vec<_> = g
            .clusters
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
    for c in g.clusters.iter() {
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
fn plugins(proxy: &Proxy) -> Response<ProxyBody> {
    use crate::plugins::PluginVersion;
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
                        "loaded_at": crate::access_log::rfc3339(p.loaded_at()),
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
    let g = proxy.generation();
    let mut chains = Vec::new();
    let mut names: Vec<&String> = g.listeners.keys().collect();
    names.sort();
    for name in names {
        if let Some(crate::generation::ListenerGen::Http(l)) = g.listeners.get(name).map(|l| &**l) {
            for (route, state) in l.routes.routes().zip(&l.route_state) {
                chains.push(json!({
                    "listener": name,
                    "route": &*route.name,
                    "native_filters": state.filters.names(),
                    "plugins": state.wasm.iter().map(|h| h.label()).collect::<Vec<_>>(),
                }));
            }
        }
    }
    json_response(
        StatusCode::OK,
        &json!({ "plugins": list, "chains": chains }),
    )
}
