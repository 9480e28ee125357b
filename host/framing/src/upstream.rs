//! The upstream side: a strict reading of the responses an HTTP/1 upstream sends, under
//! hyper's client. hyper's parser takes a bare LF as a line end, so a header value with a
//! bare LF would reach the client as two headers (response splitting); and a broken chunked
//! body arriving with the head would reach the client as an empty reply. The
//! [`ResponseChecker`] sees the raw bytes first, so the proxy can refuse such a response
//! with a 502 before hyper parses it.

use crate::response::{RequestMeta, ResponseTracker};

pub use crate::response::Violation;

/// The upstream's response broke HTTP/1 framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamFramingError(pub Violation);

impl std::fmt::Display for UpstreamFramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Violation::BareCrLf => f.write_str("upstream response head has a bare CR or LF"),
            Violation::InvalidChunk => f.write_str("upstream response has an invalid chunked body"),
        }
    }
}

impl std::error::Error for UpstreamFramingError {}

/// Follows the requests written to one HTTP/1 upstream connection and judges the responses
/// read from it.
#[derive(Debug)]
pub struct ResponseChecker {
    tracker: ResponseTracker,
    /// Responses complete when the last request was written.
    answered: u64,
    /// The next bytes written start a request head.
    request_next: bool,
}

impl Default for ResponseChecker {
    fn default() -> Self {
        ResponseChecker {
            tracker: ResponseTracker::strict(),
            answered: 0,
            request_next: true,
        }
    }
}

impl ResponseChecker {
    /// Bytes written to the upstream (hyper's client sends one request at a time, each after
    /// the previous response ended).
    pub fn on_write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.request_next {
            self.request_next = false;
            self.tracker.push_request(RequestMeta {
                head_method: bytes.starts_with(b"HEAD "),
                connect: bytes.starts_with(b"CONNECT "),
            });
        }
    }

    /// Bytes read from the upstream: an error when they break framing.
    pub fn on_read(&mut self, bytes: &[u8]) -> Result<(), UpstreamFramingError> {
        if let Some(v) = self.tracker.violation() {
            return Err(UpstreamFramingError(v));
        }
        if self.tracker.switched() || self.tracker.desynced() {
            return Ok(());
        }
        self.tracker.feed(bytes);
        if let Some(v) = self.tracker.violation() {
            return Err(UpstreamFramingError(v));
        }
        if self.tracker.completed() > self.answered {
            self.answered = self.tracker.completed();
            self.request_next = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(request: &[u8], response: &[u8]) -> Result<(), UpstreamFramingError> {
        let mut c = ResponseChecker::default();
        c.on_write(request);
        c.on_read(response)
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

    #[test]
    fn valid_responses_pass_in_any_split() {
        let resp =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx: y\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for step in 1..resp.len() {
            let mut c = ResponseChecker::default();
            c.on_write(GET);
            for piece in resp.chunks(step) {
                assert_eq!(c.on_read(piece), Ok(()), "step {step}");
            }
        }
    }

    #[test]
    fn bare_lf_or_cr_in_a_head_is_refused() {
        for resp in [
            &b"HTTP/1.1 200 OK\r\nx: a\nset-cookie: evil=1\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nx: a\rb\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\ncontent-length: 0\r\n\r\n",
        ] {
            assert_eq!(
                check(GET, resp),
                Err(UpstreamFramingError(Violation::BareCrLf)),
                "{}",
                String::from_utf8_lossy(resp)
            );
        }
    }

    #[test]
    fn a_chunk_size_overflowing_64_bits_is_refused() {
        let resp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1ffffffffffffffff\r\nx";
        assert_eq!(
            check(GET, resp),
            Err(UpstreamFramingError(Violation::InvalidChunk))
        );
    }

    #[test]
    fn bodies_are_not_judged_as_heads_and_keep_alive_is_followed() {
        let mut c = ResponseChecker::default();
        c.on_write(GET);
        assert_eq!(
            c.on_read(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\na\nb\r"),
            Ok(())
        );
        c.on_write(GET);
        assert_eq!(
            c.on_read(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx: a\nb: c\r\n\r\n"),
            Err(UpstreamFramingError(Violation::BareCrLf)),
            "the second response is judged too"
        );
    }

    #[test]
    fn head_responses_have_no_body() {
        let mut c = ResponseChecker::default();
        c.on_write(b"HEAD / HTTP/1.1\r\n\r\n");
        assert_eq!(
            c.on_read(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
            Ok(())
        );
        c.on_write(GET);
        assert_eq!(c.on_read(b"HTTP/1.1 204 No Content\r\n\r\n"), Ok(()));
    }
}
