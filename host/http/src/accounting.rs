//! Accounting for a request once it is over: status-class counters, in-flight gauges, the
//! endpoint's statistics, the plugins' `on_log`, and the access-log entry. It runs when the
//! response body ends, or when the request is dropped before a response existed (`DC`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Version};
use hyper::body::Incoming;
use tokio::time::Instant;
use weft_body::OnComplete;
use weft_observe::access_log::{self, Entry};
use weft_observe::flags;
use weft_observe::metrics::{ClusterMetrics, ListenerMetrics, RouteMetrics, class_index};
use weft_upstream::Endpoint;

use crate::access::ListenerLog;
use crate::conn::{Activity, ConnCtx, Shared};
use crate::phases::wasm::exchange::WasmExchange;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything needed to account for a request once its response body is done.
pub struct Completion {
    start: Instant,
    /// The access-log entry being filled in (`None`: the access log is off).
    pub entry: Option<Entry>,
    /// The downstream response status (0: none was sent).
    pub status: u16,
    /// The Envoy response flag.
    pub flag: &'static str,
    /// Envoy's `response.code_details` (empty: `via_upstream` once a response is sent).
    pub code_details: std::borrow::Cow<'static, str>,
    listener: Arc<ListenerMetrics>,
    /// The route's metric handles, once routed.
    pub route: Option<Arc<RouteMetrics>>,
    /// The cluster's metric handles, once forwarded.
    pub cluster: Option<Arc<ClusterMetrics>>,
    /// The endpoint of the try in flight (its `active` count is owned here).
    pub endpoint: Option<Arc<Endpoint>>,
    /// Request body bytes received.
    pub request_bytes: Arc<AtomicU64>,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
    /// The proxy-wasm exchange, finished (`on_log`, `on_done`) before the access log.
    pub wasm: Option<WasmExchange>,
    /// The cluster's circuit-breaker slot, held until the response ends.
    pub permit: Option<weft_upstream::breaker::Admitted>,
    /// The request's span, when sampled.
    pub span: Option<Box<crate::trace::Active>>,
    /// The access log's default format (when the entry has none of its own).
    pub(crate) log_default: Arc<weft_observe::access_log::LineFormat>,
    /// Istio's standard metrics for this request (`None`: off on this listener).
    pub istio: Option<Box<crate::istio::IstioCall>>,
    /// Set once accounted for (by the response body's end, or by drop).
    accounted: bool,
}

impl OnComplete for Completion {
    fn complete(mut self: Box<Self>, bytes: u64, errored: bool) {
        self.account(bytes, errored);
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(istio) = self.istio.as_mut() {
            crate::istio::on_trailers(istio, trailers);
        }
    }
}

impl Drop for Completion {
    /// A request whose handler was dropped before its response existed (the client went away
    /// while Weft waited on the upstream, a backoff, a fault delay or a breaker queue) is still
    /// accounted for: in-flight counters come back down, and it is logged with `DC`.
    fn drop(&mut self) {
        if !self.accounted {
            if self.flag == flags::NONE {
                self.flag = flags::DOWNSTREAM_CONNECTION_TERMINATION;
            }
            self.account(0, true);
        }
    }
}

impl Completion {
    /// Captures the response headers its access-log format reads.
    pub(crate) fn capture_response(&mut self, headers: &HeaderMap) {
        if let Some(e) = self.entry.as_mut() {
            crate::access::capture_response(e, &self.log_default, headers);
        }
    }

    /// Captures the request headers its access-log format reads, as they go upstream.
    pub(crate) fn recapture_request(&mut self, r: &crate::access::RequestView<'_>) {
        if let Some(e) = self.entry.as_mut() {
            crate::access::recapture_request(e, &self.log_default, r);
        }
    }
}

