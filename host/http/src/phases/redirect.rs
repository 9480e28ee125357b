//! Phase `weft.redirect` (terminal): the route answers with a redirect whose `Location` keeps
//! the request's scheme (`https` on a TLS connection), authority, path and query unless the
//! route rewrites them. The response passes back through the route's response hooks.

use http::{HeaderValue, Response, header};
use weft_body::ProxyBody;
use weft_routing::Action;

use crate::ctx::RequestCtx;
use crate::phase::{Flow, Phase};

/// Answers with the route's redirect.
#[derive(Debug)]
pub struct Redirect;

impl Phase for Redirect {
    fn name(&self) -> String {
        "weft.redirect".to_owned()
    }

    async fn request<'a>(&'a self, ctx: &mut RequestCtx<'a>) -> Flow {
        let Some(Action::Redirect(r)) = ctx.route.map(|r| &r.action) else {
            return Flow::Continue;
        };
        let location = r.location(
            ctx.scheme(),
            &ctx.authority,
            ctx.head.uri.path(),
            ctx.head.uri.query(),
        );
        let mut resp = Response::new(());
        *resp.status_mut() = r.status;
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        let (parts, ()) = resp.into_parts();
        // Envoy's details for a route's redirect too.
        ctx.completion.code_details = "direct_response".into();
        Flow::Respond(parts, ProxyBody::empty())
    }
}
