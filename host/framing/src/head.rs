//! Validation of a raw HTTP/1 request head.

use crate::{Limits, Rejection};

/// How the body of a validated request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No `Content-Length` and no `Transfer-Encoding`: the request has no body.
    None,
    /// `Content-Length: N`: exactly `N` body bytes follow the head.
    ContentLength(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The HTTP version of a validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// `HTTP/1.0`.
    Http10,
    /// `HTTP/1.1`.
    Http11,
}

/// What the guard learned from a head that passed [`check_head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadInfo {
    /// Body framing of the request.
    pub framing: BodyFraming,
    /// Request version.
    pub version: HttpVersion,
    /// The request may switch protocols: it carries an `Upgrade` header on
    /// HTTP/1.1, or its method is `CONNECT`. This mirrors what hyper itself
    /// treats as an upgrade request (hyper does not require
    /// `Connection: upgrade`), so the guard stays in sync with hyper.
    pub upgrade: bool,
    /// The method is `HEAD` (its response never has a body).
    pub is_head_method: bool,
    /// The method is `CONNECT`.
    pub is_connect: bool,
    /// The head starts with one (ignored) empty line, RFC 9112 §2.2.
    pub leading_empty_line: bool,
}

/// `tchar` of RFC 9110 §5.6.2.
const fn is_tchar_slow(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'#'
            | b'$'
            | b'%'
            | b'&'
            | b'\''
            | b'*'
            | b'+'
            | b'-'
            | b'.'
            | b'^'
            | b'_'
            | b'`'
            | b'|'
            | b'~'
    ) || b.is_ascii_alphanumeric()
}

/// [`is_tchar_slow`] for every byte value: one load per byte on the hot path.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_tchar_slow(b as u8);
        b += 1;
    }
    table
};

/// `tchar` of RFC 9110 §5.6.2.
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// Every byte of `v` is a `tchar`.
fn all_tchar(v: &[u8]) -> bool {
    // No early exit: the loop stays branch-free (names are short and almost always valid).
    v.iter().fold(true, |ok, &b| ok & is_tchar(b))
}

/// A byte allowed inside a field value: HTAB, visible ASCII, SP, obs-text.
pub(crate) fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if is_ows(*first) {
            v = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = v {
        if is_ows(*last) {
            v = rest;
        } else {
            break;
        }
    }
    v
}

/// Characters of `uri-host [ ":" port ]` (reg-name, IP-literal, IPv4, port).
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b'%'
                | b':'
                | b'['
                | b']'
        )
}

fn parse_content_length(v: &[u8]) -> Result<u64, Rejection> {
    if v.contains(&b',') {
        return Err(Rejection::DuplicateContentLength);
    }
    if v.is_empty() {
        return Err(Rejection::InvalidContentLength);
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(Rejection::InvalidContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(Rejection::InvalidContentLength)?;
    }
    Ok(n)
}

/// Splits off the next CRLF-terminated line. Line endings were already
/// checked, so every LF is preceded by CR.
fn next_line(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let lf = memchr::memchr(b'\n', input)?;
    let line = input.get(..lf.checked_sub(1)?)?;
    let rest = input.get(lf + 1..)?;
    Some((line, rest))
}

fn check_request_line(line: &[u8]) -> Result<(HttpVersion, &[u8]), Rejection> {
    let mut spaces = memchr::memchr_iter(b' ', line);
    let (Some(sp1), Some(sp2), None) = (spaces.next(), spaces.next(), spaces.next()) else {
        return Err(Rejection::MalformedRequestLine);
    };
    let (method, target, version) = (&line[..sp1], &line[sp1 + 1..sp2], &line[sp2 + 1..]);
    if method.is_empty() || !all_tchar(method) {
        return Err(Rejection::MalformedRequestLine);
    }
    // Visible ASCII only: a URI has no other bytes, and hyper's parser (httparse) refuses
    // them, so a guard accepting them would be laxer than the parser behind it.
    if target.is_empty()
        || target
            .iter()
            .fold(false, |bad, &b| bad | !(0x21..0x7f).contains(&b))
    {
        return Err(Rejection::MalformedRequestLine);
    }
    let version = match version {
        b"HTTP/1.1" => HttpVersion::Http11,
        b"HTTP/1.0" => HttpVersion::Http10,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(Rejection::UnsupportedVersion);
        }
        _ => return Err(Rejection::MalformedRequestLine),
    };
    Ok((version, method))
}

