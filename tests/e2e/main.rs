//! Weft end to end: real listeners on 127.0.0.1, real upstreams, real clients.

mod admin;
mod balancing;
mod errors;
mod framing;
mod protocols;
mod reload;
mod routing;
mod shutdown;
mod streaming;
