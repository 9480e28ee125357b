//! The per-request context every phase reads and writes.

use std::net::SocketAddr;
use std::sync::Arc;

use http::request;
use hyper::upgrade::OnUpgrade;
use weft_body::ProxyBody;
use weft_routing::{RequestView, Route, split_host_port};

use crate::accounting::Completion;
use crate::conn::ConnCtx;
use crate::settings::ListenerSettings;

/// One request on its way through the chains. The head and body are the request as it will
/// go upstream (phases change them in place); `completion` is what gets accounted for at the
/// end, whatever happens.
pub struct RequestCtx<'a> {
    /// The connection.
    pub conn: &'a Arc<ConnCtx>,
    /// The listener's settings, as of the request's start.
    pub listener: &'a ListenerSettings,
    /// The route, once routing matched.
    pub route: Option<&'a Route>,
    /// The request head.
    pub head: request::Parts,
    /// The request body.
    pub body: ProxyBody,
    /// The request's authority (`:authority` or `Host`), as received.
    pub authority: String,
    /// Accounting: status, flag, access-log entry, metric handles.
    pub completion: Box<Completion>,
    /// An HTTP/1.1 `Upgrade` request.
    pub is_upgrade: bool,
    /// The downstream half of an upgrade, until it is spliced.
    pub upgrade: Option<OnUpgrade>,
    /// The upstream answered 101 and the connections were spliced.
    pub upgraded: bool,
    /// The cluster and endpoint that answered (for plugins' `upstream.*` properties).
    pub upstream: Option<(Arc<str>, SocketAddr)>,
    /// The request's progress (for timeouts that start when the request is complete).
    pub watch: Arc<crate::timeouts::StreamWatch>,
}

impl RequestCtx<'_> {
    /// The request's host, without the port.
    pub fn host(&self) -> &str {
        split_host_port(&self.authority).0
    }

    /// The request as the route matchers see it.
    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            host: self.host(),
            path: self.head.uri.path(),
            query: self.head.uri.query(),
            method: &self.head.method,
            headers: &self.head.headers,
        }
    }

    /// Starts the request's span when the listener traces and the exporter runs (before any
    /// phase: they all see Weft's span as the parent).
    pub fn start_span(&mut self) -> Option<Box<crate::trace::Active>> {
        let settings = self.listener.trace.as_ref()?;
        let exporter = self.conn.shared.tracer.as_ref()?;
        let origin = crate::trace::Origin {
            authority: &self.authority,
            scheme: self.scheme(),
            protocol: if self.conn.h2 {
                "HTTP/2"
            } else {
                crate::accounting::version_name(self.head.version)
            },
            peer: self.conn.peer.ip(),
        };
        crate::trace::start(settings, exporter, &mut self.head, origin)
    }

    /// `https` on a TLS connection, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.conn.security.as_ref().is_some_and(|s| s.tls) {
            "https"
        } else {
            "http"
        }
    }
}
