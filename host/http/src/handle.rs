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
    Ok(serve(req, &conn, &listener, start).await)
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
    let is_upgrade = !conn.h2 && is_upgrade_request(req.headers());
    let upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (head, body) = req.into_parts();
    let body = ProxyBody::incoming(body).metered(completion.request_bytes.clone());
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
    };
    // The request's span, before any phase: they all see Weft's span as the parent.
    ctx.completion.span = crate::trace::start(&mut ctx);

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

    // The route's chain, then its response hooks over what the terminal phase answered.
    match state.chain.request(&mut ctx).await {
        (Flow::Reply(r), _) => reply(ctx.completion, r),
        (Flow::Respond(mut head, body), ran) => {
            match state.chain.response(&mut ctx, ran, &mut head, body).await {
                Ok(body) => respond(ctx.completion, head, body),
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
fn respond(mut c: Box<Completion>, head: response::Parts, body: ProxyBody) -> Response<ProxyBody> {
    c.status = head.status.as_u16();
    crate::access::capture_response(&mut c, &head.headers);
    let via_upstream = c.endpoint.is_some();
    if let Some(e) = c.entry.as_mut() {
        e.via_upstream = via_upstream;
    }
    Response::from_parts(head, body.on_complete(c))
}

/// A local reply, accounted for when its body ends.
fn reply(mut c: Box<Completion>, reply: LocalReply) -> Response<ProxyBody> {
    c.status = reply.status.as_u16();
    if let Some(flag) = reply.flag {
        c.flag = flag;
    }
    if !reply.details.is_empty()
        && let Some(e) = c.entry.as_mut()
    {
        e.details = Some(reply.details);
    }
    crate::access::capture_response(&mut c, &reply.headers);
    let mut resp = Response::new(ProxyBody::full(reply.body).on_complete(c));
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = reply.headers;
    resp
}
