//! Phase `weft.forward` (terminal): sends the request to the route's cluster.
//!
//! The steps, each in its own module: pick the cluster (weighted) and pass its circuit breaker
//! (here); [`prepare`] the upstream head; buffer the body when retries or mirrors need it
//! ([`retry::RequestBody`]); fire the [`mirror`]s; then the retry loop (here), each try one
//! [`attempt`] to one endpoint; finally an HTTP [`upgrade`] is spliced, or the response head is
//! cleaned of hop-by-hop headers and handed back to the response hooks.
//!
//! Failures before response headers end the request with Envoy's local replies and response
//! flags (`UH`, `UO`, `UF`, `UR`, `UT`, with `URX` when retries were exhausted).

pub(crate) mod attempt;
pub mod mirror;
pub(crate) mod prepare;
pub mod retry;
mod upgrade;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri, Version, response};
use hyper::body::Incoming;
use weft_body::ProxyBody;
use weft_observe::flags;
use weft_observe::metrics::class_index;
use weft_routing::{Action, Forward};
use weft_upstream::outlier::Observation;
use weft_upstream::{Cluster, Endpoint};

use crate::ctx::RequestCtx;
use crate::phase::{Flow, Phase};
use crate::reply::LocalReply;
use attempt::Tried;
use mirror::Mirror;
use retry::{RequestBody, RetryConfig, TryOutcome};

pub use prepare::strip_hop_by_hop;

/// Forwards to the route's cluster, with the route's retry policy and mirrors.
#[derive(Debug, Default)]
pub struct ForwardPhase {
    /// Retry policy.
    pub retry: Option<RetryConfig>,
    /// Shadow clusters.
    pub mirrors: Vec<Mirror>,
}

/// The parts of an upstream request that every try repeats.
struct Upstream {
    method: http::Method,
    headers: HeaderMap,
    version: Version,
    path: PathAndQuery,
}

impl Phase for ForwardPhase {
    fn name(&self) -> String {
        "weft.forward".to_owned()
    }

    async fn request<'a>(&'a self, ctx: &mut RequestCtx<'a>) -> Flow {
        let Some(Action::Forward(forward)) = ctx.route.map(|r| &r.action) else {
            return Flow::Continue;
        };
        match self.forward(ctx, forward).await {
            Ok((head, body)) => Flow::Respond(head, body),
            Err(reply) => Flow::Reply(reply),
        }
    }
}

fn unavailable(body: &str, flag: &'static str) -> LocalReply {
    LocalReply::text(StatusCode::SERVICE_UNAVAILABLE, body, flag)
}

