//! Phase `weft.peer_authz`: the listener's authorization on the verified peer identity (Istio's
//! AuthorizationPolicy on `source.principal` / namespace / trust domain). It runs before
//! routing; a denied request ends with 403 `RBAC: access denied`, an allowed one continues.

use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use weft_observe::flags;
use weft_tls::authz::{Authorization, Decision};

use crate::ctx::RequestCtx;
use crate::phase::{Flow, Phase};
use crate::reply::LocalReply;
use crate::security::authorize;

/// A listener's peer authorization.
#[derive(Debug)]
pub struct PeerAuthz {
    rules: Authorization,
    denied: Counter,
}

impl PeerAuthz {
    /// Enforces `rules`, counting refusals on `denied`.
    pub fn new(rules: Authorization, denied: Counter) -> PeerAuthz {
        PeerAuthz { rules, denied }
    }
}

impl Phase for PeerAuthz {
    fn name(&self) -> String {
        "weft.peer_authz".to_owned()
    }

    async fn request<'a>(&'a self, ctx: &mut RequestCtx<'a>) -> Flow {
        match authorize(&self.rules, ctx.conn.security.as_deref()) {
            Decision::Allow => Flow::Continue,
            Decision::Deny(why) => {
                self.denied.inc();
                tracing::debug!(listener = %ctx.listener.name, peer = %ctx.conn.peer, %why, "request denied by authorization");
                Flow::Reply(LocalReply::text(
                    StatusCode::FORBIDDEN,
                    "RBAC: access denied",
                    flags::NONE,
                ))
            }
        }
    }
}
