//! Phase `weft.direct_response` (terminal): the route answers itself with a fixed status and
//! body. The response passes back through the route's response hooks (header mutations,
//! plugins), as Envoy's direct responses pass through its encoder filters.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use weft_body::ProxyBody;
use weft_routing::Action;

use crate::ctx::RequestCtx;
use crate::phase::{Flow, Phase};

/// Answers with the route's direct response.
#[derive(Debug)]
pub struct DirectResponse;

impl Phase for DirectResponse {
    fn name(&self) -> String {
        "weft.direct_response".to_owned()
    }

    async fn request<'a>(&'a self, ctx: &mut RequestCtx<'a>) -> Flow {
        let Some(Action::Direct { status, body }) = ctx.route.map(|r| &r.action) else {
            return Flow::Continue;
        };
        let mut resp = Response::new(());
        *resp.status_mut() = *status;
        if !body.is_empty() {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        let (parts, ()) = resp.into_parts();
        ctx.completion.code_details = "direct_response".into();
        Flow::Respond(
            parts,
            ProxyBody::full(Bytes::copy_from_slice(body.as_bytes())),
        )
    }
}
