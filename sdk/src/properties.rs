//! Envoy attributes (`proxy_get_property`) decoded: strings are raw bytes, integers 8-byte
//! little-endian, booleans one byte. Paths are dotted (`source.address`, `request.path`,
//! `connection.uri_san_peer_certificate`); a segment that itself contains dots can be given
//! with [`get_path`].

/// Splits a dotted attribute name into path segments.
pub fn split(name: &str) -> Vec<&str> {
    name.split('.').collect()
}

/// The raw bytes of an attribute.
pub fn get_path(path: &[&str]) -> Option<Vec<u8>> {
    proxy_wasm::hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
}

/// The raw bytes of a dotted attribute.
pub fn get(name: &str) -> Option<Vec<u8>> {
    get_path(&split(name))
}

/// An attribute as a string (lossy UTF-8). Integer-typed attributes (`response.code`,
/// `source.port`, …) are rendered in decimal when their encoding is 8 bytes that do not read
/// as text; use [`get_u64`] when the type is known.
pub fn get_string(name: &str) -> Option<String> {
    get(name).map(|b| decode_display(name, &b))
}

/// An integer attribute (8-byte little-endian).
pub fn get_u64(name: &str) -> Option<u64> {
    get(name).and_then(|b| decode_u64(&b))
}

/// A boolean attribute (one byte).
pub fn get_bool(name: &str) -> Option<bool> {
    get(name).and_then(|b| b.first().map(|v| *v != 0))
}

/// Sets a filter-state attribute (`proxy_set_property`).
pub fn set(name: &str, value: &[u8]) {
    let _ = proxy_wasm::hostcalls::set_property(split(name), Some(value));
}

/// Decodes an 8-byte little-endian integer.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

/// Attributes whose value Envoy encodes as an integer.
const INTEGER_ATTRIBUTES: &[&str] = &[
    "source.port",
    "destination.port",
    "request.size",
    "request.total_size",
    "request.duration",
    "response.code",
    "response.size",
    "response.total_size",
    "response.grpc_status",
    "response.flags",
    "connection.id",
    "upstream.port",
];

/// Renders an attribute's bytes for display: integers in decimal, timestamps (`request.time`)
/// as nanoseconds, anything else as lossy UTF-8.
pub fn decode_display(name: &str, bytes: &[u8]) -> String {
    if (INTEGER_ATTRIBUTES.contains(&name) || name == "request.time")
        && let Some(v) = decode_u64(bytes)
    {
        return v.to_string();
    }
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_render_in_decimal() {
        assert_eq!(
            decode_display("response.code", &200u64.to_le_bytes()),
            "200"
        );
        assert_eq!(decode_display("request.path", b"/x"), "/x");
        assert_eq!(decode_display("response.code", b"abc"), "abc");
        assert_eq!(decode_u64(&[1, 0, 0, 0, 0, 0, 0, 0]), Some(1));
        assert_eq!(decode_u64(&[1]), None);
        assert_eq!(split("a.b.c"), vec!["a", "b", "c"]);
    }
}
