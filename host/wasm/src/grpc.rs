//! Unary gRPC callouts (`proxy_grpc_call`), as Envoy's async gRPC client makes them: the
//! target named by a cluster name or a serialized `envoy.config.core.v3.GrpcService`, the
//! request framed as one length-prefixed message, and the reply reduced to what a plugin sees —
//! one message for `proxy_on_grpc_receive`, or a status and message for `proxy_on_grpc_close`.
//!
//! The call itself travels as an HTTP callout (`HttpCallRequest` with `grpc` set) over the
//! cluster's own client, which must speak HTTP/2 (`protocol: http2`), as Envoy requires.

use bytes::{BufMut, Bytes, BytesMut};

use crate::abi::HeaderList;
use crate::context::HttpCallResponse;

/// Most gRPC calls of one instance tracked as in flight (for `proxy_grpc_cancel`); beyond it
/// the oldest token is forgotten (its reply is then still delivered, and cancelling it is
/// `NotFound`).
pub(crate) const MAX_PENDING: usize = 1024;

/// gRPC status codes the host produces itself.
pub(crate) mod code {
    /// `UNKNOWN`.
    pub const UNKNOWN: u32 = 2;
    /// `UNIMPLEMENTED`.
    pub const UNIMPLEMENTED: u32 = 12;
    /// `INTERNAL`.
    pub const INTERNAL: u32 = 13;
    /// `UNAVAILABLE`.
    pub const UNAVAILABLE: u32 = 14;
}

/// Where a `proxy_grpc_call` goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The bytes are not a `GrpcService` message: they name a cluster.
    Cluster(String),
    /// A `GrpcService` with `envoy_grpc` (cluster name, optional `:authority`).
    Service {
        cluster: String,
        authority: Option<String>,
    },
    /// A well-formed `GrpcService` without `envoy_grpc` (e.g. `google_grpc`): not supported.
    Unsupported,
}

impl Target {
    /// Reads the `service` argument as Envoy does: a `GrpcService` when the bytes parse as one,
    /// else a cluster name.
    pub(crate) fn parse(service: &[u8]) -> Target {
        match envoy_grpc(service) {
            Some(Some((cluster, authority))) => Target::Service { cluster, authority },
            Some(None) => Target::Unsupported,
            None => Target::Cluster(String::from_utf8_lossy(service).into_owned()),
        }
    }
}

/// One protobuf field: number, and its bytes for length-delimited ones.
type Field<'a> = (u64, Option<&'a [u8]>);

/// The fields of a protobuf message, or `None` when the bytes are not valid wire format.
fn fields(mut b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let tag = varint(&mut b)?;
        let number = tag >> 3;
        if number == 0 {
            return None;
        }
        match tag & 7 {
            0 => {
                varint(&mut b)?;
                out.push((number, None));
            }
            1 => {
                b = b.get(8..)?;
                out.push((number, None));
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let value = b.get(..len)?;
                b = b.get(len..)?;
                out.push((number, Some(value)));
            }
            5 => {
                b = b.get(4..)?;
                out.push((number, None));
            }
            // Groups (3, 4) and the reserved types: not what a `GrpcService` holds.
            _ => return None,
        }
    }
    Some(out)
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `GrpcService.envoy_grpc` (field 1) as `(cluster_name, authority)`: `None` when `service` is
/// not a `GrpcService`, `Some(None)` when it is one without `envoy_grpc`.
#[expect(
    clippy::option_option,
    reason = "three outcomes: not a message, a message without envoy_grpc, envoy_grpc"
)]
fn envoy_grpc(service: &[u8]) -> Option<Option<(String, Option<String>)>> {
    let top = fields(service)?;
    let Some(inner) = top.iter().rev().find_map(|&(n, v)| (n == 1).then_some(v)) else {
        return Some(None);
    };
    let inner = fields(inner?)?;
    let text = |number: u64| {
        inner
            .iter()
            .rev()
            .find_map(|&(n, v)| (n == number).then_some(v).flatten())
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    };
    Some(Some((text(1).unwrap_or_default(), text(2))))
}

/// The request headers of a call: `:method`, `:path`, `:authority`, `content-type`, `te`,
/// `grpc-timeout` (when there is a deadline), then the plugin's initial metadata.
pub(crate) fn request_headers(
    service: &str,
    method: &str,
    authority: &str,
    timeout_ms: u64,
    metadata: HeaderList,
) -> HeaderList {
    let mut h = HeaderList::default();
    h.add(":method", b"POST");
    h.add(":path", format!("/{service}/{method}").as_bytes());
    h.add(":authority", authority.as_bytes());
    h.add("content-type", b"application/grpc");
    h.add("te", b"trailers");
    if timeout_ms > 0 {
        h.add("grpc-timeout", format!("{timeout_ms}m").as_bytes());
    }
    h.0.extend(metadata.0);
    h
}

