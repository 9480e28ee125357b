//! Serving one request: the driver that walks the chains. Everything a request goes through
//! is a phase ([`crate::phase`]); this file only sequences them and turns the outcome into the
//! downstream response with its accounting attached.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode, response};
use hyper::body::Incoming;
use tokio::time::Instant;
use weft_body::ProxyBody;
use weft_observe::flags;

use crate::accounting::{self, Completion};
use crate::conn::ConnCtx;
use crate::ctx::RequestCtx;
use crate::forward::prepare::is_upgrade_request;
use crate::listener::{HttpListener, ListenerSource};
use crate::phase::Flow;
use crate::reply::LocalReply;
use crate::timeouts::{self, Deadlines, StreamWatch};
use weft_body::Progress;
use weft_routing::Action;

/// Headers forwarding adds to most requests: `host` (from an HTTP/2 `:authority`),
/// `x-forwarded-proto` and `x-request-id`.
const ADDED_REQUEST_HEADERS: usize = 3;

/// Serves one request of a downstream connection.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnCtx>,
    source: Arc<dyn ListenerSource>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    conn.activity.begin();
    let Some(listener) = source.http() else {
        // The listener turned into a TCP listener by a reload; this connection is stale.
        let c = accounting::completion(
            &conn,
            start,
            source.metrics(),
            None,
            &crate::access::ListenerLog::Default,
            &req,
        );
        return Ok(reply(
            c,
            LocalReply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "listener is being reconfigured",
                flags::NONE,
            ),
        ));
    };
    if conn.shared.overload.active() {
        // Above the memory watermark: shed (Envoy's overload manager answers the same).
        conn.shared.overload.metrics.rq_shed.inc();
        let c = accounting::completion(
            &conn,
            start,
            listener.settings.metrics.clone(),
            Some(&listener.settings.name),
            &listener.settings.access_log,
            &req,
        );
        return Ok(reply(
            c,
            LocalReply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "envoy overloaded",
                flags::OVERLOAD_MANAGER,
            ),
        ));
    }
    let mut response = serve(req, &conn, &listener, start).await;
    server_header(response.headers_mut(), &listener.settings.config.http);
    Ok(response)
}

/// Applies the listener's `server_header_transformation` to a response (upstream or local).
fn server_header(headers: &mut http::HeaderMap, http: &weft_config::schema::HttpSettings) {
    use weft_config::schema::ServerHeaderTransformation as T;
    let write = match http.server_header_transformation {
        T::PassThrough => false,
        T::Overwrite => true,
        T::AppendIfAbsent => !headers.contains_key(http::header::SERVER),
    };
    if write && let Ok(v) = http::HeaderValue::from_str(&http.server_name) {
        headers.insert(http::header::SERVER, v);
    }
}

/// The listener's path normalization (`normalize_path`, `merge_slashes`) on the request's
/// path, before routing; a normalized path that is not a valid request target gets 400.
fn normalize_path(
    head: &mut http::request::Parts,
    http: &weft_config::schema::HttpSettings,
) -> Result<(), LocalReply> {
    let refused = || {
        LocalReply::text(StatusCode::BAD_REQUEST, "", flags::NONE)
            .detailed("path_normalization_failed")
    };
    let normalized =
        match crate::normalize::path(head.uri.path(), http.normalize_path, http.merge_slashes) {
            std::borrow::Cow::Borrowed(_) => return Ok(()),
            std::borrow::Cow::Owned(p) => p,
        };
    let path_and_query = match head.uri.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut parts = head.uri.clone().into_parts();
    parts.path_and_query =
        Some(http::uri::PathAndQuery::try_from(path_and_query).map_err(|_| refused())?);
    head.uri = http::Uri::from_parts(parts).map_err(|_| refused())?;
    Ok(())
}

