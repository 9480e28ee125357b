//! Tracking of the responses hyper writes, so the guard knows when every
//! request it handed over has been fully answered (and whether the
//! connection switched protocols).
//!
//! hyper's output is trusted to be well formed; if it is ever not understood
//! the tracker marks itself desynchronised and the guard falls back to the
//! conservative behaviour (never write its own response).

use std::collections::VecDeque;

use crate::body::{BodyTracker, ChunkedTracker};

/// Longest response head line kept for inspection.
const MAX_LINE: usize = 8 * 1024;

/// What the guard remembers about a request it handed to hyper, needed to
/// frame the response to it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestMeta {
    pub(crate) head_method: bool,
    pub(crate) connect: bool,
}

#[derive(Debug)]
enum State {
    Head,
    Body(BodyTracker),
    /// Close-delimited body: the response ends with the connection.
    UntilClose,
    /// A 101 (or 2xx to CONNECT) was written: everything after is opaque.
    Switched,
    /// hyper's output was not understood.
    Desync,
}

#[derive(Debug, Default)]
struct HeadFields {
    status: Option<u16>,
    http10: bool,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

/// Streaming observer of the response byte stream.
#[derive(Debug)]
pub(crate) struct ResponseTracker {
    state: State,
    line: Vec<u8>,
    /// The current line is too long and uninteresting: skip up to LF.
    skipping: bool,
    fields: HeadFields,
    pending: VecDeque<RequestMeta>,
    completed: u64,
    last_closes: bool,
    /// Judge the bytes (an upstream's responses) instead of only following them.
    strict: bool,
    /// Strict: the previous head byte was a CR (a LF must follow).
    cr_pending: bool,
    /// Strict: what was wrong.
    violation: Option<Violation>,
}

/// Why an upstream's response was refused (strict tracking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A CR or LF that is not part of a CRLF inside a response head (response splitting).
    BareCrLf,
    /// A chunked body that is not valid (a chunk size overflowing 64 bits, a bad chunk line).
    InvalidChunk,
}

impl Default for ResponseTracker {
    fn default() -> Self {
        ResponseTracker {
            state: State::Head,
            line: Vec::new(),
            skipping: false,
            fields: HeadFields::default(),
            pending: VecDeque::new(),
            completed: 0,
            last_closes: false,
            strict: false,
            cr_pending: false,
            violation: None,
        }
    }
}

/// `line` without its trailing CR, if any.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

impl ResponseTracker {
    /// A tracker that also judges what it reads: bare CR/LF in heads and broken chunked
    /// bodies are violations (for an upstream's responses).
    pub(crate) fn strict() -> ResponseTracker {
        ResponseTracker {
            strict: true,
            ..ResponseTracker::default()
        }
    }

