//! The HTTP request path: route, run the filter chain, pick an endpoint, forward, and map
//! failures to Envoy's statuses and response flags.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use weft_framing::GuardHandle;
use weft_routing::{Action, HashPolicy, RequestView, split_host_port};

use crate::access_log::{self, Entry};
use crate::body::{OnComplete, ProxyBody};
use crate::cluster::{Cluster, Endpoint};
use crate::filter::{FilterAction, LocalReply};
use crate::generation::{HttpListener, ListenerGen};
use crate::metrics::{ClusterMetrics, ListenerMetrics, RouteMetrics, class_index};
use crate::outlier::Observation;
use crate::retry::{RequestBody, RetryConfig, TryOutcome};
use crate::server::{ListenerSlot, Shared};
use crate::wasm_filter::{Outcome, RequestProperties, WasmExchange};

/// Envoy response flags this proxy sets.
pub mod flags {
    /// No route matched.
    pub const NO_ROUTE: &str = "NR";
    /// No healthy endpoint.
    pub const NO_HEALTHY_UPSTREAM: &str = "UH";
    /// Upstream connection failure.
    pub const UPSTREAM_CONNECT_FAILURE: &str = "UF";
    /// Upstream request timeout.
    pub const UPSTREAM_TIMEOUT: &str = "UT";
    /// Upstream reset before response headers.
    pub const UPSTREAM_RESET: &str = "UR";
    /// Downstream protocol error (framing guard).
    pub const DOWNSTREAM_PROTOCOL_ERROR: &str = "DPE";
    /// Circuit breaker overflow.
    pub const UPSTREAM_OVERFLOW: &str = "UO";
    /// The last allowed retry failed too.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: &str = "URX";
    /// Aborted by fault injection.
    pub const FAULT_INJECTED: &str = "FI";
    /// Delayed by fault injection.
    pub const DELAY_INJECTED: &str = "DI";
    /// Delayed, then aborted, by fault injection.
    pub const DELAY_AND_FAULT_INJECTED: &str = "DI,FI";
    /// Refused by a local rate limit.
    pub const RATE_LIMITED: &str = "RL";

