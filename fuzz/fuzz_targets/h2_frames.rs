//! The HTTP/2 frame guard's scanner (`weft_framing::h2::FrameScanner`): never panics, and
//! finds the same violation whether the client's bytes arrive at once or split anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_framing::h2::{FrameScanner, PREFACE};

fuzz_target!(|data: &[u8]| {
    let (split, frames) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s), rest),
        None => return,
    };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(frames);
    let whole = FrameScanner::default()
        .scan(&input)
        .map(|f| (f.violation, f.last_stream));
    let mut parts = FrameScanner::default();
    let at = split.min(input.len());
    let split_result = parts
        .scan(&input[..at])
        .or_else(|| parts.scan(&input[at..]))
        .map(|f| (f.violation, f.last_stream));
    assert_eq!(whole, split_result);
});
