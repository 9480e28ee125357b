//! Chains of phases as data: what runs for a listener before routing and for each route after
//! it, built once per generation ([`crate::listener::HttpListener::build`]) and listed by admin.
//!
//! [`Step`] is the closed set of phases; dispatch is a `match` (no allocation, no dynamic
//! call per request). A new concern is a new module in `phases/` and a new variant here.

use http::response;
use weft_body::ProxyBody;

use crate::ctx::RequestCtx;
use crate::forward::ForwardPhase;
use crate::phase::{Flow, Phase};
use crate::phases::direct::DirectResponse;
use crate::phases::fault::FaultPhase;
use crate::phases::header_mutation::{RequestHeaders, ResponseHeaders};
use crate::phases::peer_authz::PeerAuthz;
use crate::phases::rate_limit::RateLimitPhase;
use crate::phases::redirect::Redirect;
use crate::phases::wasm::WasmPhase;
use crate::reply::LocalReply;

/// One phase of a chain.
#[derive(Debug)]
pub enum Step {
    /// Listener-wide or route token bucket.
    RateLimit(RateLimitPhase),
    /// Authorization on the verified peer identity.
    PeerAuthz(PeerAuthz),
    /// The route's request header mutations.
    RequestHeaders(RequestHeaders),
    /// The route's proxy-wasm plugins.
    Wasm(WasmPhase),
    /// The route's response header mutations.
    ResponseHeaders(ResponseHeaders),
    /// Fault injection.
    Fault(FaultPhase),
    /// Terminal: a direct response.
    Direct(DirectResponse),
    /// Terminal: a redirect.
    Redirect(Redirect),
    /// Terminal: forward to a cluster.
    Forward(ForwardPhase),
}

impl Phase for Step {
    fn name(&self) -> String {
        match self {
            Step::RateLimit(p) => p.name(),
            Step::PeerAuthz(p) => p.name(),
            Step::RequestHeaders(p) => p.name(),
            Step::Wasm(p) => p.name(),
            Step::ResponseHeaders(p) => p.name(),
            Step::Fault(p) => p.name(),
            Step::Direct(p) => p.name(),
            Step::Redirect(p) => p.name(),
            Step::Forward(p) => p.name(),
        }
    }

    async fn request<'a>(&'a self, ctx: &mut RequestCtx<'a>) -> Flow {
        match self {
            Step::RateLimit(p) => p.request(ctx).await,
            Step::PeerAuthz(p) => p.request(ctx).await,
            Step::RequestHeaders(p) => p.request(ctx).await,
            Step::Wasm(p) => p.request(ctx).await,
            Step::ResponseHeaders(p) => p.request(ctx).await,
            Step::Fault(p) => p.request(ctx).await,
            Step::Direct(p) => p.request(ctx).await,
            Step::Redirect(p) => p.request(ctx).await,
            Step::Forward(p) => p.request(ctx).await,
        }
    }

    async fn response<'a>(
        &'a self,
        ctx: &mut RequestCtx<'a>,
        head: &mut response::Parts,
        body: ProxyBody,
    ) -> Result<ProxyBody, LocalReply> {
        match self {
            Step::Wasm(p) => p.response(ctx, head, body).await,
            Step::ResponseHeaders(p) => p.response(ctx, head, body).await,
            // The other phases have no response hook.
            _ => Ok(body),
        }
    }
}

/// An ordered chain of phases.
#[derive(Debug, Default)]
pub struct Chain {
    steps: Vec<Step>,
}

impl Chain {
    /// A chain of `steps`, in request order.
    pub fn new(steps: Vec<Step>) -> Chain {
        Chain { steps }
    }

    /// The phases, in request order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The phase names, in request order (for admin).
    pub fn names(&self) -> Vec<String> {
        self.steps.iter().map(Phase::name).collect()
    }

    /// Runs the request hooks in order. Returns the flow that ended the chain and how many
    /// phases ran (their response hooks are the ones to run).
    pub async fn request<'a>(&'a self, ctx: &mut RequestCtx<'a>) -> (Flow, usize) {
        for (i, step) in self.steps.iter().enumerate() {
            match step.request(ctx).await {
                Flow::Continue => {}
                done => return (done, i + 1),
            }
        }
        (Flow::Continue, self.steps.len())
    }

    /// Runs the response hooks of the first `ran` phases, in reverse order.
    pub async fn response<'a>(
        &'a self,
        ctx: &mut RequestCtx<'a>,
        ran: usize,
        head: &mut response::Parts,
        mut body: ProxyBody,
    ) -> Result<ProxyBody, LocalReply> {
        for step in self.steps[..ran.min(self.steps.len())].iter().rev() {
            body = step.response(ctx, head, body).await?;
        }
        Ok(body)
    }
}
