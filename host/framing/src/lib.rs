//! Request-smuggling guard for Weft's HTTP/1 listener, and an HTTP/2 frame guard ([`h2`]).
//!
//! hyper 1.x's HTTP/1 server silently normalises several ambiguous request
//! framings (it drops `Content-Length` when `Transfer-Encoding` is present,
//! collapses duplicate equal `Content-Length`s, accepts duplicate `Host`,
//! ...), and by the time a service sees a `Request` the evidence is gone.
//! [`GuardedIo`] sits *under* hyper: it wraps the accepted socket, sees the
//! raw bytes of every request head on the connection first, and only hands a
//! head to hyper once it is complete and passed [`check_head`].
//!
//! ```no_run
//! use std::convert::Infallible;
//!
//! use http_body_util::Full;
//! use hyper::body::{Bytes, Incoming};
//! use hyper::{Request, Response, StatusCode};
//! use hyper_util::rt::TokioIo;
//! use weft_framing::{GuardedIo, Limits};
//!
//! async fn serve(stream: tokio::net::TcpStream) {
//!     let (io, guard) = GuardedIo::new(stream, Limits::default());
//!     let svc_guard = guard.clone();
//!     let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
//!         let guard = svc_guard.clone();
//!         async move {
//!             let mut resp = Response::new(Full::<Bytes>::default());
//!             if req.headers().contains_key(hyper::header::UPGRADE) {
//!                 // ... spawn a task on hyper::upgrade::on(req) ...
//!                 guard.mark_upgraded();
//!                 *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
//!             }
//!             Ok::<_, Infallible>(resp)
//!         }
//!     });
//!     let _ = hyper::server::conn::http1::Builder::new()
//!         .serve_connection(TokioIo::new(io), svc)
//!         .with_upgrades()
//!         .await;
//!     if let Some(rejection) = guard.rejection() {
//!         tracing::info!(reason = rejection.reason(), status = rejection.status(), "rejected");
//!     }
//! }
//! ```
//!
//! # How it works
//!
//! * **Heads** are buffered (at most one head, bounded by
//!   [`Limits::max_header_bytes`]) and validated on the raw bytes; bare CR/LF,
//!   obs-fold, over-long heads and too many lines are detected while the head
//!   is still arriving. A head that does not complete within
//!   [`Limits::header_read_timeout`] of its first byte is rejected with 408.
//! * **Bodies** stream through unbuffered. The guard tracks their framing
//!   (`Content-Length` countdown or a chunked state machine, including
//!   trailers) only to know where the next head starts. When hyper's read
//!   buffer is no larger than the known remaining body data, body bytes are
//!   read straight into hyper's buffer.
//! * **Responses** written by hyper are observed (never modified) to know
//!   when every request handed to hyper has been fully answered and flushed,
//!   and whether the connection switched protocols (`101`, or `2xx` to
//!   `CONNECT`).
//! * **Upgrades**: after the body of a request that may upgrade, the guard
//!   withholds further client bytes until hyper has answered it. A `101` (or
//!   [`GuardHandle::mark_upgraded`]) switches the guard to passthrough for
//!   the rest of the connection; any other final response resumes head
//!   parsing.
//! * **Rejection**: the [`Rejection`] is recorded on the [`GuardHandle`]
//!   and the guard stops reading the socket. hyper's next read returns EOF,
//!   but only once every earlier request has been answered and flushed:
//!   hyper treats EOF while a response is still pending as an aborted
//!   connection and would drop that response. (For a broken chunked body the
//!   EOF comes as soon as the earlier responses are out, so hyper fails that
//!   body and the service sees the error.) On EOF at a message boundary
//!   hyper closes the connection: it calls `poll_flush` (its dispatch loop)
//!   and then `poll_shutdown` (which itself flushes first) on the IO. At the
//!   first flush after the EOF — or at `poll_shutdown` if hyper closes for
//!   its own reasons — the guard writes its minimal `connection: close`
//!   response, if and only if the response stream is at a message boundary,
//!   the rejected request is still unanswered and the last response did not
//!   already announce `connection: close`. `poll_shutdown` then shuts the
//!   socket down and briefly drains unread client bytes (lingering close, up
//!   to [`LINGER_TIMEOUT`] / [`LINGER_MAX_BYTES`]) so the client receives
//!   the response rather than a reset.
//!
//! The guard needs a Tokio runtime with the time driver enabled (for the
//! header read timeout and the lingering close).
#![forbid(unsafe_code)]

mod body;
pub mod h2;
mod head;
mod io;
mod rejection;
mod response;
pub mod upstream;

use std::time::Duration;

pub use body::ChunkedBody;
pub use h2::{H2GuardHandle, H2GuardedIo, H2Violation, HeaderBlocks};
pub use head::{BodyFraming, HeadInfo, HttpVersion, check_head};
pub use io::{GuardHandle, GuardStats, GuardedIo, LINGER_MAX_BYTES, LINGER_TIMEOUT};
pub use rejection::Rejection;

/// Limits enforced on every request head (and chunked trailer section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size of a head in bytes: request line + header lines + final
    /// CRLF (a skipped leading empty line counts too). Exceeding it → 431.
    /// Also bounds a chunked body's trailer section. Default 60 KiB.
    pub max_header_bytes: usize,
    /// Maximum number of header lines in a head (and of trailer lines in a
    /// chunked body). Exceeding it → 431. Default 100.
    pub max_headers: usize,
    /// Maximum time from the first byte of a request head to its end
    /// (slowloris defence). Exceeding it → 408. Idle time between requests
    /// is not counted. `Duration::ZERO` disables the timeout. Default 10 s.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 60 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}
