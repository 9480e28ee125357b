//! W3C Trace Context `traceparent` (<https://www.w3.org/TR/trace-context/>): parsing the
//! incoming header and formatting the one sent upstream.

/// The `traceparent` header name.
pub const HEADER: &str = "traceparent";

/// The sampled bit of `trace-flags`.
pub const SAMPLED: u8 = 0x01;

/// A valid incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The caller's span id (never all zero).
    pub parent_id: [u8; 8],
    /// `trace-flags`.
    pub flags: u8,
}

impl TraceParent {
    /// True when the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// Parses a `traceparent` value. `None` for anything the spec says to ignore: a version other
/// than two lower-case hex digits, version `ff`, a version-00 value of the wrong length, upper
/// case or non-hex digits, an all-zero trace id or parent id. Future versions are accepted
/// when their first four fields parse and any extra data follows a `-`.
pub fn parse(value: &str) -> Option<TraceParent> {
    let v = value.trim_matches([' ', '\t']).as_bytes();
    if v.len() < 55 {
        return None;
    }
    let version = decode_hex::<1>(&v[0..2])?;
    if version[0] == 0xff {
        return None;
    }
    if version[0] == 0 && v.len() != 55 {
        return None;
    }
    if v.len() > 55 && v[55] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = decode_hex::<16>(&v[3..35])?;
    let parent_id = decode_hex::<8>(&v[36..52])?;
    let flags = decode_hex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// `00-<trace id>-<span id>-<flags>`, the value sent upstream (only the sampled flag is kept,
/// as a level-1 participant does).
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    format!(
        "00-{}-{}-{}",
        hex(trace_id),
        hex(span_id),
        if sampled { "01" } else { "00" }
    )
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn decode_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let tp = parse(VALID).expect("valid");
        assert_eq!(hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled());
        let tp = parse(&VALID.replace("-01", "-00")).expect("unsampled");
        assert!(!tp.sampled());
        assert!(
            parse(&format!(" {VALID}\t")).is_some(),
            "surrounding whitespace"
        );
    }

    #[test]
    fn refuses_what_the_spec_says_to_ignore() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn future_versions_parse_their_known_prefix() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert!(parse(v).is_some());
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(parse(v), None);
    }

    #[test]
    fn formats_round_trip() {
        let tp = parse(VALID).expect("valid");
        let out = format(&tp.trace_id, &[1, 2, 3, 4, 5, 6, 7, 8], true);
        assert_eq!(
            out,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_eq!(parse(&out).map(|t| t.trace_id), Some(tp.trace_id));
        assert!(format(&tp.trace_id, &[1; 8], false).ends_with("-00"));
    }
}
