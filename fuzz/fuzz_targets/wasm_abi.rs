//! The proxy-wasm ABI's decoding of guest input (`host/wasm/src/codec.rs`, included as it is:
//! it has no dependencies, so the fuzzer does not build wasmtime): guest memory ranges,
//! the header-map wire format, property paths and header checks. Never panics; a range it
//! accepts lies inside the memory and has the asked length; a header map it decodes encodes
//! back to bytes that decode to the same map.
#![no_main]

#[path = "../../host/wasm/src/codec.rs"]
#[allow(dead_code, reason = "the host uses more of the module than the fuzzer")]
mod codec;

use codec::{HeaderList, guest_range, path_segments, valid_header_name, valid_header_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 12 {
        let ptr = i32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let len = i32::from_le_bytes([data[4], data[5], data[6], data[7]]);
        let size = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
        if let Ok(r) = guest_range(ptr, len, size) {
            assert!(r.end <= size && r.start <= r.end);
            assert_eq!(r.len(), len as u32 as usize);
            assert_eq!(r.start, ptr as u32 as usize);
        }
    }
    if let Some(list) = HeaderList::deserialize(data) {
        let bytes = list.serialize();
        assert_eq!(
            HeaderList::deserialize(&bytes).as_ref(),
            Some(&list),
            "round trip"
        );
        for (name, value) in &list.0 {
            let _ = (valid_header_name(name), valid_header_value(value));
        }
    }
    let segments = path_segments(data);
    assert!(segments.iter().all(|s| !s.is_empty()));
});
