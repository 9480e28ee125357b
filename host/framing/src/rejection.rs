//! The reasons a request can be rejected by the guard.

use std::fmt;

/// Why the guard rejected a request on a connection.
///
/// Every variant maps to exactly one HTTP status ([`Rejection::status`]) and
/// one short kebab-case reason ([`Rejection::reason`]) suitable for access
/// logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The request line is not `METHOD SP request-target SP HTTP/x.y CRLF`
    /// (bad method token, bad target, missing/extra spaces, more than one
    /// leading empty line, ...). 400.
    MalformedRequestLine,
    /// The request line names an `HTTP/x.y` version other than 1.0 or 1.1.
    /// 505.
    UnsupportedVersion,
    /// A bare CR or a bare LF was found where only CRLF is allowed. 400.
    InvalidLineEnding,
    /// The head is truncated (no terminating empty line) or is followed by
    /// extra bytes; only produced by [`check_head`](crate::check_head) on
    /// malformed input. 400.
    MalformedHead,
    /// A header (or trailer) line has an empty or non-token name, a missing
    /// colon, or whitespace before the colon. 400.
    InvalidHeaderName,
    /// A header (or trailer) line starts with SP or HTAB (obsolete line
    /// folding). 400.
    ObsFold,
    /// A header (or trailer) value contains a control character other than
    /// HTAB (NUL, DEL, ...). 400.
    InvalidHeaderValue,
    /// Both `Content-Length` and `Transfer-Encoding` are present. 400.
    ContentLengthWithTransferEncoding,
    /// `Content-Length` appears more than once (even with equal values) or
    /// as a comma-separated list. 400.
    DuplicateContentLength,
    /// `Content-Length` is not `1*DIGIT` or overflows `u64`. 400.
    InvalidContentLength,
    /// `Transfer-Encoding` is anything other than one header whose value is
    /// exactly `chunked` on an HTTP/1.1 request (gzip, `chunked, chunked`,
    /// two headers, any TE on HTTP/1.0, ...). 400 (deliberately not 501: an
    /// ambiguous framing is a client error, and a uniform 400 avoids giving
    /// probes a distinguishing signal).
    UnsupportedTransferEncoding,
    /// More than one `Host` header. 400.
    DuplicateHost,
    /// No `Host` header on an HTTP/1.1 request. 400.
    MissingHost,
    /// The `Host` value contains whitespace or characters that cannot occur
    /// in `uri-host [ ":" port ]`. 400.
    InvalidHost,
    /// The chunked request body is malformed: bad or overflowing chunk size,
    /// bad chunk extension, missing CRLF after chunk data. 400.
    InvalidChunkedBody,
    /// More header (or trailer) lines than [`Limits::max_headers`](crate::Limits::max_headers).
    /// 431.
    TooManyHeaders,
    /// The head (or trailer section) is longer than
    /// [`Limits::max_header_bytes`](crate::Limits::max_header_bytes). 431.
    HeadTooLarge,
    /// The head did not complete within
    /// [`Limits::header_read_timeout`](crate::Limits::header_read_timeout) of
    /// its first byte. 408.
    HeadTimeout,
}

const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nBad Request";
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 15\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nRequest Timeout";
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 31\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nRequest Header Fields Too Large";
const BAD_VERSION: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 26\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nHTTP Version Not Supported";

impl Rejection {
    /// Every variant, in declaration order.
    pub const ALL: [Rejection; 18] = [
        Rejection::MalformedRequestLine,
        Rejection::UnsupportedVersion,
        Rejection::InvalidLineEnding,
        Rejection::MalformedHead,
        Rejection::InvalidHeaderName,
        Rejection::ObsFold,
        Rejection::InvalidHeaderValue,
        Rejection::ContentLengthWithTransferEncoding,
        Rejection::DuplicateContentLength,
        Rejection::InvalidContentLength,
        Rejection::UnsupportedTransferEncoding,
        Rejection::DuplicateHost,
        Rejection::MissingHost,
        Rejection::InvalidHost,
        Rejection::InvalidChunkedBody,
        Rejection::TooManyHeaders,
        Rejection::HeadTooLarge,
        Rejection::HeadTimeout,
    ];

    /// The HTTP status code the guard answers with.
    pub fn status(self) -> u16 {
        match self {
            Rejection::UnsupportedVersion => 505,
            Rejection::TooManyHeaders | Rejection::HeadTooLarge => 431,
            Rejection::HeadTimeout => 408,
            _ => 400,
        }
    }

    /// A short, stable, kebab-case reason for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::MalformedRequestLine => "malformed-request-line",
            Rejection::UnsupportedVersion => "unsupported-http-version",
            Rejection::InvalidLineEnding => "invalid-line-ending",
            Rejection::MalformedHead => "malformed-head",
            Rejection::InvalidHeaderName => "invalid-header-name",
            Rejection::ObsFold => "obs-fold",
            Rejection::InvalidHeaderValue => "invalid-header-value",
            Rejection::ContentLengthWithTransferEncoding => "content-length-with-transfer-encoding",
            Rejection::DuplicateContentLength => "duplicate-content-length",
            Rejection::InvalidContentLength => "invalid-content-length",
            Rejection::UnsupportedTransferEncoding => "unsupported-transfer-encoding",
            Rejection::DuplicateHost => "duplicate-host",
            Rejection::MissingHost => "missing-host",
            Rejection::InvalidHost => "invalid-host",
            Rejection::InvalidChunkedBody => "invalid-chunked-body",
            Rejection::TooManyHeaders => "too-many-headers",
            Rejection::HeadTooLarge => "head-too-large",
            Rejection::HeadTimeout => "header-read-timeout",
        }
    }

    /// The complete minimal HTTP/1.1 response the guard writes for this
    /// rejection (status line, `content-length`, `content-type: text/plain`,
    /// `connection: close`, and the reason phrase as body).
    pub fn response_bytes(self) -> &'static [u8] {
        match self.status() {
            505 => BAD_VERSION,
            431 => TOO_LARGE,
            408 => REQUEST_TIMEOUT,
            _ => BAD_REQUEST,
        }
    }

    pub(crate) fn to_code(self) -> u8 {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] == self {
                // ALL has 18 entries, so this always fits.
                return u8::try_from(i + 1).unwrap_or(u8::MAX);
            }
            i += 1;
        }
        u8::MAX
    }

    pub(crate) fn from_code(code: u8) -> Option<Rejection> {
        let idx = usize::from(code).checked_sub(1)?;
        Self::ALL.get(idx).copied()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        assert_eq!(Rejection::from_code(0), None);
        for r in Rejection::ALL {
            assert_eq!(Rejection::from_code(r.to_code()), Some(r));
        }
    }

    #[test]
    fn responses_are_well_formed() {
        for r in Rejection::ALL {
            let bytes = r.response_bytes();
            let text = std::str::from_utf8(bytes).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {} ", r.status())));
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(cl, body.len());
            // The body is the reason phrase of the status line.
            assert!(head.lines().next().unwrap().ends_with(body));
            assert!(
                r.reason()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-')
            );
        }
    }
}
