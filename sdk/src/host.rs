//! Host calls that cannot trap on what a client sends.
//!
//! The `proxy_wasm` getters return `String`s and panic when a value is not UTF-8 — and any
//! client can send such a header. These read bytes and let the caller decide.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

/// A request header's raw value.
pub fn request_header_bytes(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// A request header as text; `None` when absent or not UTF-8.
pub fn request_header(name: &str) -> Option<String> {
    request_header_bytes(name).and_then(|v| String::from_utf8(v).ok())
}

/// A response header's raw value.
pub fn response_header_bytes(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

/// The `:status` of the callout response being delivered (`on_http_call_response`); `None`
/// when the callout failed or the status is not a number.
pub fn call_response_status() -> Option<u16> {
    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok())
}
