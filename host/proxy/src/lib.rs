//! Weft's data plane.
//!
//! The request path reads as the module list: [`server`] accepts connections (HTTP/1.1 behind
//! the strict framing guard, HTTP/2 with prior knowledge, or TCP), [`http_proxy`] routes each
//! request through [`weft_routing`], runs the route's [`filter`] chain, picks an endpoint of a
//! [`cluster`] with [`weft_balance`] and forwards it. A configuration is compiled into an
//! immutable [`generation`]; [`runtime`] publishes generations atomically, keeping listener
//! sockets across reloads, and drains on shutdown. [`admin`] serves Envoy-style admin
//! endpoints; [`metrics`] and [`access_log`] make everything visible.
#![forbid(unsafe_code)]
#![expect(
    clippy::result_large_err,
    reason = "local replies travel on the rare error path; boxing them would cost the common path nothing but noise"
)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod breaker;
pub mod cluster;
pub mod echo;
pub mod fault;
pub mod filter;
pub mod generation;
pub mod health;
pub mod http_proxy;
pub mod metrics;
pub mod mirror;
pub mod outlier;
pub mod plugins;
pub mod ratelimit;
pub mod resilience;
pub mod retry;
pub mod runtime;
pub mod server;
pub mod tcp_filter;
pub mod tls;
pub mod wasm_filter;
mod watch;

pub use runtime::{ConfigSource, Proxy, ProxyError, Signals, StartOptions};