impl ForwardPhase {
    async fn forward<'a>(
        &'a self,
        ctx: &mut RequestCtx<'a>,
        forward: &'a Forward,
    ) -> Result<(response::Parts, ProxyBody), LocalReply> {
        let listener = ctx.listener;
        let Some(cluster) = forward
            .pick_cluster(fastrand::u64(..))
            .and_then(|i| listener.clusters.get(i))
        else {
            return Err(unavailable(
                "no healthy upstream",
                flags::NO_HEALTHY_UPSTREAM,
            ));
        };
        if let Some(e) = ctx.completion.entry.as_mut() {
            e.upstream_cluster = Some(cluster.name.clone());
        }
        if let Some(s) = ctx.completion.span.as_mut() {
            s.upstream_cluster = Some(cluster.name.clone());
        }
        let hash = prepare::request_hash(&forward.hash_policy, &ctx.head.headers, ctx.conn.peer);
        admit(ctx, cluster, forward.timeout).await?;

        // The upstream request head.
        prepare::prepare_upstream_headers(
            &mut ctx.head.headers,
            ctx.conn,
            listener,
            ctx.is_upgrade,
        );
        let scheme = ctx.scheme();
        ctx.completion
            .recapture_request(&crate::access::RequestView {
                method: &ctx.head.method,
                uri: &ctx.head.uri,
                authority: Some(&ctx.authority),
                headers: &ctx.head.headers,
                scheme,
            });
        if let Some(s) = ctx.completion.span.as_mut()
            && s.request_id.is_none()
        {
            s.request_id =
                crate::accounting::header_str(&ctx.head.headers, &crate::accounting::X_REQUEST_ID)
                    .map(str::to_owned);
        }
        if let Some(e) = ctx.completion.entry.as_mut()
            && e.request_id.is_none()
        {
            e.request_id =
                crate::accounting::header_str(&ctx.head.headers, &crate::accounting::X_REQUEST_ID)
                    .map(str::to_owned);
        }
        let version = cluster.upstream_version(ctx.head.version);
        if version == Version::HTTP_2 {
            // HTTP/2 carries the authority in `:authority`, which the pooled client sets to
            // the endpoint; a `Host` that differs from it is malformed (RFC 9113 §8.3.1: a
            // client MUST NOT send one, and Weft's own HTTP/2 server refuses it).
            ctx.head.headers.remove(header::HOST);
        } else if let Some(h) = &forward.host_rewrite {
            ctx.head.headers.insert(header::HOST, h.clone());
        } else if ctx
            .head
            .headers
            .get(header::HOST)
            .is_none_or(|h| h.as_bytes() != ctx.authority.as_bytes())
        {
            // An HTTP/1.1 request usually carries exactly this `Host` already: kept as it is
            // (a new value is one allocation); from HTTP/2's `:authority` it is built here.
            if let Ok(h) = HeaderValue::from_str(&ctx.authority) {
                ctx.head.headers.insert(header::HOST, h);
            }
        }
        let path = match forward.rewrite.apply(ctx.head.uri.path()) {
            Some(p) => match ctx.head.uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p,
            },
            None => ctx
                .head
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        };
        let Ok(path) = PathAndQuery::try_from(path) else {
            return Err(LocalReply::text(
                StatusCode::BAD_REQUEST,
                "invalid request path",
                flags::NONE,
            ));
        };

        // Retries and mirrors need the body whole (when it is small enough to keep).
        let retry = self.retry.as_ref().filter(|_| !ctx.is_upgrade);
        let mirrors = if ctx.is_upgrade {
            &[][..]
        } else {
            self.mirrors.as_slice()
        };
        let body = std::mem::replace(&mut ctx.body, ProxyBody::empty());
        let body = if retry.is_some() || !mirrors.is_empty() {
            // Bounded by the request-level timeouts (`request_timeout`, stream idle), not by
            // the route timeout, which starts only once the request is complete.
            let limit = retry.map_or(64 * 1024, |r| r.buffer_limit);
            buffer_body(body, limit).await?
        } else {
            RequestBody::Stream(body)
        };
        if !mirrors.is_empty() {
            let copy = mirror::Copy {
                method: &ctx.head.method,
                headers: &ctx.head.headers,
                authority: &ctx.authority,
                path: &path,
                body: match &body {
                    RequestBody::Replay(b) => Some(b),
                    RequestBody::Stream(_) => None,
                },
                timeout: forward.timeout,
                version: ctx.head.version,
            };
            for m in mirrors {
                mirror::send(m, &copy);
            }
        }
        let upstream = Upstream {
            method: ctx.head.method.clone(),
            headers: std::mem::take(&mut ctx.head.headers),
            version,
            path,
        };
        // The route timeout starts when the downstream request is complete (Envoy's
        // semantics): a slow upload is bounded by the request-level timeouts instead.
        // When the request is already complete (no body, or a buffered one), the tries'
        // deadline in `send_with_retries` is this same instant and enforces it: no second
        // timer (a timer is a wheel insertion, and at low load a wake-up of the worker's
        // driver through its eventfd).
        let watch = ctx.watch.clone();
        let route_timer = async {
            match forward.timeout {
                Some(_) if watch.completed_at().is_some() => std::future::pending().await,
                Some(t) => {
                    let done = watch.completed().await;
                    match done.checked_add(t) {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                }
                None => std::future::pending().await,
            }
        };
        let sent = tokio::select! {
            sent = send_with_retries(ctx, upstream, body, cluster, hash, forward.timeout, retry) => sent,
            _ = route_timer => {
                cluster.metrics.rq_timeout.inc();
                cluster.metrics.rq[4].inc();
                Err(LocalReply::text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    flags::UPSTREAM_TIMEOUT,
                ))
            }
        };
        let (resp, lease, endpoint) = sent?;
        ctx.upstream = Some((cluster.name.clone(), endpoint.addr));
        Ok(self.downstream_response(ctx, resp, lease))
    }

    /// The upstream's response head made fit for the downstream hop; an upgrade is spliced.
    fn downstream_response(
        &self,
        ctx: &mut RequestCtx<'_>,
        mut resp: http::Response<Incoming>,
        lease: Option<weft_upstream::h1_pool::Lease>,
    ) -> (response::Parts, ProxyBody) {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(down) = ctx.upgrade.take()
        {
            upgrade::splice(down, &mut resp, ctx.conn.guard.as_ref());
            ctx.upgraded = true;
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return (parts, ProxyBody::empty());
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        parts.version = Version::HTTP_11;
        let body = match lease {
            Some(lease) => weft_upstream::h1_pool::H1Body::new(body, lease).into_proxy_body(),
            None => ProxyBody::incoming(body),
        };
        (parts, body)
    }
}

