//! Envoy's access-log command operators, parsed once at configuration load: a format string
//! such as `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%" %RESPONSE_CODE%`
//! becomes a list of literal pieces and operators. An unknown or malformed operator is an
//! error naming it. The renderer is `weft_observe::access_log::format`.

use std::fmt;

/// One piece of a parsed format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as is.
    Literal(String),
    /// An operator, with its `:N` truncation.
    Op {
        /// What it stands for.
        op: Operator,
        /// Longest output, in characters (`%REQ(X):N%`).
        max_len: Option<usize>,
    },
}

/// A command operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `%START_TIME%` or `%START_TIME(fmt)%`.
    StartTime(Option<String>),
    /// `%REQ(X?Y)%`: a request header (lower-cased), with an alternative.
    Req(String, Option<String>),
    /// `%RESP(X?Y)%`: a response header, with an alternative.
    Resp(String, Option<String>),
    /// `%TRAILER(X?Y)%`: a response trailer (Weft does not keep trailers: always `-`).
    Trailer(String, Option<String>),
    /// An operator without an argument.
    Plain(Plain),
}

/// The operators without an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    /// `%RESPONSE_CODE%`.
    ResponseCode,
    /// `%RESPONSE_FLAGS%`.
    ResponseFlags,
    /// `%RESPONSE_FLAGS_LONG%`.
    ResponseFlagsLong,
    /// `%RESPONSE_CODE_DETAILS%`.
    ResponseCodeDetails,
    /// `%CONNECTION_TERMINATION_DETAILS%`.
    ConnectionTerminationDetails,
    /// `%UPSTREAM_HOST%`.
    UpstreamHost,
    /// `%UPSTREAM_CLUSTER%`.
    UpstreamCluster,
    /// `%UPSTREAM_CLUSTER_RAW%`.
    UpstreamClusterRaw,
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    UpstreamLocalAddress,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    UpstreamTransportFailureReason,
    /// `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`.
    UpstreamRequestAttemptCount,
    /// `%DURATION%`.
    Duration,
    /// `%RESPONSE_DURATION%` (until the upstream's response headers).
    ResponseDuration,
    /// `%BYTES_RECEIVED%`.
    BytesReceived,
    /// `%BYTES_SENT%`.
    BytesSent,
    /// `%PROTOCOL%`.
    Protocol,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`.
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
    DownstreamRemoteAddressWithoutPort,
    /// `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%` (Weft does not rewrite the remote address).
    DownstreamDirectRemoteAddress,
    /// `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%`.
    DownstreamDirectRemoteAddressWithoutPort,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`.
    DownstreamLocalAddress,
    /// `%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%`.
    DownstreamLocalAddressWithoutPort,
    /// `%DOWNSTREAM_PEER_URI_SAN%`.
    DownstreamPeerUriSan,
    /// `%ROUTE_NAME%`.
    RouteName,
    /// `%REQUESTED_SERVER_NAME%`.
    RequestedServerName,
    /// `%CONNECTION_ID%`.
    ConnectionId,
    /// `%HOSTNAME%`.
    Hostname,
}

const PLAIN: &[(&str, Plain)] = &[
    ("RESPONSE_CODE", Plain::ResponseCode),
    ("RESPONSE_FLAGS", Plain::ResponseFlags),
    ("RESPONSE_FLAGS_LONG", Plain::ResponseFlagsLong),
    ("RESPONSE_CODE_DETAILS", Plain::ResponseCodeDetails),
    (
        "CONNECTION_TERMINATION_DETAILS",
        Plain::ConnectionTerminationDetails,
    ),
    ("UPSTREAM_HOST", Plain::UpstreamHost),
    ("UPSTREAM_CLUSTER", Plain::UpstreamCluster),
    ("UPSTREAM_CLUSTER_RAW", Plain::UpstreamClusterRaw),
    ("UPSTREAM_LOCAL_ADDRESS", Plain::UpstreamLocalAddress),
    (
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
        Plain::UpstreamTransportFailureReason,
    ),
    (
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
        Plain::UpstreamRequestAttemptCount,
    ),
    ("DURATION", Plain::Duration),
    ("RESPONSE_DURATION", Plain::ResponseDuration),
    ("BYTES_RECEIVED", Plain::BytesReceived),
    ("BYTES_SENT", Plain::BytesSent),
    ("PROTOCOL", Plain::Protocol),
    ("DOWNSTREAM_REMOTE_ADDRESS", Plain::DownstreamRemoteAddress),
    (
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Plain::DownstreamRemoteAddressWithoutPort,
    ),
    (
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
        Plain::DownstreamDirectRemoteAddress,
    ),
    (
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
        Plain::DownstreamDirectRemoteAddressWithoutPort,
    ),
    ("DOWNSTREAM_LOCAL_ADDRESS", Plain::DownstreamLocalAddress),
    (
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        Plain::DownstreamLocalAddressWithoutPort,
    ),
    ("DOWNSTREAM_PEER_URI_SAN", Plain::DownstreamPeerUriSan),
    ("ROUTE_NAME", Plain::RouteName),
    ("REQUESTED_SERVER_NAME", Plain::RequestedServerName),
    ("CONNECTION_ID", Plain::ConnectionId),
    ("HOSTNAME", Plain::Hostname),
];

/// Envoy's default text format.
pub const ENVOY_DEFAULT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// Istio's default text format (`meshConfig.accessLogFormat` unset).
pub const ISTIO_DEFAULT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// A format string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    /// The offending text, from its `%`.
    pub operator: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.operator, self.message)
    }
}

impl std::error::Error for FormatError {}

