//! HTTP/2 request checks the `h2` crate leaves to the application (RFC 9113 §8): a request
//! that fails one is malformed and is refused with a stream error (`RST_STREAM`
//! `PROTOCOL_ERROR`) before any phase runs, so it is never forwarded.

use http::{Method, Request};

/// Why an HTTP/2 request is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// A field value starts or ends with a space or a tab (§8.2.1).
    ValueWhitespace,
    /// `host` names another authority than `:authority` (§8.3.1).
    HostMismatch,
    /// `CONNECT` without `:authority` (§8.5).
    ConnectWithoutAuthority,
}

impl Malformed {
    /// The reason counted in `weft_downstream_rq_rejected_total` and logged.
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::ValueWhitespace => "h2_field_value_whitespace",
            Malformed::HostMismatch => "h2_host_authority_mismatch",
            Malformed::ConnectWithoutAuthority => "h2_connect_without_authority",
        }
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Checks an HTTP/2 request's head; `Err` names the first rule it breaks.
///
/// # Errors
///
/// The [`Malformed`] rule the request breaks.
pub fn check<B>(req: &Request<B>) -> Result<(), Malformed> {
    for value in req.headers().values() {
        let v = value.as_bytes();
        if v.first().copied().is_some_and(is_ows) || v.last().copied().is_some_and(is_ows) {
            return Err(Malformed::ValueWhitespace);
        }
    }
    let authority = req.uri().authority();
    if req.method() == Method::CONNECT && authority.is_none() {
        return Err(Malformed::ConnectWithoutAuthority);
    }
    if let (Some(authority), Some(host)) = (authority, req.headers().get(http::header::HOST))
        && !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err(Malformed::HostMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &[u8])]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(
                *k,
                http::HeaderValue::from_bytes(v).unwrap_or(http::HeaderValue::from_static("x")),
            );
        }
        b.body(()).unwrap_or_default()
    }

    #[test]
    fn well_formed_requests_pass() {
        assert_eq!(
            check(&req(
                "GET",
                "http://a.example/x",
                &[("host", b"A.example"), ("x", b"a b")]
            )),
            Ok(())
        );
        assert_eq!(check(&req("CONNECT", "a.example:443", &[])), Ok(()));
        assert_eq!(check(&req("GET", "/x", &[("host", b"b")])), Ok(()));
    }

    #[test]
    fn malformed_requests_are_named() {
        assert_eq!(
            check(&req("GET", "http://a/x", &[("x", b" v")])),
            Err(Malformed::ValueWhitespace)
        );
        assert_eq!(
            check(&req("GET", "http://a/x", &[("x", b"v\t")])),
            Err(Malformed::ValueWhitespace)
        );
        assert_eq!(
            check(&req("GET", "http://a/x", &[("host", b"b")])),
            Err(Malformed::HostMismatch)
        );
        assert_eq!(
            check(&req("CONNECT", "/", &[])),
            Err(Malformed::ConnectWithoutAuthority)
        );
    }
}