/// Circuit breakers: requests in flight, and connections (a request may wait in the bounded
/// pending queue, within the route timeout). The slot is held to the response's end.
async fn admit(
    ctx: &mut RequestCtx<'_>,
    cluster: &Cluster,
    timeout: Option<Duration>,
) -> Result<(), LocalReply> {
    let admission = cluster.resilience.breaker.admit();
    let admitted = match timeout {
        Some(t) => match tokio::time::timeout(t, admission).await {
            Ok(a) => a,
            Err(_) => {
                return Err(LocalReply::text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    flags::UPSTREAM_TIMEOUT,
                ));
            }
        },
        None => admission.await,
    };
    match admitted {
        Ok(permit) => {
            ctx.completion.permit = Some(permit);
            Ok(())
        }
        Err(overflow) => {
            let m = &cluster.resilience.metrics;
            match overflow {
                weft_upstream::breaker::Overflow::Requests => m.overflow_requests.inc(),
                weft_upstream::breaker::Overflow::Pending => m.overflow_pending.inc(),
            };
            Err(unavailable(
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                flags::UPSTREAM_OVERFLOW,
            )
            .with_header(
                HeaderName::from_static("x-envoy-overloaded"),
                HeaderValue::from_static("true"),
            ))
        }
    }
}

/// Reads the request body whole (up to `limit`) for replays.
async fn buffer_body(body: ProxyBody, limit: usize) -> Result<RequestBody, LocalReply> {
    let buffered = RequestBody::buffer(body, limit).await;
    buffered.map_err(|e| {
        if let Some(reply) = crate::phases::wasm::PipelineError::find(e.as_ref()) {
            return reply;
        }
        tracing::debug!(error = %e, "downstream request body failed");
        LocalReply::text(
            StatusCode::BAD_REQUEST,
            "downstream request body could not be read",
            flags::NONE,
        )
    })
}

