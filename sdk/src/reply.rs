//! Local replies with a JSON body.

use serde_json::json;

/// The JSON body of an error reply: `{"error": code, "message": message}`.
pub fn error_body(code: &str, message: &str) -> Vec<u8> {
    json!({ "error": code, "message": message })
        .to_string()
        .into_bytes()
}

/// Sends a local reply with a JSON body and `content-type: application/json`, plus `headers`.
/// The stream stops here: return `Action::Pause` from the callback.
pub fn json(status: u32, body: &serde_json::Value, headers: &[(&str, &str)]) {
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let body = body.to_string();
    let _ = proxy_wasm::hostcalls::send_http_response(status, all, Some(body.as_bytes()));
}

/// Sends an error reply: `{"error": code, "message": message}`, with `reason_header` set to
/// `code` so clients and logs can tell why without parsing the body.
pub fn error(status: u32, code: &str, message: &str, reason_header: &str, extra: &[(&str, &str)]) {
    let mut headers: Vec<(&str, &str)> =
        vec![("content-type", "application/json"), (reason_header, code)];
    headers.extend_from_slice(extra);
    let body = error_body(code, message);
    let _ = proxy_wasm::hostcalls::send_http_response(status, headers, Some(&body));
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_body_is_json() {
        let v: serde_json::Value =
            serde_json::from_slice(&super::error_body("denied", "say \"no\"")).expect("json");
        assert_eq!(v["error"], "denied");
        assert_eq!(v["message"], "say \"no\"");
    }
}
