//! The HTTP request path.
//!
//! Read it in the order a request travels:
//! - [`server`] serves one downstream connection (HTTP/1.1 behind the framing guard, or
//!   HTTP/2) and hands each request to [`handle`];
//! - [`handle`] builds the request's [`ctx::RequestCtx`] and walks the listener's [`chain`]
//!   (before routing), the route table, then the route's chain;
//! - every concern is a [`phase::Phase`] in [`phases`] (rate limits, peer authorization, header
//!   mutations, Wasm plugins, fault injection, direct responses, redirects) or the terminal
//!   [`forward`] phase (prepare → mirror → retry loop of attempts → upgrade);
//! - [`accounting`] settles the request when its response ends: counters, plugins' `on_log`,
//!   the access log.
//!
//! A listener's chains are compiled once per generation ([`listener::HttpListener::build`]).
//! This crate knows nothing about sockets or generations: the transport layer accepts
//! connections and the assembly publishes listeners.
#![forbid(unsafe_code)]
#![expect(
    clippy::result_large_err,
    reason = "local replies travel on the rare error path; boxing them would cost the common path nothing but noise"
)]

pub mod access;
pub mod accounting;
pub mod chain;
pub mod conn;
pub mod ctx;
pub mod forward;
pub mod h2_semantics;
pub mod handle;
pub mod istio;
pub mod listener;
pub mod normalize;
pub mod overload;
pub mod phase;
pub mod phases;
pub mod reply;
pub mod security;
pub mod server;
pub mod settings;
pub mod timeouts;
pub mod trace;

pub use conn::Shared;
pub use listener::{BuildContext, BuildError, HttpListener, ListenerSource, RouteState};
pub use phase::{Flow, Phase};
pub use reply::LocalReply;
pub use server::{Accepted, serve_connection};
pub use settings::ListenerSettings;
