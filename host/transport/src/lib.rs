//! Listeners, from socket to protocol: [`slot`]s hold bound sockets across generations,
//! [`accept`] loops hand each connection to the HTTP layer (after [`tls`] termination and
//! protocol [`sniff`]ing) or to the [`tcp`] proxy; [`capture`] listeners first read a
//! redirected connection's original destination and pick the filter chain that serves it.
#![forbid(unsafe_code)]

pub mod accept;
pub mod capture;
pub mod http_conn;
pub mod slot;
pub mod sniff;
pub mod tcp;
pub mod tls;
pub mod workers;

pub use accept::serve;
pub use capture::{CaptureChain, CaptureEntry};
pub use slot::{Bound, HttpEntry, ListenerGen, ListenerSlot, Shared, TcpTarget, bind};
pub use tls::ListenerTls;
pub use workers::{Acceptors, Workers};
