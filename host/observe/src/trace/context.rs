//! Trace context on the wire: W3C Trace Context (`traceparent`, `tracestate`) and Zipkin B3
//! (the single `b3` header and the multi-header `x-b3-*` form), read from a request and written
//! onto the request sent upstream.
//!
//! Reading prefers `traceparent`, then `b3`, then `x-b3-*`; a malformed header is ignored as
//! the specifications say (the request then starts a new trace). Writing always sets
//! `traceparent` and keeps `tracestate` as received; when the request carried B3 (whichever
//! format was read), the same B3 form is rewritten too, so a Zipkin-only peer keeps its trace
//! and no stale B3 ids go upstream. A B3 trace id whose high 64 bits are zero is written back
//! in 16 hex digits.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `b3` (single header).
pub static B3: HeaderName = HeaderName::from_static("b3");
/// `x-b3-traceid`.
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags` (`1`: debug, which implies sampled).
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which propagation format a request's context came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// W3C `traceparent`.
    W3c,
    /// B3 single header.
    B3Single,
    /// B3 multi-header.
    B3Multi,
}

/// The caller's span, as read from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// Trace id (never all zero). A 64-bit B3 trace id is left-padded with zeros.
    pub trace_id: [u8; 16],
    /// The caller's span id (never all zero).
    pub span_id: [u8; 8],
    /// The B3 trace id was 64 bits (written back in the same width).
    pub short_trace_id: bool,
}

/// What a request carried: a parent span and/or a sampling decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's span, when the headers named one.
    pub parent: Option<Parent>,
    /// The caller's sampling decision (`None`: B3 left it to us).
    pub sampled: Option<bool>,
    /// The format it was read from.
    pub format: Format,
    /// The B3 form the request carried, if any (also when `traceparent` was the one read).
    pub b3: Option<Format>,
}

/// Reads the trace context of a request: `traceparent`, else `b3`, else `x-b3-*`.
pub fn extract(headers: &HeaderMap) -> Option<Extracted> {
    let b3 = if headers.contains_key(&B3) {
        Some(Format::B3Single)
    } else if headers.contains_key(&X_B3_TRACEID) || headers.contains_key(&X_B3_SAMPLED) {
        Some(Format::B3Multi)
    } else {
        None
    };
    if let Some(v) = str_of(headers, &TRACEPARENT)
        && let Some((parent, sampled)) = parse_traceparent(v)
    {
        return Some(Extracted {
            parent: Some(parent),
            sampled: Some(sampled),
            format: Format::W3c,
            b3,
        });
    }
    if let Some(v) = str_of(headers, &B3)
        && let Some((parent, sampled)) = parse_b3_single(v)
    {
        return Some(Extracted {
            parent,
            sampled,
            format: Format::B3Single,
            b3,
        });
    }
    parse_b3_multi(headers)
}

/// Writes the context of span `span_id` in `trace` (`sampled` or not) onto the request going
/// upstream: `traceparent` always, B3 in the form the request came with (`format`). The
/// previous B3 headers are replaced; `tracestate` is left as received.
pub fn inject(
    headers: &mut HeaderMap,
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
    sampled: bool,
    incoming: Option<&Extracted>,
) {
    if let Ok(v) = HeaderValue::from_bytes(&traceparent(trace_id, span_id, sampled)) {
        headers.insert(TRACEPARENT.clone(), v);
    }
    let Some(incoming) = incoming else { return };
    let Some(b3) = incoming.b3 else { return };
    let short = trace_id[..8] == [0; 8];
    let trace_hex = if short {
        hex(&trace_id[8..])
    } else {
        hex(trace_id)
    };
    let parent_hex = incoming.parent.map(|p| hex(&p.span_id));
    let sampled_digit = if sampled { "1" } else { "0" };
    match b3 {
        Format::W3c => {}
        Format::B3Single => {
            let mut v = format!("{trace_hex}-{}-{sampled_digit}", hex(span_id));
            if let Some(p) = &parent_hex {
                v.push('-');
                v.push_str(p);
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(B3.clone(), v);
            }
        }
        Format::B3Multi => {
            for (name, value) in [
                (&X_B3_TRACEID, Some(trace_hex)),
                (&X_B3_SPANID, Some(hex(span_id))),
                (&X_B3_PARENTSPANID, parent_hex),
                (&X_B3_SAMPLED, Some(sampled_digit.to_owned())),
            ] {
                match value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    Some(v) => {
                        headers.insert(name.clone(), v);
                    }
                    None => {
                        headers.remove(name);
                    }
                }
            }
            // The debug flag is carried as the sampled decision.
            headers.remove(&X_B3_FLAGS);
        }
    }
}

/// Parses a W3C `traceparent`: the parent and its sampled flag. `None` for anything the
/// specification says to ignore (bad version, length, case, all-zero ids).
pub fn parse_traceparent(value: &str) -> Option<(Parent, bool)> {
    let v = value.trim_matches([' ', '\t']).as_bytes();
    if v.len() < 55 {
        return None;
    }
    let version = decode::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = decode::<16>(&v[3..35])?;
    let span_id = decode::<8>(&v[36..52])?;
    let flags = decode::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((
        Parent {
            trace_id,
            span_id,
            short_trace_id: false,
        },
        flags & 1 == 1,
    ))
}

/// Parses a single `b3` header: `{traceid}-{spanid}[-{sampling}[-{parentspanid}]]`, or only
/// a sampling state (`0`, `1`, `d`). `None` when malformed.
pub fn parse_b3_single(value: &str) -> Option<(Option<Parent>, Option<bool>)> {
    let v = value.trim();
    if let Some(s) = b3_sampling(v) {
        return Some((None, Some(s)));
    }
    let mut parts = v.split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    let sampled = match parts.next() {
        Some(s) => Some(b3_sampling(s)?),
        None => None,
    };
    if let Some(p) = parts.next() {
        decode::<8>(p.as_bytes())?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some((Some(b3_parent(trace, span)?), sampled))
}

fn parse_b3_multi(headers: &HeaderMap) -> Option<Extracted> {
    let trace = str_of(headers, &X_B3_TRACEID);
    let span = str_of(headers, &X_B3_SPANID);
    let debug = str_of(headers, &X_B3_FLAGS).is_some_and(|f| f.trim() == "1");
    let sampled = match str_of(headers, &X_B3_SAMPLED).map(str::trim) {
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(_) => None,
        None => None,
    };
    let sampled = if debug { Some(true) } else { sampled };
    let parent = match (trace, span) {
        (Some(t), Some(s)) => Some(b3_parent(t.trim(), s.trim())?),
        (None, None) => None,
        // One id without the other: malformed, ignored.
        _ => return None,
    };
    if parent.is_none() && sampled.is_none() {
        return None;
    }
    Some(Extracted {
        parent,
        sampled,
        format: Format::B3Multi,
        b3: Some(Format::B3Multi),
    })
}

fn b3_sampling(s: &str) -> Option<bool> {
    match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

fn b3_parent(trace: &str, span: &str) -> Option<Parent> {
    let (trace_id, short_trace_id) = match trace.len() {
        32 => (decode::<16>(trace.as_bytes())?, false),
        16 => {
            let low = decode::<8>(trace.as_bytes())?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            (id, true)
        }
        _ => return None,
    };
    let span_id = decode::<8>(span.as_bytes())?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        short_trace_id,
    })
}

fn str_of<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `00-<trace id>-<span id>-<01|00>`, written in place (every request carries one, sampled or
/// not, so it avoids `format!`).
fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut out[3..35], trace_id);
    hex_into(&mut out[36..52], span_id);
    if sampled {
        out[54] = b'1';
    }
    out
}

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Decodes exactly `N` bytes of lower-case hex (upper case is invalid in W3C and B3).
fn decode<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
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

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_is_written_in_place_as_the_specification_spells_it() {
        let t: [u8; 16] = core::array::from_fn(|i| (i as u8) * 17);
        let s: [u8; 8] = core::array::from_fn(|i| 0xf0 | i as u8);
        for sampled in [false, true] {
            let want = format!(
                "00-{}-{}-{}",
                hex(&t),
                hex(&s),
                if sampled { "01" } else { "00" }
            );
            assert_eq!(traceparent(&t, &s, sampled).as_slice(), want.as_bytes());
        }
    }

    #[test]
    fn w3c_is_preferred_and_validated() {
        let e = extract(&headers(&[("traceparent", TP), ("b3", "1")])).unwrap();
        assert_eq!(e.format, Format::W3c);
        assert_eq!(e.sampled, Some(true));
        assert_eq!(hex(&e.parent.unwrap().span_id), "b7ad6b7169203331");
        for bad in [
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A future version may carry more fields.
        assert!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-x")
                .is_some()
        );
    }

    #[test]
    fn b3_single_forms() {
        let (p, s) =
            parse_b3_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
                .unwrap();
        assert_eq!(s, Some(true));
        assert!(!p.unwrap().short_trace_id);
        let (p, s) = parse_b3_single("64fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
        assert_eq!(s, None);
        let p = p.unwrap();
        assert!(p.short_trace_id);
        assert_eq!(hex(&p.trace_id), "000000000000000064fe8b2a57d3eff7");
        assert_eq!(parse_b3_single("0"), Some((None, Some(false))));
        assert_eq!(parse_b3_single("d"), Some((None, Some(true))));
        assert!(parse_b3_single("xyz-e457b5a2e4d86bd1").is_none());
        assert!(parse_b3_single("64fe8b2a57d3eff7-e457b5a2e4d86bd1-2").is_none());
    }

    #[test]
    fn b3_multi_and_debug() {
        let e = extract(&headers(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-flags", "1"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(e.format, Format::B3Multi);
        assert_eq!(e.sampled, Some(true), "debug implies sampled");
        assert!(extract(&headers(&[("x-b3-traceid", "64fe8b2a57d3eff7")])).is_none());
        let e = extract(&headers(&[("x-b3-sampled", "0")])).unwrap();
        assert_eq!((e.parent, e.sampled), (None, Some(false)));
    }

    #[test]
    fn injects_w3c_and_the_incoming_b3_form() {
        let incoming = extract(&headers(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-flags", "1"),
        ]))
        .unwrap();
        let mut h = HeaderMap::new();
        let trace = incoming.parent.unwrap().trace_id;
        inject(
            &mut h,
            &trace,
            &[1, 2, 3, 4, 5, 6, 7, 8],
            true,
            Some(&incoming),
        );
        assert_eq!(
            h["traceparent"],
            "00-000000000000000064fe8b2a57d3eff7-0102030405060708-01"
        );
        assert_eq!(h["x-b3-traceid"], "64fe8b2a57d3eff7");
        assert_eq!(h["x-b3-spanid"], "0102030405060708");
        assert_eq!(h["x-b3-parentspanid"], "e457b5a2e4d86bd1");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(h.get("x-b3-flags").is_none());

        // Both forms present: W3C is read, and the B3 headers are rewritten, not left stale.
        let both = extract(&headers(&[
            ("traceparent", TP),
            ("x-b3-traceid", "0af7651916cd43dd8448eb211c80319c"),
            ("x-b3-spanid", "b7ad6b7169203331"),
        ]))
        .unwrap();
        assert_eq!((both.format, both.b3), (Format::W3c, Some(Format::B3Multi)));
        let mut h = HeaderMap::new();
        inject(
            &mut h,
            &both.parent.unwrap().trace_id,
            &[2; 8],
            true,
            Some(&both),
        );
        assert_eq!(h["x-b3-spanid"], "0202020202020202");
        assert_eq!(h["x-b3-parentspanid"], "b7ad6b7169203331");

        let incoming = extract(&headers(&[("b3", "0")])).unwrap();
        let mut h = HeaderMap::new();
        inject(&mut h, &[9; 16], &[1; 8], false, Some(&incoming));
        assert_eq!(
            h["b3"],
            "09090909090909090909090909090909-0101010101010101-0"
        );
        assert_eq!(
            h["traceparent"],
            "00-09090909090909090909090909090909-0101010101010101-00"
        );
    }
}
