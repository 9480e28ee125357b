//! Tracking of message body framing, so the guard knows where the next head
//! starts. Bodies are never buffered: the trackers only look at the bytes as
//! they stream past.

use crate::Rejection;
use crate::head::{is_field_value_byte, is_tchar};

/// Longest chunk-size line (size + extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Most hex digits in a chunk size, leading zeros included (`httparse` refuses more too): a
/// parser that reads only the first few digits would see `0000…05` as the last chunk.
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// Tracks one message body.
#[derive(Debug)]
pub(crate) enum BodyTracker {
    /// `Content-Length` body with this many bytes still to come.
    Length(u64),
    /// Chunked body.
    Chunked(ChunkedTracker),
}

impl BodyTracker {
    /// Feeds body bytes. Returns how many bytes of `input` belong to the body
    /// and whether the body is complete (in which case the remaining input
    /// belongs to whatever follows).
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), Rejection> {
        match self {
            BodyTracker::Length(remaining) => {
                let n = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                // n <= remaining, so this cannot underflow.
                *remaining -= n as u64;
                Ok((n, *remaining == 0))
            }
            BodyTracker::Chunked(c) => c.feed(input),
        }
    }

    /// The number of upcoming bytes that are known to be opaque body data
    /// (they can be passed on without inspection).
    pub(crate) fn raw_run(&self) -> u64 {
        match self {
            BodyTracker::Length(remaining) => *remaining,
            BodyTracker::Chunked(c) => c.raw_run(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting the first hex digit of a chunk size.
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// Whitespace after the size; only `;` may follow.
    SizeBws,
    /// Inside chunk extensions, up to CR.
    Ext,
    /// Saw CR of the chunk-size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// Saw CR ending a trailer line.
    TrailerLf,
    /// Saw CR of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// State machine over a chunked body: chunk-size lines (hex, optional
/// `;ext`, strict CRLF), chunk data, CRLF, last chunk, trailer section.
#[derive(Debug)]
pub(crate) struct ChunkedTracker {
    state: ChunkState,
    /// Size of the chunk being parsed, then bytes of data remaining.
    size: u64,
    /// Length of the current chunk-size line.
    line_len: usize,
    /// Hex digits of the current chunk size.
    digits: u8,
    trailers: usize,
    trailer_bytes: usize,
    max_trailers: usize,
    max_trailer_bytes: usize,
}

impl ChunkedTracker {
    /// A tracker whose trailer section is limited to `max_trailers` lines
    /// and `max_trailer_bytes` bytes.
    pub(crate) fn new(max_trailers: usize, max_trailer_bytes: usize) -> Self {
        ChunkedTracker {
            state: ChunkState::SizeStart,
            size: 0,
            line_len: 0,
            digits: 0,
            trailers: 0,
            trailer_bytes: 0,
            max_trailers,
            max_trailer_bytes,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    pub(crate) fn raw_run(&self) -> u64 {
        if self.state == ChunkState::Data {
            self.size
        } else {
            0
        }
    }

    /// Feeds bytes; see [`BodyTracker::feed`].
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), Rejection> {
        use ChunkState as S;
        let mut i = 0;
        while i < input.len() {
            if self.state == S::Done {
                return Ok((i, true));
            }
            if self.state == S::Data {
                let avail = input.len() - i;
                let n = usize::try_from(self.size).map_or(avail, |s| s.min(avail));
                // n <= size.
                self.size -= n as u64;
                i += n;
                if self.size == 0 {
                    self.state = S::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            if matches!(
                self.state,
                S::TrailerStart | S::TrailerName | S::TrailerValue | S::TrailerLf | S::EndLf
            ) {
                self.trailer_bytes += 1;
                if self.trailer_bytes > self.max_trailer_bytes {
                    return Err(Rejection::HeadTooLarge);
                }
            }
            if matches!(self.state, S::SizeStart | S::Size | S::SizeBws | S::Ext) {
                self.line_len += 1;
                if self.line_len > MAX_CHUNK_LINE {
                    return Err(Rejection::InvalidChunkedBody);
                }
            }
            self.state = match (self.state, b) {
                (S::SizeStart | S::Size, _) if b.is_ascii_hexdigit() => {
                    self.digits += 1;
                    if self.digits > MAX_CHUNK_SIZE_DIGITS {
                        return Err(Rejection::InvalidChunkedBody);
                    }
                    let digit = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        _ => b - b'A' + 10,
                    };
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(digit)))
                        .ok_or(Rejection::InvalidChunkedBody)?;
                    S::Size
                }
                (S::Size | S::SizeBws, b' ' | b'\t') => S::SizeBws,
                (S::Size | S::SizeBws, b';') => S::Ext,
                (S::Size, b'\r') => S::SizeLf,
                (S::Ext, b'\r') => S::SizeLf,
                (S::Ext, _) if is_field_value_byte(b) => S::Ext,
                (S::SizeLf, b'\n') => {
                    self.line_len = 0;
                    self.digits = 0;
                    if self.size == 0 {
                        S::TrailerStart
                    } else {
                        S::Data
                    }
                }
                (S::DataCr, b'\r') => S::DataLf,
                (S::DataLf, b'\n') => S::SizeStart,
                (S::TrailerStart, b'\r') => S::EndLf,
                (S::TrailerStart, b'\n') => return Err(Rejection::InvalidLineEnding),
                (S::TrailerStart, b' ' | b'\t') => return Err(Rejection::ObsFold),
                (S::TrailerStart, _) if is_tchar(b) => {
                    self.trailers += 1;
                    if self.trailers > self.max_trailers {
                        return Err(Rejection::TooManyHeaders);
                    }
                    S::TrailerName
                }
                (S::TrailerStart | S::TrailerName, _) if b == b'\r' || b == b'\n' => {
                    return Err(Rejection::InvalidHeaderName);
                }
                (S::TrailerName, b':') => S::TrailerValue,
                (S::TrailerName, _) if is_tchar(b) => S::TrailerName,
                (S::TrailerStart | S::TrailerName, _) => return Err(Rejection::InvalidHeaderName),
                (S::TrailerValue, b'\r') => S::TrailerLf,
                (S::TrailerValue, b'\n') => return Err(Rejection::InvalidLineEnding),
                (S::TrailerValue, _) if is_field_value_byte(b) => S::TrailerValue,
                (S::TrailerValue, _) => return Err(Rejection::InvalidHeaderValue),
                (S::TrailerLf, b'\n') => S::TrailerStart,
                (S::EndLf, b'\n') => S::Done,
                (S::TrailerLf | S::EndLf, _) => return Err(Rejection::InvalidLineEnding),
                _ => return Err(Rejection::InvalidChunkedBody),
            };
        }
        Ok((i, self.state == S::Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> ChunkedTracker {
        ChunkedTracker::new(100, 60 * 1024)
    }

    /// Feeds `input` in pieces of `step` bytes; returns the total consumed
    /// when done.
    fn feed_split(input: &[u8], step: usize) -> Result<Option<usize>, Rejection> {
        let mut t = tracker();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let (n, done) = t.feed(&input[pos..end])?;
            pos += n;
            if done {
                return Ok(Some(pos));
            }
            assert_eq!(n, end - (pos - n), "consumed everything while not done");
        }
        Ok(None)
    }

    fn every_split(input: &[u8]) -> Result<Option<usize>, Rejection> {
        let whole = feed_split(input, input.len().max(1));
        for step in 1..=input.len() {
            assert_eq!(feed_split(input, step), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn simple_body_and_next_request() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(every_split(&input), Ok(Some(body.len())));
    }

    #[test]
    fn size_split_across_reads_and_hex_case() {
        let body = b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n00a\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(every_split(body), Ok(Some(body.len())));
        let body = b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        assert_eq!(every_split(body), Ok(Some(body.len())));
    }

    #[test]
    fn extensions() {
        let body = b"5;name=value;x=\"q d\"\r\nhello\r\n5 ; a\r\nworld\r\n0;last\r\n\r\n";
        assert_eq!(every_split(body), Ok(Some(body.len())));
    }

    #[test]
    fn trailers() {
        let body = b"3\r\nabc\r\n0\r\nExpires: never\r\nX-Sum:\t12 \r\n\r\nNEXT";
        assert_eq!(every_split(body), Ok(Some(body.len() - 4)));
    }

    #[test]
    fn bad_hex_and_missing_size() {
        for body in [
            &b"g\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b"-1\r\n",
            b"0x5\r\n",
            b" 5\r\n",
            b"5 \r\n",
            b"5\r\nhelloX",
            b"5\r\nhello\rX",
        ] {
            assert_eq!(
                every_split(body),
                Err(Rejection::InvalidChunkedBody),
                "{body:?}"
            );
        }
    }

    #[test]
    fn strict_crlf() {
        assert_eq!(every_split(b"5\nhello"), Err(Rejection::InvalidChunkedBody));
        assert_eq!(
            every_split(b"5\r\rhello"),
            Err(Rejection::InvalidChunkedBody)
        );
        assert_eq!(
            every_split(b"5\r\nhello\n0"),
            Err(Rejection::InvalidChunkedBody)
        );
        assert_eq!(every_split(b"0\r\n\n"), Err(Rejection::InvalidLineEnding));
        assert_eq!(every_split(b"0\r\n\rX"), Err(Rejection::InvalidLineEnding));
        assert_eq!(
            every_split(b"0\r\nA: b\n"),
            Err(Rejection::InvalidLineEnding)
        );
        assert_eq!(
            every_split(b"0\r\nA: b\r\r"),
            Err(Rejection::InvalidLineEnding)
        );
        assert_eq!(
            every_split(b"5;a\nhello"),
            Err(Rejection::InvalidChunkedBody)
        );
    }

    /// Found by the `http1_chunked` fuzz target (differential against httparse): a chunk size
    /// padded with leading zeros past 16 digits was accepted, where httparse (and parsers
    /// that read a fixed number of digits, seeing `0`) disagree.
    #[test]
    fn chunk_sizes_of_more_than_16_digits_are_refused_even_as_leading_zeros() {
        let padded = b"00000000000000000000000000000000000000000000000000000005 ;NN:2345678\r\n0\r\n0o\r\n0\r\n\r\nG";
        assert_eq!(every_split(padded), Err(Rejection::InvalidChunkedBody));
        let sixteen = b"0000000000000005\r\nhello\r\n0\r\n\r\n";
        assert_eq!(every_split(sixteen), Ok(Some(sixteen.len())));
        assert_eq!(
            every_split(b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
            Err(Rejection::InvalidChunkedBody)
        );
    }

    #[test]
    fn size_overflow() {
        // 16 hex digits fit in u64, 17 significant ones do not.
        let ok = b"0000000000000001\r\nx\r\n0\r\n\r\n";
        assert_eq!(every_split(ok), Ok(Some(ok.len())));
        let mut t = tracker();
        assert_eq!(t.feed(b"FFFFFFFFFFFFFFFF\r\n"), Ok((18, false)));
        assert_eq!(t.raw_run(), u64::MAX);
        assert_eq!(
            every_split(b"10000000000000000\r\n"),
            Err(Rejection::InvalidChunkedBody)
        );
    }

    #[test]
    fn bad_trailers() {
        assert_eq!(
            every_split(b"0\r\n Folded: x\r\n\r\n"),
            Err(Rejection::ObsFold)
        );
        assert_eq!(
            every_split(b"0\r\nBad Name: x\r\n\r\n"),
            Err(Rejection::InvalidHeaderName)
        );
        assert_eq!(
            every_split(b"0\r\n: x\r\n\r\n"),
            Err(Rejection::InvalidHeaderName)
        );
        assert_eq!(
            every_split(b"0\r\nA: x\0\r\n\r\n"),
            Err(Rejection::InvalidHeaderValue)
        );
    }

    #[test]
    fn trailer_limits() {
        let mut t = ChunkedTracker::new(2, 1024);
        assert_eq!(
            t.feed(b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
            Err(Rejection::TooManyHeaders)
        );
        let mut t = ChunkedTracker::new(2, 11);
        assert_eq!(
            t.feed(b"0\r\nA: 12345678\r\n\r\n"),
            Err(Rejection::HeadTooLarge)
        );
        let mut t = ChunkedTracker::new(2, 11);
        assert_eq!(t.feed(b"0\r\nA: 1234\r\n\r\n"), Ok((14, true)));
        assert!(t.is_done());
    }

    #[test]
    fn long_extension_rejected() {
        let mut body = b"5;".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        body.extend_from_slice(b"\r\n");
        assert_eq!(tracker().feed(&body), Err(Rejection::InvalidChunkedBody));
    }

    #[test]
    fn raw_run_reports_data() {
        let mut t = tracker();
        assert_eq!(t.raw_run(), 0);
        assert_eq!(t.feed(b"10\r\n"), Ok((4, false)));
        assert_eq!(t.raw_run(), 16);
        assert_eq!(t.feed(b"0123456789"), Ok((10, false)));
        assert_eq!(t.raw_run(), 6);
    }

    #[test]
    fn content_length_tracker() {
        let mut t = BodyTracker::Length(5);
        assert_eq!(t.feed(b"ab"), Ok((2, false)));
        assert_eq!(t.raw_run(), 3);
        assert_eq!(t.feed(b"cdeGET"), Ok((3, true)));
        let mut t = BodyTracker::Length(u64::MAX);
        assert_eq!(t.feed(b"abc"), Ok((3, false)));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let alphabet = b"\r\n;: \t0123456789abcdefgxyzABCDEF\0\x7f\"";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut t = ChunkedTracker::new(3, 64);
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let mut s = state;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    alphabet[(s % alphabet.len() as u64) as usize]
                })
                .collect();
            let mut pos = 0;
            while pos < input.len() {
                match t.feed(&input[pos..(pos + 3).min(input.len())]) {
                    Ok((n, done)) => {
                        pos += n;
                        if done {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

/// The chunked-body parser the guard runs on request bodies, on its own: it finds where a
/// chunked body ends (trailers included) without buffering it. Public so the parser can be
/// fuzzed and differentially tested against other parsers (`fuzz/`).
#[derive(Debug)]
pub struct ChunkedBody(ChunkedTracker);

impl ChunkedBody {
    /// A parser whose trailer section is bounded by `limits` (lines and bytes).
    pub fn new(limits: &crate::Limits) -> ChunkedBody {
        ChunkedBody(ChunkedTracker::new(
            limits.max_headers,
            limits.max_header_bytes,
        ))
    }

    /// Feeds the next bytes: how many of them belong to the body, and whether the body ended
    /// there (the rest of `input` follows the body). Never panics.
    ///
    /// # Errors
    ///
    /// The body is malformed ([`Rejection::InvalidChunkedBody`], a bad line ending, a trailer
    /// breaking the header rules or limits).
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), Rejection> {
        self.0.feed(input)
    }
}