    /// `flag` with `URX` added, for a request whose retries were exhausted.
    pub fn with_retry_limit(flag: &'static str) -> &'static str {
        match flag {
            UPSTREAM_CONNECT_FAILURE => "UF,URX",
            UPSTREAM_RESET => "UR,URX",
            UPSTREAM_TIMEOUT => "UT,URX",
            _ => UPSTREAM_RETRY_LIMIT_EXCEEDED,
        }
    }
    /// No flag.
    pub const NONE: &str = "-";
    /// The downstream went away before a response (Envoy's `DC`).
    pub const DOWNSTREAM_CONNECTION_TERMINATION: &str = "DC";
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Requests in flight on a connection and when the last one ended, for the idle timeout.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_end_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self) {
        self.last_end_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// How long the connection has been without a request in flight (zero while busy).
    pub(crate) fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// What a request handler knows about its connection.
pub(crate) struct ConnCtx {
    pub peer: SocketAddr,
    pub slot: Arc<ListenerSlot>,
    pub shared: Arc<Shared>,
    pub activity: Arc<Activity>,
    pub guard: Option<GuardHandle>,
    pub h2: bool,
    pub local: SocketAddr,
    pub id: u64,
    /// The peer's IP as a header value (for `x-forwarded-for`).
    pub peer_ip: HeaderValue,
    /// TLS and the verified peer identity (`None`: plaintext).
    pub security: Option<Arc<crate::tls::ConnSecurity>>,
}

/// Everything needed to account for a request once its response body is done.
struct Completion {
    start: Instant,
    entry: Option<Entry>,
    status: u16,
    flag: &'static str,
    listener: Arc<ListenerMetrics>,
    route: Option<Arc<RouteMetrics>>,
    cluster: Option<Arc<ClusterMetrics>>,
    endpoint: Option<Arc<Endpoint>>,
    request_bytes: Arc<AtomicU64>,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
    wasm: Option<WasmExchange>,
    /// The cluster's circuit-breaker slot, held until the response ends.
    permit: Option<crate::breaker::Admitted>,
    /// Set once accounted for (by the response body's end, or by drop).
    accounted: bool,
}

impl OnComplete for Completion {
    fn complete(mut self: Box<Self>, bytes: u64, errored: bool) {
        self.account(bytes, errored);
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
    fn account(&mut self, bytes: u64, errored: bool) {
        if self.accounted {
            return;
        }
        self.accounted = true;
        // Plugins log first (`on_log`, `on_done`, `on_delete`), as in Envoy.
        if let Some(w) = self.wasm.take() {
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

/// Serves one request of a downstream connection.
pub(crate) async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnCtx>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    conn.activity.begin();
    let generation = conn.slot.current();
    let ListenerGen::Http(listener) = &*generation else {
        // The listener turned into a TCP listener by a reload; this connection is stale.
        let c = completion(&conn, start, generation.metrics().clone(), None, &req);
        return Ok(local(
            c,
            StatusCode::SERVICE_UNAVAILABLE,
            "listener is being reconfigured",
            flags::NONE,
        ));
    };
    Ok(route_and_forward(req, &conn, listener, start).await)
}

fn completion(
    conn: &ConnCtx,
    start: Instant,
    listener: Arc<ListenerMetrics>,
    listener_name: Option<&Arc<str>>,
    req: &Request<Incoming>,
) -> Box<Completion> {
    let entry = conn.shared.access_log.enabled().then(|| Entry {
        start_time: access_log::rfc3339(SystemTime::now()),
        listener: listener_name
            .cloned()
            .unwrap_or_else(|| conn.slot.name.clone()),
        protocol: if conn.h2 {
            "HTTP/2"
        } else {
            version_name(req.version())
        },
        method: Some(req.method().as_str().to_owned()),
        authority: authority_of(req, conn.h2).map(str::to_owned),
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
                .map_or(crate::tls::policy::NONE, |s| s.policy()),
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
        listener,
        route: None,
        cluster: None,
        endpoint: None,
        request_bytes: Arc::new(AtomicU64::new(0)),
        activity: conn.activity.clone(),
        shared: conn.shared.clone(),
        wasm: None,
        permit: None,
        accounted: false,
    })
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's authority: the URI's (absolute-form or HTTP/2 `:authority`), else Host.
fn authority_of(req: &Request<Incoming>, _h2: bool) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| header_str(req.headers(), &header::HOST))
}

/// A locally generated response carrying `flag`.
fn local(
    mut c: Box<Completion>,
    status: StatusCode,
    body: &str,
    flag: &'static str,
) -> Response<ProxyBody> {
    c.status = status.as_u16();
    c.flag = flag;
    if flag != flags::NONE
        && let Some(e) = c.entry.as_mut()
    {
        e.details = Some(body.to_owned());
    }
    let mut resp =
        Response::new(ProxyBody::full(Bytes::copy_from_slice(body.as_bytes())).on_complete(c));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}

/// 429 from a local rate limit, with `Retry-After`.
fn rate_limited(c: Box<Completion>, wait: Duration) -> Response<ProxyBody> {
    let mut resp = local(
        c,
        StatusCode::TOO_MANY_REQUESTS,
        "local_rate_limited",
        flags::RATE_LIMITED,
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(crate::ratelimit::retry_after_secs(wait)),
    );
    resp
}

/// An injected abort: an HTTP status, or HTTP 200 with a `grpc-status`.
fn fault_abort(
    c: Box<Completion>,
    abort: crate::fault::Abort,
    flag: &'static str,
) -> Response<ProxyBody> {
    match abort {
        crate::fault::Abort::Http(status) => local(
            c,
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "fault filter abort",
            flag,
        ),
        crate::fault::Abort::Grpc(code) => {
            let mut resp = local(c, StatusCode::OK, "", flag);
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(code));
            h.insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            resp
        }
    }
}

fn local_reply(mut c: Box<Completion>, reply: LocalReply) -> Response<ProxyBody> {
    c.status = reply.status.as_u16();
    if let Some(e) = c.entry.as_mut() {
        e.details = Some(reply.details.clone());
    }
    let mut resp = Response::new(ProxyBody::full(reply.body).on_complete(c));
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = reply.headers;
    resp
}

async fn route_and_forward(
    req: Request<Incoming>,
    conn: &Arc<ConnCtx>,
    listener: &HttpListener,
    start: Instant,
) -> Response<ProxyBody> {
    let mut c = completion(
        conn,
        start,
        listener.metrics.clone(),
        Some(&listener.name),
        &req,
    );
    if let Some((bucket, m)) = &listener.local_rate_limit
        && let Err(wait) = bucket.try_take(crate::health::now_ms())
    {
        m.rate_limited.inc();
        return rate_limited(c, wait);
    }
    let authority = authority_of(&req, conn.h2).unwrap_or("").to_owned();
    let (host, _) = split_host_port(&authority);
    let view = RequestView {
        host,
        path: req.uri().path(),
        query: req.uri().query(),
        method: req.method(),
        headers: req.headers(),
    };
    if let Some(tls) = &listener.tls
        && let weft_tls::authz::Decision::Deny(why) =
            crate::tls::authorize(tls, conn.security.as_deref())
    {
        conn.shared.metrics.tls.denied(&listener.name);
        let resp = local(c, StatusCode::FORBIDDEN, "RBAC: access denied", flags::NONE);
        tracing::debug!(listener = %listener.name, peer = %conn.peer, %why, "request denied by authorization");
        return resp;
    }
    let Some(route) = listener.routes.route(&view) else {
        return local(c, StatusCode::NOT_FOUND, "", flags::NO_ROUTE);
    };
    let state = listener.route_state.get(route.id);
    if let Some(e) = c.entry.as_mut() {
        e.route = Some(route.name.clone());
    }
    c.route = state.map(|s| s.metrics.clone());
    if let Some(s) = state
        && let Some(bucket) = &s.resilience.rate_limit
        && let Err(wait) = bucket.try_take(crate::health::now_ms())
    {
        s.resilience.metrics.rate_limited.inc();
        return rate_limited(c, wait);
    }

    let is_upgrade = !conn.h2 && is_upgrade_request(req.headers());
    let mut req = req;
    let downstream_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    if let Some(s) = state
        && let FilterAction::Respond(reply) = s.filters.on_request(&mut parts)
    {
        return local_reply(c, reply);
    }

    let mut body = ProxyBody::incoming(body).metered(c.request_bytes.clone());
    // The proxy-wasm chain: request headers (and a buffered body when a plugin asks for it).
    if let Some(s) = state.filter(|s| !s.wasm.is_empty()) {
        let props = Arc::new(
            RequestProperties::new(
                &parts,
                &authority,
                conn.peer,
                conn.local,
                route.name.clone(),
                conn.id,
                conn.h2,
            )
            .with_security(conn.security.clone()),
        );
        let mut exchange = match WasmExchange::start(&s.wasm, props) {
            Ok(e) => e,
            Err(reply) => return local_reply(c, reply),
        };
        let outcome = exchange
            .request_headers(&mut parts, &authority, &mut body, s.wasm_max_body)
            .await;
        let pipeline = exchange.request_body_pipeline();
        c.wasm = Some(exchange);
        if let Outcome::Reply(reply) = outcome {
            return local_reply(c, reply);
        }
        if !pipeline.is_empty() && !http_body::Body::is_end_stream(&body) {
            // Plugins may change the body's length: send it chunked.
            parts.headers.remove(header::CONTENT_LENGTH);
            body = ProxyBody::piped(Default::default(), body, pipeline);
        }
    }

    if let Some(s) = state
        && let Some(f) = &s.resilience.fault
    {
        let applies = f.headers.as_ref().is_none_or(|m| {
            m.matches(&RequestView {
                host,
                path: parts.uri.path(),
                query: parts.uri.query(),
                method: &parts.method,
                headers: &parts.headers,
            })
        });
        let d = f.decide(applies, (fastrand::f64() * 100.0, fastrand::f64() * 100.0));
        if let Some(delay) = d.delay {
            s.resilience.metrics.delays.inc();
            c.flag = flags::DELAY_INJECTED;
            tokio::time::sleep(delay).await;
        }
        if let Some(abort) = d.abort {
            s.resilience.metrics.aborts.inc();
            let flag = if d.delay.is_some() {
                flags::DELAY_AND_FAULT_INJECTED
            } else {
                flags::FAULT_INJECTED
            };
            return fault_abort(c, abort, flag);
        }
    }

    let forward = match &route.action {
        Action::Direct { status, body } => {
            let mut headers = HeaderMap::new();
            if !body.is_empty() {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            return answer_locally(
                c,
                *status,
                headers,
                Bytes::copy_from_slice(body.as_bytes()),
                state,
            )
            .await;
        }
        Action::Redirect(r) => {
            let location = r.location("http", &authority, parts.uri.path(), parts.uri.query());
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&location) {
                headers.insert(header::LOCATION, v);
            }
            return answer_locally(c, r.status, headers, Bytes::new(), state).await;
        }
        Action::Forward(f) => f,
    };

    let Some(cluster) = forward
        .pick_cluster(fastrand::u64(..))
        .and_then(|i| listener.clusters.get(i))
    else {
        return local(
            c,
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            flags::NO_HEALTHY_UPSTREAM,
        );
    };
    if let Some(e) = c.entry.as_mut() {
        e.upstream_cluster = Some(cluster.name.clone());
    }
    let hash = request_hash(&forward.hash_policy, &parts.headers, conn.peer);
    // Circuit breakers: requests in flight, and connections (a request may wait in the bounded
    // pending queue, within the route timeout). The slots are held to the response's end.
    let admission = cluster.resilience.breaker.admit();
    let admitted = match forward.timeout {
        Some(t) => match tokio::time::timeout(t, admission).await {
            Ok(a) => a,
            Err(_) => {
                return local(
                    c,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    flags::UPSTREAM_TIMEOUT,
                );
            }
        },
        None => admission.await,
    };
    match admitted {
        Ok(permit) => c.permit = Some(permit),
        Err(overflow) => {
            let m = &cluster.resilience.metrics;
            match overflow {
                crate::breaker::Overflow::Requests => m.overflow_requests.inc(),
                crate::breaker::Overflow::Pending => m.overflow_pending.inc(),
            };
            let mut resp = local(
                c,
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                flags::UPSTREAM_OVERFLOW,
            );
            resp.headers_mut()
                .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
            return resp;
        }
    }

    // Build the upstream request.
    prepare_upstream_headers(&mut parts.headers, conn, listener, is_upgrade);
    if let Some(e) = c.entry.as_mut()
        && e.request_id.is_none()
    {
        e.request_id = header_str(&parts.headers, &X_REQUEST_ID).map(str::to_owned);
    }
    let host_value = match &forward.host_rewrite {
        Some(h) => Some(h.clone()),
        None => HeaderValue::from_str(&authority).ok(),
    };
    if let Some(h) = host_value {
        parts.headers.insert(header::HOST, h);
    }
    let path = match forward.rewrite.apply(parts.uri.path()) {
        Some(p) => match parts.uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p,
        },
        None => parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
    };
    let Ok(path) = PathAndQuery::try_from(path) else {
        return local(
            c,
            StatusCode::BAD_REQUEST,
            "invalid request path",
            flags::NONE,
        );
    };
    parts.version = match cluster.config.protocol {
        weft_config::schema::UpstreamProtocol::Http1 => Version::HTTP_11,
        weft_config::schema::UpstreamProtocol::Http2 => Version::HTTP_2,
    };

    // Retries and mirrors need the body whole (when it is small enough to keep).
    let resilience = state.map(|s| &s.resilience);
    let retry = resilience
        .and_then(|r| r.retry.as_ref())
        .filter(|_| !is_upgrade);
    let mirrors = resilience
        .filter(|_| !is_upgrade)
        .map_or(&[][..], |r| r.mirrors.as_slice());
    let body = if retry.is_some() || !mirrors.is_empty() {
        let limit = retry.map_or(64 * 1024, |r| r.buffer_limit);
        let buffered = RequestBody::buffer(body, limit);
        let buffered = match forward.timeout {
            Some(t) => match tokio::time::timeout(t, buffered).await {
                Ok(b) => b,
                Err(_) => {
                    return local(
                        c,
                        StatusCode::REQUEST_TIMEOUT,
                        "request body timeout",
                        flags::NONE,
                    );
                }
            },
            None => buffered.await,
        };
        match buffered {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "downstream request body failed");
                return local(
                    c,
                    StatusCode::BAD_REQUEST,
                    "downstream request body could not be read",
                    flags::NONE,
                );
            }
        }
    } else {
        RequestBody::Stream(body)
    };
    if !mirrors.is_empty() {
        let copy = crate::mirror::Copy {
            method: &parts.method,
            headers: &parts.headers,
            authority: &authority,
            path: &path,
            body: match &body {
                RequestBody::Replay(b) => Some(b),
                RequestBody::Stream(_) => None,
            },
            timeout: forward.timeout,
        };
        for m in mirrors {
            crate::mirror::send(m, &copy);
        }
    }
    let upstream = Upstream {
        method: parts.method,
        headers: parts.headers,
        version: parts.version,
        path,
    };