    /// The first violation seen (strict trackers only).
    pub(crate) fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Checks head bytes for CR and LF outside CRLF; `chunk` holds no LF (it runs up to the
    /// next LF or the end of the input), `eol`: `chunk` is followed by a LF. A CR may only be
    /// the last byte before a LF (possibly in a later input).
    fn check_line_ending(&mut self, chunk: &[u8], eol: bool) {
        if let Some((last, rest)) = chunk.split_last() {
            if self.cr_pending || memchr::memchr(b'\r', rest).is_some() {
                self.violation = Some(Violation::BareCrLf);
                return;
            }
            self.cr_pending = *last == b'\r';
        }
        if eol {
            if !self.cr_pending {
                self.violation = Some(Violation::BareCrLf);
            }
            self.cr_pending = false;
        }
    }

    /// Registers a request handed to hyper, in order.
    pub(crate) fn push_request(&mut self, meta: RequestMeta) {
        self.pending.push_back(meta);
    }

    /// Number of final responses completely written.
    pub(crate) fn completed(&self) -> u64 {
        self.completed
    }

    /// The connection switched protocols.
    pub(crate) fn switched(&self) -> bool {
        matches!(self.state, State::Switched)
    }

    /// hyper's output could not be followed.
    pub(crate) fn desynced(&self) -> bool {
        matches!(self.state, State::Desync)
    }

    /// Not inside a response: a new response (or our own) may start here.
    pub(crate) fn at_boundary(&self) -> bool {
        matches!(self.state, State::Head)
            && self.line.is_empty()
            && !self.skipping
            && self.fields.status.is_none()
    }

    /// The last completed response announced the connection closes.
    pub(crate) fn last_closes(&self) -> bool {
        self.last_closes
    }

    /// Observes bytes written to the client. Returns true when something a
    /// waiting reader cares about happened (a response completed, the
    /// connection switched protocols, or tracking was lost).
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut notable = false;
        while !data.is_empty() {
            match &mut self.state {
                State::Head => {
                    let eol = memchr::memchr(b'\n', data);
                    let chunk = eol.map_or(data, |p| &data[..p]);
                    if self.strict {
                        self.check_line_ending(chunk, eol.is_some());
                        if self.violation.is_some() {
                            self.state = State::Desync;
                            return true;
                        }
                    }
                    let Some(p) = eol else {
                        // A partial line: keep it (up to MAX_LINE) for when its end arrives.
                        if !self.skipping && self.buffer_partial(chunk) {
                            self.state = State::Desync;
                            return true;
                        }
                        break;
                    };
                    data = &data[p + 1..];
                    if std::mem::take(&mut self.skipping) {
                        continue;
                    }
                    if self.line.is_empty() {
                        // The whole line is in this input: read it in place, no copy.
                        if chunk.len() > MAX_LINE {
                            if self.line_is_interesting(&chunk[..MAX_LINE]) {
                                self.state = State::Desync;
                                return true;
                            }
                            continue;
                        }
                        notable |= self.on_line(strip_cr(chunk));
                    } else {
                        if self.buffer_partial(chunk) {
                            self.state = State::Desync;
                            return true;
                        }
                        if std::mem::take(&mut self.skipping) {
                            continue;
                        }
                        let line = std::mem::take(&mut self.line);
                        notable |= self.on_line(strip_cr(&line));
                        self.line = line;
                        self.line.clear();
                    }
                }
                State::Body(body) => match body.feed(data) {
                    Ok((n, done)) => {
                        data = &data[n..];
                        if done {
                            self.complete();
                            notable = true;
                        }
                    }
                    Err(_) => {
                        if self.strict {
                            self.violation = Some(Violation::InvalidChunk);
                        }
                        self.state = State::Desync;
                        return true;
                    }
                },
                State::UntilClose | State::Switched | State::Desync => return notable,
            }
        }
        notable
    }

    /// Appends `chunk` to the partial line kept in `line`. A line longer than MAX_LINE is
    /// skipped up to its LF (`skipping`) unless its first MAX_LINE bytes are interesting, in
    /// which case it returns true (the caller desynchronises).
    fn buffer_partial(&mut self, chunk: &[u8]) -> bool {
        if self.line.len() + chunk.len() > MAX_LINE {
            self.line
                .extend_from_slice(&chunk[..MAX_LINE - self.line.len()]);
            let line = std::mem::take(&mut self.line);
            if self.line_is_interesting(&line) {
                return true;
            }
            self.line = line;
            self.line.clear();
            self.skipping = true;
        } else {
            self.line.extend_from_slice(chunk);
        }
        false
    }

    /// A (too long) head line the tracker must understand: the status line, or a header
    /// that frames the response.
    fn line_is_interesting(&self, line: &[u8]) -> bool {
        if self.fields.status.is_none() {
            return true;
        }
        let name = match memchr::memchr(b':', line) {
            Some(c) => &line[..c],
            None => return false,
        };
        [&b"content-length"[..], b"transfer-encoding", b"connection"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
    }

    fn on_line(&mut self, line: &[u8]) -> bool {
        if self.fields.status.is_none() {
            // Status line: HTTP/1.x NNN [reason]
            let status = match line {
                [
                    b'H',
                    b'T',
                    b'T',
                    b'P',
                    b'/',
                    b'1',
                    b'.',
                    minor,
                    b' ',
                    a,
                    b,
                    c,
                    ..,
                ] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
                    self.fields.http10 = *minor == b'0';
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
                }
                _ => {
                    self.state = State::Desync;
                    return true;
                }
            };
            self.fields.status = Some(status);
            return false;
        }
        if line.is_empty() {
            return self.on_head_end();
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            self.state = State::Desync;
            return true;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            match parsed {
                Some(n) => self.fields.content_length = Some(n),
                None => {
                    self.state = State::Desync;
                    return true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().map(trim);
            self.fields.chunked = last.is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.fields.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.fields.keep_alive = true;
                }
            }
        }
        false
    }

