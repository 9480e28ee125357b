//! The phase contract: every concern on the HTTP request path is a [`Phase`].
//!
//! A listener has a chain of phases that run before routing (listener rate limit, peer
//! authorization); each route has a chain that runs after it (route rate limit, header
//! mutations, Wasm plugins, fault injection) and ends in exactly one *terminal* phase (direct
//! response, redirect, or forward). Chains are data, built once per configuration generation
//! ([`crate::chain`]) and listed by the admin endpoint `/chains`.
//!
//! The request flows through the chains in order:
//!
//! ```text
//!  listener chain        routing        route chain                     terminal
//!  rate limit → authz →  (404 NR)  →  rate limit → headers → wasm → fault → forward | direct | redirect
//!                                                        ↑ response hooks, in reverse ┘
//! ```
//!
//! * [`Phase::request`] runs once per request, in chain order, until a phase does not return
//!   [`Flow::Continue`].
//! * [`Flow::Reply`] ends the request with a locally generated response (a 429, a 403, a plugin's
//!   local reply, an injected abort). No response hook runs on it: the request never reached the
//!   end of its chain, as in Envoy where a decoder filter's local reply skips the filters that
//!   had not run.
//! * [`Flow::Respond`] is what the terminal phase returns: the upstream's response (or a direct
//!   response or redirect). It then passes through [`Phase::response`] of every phase of the
//!   route chain *that ran*, in reverse order, before it goes downstream.

use std::future::Future;

use http::response;
use weft_body::ProxyBody;

use crate::ctx::RequestCtx;
use crate::reply::LocalReply;

/// What a phase's request hook decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next phase.
    Continue,
    /// End the request with a local reply; no response hook runs.
    Reply(LocalReply),
    /// The terminal phase's response: it passes back through the response hooks.
    Respond(response::Parts, ProxyBody),
}

/// One concern of the HTTP request path.
///
/// Phases are built once per generation and shared by every request of it: they hold
/// configuration and metric handles, never per-request state (that lives in [`RequestCtx`]).
pub trait Phase: Send + Sync {
    /// The phase's name as listed in admin (`weft.rate_limit`, `wasm:authz`, …).
    fn name(&self) -> String;

    /// Runs on the request, in chain order. It may change the request head and body in `ctx`,
    /// set access-log fields, and decide what happens next ([`Flow`]). Only a terminal phase
    /// returns [`Flow::Respond`].
    fn request<'a>(&'a self, ctx: &mut RequestCtx<'a>) -> impl Future<Output = Flow> + Send;

    /// Runs on the response of the terminal phase, in reverse chain order, for phases whose
    /// request hook ran. It may change the head and replace the body; an `Err` replaces the
    /// whole response with a local reply (a plugin's `send_local_response` during the response).
    /// The default passes the response through unchanged.
    fn response<'a>(
        &'a self,
        ctx: &mut RequestCtx<'a>,
        head: &mut response::Parts,
        body: ProxyBody,
    ) -> impl Future<Output = Result<ProxyBody, LocalReply>> + Send {
        let _ = (ctx, head);
        std::future::ready(Ok(body))
    }
}
