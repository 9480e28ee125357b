//! Phases `weft.request_headers` and `weft.response_headers`: a route's `request_headers` /
//! `response_headers` changes. The request half runs before the route's plugins, so plugins see
//! the mutated request; the response half sits after the plugins in the chain, so (response
//! hooks run in reverse) it also runs before them: plugins see the mutated response too. Neither
//! ever stops a request.

use http::response;
use weft_body::ProxyBody;
use weft_routing::HeaderMutations;

use crate::ctx::RequestCtx;
use crate::phase::{Flow, Phase};
use crate::reply::LocalReply;

/// Applies the route's request header mutations.
#[derive(Debug)]
pub struct RequestHeaders(pub HeaderMutations);

impl Phase for RequestHeaders {
    fn name(&self) -> String {
        "weft.request_headers".to_owned()
    }

    async fn request<'a>(&'a self, ctx: &mut RequestCtx<'a>) -> Flow {
        self.0.apply(&mut ctx.head.headers);
        Flow::Continue
    }
}

/// Applies the route's response header mutations.
#[derive(Debug)]
pub struct ResponseHeaders(pub HeaderMutations);

impl Phase for ResponseHeaders {
    fn name(&self) -> String {
        "weft.response_headers".to_owned()
    }

    async fn request<'a>(&'a self, _ctx: &mut RequestCtx<'a>) -> Flow {
        Flow::Continue
    }

    async fn response<'a>(
        &'a self,
        _ctx: &mut RequestCtx<'a>,
        head: &mut response::Parts,
        body: ProxyBody,
    ) -> Result<ProxyBody, LocalReply> {
        self.0.apply(&mut head.headers);
        Ok(body)
    }
}