    fn on_head_end(&mut self) -> bool {
        let fields = std::mem::take(&mut self.fields);
        let status = fields.status.unwrap_or(0);
        if status == 101 {
            self.state = State::Switched;
            return true;
        }
        if (100..200).contains(&status) {
            // Interim response (100 Continue): the final one follows.
            return false;
        }
        let Some(meta) = self.pending.pop_front() else {
            self.state = State::Desync;
            return true;
        };
        self.last_closes = fields.close || (fields.http10 && !fields.keep_alive);
        if meta.connect && (200..300).contains(&status) {
            self.completed += 1;
            self.state = State::Switched;
            return true;
        }
        if meta.head_method || status == 204 || status == 304 {
            self.complete();
            return true;
        }
        if fields.chunked {
            self.state = State::Body(BodyTracker::Chunked(ChunkedTracker::new(
                usize::MAX,
                usize::MAX,
            )));
            return false;
        }
        match fields.content_length {
            Some(0) => {
                self.complete();
                true
            }
            Some(n) => {
                self.state = State::Body(BodyTracker::Length(n));
                false
            }
            None => {
                self.state = State::UntilClose;
                false
            }
        }
    }

    fn complete(&mut self) {
        self.completed += 1;
        self.state = State::Head;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: RequestMeta = RequestMeta {
        head_method: false,
        connect: false,
    };

    fn feed_bytewise(t: &mut ResponseTracker, data: &[u8]) {
        for b in data {
            t.feed(std::slice::from_ref(b));
        }
    }

    #[test]
    fn content_length_responses() {
        let mut t = ResponseTracker::default();
        t.push_request(GET);
        t.push_request(GET);
        assert!(t.at_boundary());
        assert!(!t.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel"));
        assert_eq!(t.completed(), 0);
        assert!(!t.at_boundary());
        assert!(t.feed(b"lo"));
        assert_eq!(t.completed(), 1);
        assert!(t.at_boundary());
        feed_bytewise(
            &mut t,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(t.completed(), 2);
        assert!(!t.last_closes());
    }

    #[test]
    fn chunked_and_informational() {
        let mut t = ResponseTracker::default();
        t.push_request(GET);
        feed_bytewise(&mut t, b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(t.completed(), 0);
        assert!(t.at_boundary());
        feed_bytewise(
            &mut t,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        assert_eq!(t.completed(), 1);
        assert!(t.at_boundary());
    }

    #[test]
    fn head_and_no_content() {
        let mut t = ResponseTracker::default();
        t.push_request(RequestMeta {
            head_method: true,
            connect: false,
        });
        t.push_request(GET);
        assert!(t.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"));
        assert!(t.feed(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert_eq!(t.completed(), 2);
    }

    #[test]
    fn switching_and_connect() {
        let mut t = ResponseTracker::default();
        t.push_request(GET);
        assert!(t.feed(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\nRAW"));
        assert!(t.switched());
        let mut t = ResponseTracker::default();
        t.push_request(RequestMeta {
            head_method: false,
            connect: true,
        });
        assert!(t.feed(b"HTTP/1.1 200 OK\r\n\r\nRAW"));
        assert!(t.switched());
    }

    #[test]
    fn close_detection() {
        let mut t = ResponseTracker::default();
        t.push_request(GET);
        t.feed(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        assert!(t.last_closes());
        let mut t = ResponseTracker::default();
        t.push_request(GET);
        t.feed(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(t.last_closes());
        let mut t = ResponseTracker::default();
        t.push_request(GET);
        t.feed(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n");
        assert!(!t.last_closes());
    }

    #[test]
    fn close_delimited_never_completes() {
        let mut t = ResponseTracker::default();
        t.push_request(GET);
        t.feed(b"HTTP/1.0 200 OK\r\n\r\nbody bytes");
        assert_eq!(t.completed(), 0);
        assert!(!t.at_boundary());
    }

    #[test]
    fn long_lines() {
        let mut t = ResponseTracker::default();
        t.push_request(GET);
        let mut resp = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        resp.extend(std::iter::repeat_n(b'a', 3 * MAX_LINE));
        resp.extend_from_slice(b"\r\ncontent-length: 1\r\n\r\nZ");
        t.feed(&resp);
        assert_eq!(t.completed(), 1);

        let mut t = ResponseTracker::default();
        t.push_request(GET);
        let mut resp = b"HTTP/1.1 200 OK\r\nconnection: ".to_vec();
        resp.extend(std::iter::repeat_n(b'a', 3 * MAX_LINE));
        assert!(t.feed(&resp));
        assert!(t.desynced());
    }

    #[test]
    fn unexpected_output_desyncs() {
        let mut t = ResponseTracker::default();
        assert!(t.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(t.desynced());
        let mut t = ResponseTracker::default();
        assert!(t.feed(b"garbage\r\n"));
        assert!(t.desynced());
    }

    /// What a tracker concluded after a stream: completed responses, boundary, desync,
    /// switch, violation, close.
    fn outcome(t: &ResponseTracker) -> (u64, bool, bool, bool, Option<Violation>, bool) {
        (
            t.completed(),
            t.at_boundary(),
            t.desynced(),
            t.switched(),
            t.violation(),
            t.last_closes(),
        )
    }

    /// The tracker reads lines in place when a whole line is in one input and buffers them
    /// otherwise: both must reach the same conclusion for every split of the same stream.
    #[test]
    fn every_split_reaches_the_same_outcome() {
        let mut long = b"HTTP/1.1 200 OK\r\nx-long: ".to_vec();
        long.extend(std::iter::repeat_n(b'b', MAX_LINE + 3));
        long.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\nok");
        let streams: Vec<Vec<u8>> = vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhelloHTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx".to_vec(),
            b"HTTP/1.1 200 OK\r\nx-bad: a\rb\r\ncontent-length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\nx-bad: lf\r\ncontent-length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nx-bad: cr\r\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n".to_vec(),
            b"HTTP/1.1 101 Switching Protocols\r\n\r\nraw\nbytes".to_vec(),
            long,
        ];
        for stream in &streams {
            for strict in [false, true] {
                let fresh = || {
                    let mut t = if strict {
                        ResponseTracker::strict()
                    } else {
                        ResponseTracker::default()
                    };
                    t.push_request(GET);
                    t.push_request(GET);
                    t
                };
                let mut whole = fresh();
                whole.feed(stream);
                let expected = outcome(&whole);
                let mut bytewise = fresh();
                feed_bytewise(&mut bytewise, stream);
                assert_eq!(outcome(&bytewise), expected, "bytewise, strict {strict}");
                for cut in 0..=stream.len() {
                    let mut t = fresh();
                    t.feed(&stream[..cut]);
                    t.feed(&stream[cut..]);
                    assert_eq!(outcome(&t), expected, "cut at {cut}, strict {strict}");
                }
            }
        }
    }

    #[test]
    fn strict_verdicts() {
        let verdict = |stream: &[u8]| {
            let mut t = ResponseTracker::strict();
            t.push_request(GET);
            t.feed(stream);
            (t.completed(), t.violation())
        };
        assert_eq!(
            verdict(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            (1, None)
        );
        assert_eq!(
            verdict(b"HTTP/1.1 200 OK\r\nx: a\rb\r\n\r\n"),
            (0, Some(Violation::BareCrLf))
        );
        assert_eq!(
            verdict(b"HTTP/1.1 200 OK\nx: a\r\n\r\n"),
            (0, Some(Violation::BareCrLf))
        );
        assert_eq!(
            verdict(b"HTTP/1.1 200 OK\r\nx: a\r\r\n\r\n"),
            (0, Some(Violation::BareCrLf))
        );
        assert_eq!(
            verdict(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
            (0, Some(Violation::InvalidChunk))
        );
    }
}