async fn serve(
    mut req: Request<Incoming>,
    conn: &Arc<ConnCtx>,
    listener: &HttpListener,
    start: Instant,
) -> Response<ProxyBody> {
    let completion = accounting::completion(
        conn,
        start,
        listener.settings.metrics.clone(),
        Some(&listener.settings.name),
        &listener.settings.access_log,
        &req,
    );
    let authority = accounting::authority_of(&req).unwrap_or("").to_owned();
    if !conn.h2 && is_h2c_upgrade(req.headers()) {
        // Served as the plain HTTP/1.1 request it also is (as Envoy does).
        remove_h2c_upgrade(req.headers_mut());
    }
    let is_upgrade = !conn.h2 && is_upgrade_request(req.headers());
    let upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut head, body) = req.into_parts();
    // Room for the headers forwarding adds (`host`, `x-forwarded-proto`, `x-request-id`) in one
    // step: an HTTP/2 request's map is sized to the headers it arrived with, and three inserts
    // into it would grow (re-hash) it three times. Best effort: a map at its size limit stays.
    let _ = head.headers.try_reserve(ADDED_REQUEST_HEADERS);
    let watch = Arc::new(StreamWatch::new(conn.activity.clone()));
    let body = ProxyBody::incoming(body)
        .metered(completion.request_bytes.clone())
        .watched(watch.clone());
    if http_body::Body::is_end_stream(&body) {
        watch.ended();
    }
    let mut ctx = RequestCtx {
        conn,
        listener: &listener.settings,
        route: None,
        head,
        body,
        authority,
        completion,
        is_upgrade,
        upgrade,
        upgraded: false,
        upstream: None,
        watch: watch.clone(),
    };
    // The request's span, before any phase: they all see Weft's span as the parent.
    ctx.completion.span = ctx.start_span();
    let http = &listener.settings.config.http;
    let mut deadlines = Deadlines {
        request: Deadlines::enabled(http.request_timeout),
        idle: Deadlines::enabled(http.stream_idle_timeout),
    };
    ctx.completion.istio =
        crate::istio::on_request(ctx.listener, ctx.conn, &mut ctx.head, &ctx.authority);
    if (http.normalize_path || http.merge_slashes)
        && let Err(r) = normalize_path(&mut ctx.head, http)
    {
        return reply(ctx.completion, r);
    }

    // Before routing.
    if let (Flow::Reply(r), _) = listener.chain.request(&mut ctx).await {
        return reply(ctx.completion, r);
    }

    // Routing.
    let Some(route) = listener.routes.route(&ctx.view()) else {
        return reply(
            ctx.completion,
            LocalReply::text(StatusCode::NOT_FOUND, "", flags::NO_ROUTE),
        );
    };
    let Some(state) = listener.route_state.get(route.id) else {
        return reply(
            ctx.completion,
            LocalReply::text(StatusCode::NOT_FOUND, "", flags::NO_ROUTE),
        );
    };
    if let Some(e) = ctx.completion.entry.as_mut() {
        e.route = Some(route.name.clone());
    }
    ctx.completion.route = Some(state.metrics.clone());
    if let (Some(op), Some(span)) = (&state.decorator, ctx.completion.span.as_mut()) {
        span.name = op.to_string();
    }
    ctx.route = Some(route);
    if let Action::Forward(f) = &route.action {
        if let Some(idle) = f.idle_timeout {
            deadlines.idle = Deadlines::enabled(idle);
        }
        // Upgrades only where the route allows them (Envoy answers 403, details
        // `upgrade_failed`); the upgrade request itself runs the route's chain below.
        if ctx.is_upgrade {
            let token = ctx
                .head
                .headers
                .get(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !f.allows_upgrade(token.trim()) {
                return reply(
                    ctx.completion,
                    LocalReply::text(StatusCode::FORBIDDEN, "", flags::NONE)
                        .detailed("upgrade_failed"),
                );
            }
        }
    }

    // The route's chain (bounded by the request-level timeouts until it answers), then its
    // response hooks over what the terminal phase answered.
    let ran = match timeouts::guard(state.chain.request(&mut ctx), &watch, deadlines).await {
        Ok(ran) => ran,
        Err(r) => return reply(ctx.completion, r),
    };
    match ran {
        (Flow::Reply(r), _) => reply(ctx.completion, r),
        (Flow::Respond(mut head, body), ran) => {
            match state.chain.response(&mut ctx, ran, &mut head, body).await {
                Ok(body) => respond(
                    ctx.completion,
                    head,
                    // A moving response keeps the connection out of the stalled check.
                    body.watched(conn.activity.clone()),
                ),
                Err(r) => reply(ctx.completion, r),
            }
        }
        (Flow::Continue, _) => {
            // Every route chain ends in a terminal phase; reaching here is a build bug.
            tracing::error!(route = %route.name, "route chain ended without a response");
            reply(
                ctx.completion,
                LocalReply::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "route has no terminal phase",
                    flags::NONE,
                ),
            )
        }
    }
}

