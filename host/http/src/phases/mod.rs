//! The phases of the request path, one module each. Their order in a chain is data
//! ([`crate::listener::HttpListener::build`]): before routing `rate_limit` (listener) and
//! `peer_authz`; after it `rate_limit` (route), `header_mutation` (request), `wasm`,
//! `header_mutation` (response), `fault`, then one terminal phase: `direct`, `redirect`, or
//! [`crate::forward`].

pub mod direct;
pub mod fault;
pub mod header_mutation;
pub mod peer_authz;
pub mod rate_limit;
pub mod redirect;
pub mod wasm;
