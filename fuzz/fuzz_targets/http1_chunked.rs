//! The chunked-body parser the framing guard runs (`weft_framing::ChunkedBody`),
//! differentially against `httparse::parse_chunk_size`: never panics; fed whole or byte by
//! byte it ends at the same place; and a body it accepts is one httparse decodes to the same
//! end. It may refuse what httparse accepts, never the reverse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_framing::{ChunkedBody, Limits};

/// Where httparse ends a chunked body starting at `buf[0]` (trailer section included).
fn httparse_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let (line, size) = match httparse::parse_chunk_size(buf.get(at..)?) {
            Ok(httparse::Status::Complete(x)) => x,
            _ => return None,
        };
        at += line;
        if size == 0 {
            loop {
                let rest = buf.get(at..)?;
                let end = rest.windows(2).position(|w| w == b"\r\n")?;
                at += end + 2;
                if end == 0 {
                    return Some(at);
                }
            }
        }
        at = at.checked_add(usize::try_from(size).ok()?)?;
        if buf.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_header_bytes: 4096,
        max_headers: 16,
        ..Limits::default()
    };
    let whole = ChunkedBody::new(&limits).feed(data);
    let mut bytewise = ChunkedBody::new(&limits);
    let mut result = Ok((0, false));
    for (i, b) in data.iter().enumerate() {
        match bytewise.feed(std::slice::from_ref(b)) {
            Ok((n, true)) => {
                result = Ok((i + n, true));
                break;
            }
            Ok((n, false)) => result = Ok((i + n, false)),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    match (&whole, &result) {
        (Ok((a, true)), Ok((b, true))) => assert_eq!(a, b, "whole vs byte-by-byte end"),
        (Ok((_, da)), Ok((_, db))) => assert_eq!(da, db),
        (Err(_), Err(_)) => {}
        _ => panic!("whole {whole:?} vs byte-by-byte {result:?}"),
    }
    if let Ok((end, true)) = whole {
        assert_eq!(
            httparse_end(&data[..end]),
            Some(end),
            "httparse does not end the body at {end}"
        );
    }
});