/// The response to send downstream, accounted for when its body ends.
fn respond(
    mut c: Box<Completion>,
    mut head: response::Parts,
    body: ProxyBody,
) -> Response<ProxyBody> {
    c.status = head.status.as_u16();
    if let Some(istio) = c.istio.as_mut() {
        crate::istio::on_response(istio, &mut head.headers, head.extensions.get());
    }
    c.capture_response(&head.headers);
    let via_upstream = c.endpoint.is_some();
    if let Some(e) = c.entry.as_mut() {
        e.via_upstream = via_upstream;
    }
    Response::from_parts(head, body.on_complete(c))
}

/// `Upgrade: h2c` (RFC 7540 §3.2, obsolete in RFC 9113): never an upgrade through a proxy.
fn is_h2c_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"h2c"))
}

/// Removes `Upgrade`, `HTTP2-Settings` and their `Connection` tokens.
fn remove_h2c_upgrade(headers: &mut http::HeaderMap) {
    headers.remove(http::header::UPGRADE);
    headers.remove("http2-settings");
    let kept: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("http2-settings")
        })
        .map(str::to_owned)
        .collect();
    headers.remove(http::header::CONNECTION);
    if !kept.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(&kept.join(", "))
    {
        headers.insert(http::header::CONNECTION, v);
    }
}

/// A local reply, accounted for when its body ends.
fn reply(mut c: Box<Completion>, reply: LocalReply) -> Response<ProxyBody> {
    c.status = reply.status.as_u16();
    if let Some(flag) = reply.flag {
        c.flag = flag;
    }
    // Envoy's `response.code_details`: the reply's own token, else what its flag means.
    c.code_details = if !reply.details.is_empty() && !reply.details.contains(' ') {
        reply.details.clone().into()
    } else {
        flags::code_details(c.flag).unwrap_or("local_reply").into()
    };
    if !reply.details.is_empty()
        && let Some(e) = c.entry.as_mut()
    {
        e.details = Some(reply.details);
    }
    let mut headers = reply.headers;
    if let Some(istio) = c.istio.as_mut() {
        crate::istio::on_response(istio, &mut headers, None);
    }
    c.capture_response(&headers);
    let mut resp = Response::new(ProxyBody::full(reply.body).on_complete(c));
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_stripped_from_the_authority() {
        use crate::accounting::strip_userinfo;
        assert_eq!(strip_userinfo("user:pw@evil.example"), "evil.example");
        assert_eq!(strip_userinfo("a@b@host:8080"), "host:8080");
        assert_eq!(strip_userinfo("host:8080"), "host:8080");
    }

    #[test]
    fn h2c_upgrade_headers_are_removed_and_other_connection_tokens_kept() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::UPGRADE, "H2C".parse().unwrap());
        h.insert("http2-settings", "AAMAAABkAAQAAP__".parse().unwrap());
        h.insert(
            http::header::CONNECTION,
            "Upgrade, HTTP2-Settings, x-hop".parse().unwrap(),
        );
        assert!(is_h2c_upgrade(&h));
        remove_h2c_upgrade(&mut h);
        assert!(!h.contains_key(http::header::UPGRADE));
        assert!(!h.contains_key("http2-settings"));
        assert_eq!(h[http::header::CONNECTION], "x-hop");
        assert!(!is_upgrade_request(&h));
    }
}