/// Parses a format string.
pub fn parse(format: &str) -> Result<Vec<Piece>, FormatError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = format;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        let from = &rest[at..];
        let (piece, used) = operator(from)?;
        match piece {
            Some(p) => {
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(p);
            }
            None => literal.push('%'),
        }
        rest = &from[used..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

/// Parses the operator at the start of `s` (which starts with `%`): the piece (`None` for
/// `%%`, a literal `%`) and the bytes used.
fn operator(s: &str) -> Result<(Option<Piece>, usize), FormatError> {
    if s.starts_with("%%") {
        return Ok((None, 2));
    }
    let bad = |message: &str| FormatError {
        operator: s.chars().take(48).collect(),
        message: message.to_owned(),
    };
    let body = &s[1..];
    let name_len = body
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(body.len());
    if name_len == 0 {
        return Err(bad("expected an operator name after `%`"));
    }
    let name = &body[..name_len];
    let mut i = name_len;
    let mut arg = None;
    if body[i..].starts_with('(') {
        let close = body[i..].find(')').ok_or_else(|| bad("unterminated `(`"))?;
        arg = Some(&body[i + 1..i + close]);
        i += close + 1;
    }
    let mut max_len = None;
    if body[i..].starts_with(':') {
        let digits = body[i + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(body.len() - i - 1);
        let n: usize = body[i + 1..i + 1 + digits]
            .parse()
            .map_err(|_| bad("`:` must be followed by a length"))?;
        max_len = Some(n);
        i += 1 + digits;
    }
    if !body[i..].starts_with('%') {
        return Err(bad("expected `%` to close the operator"));
    }
    let used = 1 + i + 1;
    let op = match (name, arg) {
        ("START_TIME", a) => Operator::StartTime(a.filter(|a| !a.is_empty()).map(str::to_owned)),
        ("REQ" | "RESP" | "TRAILER", Some(a)) => {
            let (main, alt) = header_arg(a).map_err(&bad)?;
            match name {
                "REQ" => Operator::Req(main, alt),
                "RESP" => Operator::Resp(main, alt),
                _ => Operator::Trailer(main, alt),
            }
        }
        ("REQ" | "RESP" | "TRAILER", None) => return Err(bad("needs a header name: `(NAME)`")),
        (n, None) => match PLAIN.iter().find(|(k, _)| *k == n) {
            Some((_, p)) => Operator::Plain(*p),
            None => return Err(bad("unknown or unsupported operator")),
        },
        (_, Some(_)) => return Err(bad("unknown operator, or it takes no argument")),
    };
    if max_len.is_some()
        && !matches!(
            op,
            Operator::Req(..) | Operator::Resp(..) | Operator::Trailer(..)
        )
    {
        return Err(bad("`:N` truncation applies to REQ, RESP and TRAILER only"));
    }
    Ok((Some(Piece::Op { op, max_len }), used))
}

fn header_arg(a: &str) -> Result<(String, Option<String>), &'static str> {
    let (main, alt) = match a.split_once('?') {
        Some((m, alt)) => (m, Some(alt)),
        None => (a, None),
    };
    let check = |h: &str| -> Result<String, &'static str> {
        let h = h.to_ascii_lowercase();
        let name = h.strip_prefix(':').unwrap_or(&h);
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err("not a header name");
        }
        Ok(h)
    };
    Ok((check(main)?, alt.map(check).transpose()?))
}

/// Every request and response header a format reads (to capture only those).
pub fn headers(pieces: &[Piece]) -> (Vec<String>, Vec<String>) {
    let mut req = Vec::new();
    let mut resp = Vec::new();
    for p in pieces {
        if let Piece::Op { op, .. } = p {
            let (list, main, alt) = match op {
                Operator::Req(m, a) => (&mut req, m, a),
                Operator::Resp(m, a) => (&mut resp, m, a),
                _ => continue,
            };
            for h in std::iter::once(main).chain(alt) {
                if !list.contains(h) {
                    list.push(h.clone());
                }
            }
        }
    }
    (req, resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_presets() {
        for f in [ENVOY_DEFAULT, ISTIO_DEFAULT] {
            let p = parse(f).unwrap();
            assert!(p.len() > 20);
        }
        let (req, resp) = headers(&parse(ISTIO_DEFAULT).unwrap());
        assert!(req.contains(&"x-envoy-original-path".to_owned()));
        assert!(req.contains(&":path".to_owned()));
        assert_eq!(resp, vec!["x-envoy-upstream-service-time".to_owned()]);
    }

    #[test]
    fn operators_arguments_and_truncation() {
        let p = parse("a %REQ(X-Id?:PATH):5% %START_TIME(%s)% 100%% %RESPONSE_CODE%").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Literal("a ".into()),
                Piece::Op {
                    op: Operator::Req("x-id".into(), Some(":path".into())),
                    max_len: Some(5)
                },
                Piece::Literal(" ".into()),
                Piece::Op {
                    op: Operator::StartTime(Some("%s".into())),
                    max_len: None
                },
                Piece::Literal(" 100% ".into()),
                Piece::Op {
                    op: Operator::Plain(Plain::ResponseCode),
                    max_len: None
                },
            ]
        );
    }

    #[test]
    fn errors_name_the_operator() {
        let e = parse("x %RESPONSE_KODE% y").unwrap_err();
        assert!(e.operator.starts_with("%RESPONSE_KODE%"), "{e}");
        assert!(parse("%REQ%").is_err());
        assert!(parse("%REQ(X").is_err());
        assert!(parse("%DURATION:3%").is_err());
        assert!(parse("%REQ(a b)%").is_err());
        assert!(parse("100% done").is_err());
    }
}