impl Completion {
    fn account(&mut self, bytes: u64, errored: bool) {
        if self.accounted {
            return;
        }
        self.accounted = true;
        // Plugins log first (`on_log`, `on_done`, `on_delete`), as in Envoy, and see how the
        // request ended whoever answered it (an upstream, a plugin, a route, the proxy).
        if let Some(w) = self.wasm.take() {
            let p = w.properties();
            if self.status != 0 {
                p.set_response_code(self.status);
            }
            if self.code_details.is_empty() {
                self.code_details = flags::code_details(self.flag)
                    .unwrap_or(if self.status == 0 { "" } else { "via_upstream" })
                    .into();
            }
            p.set_code_details(&self.code_details);
            p.set_flags(flags::envoy_bits(self.flag));
            p.record_sizes(self.request_bytes.load(Ordering::Relaxed), bytes);
            w.finish();
        }
        let elapsed = self.start.elapsed();
        // Status 0: the client left before any response (`DC`): no status class to count.
        if self.status != 0 {
            let class = class_index(self.status);
            self.listener.rq[class].inc();
            if let Some(r) = &self.route {
                r.rq[class].inc();
            }
        }
        self.listener.rq_time.observe(elapsed.as_secs_f64());
        if let Some(c) = &self.cluster {
            c.rq_active.dec();
        }
        if let Some(e) = &self.endpoint {
            e.active.fetch_sub(1, Ordering::Relaxed);
            if errored || self.status >= 500 {
                e.rq_error.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.flag != flags::NONE {
            self.listener.flag(self.flag);
        }
        if let Some(span) = self.span.take() {
            span.finish(crate::trace::Outcome {
                status: self.status,
                flag: self.flag,
                request_bytes: self.request_bytes.load(Ordering::Relaxed),
                response_bytes: bytes,
                upstream_address: self.endpoint.as_ref().map(|e| e.addr.to_string()),
                elapsed,
            });
        }
        if let Some(istio) = &self.istio {
            istio.report(
                self.status,
                self.flag,
                elapsed.as_millis() as u64,
                self.request_bytes.load(Ordering::Relaxed),
                bytes,
            );
        }
        if let Some(mut entry) = self.entry.take() {
            entry.status = Some(self.status);
            entry.response_flags = self.flag;
            entry.duration_ms = elapsed.as_secs_f64() * 1000.0;
            entry.bytes_received = self.request_bytes.load(Ordering::Relaxed);
            entry.bytes_sent = bytes;
            if errored && entry.details.is_none() {
                entry.details = Some("downstream or upstream stream ended early".to_owned());
            }
            self.shared.access_log.log(entry);
        }
        self.activity.end();
    }
}

/// A fresh completion for `req` on `conn`, counted on `listener`; `log` is the listener's
/// access-log choice.
pub fn completion(
    conn: &ConnCtx,
    start: Instant,
    listener: Arc<ListenerMetrics>,
    listener_name: Option<&Arc<str>>,
    log: &ListenerLog,
    req: &Request<Incoming>,
) -> Box<Completion> {
    let (logged, format) = match log {
        ListenerLog::Off => (false, None),
        ListenerLog::Default => (true, None),
        ListenerLog::Format(f) => (true, Some(f.clone())),
    };
    let now = SystemTime::now();
    let entry = (logged && conn.shared.access_log.enabled()).then(|| Entry {
        start_time: access_log::rfc3339(now),
        start: Some(now),
        downstream_local_address: Some(conn.local.to_string()),
        requested_server_name: conn.security.as_ref().and_then(|s| s.sni.clone()),
        connection_id: Some(conn.id),
        req_headers: crate::access::capture_request(
            format
                .as_deref()
                .unwrap_or(conn.shared.access_log.default_format()),
            &crate::access::RequestView {
                method: req.method(),
                uri: req.uri(),
                authority: authority_of(req),
                headers: req.headers(),
                scheme: if conn.security.as_ref().is_some_and(|s| s.tls) {
                    "https"
                } else {
                    "http"
                },
            },
        ),
        format,
        listener: listener_name
            .cloned()
            .unwrap_or_else(|| conn.listener_name.clone()),
        protocol: if conn.h2 {
            "HTTP/2"
        } else {
            version_name(req.version())
        },
        method: Some(req.method().as_str().to_owned()),
        authority: authority_of(req).map(str::to_owned),
        path: Some(
            req.uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned()),
        ),
        downstream_remote_address: conn.peer.to_string(),
        request_id: header_str(req.headers(), &X_REQUEST_ID).map(str::to_owned),
        user_agent: header_str(req.headers(), &header::USER_AGENT).map(str::to_owned),
        response_flags: flags::NONE,
        connection_security_policy: Some(
            conn.security
                .as_ref()
                .map_or(crate::security::policy::NONE, |s| s.policy()),
        ),
        downstream_peer_uri_san: conn
            .security
            .as_ref()
            .and_then(|s| s.peer.as_ref())
            .map(|p| p.uri_san.clone()),
        ..Entry::default()
    });
    Box::new(Completion {
        start,
        entry,
        status: 0,
        flag: flags::NONE,
        code_details: std::borrow::Cow::Borrowed(""),
        listener,
        route: None,
        cluster: None,
        endpoint: None,
        request_bytes: Arc::new(AtomicU64::new(0)),
        activity: conn.activity.clone(),
        shared: conn.shared.clone(),
        wasm: None,
        permit: None,
        span: None,
        log_default: conn.shared.access_log.default_format().clone(),
        istio: None,
        accounted: false,
    })
}

pub(crate) fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's authority: the URI's (absolute-form or HTTP/2 `:authority`), else Host.
/// Userinfo (`user:pw@`) is stripped, as Envoy does: it never reaches the upstream's Host,
/// the route matchers or the access log.
pub(crate) fn authority_of(req: &Request<Incoming>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| strip_userinfo(a.as_str()))
        .or_else(|| header_str(req.headers(), &header::HOST))
}

/// `user:pw@host` → `host`.
pub(crate) fn strip_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}
