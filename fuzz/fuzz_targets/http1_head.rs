//! The HTTP/1 head validator (`weft_framing::check_head`), differentially against `httparse`:
//! never panics; whatever it accepts, httparse parses to the same method, target, version and
//! header fields, and the framing it reports is the one the fields declare. It may refuse
//! what httparse accepts (it is stricter), never the reverse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_framing::{BodyFraming, HttpVersion, Limits, check_head};

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_header_bytes: 8192,
        max_headers: 32,
        ..Limits::default()
    };
    let Ok(info) = check_head(data, &limits) else {
        return;
    };
    // Accepted: httparse must agree, completely, on exactly these bytes.
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let status = req.parse(data);
    let Ok(httparse::Status::Complete(len)) = status else {
        panic!(
            "weft accepted a head httparse refuses: {status:?} {:?}",
            String::from_utf8_lossy(data)
        );
    };
    assert_eq!(len, data.len(), "httparse ends the head elsewhere");
    let version = match info.version {
        HttpVersion::Http10 => 0,
        HttpVersion::Http11 => 1,
    };
    assert_eq!(req.version, Some(version));
    let method = req.method.unwrap_or_default();
    assert_eq!(info.is_head_method, method == "HEAD");
    assert_eq!(info.is_connect, method == "CONNECT");
    assert!(req.path.is_some_and(|p| !p.is_empty()));
    // Framing: the fields must declare exactly what weft found.
    let value = |name: &str| -> Vec<&[u8]> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| trim(h.value))
            .collect()
    };
    let lengths = value("content-length");
    let codings = value("transfer-encoding");
    match info.framing {
        BodyFraming::None => assert!(lengths.is_empty() && codings.is_empty()),
        BodyFraming::ContentLength(n) => {
            assert!(codings.is_empty());
            assert_eq!(lengths.len(), 1, "one Content-Length");
            assert_eq!(
                std::str::from_utf8(lengths[0])
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok()),
                Some(n)
            );
        }
        BodyFraming::Chunked => {
            assert!(lengths.is_empty());
            assert_eq!(codings.len(), 1, "one Transfer-Encoding");
            assert!(
                codings[0].eq_ignore_ascii_case(b"chunked"),
                "{:?}",
                String::from_utf8_lossy(codings[0])
            );
        }
    }
    // Exactly one Host on HTTP/1.1.
    if info.version == HttpVersion::Http11 {
        assert_eq!(value("host").len(), 1);
    }
});