/// Validates one complete raw request head: an optional single leading empty
/// line, the request line, the header lines and the final empty line, and
/// nothing after it.
///
/// The checks run on the raw bytes (not on a lenient parser's view), so bare
/// CR/LF, obs-fold, duplicate framing headers and the other smuggling vectors
/// documented on [`Rejection`] are all caught. Never panics.
///
/// # Errors
///
/// The first [`Rejection`] found; which one is reported when a head breaks
/// several rules is not part of the contract.
pub fn check_head(head: &[u8], limits: &Limits) -> Result<HeadInfo, Rejection> {
    if head.len() > limits.max_header_bytes {
        return Err(Rejection::HeadTooLarge);
    }
    // Strict CRLF everywhere: every CR is followed by a LF, every LF follows a CR.
    for i in memchr::memchr2_iter(b'\r', b'\n', head) {
        let ok = if head[i] == b'\r' {
            head.get(i + 1) == Some(&b'\n')
        } else {
            i > 0 && head[i - 1] == b'\r'
        };
        if !ok {
            return Err(Rejection::InvalidLineEnding);
        }
    }

    let mut rest = head;
    let leading_empty_line = rest.starts_with(b"\r\n");
    if leading_empty_line {
        rest = rest.get(2..).unwrap_or_default();
    }
    let Some((request_line, after)) = next_line(rest) else {
        return Err(Rejection::MalformedHead);
    };
    rest = after;
    if request_line.is_empty() {
        // A second leading empty line.
        return Err(Rejection::MalformedRequestLine);
    }
    let (version, method) = check_request_line(request_line)?;

    let mut headers = 0usize;
    let mut content_length: Option<u64> = None;
    let mut te_count = 0usize;
    let mut te_chunked = false;
    let mut host_count = 0usize;
    let mut has_upgrade = false;
    loop {
        let Some((line, after)) = next_line(rest) else {
            return Err(Rejection::MalformedHead);
        };
        rest = after;
        if line.is_empty() {
            break;
        }
        headers += 1;
        if headers > limits.max_headers {
            return Err(Rejection::TooManyHeaders);
        }
        if line.first().copied().is_some_and(is_ows) {
            return Err(Rejection::ObsFold);
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return Err(Rejection::InvalidHeaderName);
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !all_tchar(name) {
            return Err(Rejection::InvalidHeaderName);
        }
        if !value
            .iter()
            .fold(true, |ok, &b| ok & is_field_value_byte(b))
        {
            return Err(Rejection::InvalidHeaderValue);
        }
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(Rejection::DuplicateContentLength);
            }
            content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_count += 1;
            te_chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"host") {
            host_count += 1;
            if !value.iter().all(|&b| is_host_byte(b)) {
                return Err(Rejection::InvalidHost);
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            has_upgrade = true;
        }
    }
    if !rest.is_empty() {
        return Err(Rejection::MalformedHead);
    }

    if te_count > 0 && content_length.is_some() {
        return Err(Rejection::ContentLengthWithTransferEncoding);
    }
    if te_count > 1 || (te_count == 1 && (!te_chunked || version == HttpVersion::Http10)) {
        return Err(Rejection::UnsupportedTransferEncoding);
    }
    if host_count > 1 {
        return Err(Rejection::DuplicateHost);
    }
    if host_count == 0 && version == HttpVersion::Http11 {
        return Err(Rejection::MissingHost);
    }

    let framing = match content_length {
        Some(n) => BodyFraming::ContentLength(n),
        None if te_count == 1 => BodyFraming::Chunked,
        None => BodyFraming::None,
    };
    let is_connect = method == b"CONNECT";
    Ok(HeadInfo {
        framing,
        version,
        upgrade: is_connect || (has_upgrade && version == HttpVersion::Http11),
        is_head_method: method == b"HEAD",
        is_connect,
        leading_empty_line,
    })
}