/// Where a request to an `original_dst` cluster goes: the `x-envoy-original-dst-host` header
/// (an `ip:port`) when the cluster has `use_http_header`, else the connection's original
/// destination (`None` when it was not captured: 503 `UH`).
fn original_destination(
    cluster: &Cluster,
    conn: Option<std::net::SocketAddr>,
    headers: &http::HeaderMap,
) -> Option<std::net::SocketAddr> {
    let from_header = cluster
        .config
        .original_dst
        .as_ref()
        .is_some_and(|o| o.use_http_header)
        .then(|| {
            headers
                .get(weft_config::capture::ORIGINAL_DST_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        })
        .flatten();
    from_header.or(conn)
}

/// The retry loop: tries endpoints until one answers with a response the policy accepts, the
/// retries or the budget run out, or the route deadline passes.
async fn send_with_retries(
    ctx: &mut RequestCtx<'_>,
    mut upstream: Upstream,
    body: RequestBody,
    cluster: &Arc<Cluster>,
    hash: Option<u64>,
    timeout: Option<Duration>,
    retry: Option<&RetryConfig>,
) -> Result<
    (
        http::Response<Incoming>,
        Option<weft_upstream::h1_pool::Lease>,
        Arc<Endpoint>,
    ),
    LocalReply,
> {
    // An `original_dst` cluster has one destination per request: the connection's original
    // destination, or the header's when the cluster trusts it.
    let original_dst = cluster
        .is_original_dst()
        .then(|| original_destination(cluster, ctx.conn.original_dst, &upstream.headers));
    let c = &mut ctx.completion;
    cluster.metrics.rq_active.inc();
    c.cluster = Some(cluster.metrics.clone());
    if let Some(istio) = c.istio.as_mut() {
        istio.routed_to(cluster);
    }
    let rm = &cluster.resilience.metrics;
    // The route deadline counts from the request's completion: known here when the body was
    // buffered (retries), else enforced by the caller once the body ends. A timeout too large
    // to add to the clock (a configuration of centuries) means none.
    let deadline = timeout.and_then(|t| ctx.watch.completed_at().and_then(|at| at.checked_add(t)));
    let max_retries = retry.map_or(0, |r| r.num_retries);
    let mut body = Some(body);
    let mut attempt: u32 = 0;
    let mut tried_endpoints: Vec<usize> = Vec::new();
    let mut retry_permit: Option<weft_upstream::breaker::Permit> = None;
    // HTTP/1.1 through the cluster's own pool (not for upgrades and CONNECT, which hand the
    // connection over: hyper's pooled client keeps them).
    let h1 = cluster.h1_pool().is_some()
        && !ctx.is_upgrade
        && upstream.version == Version::HTTP_11
        && upstream.method != http::Method::CONNECT;
    loop {
        // An owned snapshot: it is held across the upstream call.
        let set = arc_swap::Guard::into_inner(cluster.endpoints());
        let picked = match original_dst {
            Some(dst) => dst.map(|dst| (0, cluster.original_dst_endpoint(dst))),
            None => cluster.pick_endpoint(&set, hash, attempt, &tried_endpoints),
        };
        let Some((index, endpoint)) = picked else {
            return Err(unavailable(
                "no healthy upstream",
                flags::NO_HEALTHY_UPSTREAM,
            ));
        };
        if let Some(e) = c.entry.as_mut() {
            e.upstream_host = Some(endpoint.addr.to_string());
            e.upstream_request_attempt_count = Some(attempt + 1);
        }
        let uri = if h1 {
            // Origin-form: serialized as-is on the connection.
            Ok(Uri::from(upstream.path.clone()))
        } else {
            Uri::builder()
                .scheme("http")
                .authority(endpoint.authority.clone())
                .path_and_query(upstream.path.clone())
                .build()
        };
        let Ok(uri) = uri else {
            return Err(LocalReply::text(
                StatusCode::BAD_REQUEST,
                "invalid request path",
                flags::NONE,
            ));
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
        // hyper sends no body for a GET or HEAD of unknown length unless told to: a chunked
        // GET/HEAD body is forwarded (as Envoy and nginx do), not silently dropped.
        let chunked_get = upstream.version == Version::HTTP_11
            && matches!(upstream.method, http::Method::GET | http::Method::HEAD)
            && !http_body::Body::is_end_stream(&try_body)
            && http_body::Body::size_hint(&try_body).exact().is_none();
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
        if h1 && !req.headers().contains_key(header::HOST) {
            // What hyper's pooled client adds from the absolute URI.
            if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        if chunked_get {
            req.headers_mut().insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        if retry.is_some() {
            req.headers_mut().insert(
                HeaderName::from_static(retry::ATTEMPT_COUNT_HEADER),
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
        let tried = attempt::send(cluster, &endpoint, req, per_try.or(deadline), h1).await;
        let upstream_time = now.elapsed();
        cluster.metrics.rq_time.observe(upstream_time.as_secs_f64());
        if let Some(e) = c.entry.as_mut() {
            e.upstream_service_time_ms = Some(upstream_time.as_secs_f64() * 1000.0);
        }
        drop(retry_permit.take());
        let outcome = tried.outcome();
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
                        weft_upstream::breaker::RetryDenied::Budget => &rm.retry_overflow_budget,
                        weft_upstream::breaker::RetryDenied::CircuitBreaker => {
                            &rm.retry_overflow_breaker
                        }
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
            count_failed_try(cluster, &endpoint, &tried, outcome);
            drop(tried);
            attempt += 1;
            tried_endpoints.push(index);
            rm.retry.inc();
            if let Some(r) = retry {
                let pause = retry::backoff(attempt, r.base, r.max, fastrand::f64());
                let wake = tokio::time::Instant::now().checked_add(pause);
                match (deadline, wake) {
                    (Some(d), Some(w)) => tokio::time::sleep_until(d.min(w)).await,
                    (Some(d), None) => tokio::time::sleep_until(d).await,
                    (None, _) => tokio::time::sleep(pause).await,
                }
            }
            continue;
        }
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
        return match tried {
            Tried::Response(r, lease) => {
                if exhausted {
                    c.flag = flags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
                }
                cluster.metrics.rq[class_index(r.status().as_u16())].inc();
                Ok((r, lease, endpoint))
            }
            Tried::TimedOut => {
                cluster.metrics.rq_timeout.inc();
                cluster.metrics.rq[4].inc();
                Err(LocalReply::text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    urx(flags::UPSTREAM_TIMEOUT),
                ))
            }
            Tried::Failed(o, e) => {
                // The request body failed in a plugin (a local reply, a failure, or a body over
                // `max_body_bytes`): answer what the plugin pipeline decided.
                if let Some(reply) = crate::phases::wasm::PipelineError::find(e.as_ref()) {
                    return Err(reply);
                }
                cluster.metrics.rq[4].inc();
                if attempt::framing_error(e.as_ref()) {
                    // The upstream broke HTTP/1 framing (bare CR/LF in a head, a bad chunk):
                    // nothing of it reaches the client.
                    tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "upstream protocol error");
                    return Err(LocalReply::text(
                        StatusCode::BAD_GATEWAY,
                        "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
                        flags::UPSTREAM_PROTOCOL_ERROR,
                    ));
                }
                if o == TryOutcome::ConnectFailure {
                    cluster.metrics.cx_connect_fail.inc();
                    endpoint.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "upstream connect failure");
                    Err(unavailable(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                        urx(flags::UPSTREAM_CONNECT_FAILURE),
                    ))
                } else {
                    tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "upstream reset");
                    Err(unavailable(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                        urx(flags::UPSTREAM_RESET),
                    ))
                }
            }
        };
    }
}

/// Counts a try that will be retried.
fn count_failed_try(cluster: &Cluster, endpoint: &Endpoint, tried: &Tried, outcome: TryOutcome) {
    match tried {
        Tried::Response(r, _) => {
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
}