    forward_upstream(
        upstream,
        body,
        c,
        cluster,
        hash,
        forward.timeout,
        retry,
        state,
        downstream_upgrade,
        conn,
    )
    .await
}

/// The parts of an upstream request that every try repeats.
struct Upstream {
    method: http::Method,
    headers: HeaderMap,
    version: Version,
    path: PathAndQuery,
}

/// How one try to an endpoint ended, before any retry decision.
enum Tried {
    Response(Response<Incoming>),
    Failed(TryOutcome, hyper_util::client::legacy::Error),
    TimedOut,
}

fn classify(e: &hyper_util::client::legacy::Error) -> TryOutcome {
    if e.is_connect() {
        TryOutcome::ConnectFailure
    } else if refused_stream(e) {
        TryOutcome::RefusedStream
    } else {
        TryOutcome::Reset
    }
}

fn refused_stream(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("REFUSED_STREAM") || text.contains("refused stream") {
            return true;
        }
        source = s.source();
    }
    false
}

#[allow(clippy::too_many_arguments)]
async fn forward_upstream(
    mut upstream: Upstream,
    body: RequestBody,
    mut c: Box<Completion>,
    cluster: &Arc<Cluster>,
    hash: Option<u64>,
    timeout: Option<Duration>,
    retry: Option<&RetryConfig>,
    state: Option<&crate::generation::RouteState>,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    conn: &Arc<ConnCtx>,
) -> Response<ProxyBody> {
    cluster.metrics.rq_active.inc();
    c.cluster = Some(cluster.metrics.clone());
    let rm = &cluster.resilience.metrics;
    // A timeout too large to add to the clock (a configuration of centuries) means none.
    let deadline = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
    let max_retries = retry.map_or(0, |r| r.num_retries);
    let mut body = Some(body);
    let mut attempt: u32 = 0;
    let mut tried_endpoints: Vec<usize> = Vec::new();
    let mut retry_permit: Option<crate::breaker::Permit> = None;
    let (mut resp, endpoint) = loop {
        // An owned snapshot: it is held across the upstream call.
        let set = arc_swap::Guard::into_inner(cluster.endpoints());
        let Some((index, endpoint)) = cluster.pick_endpoint(&set, hash, attempt, &tried_endpoints)
        else {
            return local(
                c,
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                flags::NO_HEALTHY_UPSTREAM,
            );
        };
        if let Some(e) = c.entry.as_mut() {
            e.upstream_host = Some(endpoint.addr.to_string());
            e.upstream_request_attempt_count = Some(attempt + 1);
        }
        let uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.authority.clone())
            .path_and_query(upstream.path.clone())
            .build();
        let Ok(uri) = uri else {
            return local(
                c,
                StatusCode::BAD_REQUEST,
                "invalid request path",
                flags::NONE,
            );
        };
        let try_body = match body.take() {
            Some(RequestBody::Replay(b)) => {
                let copy = ProxyBody::full(b.clone());
                body = Some(RequestBody::Replay(b));
                copy
            }
            Some(RequestBody::Stream(s)) => s,
            None => ProxyBody::empty(),
        };
        let mut req = Request::new(try_body);
        *req.method_mut() = upstream.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = upstream.version;
        *req.headers_mut() = if attempt < max_retries {
            upstream.headers.clone()
        } else {
            // The last possible try (the only one without a retry policy) takes them.
            std::mem::take(&mut upstream.headers)
        };
        if retry.is_some() {
            req.headers_mut().insert(
                HeaderName::from_static(crate::retry::ATTEMPT_COUNT_HEADER),
                HeaderValue::from(attempt + 1),
            );
        }

        endpoint.active.fetch_add(1, Ordering::Relaxed);
        endpoint.rq_total.fetch_add(1, Ordering::Relaxed);
        // From here the completion owns this try's `active` count (even if the request is
        // dropped while waiting on the upstream).
        c.endpoint = Some(endpoint.clone());
        let now = tokio::time::Instant::now();
        let per_try = retry
            .and_then(|r| r.per_try_timeout)
            .and_then(|t| now.checked_add(t))
            .filter(|p| deadline.is_none_or(|d| *p < d));
        let try_deadline = per_try.or(deadline);
        let sent = Instant::now();
        let call = cluster.client.request(req);
        let tried = match try_deadline {
            Some(d) => match tokio::time::timeout_at(d, call).await {
                Ok(Ok(r)) => Tried::Response(r),
                Ok(Err(e)) => Tried::Failed(classify(&e), e),
                Err(_) => Tried::TimedOut,
            },
            None => match call.await {
                Ok(r) => Tried::Response(r),
                Err(e) => Tried::Failed(classify(&e), e),
            },
        };
        let upstream_time = sent.elapsed();
        cluster.metrics.rq_time.observe(upstream_time.as_secs_f64());
        if let Some(e) = c.entry.as_mut() {
            e.upstream_service_time_ms = Some(upstream_time.as_secs_f64() * 1000.0);
        }
        drop(retry_permit.take());
        let outcome = match &tried {
            Tried::Response(r) => {
                let grpc = r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                TryOutcome::Status(r.status().as_u16(), grpc)
            }
            Tried::Failed(o, _) => *o,
            Tried::TimedOut => TryOutcome::PerTryTimeout,
        };
        cluster.observe(
            &set,
            &endpoint,
            match outcome {
                TryOutcome::Status(s, _) => Observation::Status(s),
                _ => Observation::LocalFailure,
            },
        );
        let out_of_time = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        let mut again = retry.is_some_and(|r| r.retries(outcome))
            && attempt < max_retries
            && body.as_ref().is_some_and(RequestBody::replayable)
            && !out_of_time;
        if again {
            match cluster.resilience.breaker.try_retry() {
                Ok(p) => retry_permit = Some(p),
                Err(denied) => {
                    let counter = match denied {
                        crate::breaker::RetryDenied::Budget => &rm.retry_overflow_budget,
                        crate::breaker::RetryDenied::CircuitBreaker => &rm.retry_overflow_breaker,
                    };
                    counter.inc();
                    again = false;
                }
            }
        }
        if again {
            // This try is over: account for it and go again, elsewhere if possible.
            c.endpoint = None;
            endpoint.active.fetch_sub(1, Ordering::Relaxed);
            endpoint.rq_error.fetch_add(1, Ordering::Relaxed);
            match &tried {
                Tried::Response(r) => {
                    cluster.metrics.rq[class_index(r.status().as_u16())].inc();
                }
                Tried::Failed(..) => {
                    cluster.metrics.rq[4].inc();
                    if matches!(outcome, TryOutcome::ConnectFailure) {
                        cluster.metrics.cx_connect_fail.inc();
                        endpoint.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Tried::TimedOut => {
                    cluster.metrics.rq_timeout.inc();
                    cluster.metrics.rq[4].inc();
                }
            }
            drop(tried);
            attempt += 1;
            tried_endpoints.push(index);
            rm.retry.inc();
            if let Some(r) = retry {
                let pause = crate::retry::backoff(attempt, r.base, r.max, fastrand::f64());
                match deadline {
                    Some(d) => {
                        tokio::time::sleep_until(
                            tokio::time::Instant::now()
                                .checked_add(pause)
                                .map_or(d, |p| d.min(p)),
                        )
                        .await
                    }
                    None => tokio::time::sleep(pause).await,
                }
            }
            continue;
        }
        c.endpoint = Some(endpoint.clone());
        let failed = !matches!(outcome, TryOutcome::Status(s, _) if s < 500);
        let exhausted = attempt > 0
            && attempt >= max_retries
            && failed
            && retry.is_some_and(|r| r.retries(outcome));
        if attempt > 0 && !failed {
            rm.retry_success.inc();
        }
        if exhausted {
            rm.retry_limit_exceeded.inc();
        }
        let urx = |flag: &'static str| {
            if exhausted {
                flags::with_retry_limit(flag)
            } else {
                flag
            }
        };
        match tried {
            Tried::Response(r) => {
                if exhausted {
                    c.flag = flags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
                }
                break (r, endpoint);
            }
            Tried::TimedOut => {
                cluster.metrics.rq_timeout.inc();
                cluster.metrics.rq[4].inc();
                return local(
                    c,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    urx(flags::UPSTREAM_TIMEOUT),
                );
            }
            Tried::Failed(o, e) => {
                cluster.metrics.rq[4].inc();
                if o == TryOutcome::ConnectFailure {
                    cluster.metrics.cx_connect_fail.inc();
                    endpoint.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "upstream connect failure");
                    return local(
                        c,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                        urx(flags::UPSTREAM_CONNECT_FAILURE),
                    );
                }
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "upstream reset");
                return local(
                    c,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                    urx(flags::UPSTREAM_RESET),
                );
            }
        }
    };
    let status = resp.status();
    cluster.metrics.rq[class_index(status.as_u16())].inc();
    c.status = status.as_u16();

    // WebSocket and other upgrades: splice the two upgraded connections together.
    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = downstream_upgrade
    {
        let up = hyper::upgrade::on(&mut resp);
        if let Some(g) = &conn.guard {
            g.mark_upgraded();
        }
        tokio::spawn(async move {
            match tokio::try_join!(down, up) {
                Ok((d, u)) => {
                    let mut d = TokioIo::new(d);
                    let mut u = TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        if let Some(s) = state {
            let _ = s.filters.on_response(&mut parts);
        }
        return Response::from_parts(parts, ProxyBody::empty().on_complete(c));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    parts.version = Version::HTTP_11;
    if let Some(s) = state
        && let FilterAction::Respond(reply) = s.filters.on_response(&mut parts)
    {
        return local_reply(c, reply);
    }
    let mut body = ProxyBody::incoming(body);
    if let (Some(exchange), Some(s)) = (c.wasm.as_mut(), state) {
        let props = exchange.properties();
        props.set("upstream.address", endpoint.addr.to_string().into_bytes());
        props.set(
            "upstream.port",
            u64::from(endpoint.addr.port()).to_le_bytes().to_vec(),
        );
        props.set("xds.cluster_name", cluster.name.as_bytes().to_vec());
        match exchange
            .response(&mut parts, body, s.wasm_max_body.max(1))
            .await
        {
            Ok(b) => body = b,
            Err(reply) => return local_reply(c, reply),
        }
    }
    Response::from_parts(parts, body.on_complete(c))
}

/// A direct response or redirect: through the native filters and the plugins' response
/// phase, then downstream.
async fn answer_locally(
    mut c: Box<Completion>,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    state: Option<&crate::generation::RouteState>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    let (mut parts, ()) = resp.into_parts();
    if let Some(s) = state
        && let FilterAction::Respond(reply) = s.filters.on_response(&mut parts)
    {
        parts.status = reply.status;
    }
    let mut body = ProxyBody::full(body);
    if let (Some(exchange), Some(s)) = (c.wasm.as_mut(), state) {
        match exchange
            .response(&mut parts, body, s.wasm_max_body.max(1))
            .await
        {
            Ok(b) => body = b,
            Err(reply) => return local_reply(c, reply),
        }
    }
    c.status = parts.status.as_u16();
    Response::from_parts(parts, body.on_complete(c))
}

fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the Connection header names.
/// With `keep_upgrade`, `Upgrade` and `Connection: upgrade` are kept for the next hop.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let nominated: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in nominated {
            if keep_upgrade && name == header::UPGRADE {
                continue;
            }
            // Never let a client strip headers the proxy itself relies on downstream.
            if name != header::HOST {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::TRAILER);
    if let Some(te) = headers.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn prepare_upstream_headers(
    headers: &mut HeaderMap,
    conn: &ConnCtx,
    listener: &HttpListener,
    is_upgrade: bool,
) {
    strip_hop_by_hop(headers, is_upgrade);
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", conn.peer.ip())).ok()
        }
        // The common case: the connection's own address, formatted once per connection.
        _ => Some(conn.peer_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = if conn.security.as_ref().is_some_and(|s| s.tls) {
            "https"
        } else {
            "http"
        };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    crate::tls::apply_xfcc(
        headers,
        listener.config.forward_client_cert_details,
        conn.security.as_deref(),
    );
    if listener.config.http.generate_request_id && !headers.contains_key(&X_REQUEST_ID) {
        let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
        let mut buf = uuid::Uuid::encode_buffer();
        if let Ok(v) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
}

fn request_hash(policies: &[HashPolicy], headers: &HeaderMap, peer: SocketAddr) -> Option<u64> {
    for p in policies {
        match p {
            HashPolicy::Header(name) => {
                if let Some(v) = headers.get(name) {
                    return Some(weft_balance::hash_bytes(v.as_bytes()));
                }
            }
            HashPolicy::Cookie(name) => {
                let found = headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|kv| kv.trim().split_once('='))
                    .find(|(k, _)| k == name);
                if let Some((_, v)) = found {
                    return Some(weft_balance::hash_bytes(v.as_bytes()));
                }
            }
            HashPolicy::SourceIp => {
                let bytes = match peer.ip() {
                    std::net::IpAddr::V4(a) => a.octets().to_vec(),
                    std::net::IpAddr::V6(a) => a.octets().to_vec(),
                };
                return Some(weft_balance::hash_bytes(&bytes));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_nominated_ones_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep"]);
    }

    #[test]
    fn upgrade_is_kept_when_asked_and_te_trailers_survives() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn hash_policies_fall_through_in_order() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; session=abc"));
        let policies = [
            HashPolicy::Header(HeaderName::from_static("x-user")),
            HashPolicy::Cookie("session".into()),
            HashPolicy::SourceIp,
        ];
        assert_eq!(
            request_hash(&policies, &h, peer),
            Some(weft_balance::hash_bytes(b"abc"))
        );
        h.insert("x-user", HeaderValue::from_static("u1"));
        assert_eq!(
            request_hash(&policies, &h, peer),
            Some(weft_balance::hash_bytes(b"u1"))
        );
        assert_eq!(
            request_hash(&policies[2..], &HeaderMap::new(), peer),
            Some(weft_balance::hash_bytes(&[10, 0, 0, 1]))
        );
        assert_eq!(request_hash(&[], &h, peer), None);
    }
}