/// `message` as one gRPC frame: uncompressed flag, big-endian length, the bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    b.put_slice(message);
    b.freeze()
}

/// What a plugin sees of a finished call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `proxy_on_grpc_receive` with this message (the call succeeded).
    Message(Bytes),
    /// `proxy_on_grpc_close` with this status; `proxy_get_status` gives the message.
    Close(u32, Vec<u8>),
}

/// HTTP status → gRPC status, as gRPC's mapping (and Envoy's `Grpc::Utility::httpToGrpcStatus`)
/// has it; local replies to gRPC requests use it too.
pub fn http_to_grpc_status(status: u16) -> u32 {
    match status {
        400 => code::INTERNAL,
        401 => 16,
        403 => 7,
        404 => code::UNIMPLEMENTED,
        429 | 502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// The reply a host makes up for a gRPC call that got no response (timeout, connect failure):
/// Envoy's router answers a gRPC request with a "trailers-only" response carrying the status
/// its HTTP status maps to, and its text as `grpc-message`; `details` are its response code
/// details (see [`HttpCallResponse::details`]).
pub fn local_reply(http_status: u16, text: &str, details: &str) -> HttpCallResponse {
    let mut headers = HeaderList::default();
    headers.add(":status", b"200");
    headers.add("content-type", b"application/grpc");
    headers.add(
        "grpc-status",
        http_to_grpc_status(http_status).to_string().as_bytes(),
    );
    headers.add("grpc-message", text.as_bytes());
    HttpCallResponse {
        headers,
        details: Some(details.to_owned()),
        ..HttpCallResponse::default()
    }
}

/// A failure's message as Envoy's async gRPC client gives it: the `grpc-message`, followed by
/// the exchange's response code details in braces; the details alone without a message.
fn with_details(message: Vec<u8>, details: &str) -> Vec<u8> {
    match (message.is_empty(), details.is_empty()) {
        (true, _) => details.as_bytes().to_vec(),
        (false, true) => message,
        (false, false) => [&message[..], b"{", details.as_bytes(), b"}"].concat(),
    }
}

fn status_of(map: &HeaderList) -> Option<u32> {
    map.get("grpc-status")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
}

fn message_of(map: &HeaderList) -> Vec<u8> {
    map.get("grpc-message")
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// Reduces a call's HTTP exchange (`None`: the stream failed after its headers) to its
/// outcome, by the rules of Envoy's async gRPC client for a unary call:
/// - a non-200 HTTP status: its gRPC mapping, unless the reply is "trailers-only" (no body, no
///   trailers) with a `grpc-status`, which is then taken;
/// - 200 without body or trailers: "trailers-only", `grpc-status` from the headers (none:
///   `INTERNAL`);
/// - 200 with a body: it needs the `application/grpc` content type, well-formed uncompressed
///   frames and trailers (data ending the stream: `UNKNOWN`); `grpc-status` from the trailers
///   (none: `UNKNOWN`);
/// - status `OK`: the last message received, `INTERNAL` when there was none.
pub(crate) fn outcome(response: Option<HttpCallResponse>) -> Outcome {
    let Some(HttpCallResponse {
        headers,
        body,
        trailers,
        details,
    }) = response
    else {
        return Outcome::Close(code::INTERNAL, Vec::new());
    };
    let http = headers
        .get(":status")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
        .unwrap_or(0);
    let trailers_only = body.is_empty() && trailers.0.is_empty();
    let (status, message, last) = if trailers_only {
        match status_of(&headers) {
            Some(s) => (s, message_of(&headers), None),
            None if http == 200 => (code::INTERNAL, Vec::new(), None),
            None => (http_to_grpc_status(http), Vec::new(), None),
        }
    } else if http != 200 {
        (http_to_grpc_status(http), Vec::new(), None)
    } else if !headers
        .get("content-type")
        .is_some_and(|v| v.starts_with(b"application/grpc"))
    {
        (code::INTERNAL, Vec::new(), None)
    } else {
        match last_message(&body.into_bytes()) {
            Err(()) => (code::INTERNAL, Vec::new(), None),
            Ok(_) if trailers.0.is_empty() => (code::UNKNOWN, Vec::new(), None),
            Ok(last) => (
                status_of(&trailers).unwrap_or(code::UNKNOWN),
                message_of(&trailers),
                last,
            ),
        }
    };
    match (status, last) {
        (0, Some(m)) => Outcome::Message(m),
        // Envoy's unary request ends so itself, without details.
        (0, None) => Outcome::Close(code::INTERNAL, Vec::new()),
        (s, _) => Outcome::Close(
            s,
            with_details(message, details.as_deref().unwrap_or("via_upstream")),
        ),
    }
}

/// The last message of a body of gRPC frames; `Err` for a compressed or truncated frame.
fn last_message(body: &Bytes) -> Result<Option<Bytes>, ()> {
    let mut at = 0usize;
    let mut last = None;
    while at < body.len() {
        let head = body.get(at..at + 5).ok_or(())?;
        if head[0] != 0 {
            return Err(());
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let start = at + 5;
        let end = start.checked_add(len).ok_or(())?;
        if end > body.len() {
            return Err(());
        }
        last = Some(body.slice(start..end));
        at = end;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(
        status: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: &[(&str, &str)],
    ) -> HttpCallResponse {
        let mut h = HeaderList::default();
        h.add(":status", status.as_bytes());
        for (k, v) in headers {
            h.add(k, v.as_bytes());
        }
        let mut t = HeaderList::default();
        for (k, v) in trailers {
            t.add(k, v.as_bytes());
        }
        HttpCallResponse {
            headers: h,
            body: Bytes::copy_from_slice(body).into(),
            trailers: t,
            details: None,
        }
    }

    const GRPC: (&str, &str) = ("content-type", "application/grpc");

    #[test]
    fn a_cluster_name_is_not_a_grpc_service_but_a_serialized_one_is() {
        assert_eq!(Target::parse(b"grpc"), Target::Cluster("grpc".into()));
        assert_eq!(
            Target::parse(b"outbound|50051||authz.default.svc.cluster.local"),
            Target::Cluster("outbound|50051||authz.default.svc.cluster.local".into())
        );
        // envoy_grpc { cluster_name: "authz" authority: "a.b" }
        let svc = [&[0x0a, 12, 0x0a, 5][..], b"authz", &[0x12, 3], b"a.b"].concat();
        assert_eq!(
            Target::parse(&svc),
            Target::Service {
                cluster: "authz".into(),
                authority: Some("a.b".into())
            }
        );
        // google_grpc (field 2) only.
        assert_eq!(Target::parse(&[0x12, 0]), Target::Unsupported);
    }

    #[test]
    fn a_message_and_status_ok_is_the_message() {
        let body = [frame(b"one"), frame(b"two")].concat();
        let r = reply("200", &[GRPC], &body, &[("grpc-status", "0")]);
        assert_eq!(
            outcome(Some(r)),
            Outcome::Message(Bytes::from_static(b"two"))
        );
    }

    #[test]
    fn failures_close_with_envoys_statuses() {
        let cases: Vec<(HttpCallResponse, Outcome)> = vec![
            (
                reply(
                    "200",
                    &[GRPC, ("grpc-status", "5"), ("grpc-message", "gone")],
                    b"",
                    &[],
                ),
                Outcome::Close(5, b"gone{via_upstream}".to_vec()),
            ),
            (
                reply(
                    "200",
                    &[GRPC],
                    b"",
                    &[("grpc-status", "7"), ("grpc-message", "no")],
                ),
                Outcome::Close(7, b"no{via_upstream}".to_vec()),
            ),
            (
                reply("500", &[], b"", &[]),
                Outcome::Close(code::UNKNOWN, b"via_upstream".to_vec()),
            ),
            (
                reply("503", &[], b"busy", &[]),
                Outcome::Close(code::UNAVAILABLE, b"via_upstream".to_vec()),
            ),
            (
                reply("200", &[GRPC], b"", &[("grpc-status", "0")]),
                Outcome::Close(code::INTERNAL, vec![]),
            ),
            (
                reply("200", &[GRPC], &frame(b"x"), &[]),
                Outcome::Close(code::UNKNOWN, b"via_upstream".to_vec()),
            ),
            (
                reply("200", &[], &frame(b"x"), &[("grpc-status", "0")]),
                Outcome::Close(code::INTERNAL, b"via_upstream".to_vec()),
            ),
            (
                reply("200", &[GRPC], &frame(b"x")[..3], &[("grpc-status", "0")]),
                Outcome::Close(code::INTERNAL, b"via_upstream".to_vec()),
            ),
            (
                local_reply(504, "upstream request timeout", "response_timeout"),
                Outcome::Close(
                    code::UNAVAILABLE,
                    b"upstream request timeout{response_timeout}".to_vec(),
                ),
            ),
        ];
        for (r, want) in cases {
            assert_eq!(outcome(Some(r.clone())), want, "{r:?}");
        }
        assert_eq!(outcome(None), Outcome::Close(code::INTERNAL, vec![]));
    }
}