/// Incremental scanner that finds the end of a head as bytes arrive and
/// enforces the cheap limits (line endings, byte and line counts) early,
/// without waiting for the end of the head.
#[derive(Debug, Default)]
pub(crate) struct HeadScanner {
    /// Bytes of the current head already scanned.
    scanned: usize,
    /// Offset where the current line starts.
    line_start: usize,
    /// Non-empty lines seen (request line + header lines).
    lines: usize,
    /// The single permitted leading empty line was seen.
    leading_skipped: bool,
}

impl HeadScanner {
    pub(crate) fn reset(&mut self) {
        *self = HeadScanner::default();
    }

    /// Scans `buf` (all bytes of the current head buffered so far, starting
    /// at the head's first byte). Returns the head length once the final
    /// empty line has been seen.
    pub(crate) fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, Rejection> {
        let max = limits.max_header_bytes;
        let mut i = self.scanned;
        // Only CR, LF and the byte after a CR matter: jump from one CR or LF to the next.
        while i < buf.len() {
            if i > 0 && buf[i - 1] == b'\r' && buf[i] != b'\n' {
                return Err(Rejection::InvalidLineEnding);
            }
            let Some(j) = memchr::memchr2(b'\r', b'\n', &buf[i..]).map(|o| i + o) else {
                if buf.len() > max {
                    return Err(Rejection::HeadTooLarge);
                }
                i = buf.len();
                break;
            };
            if j > max {
                return Err(Rejection::HeadTooLarge);
            }
            if buf[j] == b'\n' {
                if j == 0 || buf[j - 1] != b'\r' {
                    return Err(Rejection::InvalidLineEnding);
                }
                // Line is buf[line_start .. j - 1].
                let empty = j == self.line_start + 1;
                if empty {
                    if self.lines == 0 && !self.leading_skipped {
                        self.leading_skipped = true;
                    } else {
                        let len = j + 1;
                        if len > max {
                            return Err(Rejection::HeadTooLarge);
                        }
                        self.scanned = len;
                        return Ok(Some(len));
                    }
                } else {
                    self.lines += 1;
                    if self.lines - 1 > limits.max_headers {
                        return Err(Rejection::TooManyHeaders);
                    }
                }
                self.line_start = j + 1;
            }
            i = j + 1;
            if i > max {
                return Err(Rejection::HeadTooLarge);
            }
        }
        self.scanned = i;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn check(head: &str) -> Result<HeadInfo, Rejection> {
        check_head(head.as_bytes(), &limits())
    }

    fn req(headers: &str) -> String {
        format!("POST /x HTTP/1.1\r\n{headers}\r\n")
    }

    #[test]
    fn accepts_simple_get() {
        let info = check("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap();
        assert_eq!(info.framing, BodyFraming::None);
        assert_eq!(info.version, HttpVersion::Http11);
        assert!(!info.upgrade && !info.is_head_method && !info.leading_empty_line);
    }

    #[test]
    fn accepts_http10_without_host() {
        let info = check("GET /a?b=c HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(info.version, HttpVersion::Http10);
    }

    #[test]
    fn accepts_one_leading_empty_line_only() {
        let info = check("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert!(info.leading_empty_line);
        assert_eq!(
            check("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(Rejection::MalformedRequestLine)
        );
    }

    #[test]
    fn content_length_and_chunked() {
        let info = check(&req("Host: a\r\nContent-Length: 42\r\n")).unwrap();
        assert_eq!(info.framing, BodyFraming::ContentLength(42));
        let info = check(&req("Host: a\r\nContent-Length: 007\r\n")).unwrap();
        assert_eq!(info.framing, BodyFraming::ContentLength(7));
        let info = check(&req("Host: a\r\ncontent-length:\t5 \r\n")).unwrap();
        assert_eq!(info.framing, BodyFraming::ContentLength(5));
        let info = check(&req("Host: a\r\nTransfer-Encoding:  ChUnKeD \r\n")).unwrap();
        assert_eq!(info.framing, BodyFraming::Chunked);
        let info = check(&req("Host: a\r\nContent-Length: 18446744073709551615\r\n")).unwrap();
        assert_eq!(info.framing, BodyFraming::ContentLength(u64::MAX));
    }

    #[test]
    fn rejects_cl_with_te() {
        for h in [
            "Host: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Host: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        ] {
            assert_eq!(
                check(&req(h)),
                Err(Rejection::ContentLengthWithTransferEncoding)
            );
        }
    }

    #[test]
    fn rejects_duplicate_and_invalid_content_length() {
        assert_eq!(
            check(&req(
                "Host: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n"
            )),
            Err(Rejection::DuplicateContentLength)
        );
        assert_eq!(
            check(&req("Host: a\r\nContent-Length: 5, 5\r\n")),
            Err(Rejection::DuplicateContentLength)
        );
        for v in [
            "",
            "-1",
            "+5",
            "5a",
            "0x10",
            "1 2",
            "18446744073709551616",
            "½",
        ] {
            assert_eq!(
                check(&req(&format!("Host: a\r\nContent-Length: {v}\r\n"))),
                Err(Rejection::InvalidContentLength),
                "{v:?}"
            );
        }
    }

    #[test]
    fn rejects_unsupported_transfer_encodings() {
        for h in [
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: \r\n",
            "Transfer-Encoding: chunkedx\r\n",
        ] {
            assert_eq!(
                check(&req(&format!("Host: a\r\n{h}"))),
                Err(Rejection::UnsupportedTransferEncoding),
                "{h:?}"
            );
        }
        assert_eq!(
            check("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Rejection::UnsupportedTransferEncoding)
        );
    }

    #[test]
    fn host_rules() {
        assert_eq!(check("GET / HTTP/1.1\r\n\r\n"), Err(Rejection::MissingHost));
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
            Err(Rejection::DuplicateHost)
        );
        assert_eq!(
            check("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(Rejection::DuplicateHost)
        );
        for v in ["a b", "a\tb", "a/b", "a@b", "é.com", "a?b", "a#b"] {
            assert_eq!(
                check(&format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n")),
                Err(Rejection::InvalidHost),
                "{v:?}"
            );
        }
        for v in [
            "example.com",
            "example.com:8080",
            "[::1]:80",
            "10.0.0.1",
            "",
            "a_b-c.d",
        ] {
            check(&format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n")).unwrap();
        }
    }

    #[test]
    fn line_ending_rules() {
        for h in [
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\n",
            "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\rb\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n\r",
            "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(check(h), Err(Rejection::InvalidLineEnding), "{h:?}");
        }
    }

    #[test]
    fn header_name_rules() {
        for h in [
            "Host : a\r\n",
            "Ho st: a\r\n",
            ": a\r\n",
            "NoColon\r\n",
            "X\u{1}: a\r\n",
            "X(: a\r\n",
        ] {
            assert_eq!(
                check(&format!("GET / HTTP/1.1\r\nHost: a\r\n{h}\r\n")),
                Err(Rejection::InvalidHeaderName),
                "{h:?}"
            );
        }
    }

    #[test]
    fn obs_fold_rejected() {
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
            Err(Rejection::ObsFold)
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n"),
            Err(Rejection::ObsFold)
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
            Err(Rejection::ObsFold)
        );
    }

    #[test]
    fn header_value_rules() {
        for v in ["a\u{0}b", "a\u{7f}", "\u{1b}[0m", "a\u{b}b"] {
            assert_eq!(
                check(&format!("GET / HTTP/1.1\r\nHost: a\r\nX: {v}\r\n\r\n")),
                Err(Rejection::InvalidHeaderValue),
                "{v:?}"
            );
        }
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: caf".to_vec();
        raw.extend_from_slice(&[0xc3, 0xa9, b'\t', b'!']);
        raw.extend_from_slice(b"\r\n\r\n");
        check_head(&raw, &limits()).unwrap();
    }

    /// Found by the `http1_head` fuzz target (differential against httparse): a non-ASCII
    /// byte in the request target passed the guard, and only hyper's parser refused it.
    #[test]
    fn a_non_ascii_byte_in_the_target_is_refused() {
        let raw =
            b"GET /w\xf3s HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert_eq!(
            check_head(raw, &limits()),
            Err(Rejection::MalformedRequestLine)
        );
    }

    #[test]
    fn request_line_rules() {
        for h in [
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            " GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / http/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.10\r\nHost: a\r\n\r\n",
            "GET /\u{1} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /\u{7f} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /\tx HTTP/1.1\r\nHost: a\r\n\r\n",
            "/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(check(h), Err(Rejection::MalformedRequestLine), "{h:?}");
        }
        for v in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0"] {
            assert_eq!(
                check(&format!("GET / {v}\r\nHost: a\r\n\r\n")),
                Err(Rejection::UnsupportedVersion),
                "{v}"
            );
        }
        check("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        check("GET http://a/b?c HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    }

    #[test]
    fn truncated_or_trailing_bytes() {
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\n"),
            Err(Rejection::MalformedHead)
        );
        assert_eq!(check("GET / HTTP/1.1"), Err(Rejection::MalformedHead));
        assert_eq!(check(""), Err(Rejection::MalformedHead));
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET"),
            Err(Rejection::MalformedHead)
        );
    }

    #[test]
    fn upgrade_and_methods() {
        let info = check(
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        )
        .unwrap();
        assert!(info.upgrade);
        let info = check("GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert!(!info.upgrade);
        let info = check("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").unwrap();
        assert!(info.upgrade && info.is_connect);
        let info = check("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert!(info.is_head_method);
    }

    #[test]
    fn limits_enforced() {
        let l = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let ok = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        check_head(ok.as_bytes(), &l).unwrap();
        let too_many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            check_head(too_many.as_bytes(), &l),
            Err(Rejection::TooManyHeaders)
        );

        let l = Limits {
            max_header_bytes: ok.len(),
            ..Limits::default()
        };
        check_head(ok.as_bytes(), &l).unwrap();
        let l = Limits {
            max_header_bytes: ok.len() - 1,
            ..Limits::default()
        };
        assert_eq!(check_head(ok.as_bytes(), &l), Err(Rejection::HeadTooLarge));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A tiny deterministic fuzz loop (xorshift) over an alphabet biased
        // towards the interesting bytes.
        let alphabet = b"\r\n :\t\0\x7fGETHOST/1.0-chunkedContent-Length,;0123456789aZ";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let l = Limits {
            max_header_bytes: 64,
            max_headers: 4,
            ..Limits::default()
        };
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 80) as usize;
            let mut input = Vec::with_capacity(len);
            let mut s = state;
            for _ in 0..len {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                input.push(alphabet[(s % alphabet.len() as u64) as usize]);
            }
            let _ = check_head(&input, &l);
            let mut scanner = HeadScanner::default();
            let _ = scanner.scan(&input, &l);
        }
    }

    #[test]
    fn scanner_finds_end_incrementally() {
        let head = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        let l = limits();
        let mut s = HeadScanner::default();
        for end in 1..head.len() - 4 {
            assert_eq!(s.scan(&head[..end], &l), Ok(None), "at {end}");
        }
        assert_eq!(s.scan(head, &l), Ok(Some(head.len() - 4)));
    }

    #[test]
    fn scanner_rejects_early() {
        let l = Limits {
            max_header_bytes: 32,
            max_headers: 2,
            ..Limits::default()
        };
        let mut s = HeadScanner::default();
        assert_eq!(
            s.scan(b"GET / HTTP/1.1\nHost", &l),
            Err(Rejection::InvalidLineEnding)
        );
        s.reset();
        assert_eq!(
            s.scan(b"GET / HTTP/1.1\rHost", &l),
            Err(Rejection::InvalidLineEnding)
        );
        s.reset();
        let roomy = Limits {
            max_header_bytes: 1024,
            ..l
        };
        assert_eq!(
            s.scan(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n", &roomy),
            Err(Rejection::TooManyHeaders)
        );
        s.reset();
        assert_eq!(
            s.scan(&[b'a'; 33], &l),
            Err(Rejection::HeadTooLarge),
            "no end yet but already over the limit"
        );
        s.reset();
        assert_eq!(s.scan(&[b'a'; 32], &l), Ok(None));
    }

    /// The byte-by-byte scanner the memchr one replaced: the reference for its verdicts.
    fn scan_reference(
        st: &mut (usize, usize, usize, bool),
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<usize>, Rejection> {
        let (scanned, line_start, lines, leading_skipped) = st;
        let mut i = *scanned;
        while let Some(&b) = buf.get(i) {
            let prev = i.checked_sub(1).and_then(|p| buf.get(p)).copied();
            if prev == Some(b'\r') && b != b'\n' {
                return Err(Rejection::InvalidLineEnding);
            }
            if b == b'\n' {
                if prev != Some(b'\r') {
                    return Err(Rejection::InvalidLineEnding);
                }
                if i == *line_start + 1 {
                    if *lines == 0 && !*leading_skipped {
                        *leading_skipped = true;
                    } else {
                        if i + 1 > limits.max_header_bytes {
                            return Err(Rejection::HeadTooLarge);
                        }
                        *scanned = i + 1;
                        return Ok(Some(i + 1));
                    }
                } else {
                    *lines += 1;
                    if *lines - 1 > limits.max_headers {
                        return Err(Rejection::TooManyHeaders);
                    }
                }
                *line_start = i + 1;
            }
            i += 1;
            if i > limits.max_header_bytes {
                return Err(Rejection::HeadTooLarge);
            }
        }
        *scanned = i;
        Ok(None)
    }

    /// The scanner jumps between CR and LF bytes: for every input, limit and delivery in two
    /// parts, it must give the byte-by-byte scanner's verdict.
    #[test]
    fn scanner_matches_the_bytewise_reference() {
        let heads: [&[u8]; 10] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
            b"\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\nrest",
            b"GET /a-long-target-with-no-line-end-at-all",
            b"GET / HTTP/1.1\r\nX: \r\r",
        ];
        for head in heads {
            for max_header_bytes in [0, 1, 5, 16, 17, 18, 19, 30, 31, 32, 60 * 1024] {
                for max_headers in [0, 1, 2, 100] {
                    let limits = Limits {
                        max_header_bytes,
                        max_headers,
                        ..Limits::default()
                    };
                    for cut in 0..=head.len() {
                        let mut st = (0, 0, 0, false);
                        let mut expected = scan_reference(&mut st, &head[..cut], &limits);
                        if expected == Ok(None) {
                            expected = scan_reference(&mut st, head, &limits);
                        }
                        let mut scanner = HeadScanner::default();
                        let mut got = scanner.scan(&head[..cut], &limits);
                        if got == Ok(None) {
                            got = scanner.scan(head, &limits);
                        }
                        assert_eq!(
                            got,
                            expected,
                            "{:?} cut {cut} max bytes {max_header_bytes} max headers {max_headers}",
                            String::from_utf8_lossy(head)
                        );
                    }
                }
            }
        }
    }
}
