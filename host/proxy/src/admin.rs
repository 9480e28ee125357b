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
            let mut r = text(StatusCode::OK, proxy.metrics().encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
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
        (&Method::POST, "/quitquitquit") => {
            proxy.shutdown();
            text(StatusCode::OK, "OK\n")
        }
        (&Method::GET, "/") => text(
            StatusCode::OK,
            "weft admin\n  GET  /ready\n  GET  /live\n  GET  /metrics\n  GET  /config_dump\n  GET  /clusters[?format=json]\n  POST /reload\n  POST /quitquitquit\n",
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
    if as_json {
        let list: Vec<_> = g
            .clusters
            .iter()
            .map(|c| {
                let eps = c.endpoints();
                json!({
                    "name": &*c.name,
                    "lb_policy": c.policy,
                    "endpoints": eps.endpoints.iter().map(|e| json!({
                        "address": e.addr.to_string(),
                        "weight": e.weight,
                        "health": "healthy",
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
        for e in c.endpoints().endpoints.iter() {
            let n = &c.name;
            let a = e.addr;
            let _ = writeln!(out, "{n}::{a}::weight::{}", e.weight);
            let _ = writeln!(out, "{n}::{a}::health_flags::healthy");
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
