//! The HTTP filter chain between routing and the upstream call.
//!
//! A route's chain runs `on_request` in order before the request goes upstream and
//! `on_response` in reverse order before the response goes downstream. A filter may stop the
//! chain with a local reply. Native filters implement [`HttpFilter`]; the proxy-wasm host plugs
//! its plugins in through the same trait.

use std::fmt;
use std::sync::Arc;

use http::{StatusCode, request, response};
use weft_routing::HeaderMutations;

/// A response produced by a filter instead of the upstream's.
#[derive(Debug, Clone)]
pub struct LocalReply {
    /// Status code.
    pub status: StatusCode,
    /// Extra headers.
    pub headers: http::HeaderMap,
    /// Body text.
    pub body: bytes::Bytes,
    /// Why, for the access log.
    pub details: String,
}

/// What a filter decided.
#[derive(Debug)]
pub enum FilterAction {
    /// Go on with the next filter.
    Continue,
    /// Stop and answer with this.
    Respond(LocalReply),
}

/// A filter on the HTTP request path.
pub trait HttpFilter: Send + Sync + fmt::Debug {
    /// Its name, for logs and admin.
    fn name(&self) -> &str;
    /// Sees (and may change) the request head before it goes upstream.
    fn on_request(&self, head: &mut request::Parts) -> FilterAction;
    /// Sees (and may change) the response head before it goes downstream.
    fn on_response(&self, head: &mut response::Parts) -> FilterAction;
}

/// A route's ordered filters.
#[derive(Debug, Clone, Default)]
pub struct FilterChain {
    filters: Vec<Arc<dyn HttpFilter>>,
}

impl FilterChain {
    /// A chain of `filters`, in request order.
    pub fn new(filters: Vec<Arc<dyn HttpFilter>>) -> FilterChain {
        FilterChain { filters }
    }

    /// Filter names in request order.
    pub fn names(&self) -> Vec<String> {
        self.filters.iter().map(|f| f.name().to_owned()).collect()
    }

    /// Runs `on_request` through the chain; stops at the first local reply.
    pub fn on_request(&self, head: &mut request::Parts) -> FilterAction {
        for f in &self.filters {
            if let FilterAction::Respond(r) = f.on_request(head) {
                return FilterAction::Respond(r);
            }
        }
        FilterAction::Continue
    }

    /// Runs `on_response` through the chain in reverse.
    pub fn on_response(&self, head: &mut response::Parts) -> FilterAction {
        for f in self.filters.iter().rev() {
            if let FilterAction::Respond(r) = f.on_response(head) {
                return FilterAction::Respond(r);
            }
        }
        FilterAction::Continue
    }
}

/// The route's `request_headers` / `response_headers` changes, as a native filter.
#[derive(Debug)]
pub struct HeaderMutationFilter {
    request: HeaderMutations,
    response: HeaderMutations,
}

impl HeaderMutationFilter {
    /// Applies `request` to requests and `response` to responses.
    pub fn new(request: HeaderMutations, response: HeaderMutations) -> HeaderMutationFilter {
        HeaderMutationFilter { request, response }
    }
}

impl HttpFilter for HeaderMutationFilter {
    fn name(&self) -> &str {
        "weft.header_mutation"
    }

    fn on_request(&self, head: &mut request::Parts) -> FilterAction {
        self.request.apply(&mut head.headers);
        FilterAction::Continue
    }

    fn on_response(&self, head: &mut response::Parts) -> FilterAction {
        self.response.apply(&mut head.headers);
        FilterAction::Continue
    }
}
