//! Access-log line formats: Weft's JSON line, or Envoy's command operators (`text_format`,
//! `json_format`, and the `envoy` and `istio` presets), compiled once from the configuration
//! (the parser is `weft_config::log_format`) and rendered on the writer thread.
//!
//! The request and response headers a format reads (`%REQ(X)%`, `%RESP(X)%`) are captured
//! into the entry on the request path ([`LineFormat::request_headers`]); nothing else of the
//! request is kept.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use weft_config::log_format::{self, FormatError, Operator, Piece, Plain};
use weft_config::schema::{LogFormat, LogPreset};

use super::Entry;

/// A compiled line format.
#[derive(Debug, Clone)]
pub struct LineFormat {
    kind: Kind,
    req: Vec<String>,
    resp: Vec<String>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Weft's JSON line.
    Json,
    /// Envoy's `text_format`.
    Text(Vec<Piece>),
    /// Envoy's `json_format`.
    Template(Vec<(String, Node)>),
}

#[derive(Debug, Clone)]
enum Node {
    Template(Vec<Piece>),
    Value(serde_json::Value),
    Object(Vec<(String, Node)>),
}

impl Default for LineFormat {
    fn default() -> Self {
        LineFormat {
            kind: Kind::Json,
            req: Vec::new(),
            resp: Vec::new(),
        }
    }
}

impl LineFormat {
    /// Compiles the configuration's format fields (validated already; an error names the
    /// operator).
    pub fn compile(f: &LogFormat) -> Result<LineFormat, FormatError> {
        let text = |s: &str| -> Result<LineFormat, FormatError> {
            let pieces = log_format::parse(s)?;
            Ok(LineFormat::with_pieces(
                Kind::Text(pieces.clone()),
                &[pieces],
            ))
        };
        if let Some(t) = &f.text_format {
            return text(t);
        }
        if let Some(j) = &f.json_format {
            let mut all = Vec::new();
            let nodes = nodes(j.iter(), &mut all)?;
            return Ok(LineFormat::with_pieces(Kind::Template(nodes), &all));
        }
        match f.format {
            None | Some(LogPreset::Json) => Ok(LineFormat::default()),
            Some(LogPreset::Envoy) => text(log_format::ENVOY_DEFAULT),
            Some(LogPreset::Istio) => text(log_format::ISTIO_DEFAULT),
        }
    }

    fn with_pieces(kind: Kind, all: &[Vec<Piece>]) -> LineFormat {
        let flat: Vec<Piece> = all.iter().flatten().cloned().collect();
        let (req, resp) = log_format::headers(&flat);
        LineFormat { kind, req, resp }
    }

    /// The request headers to capture (lower case; `:method`, `:path`, `:authority`,
    /// `:scheme` are the request line's), in the order of [`Entry::req_headers`].
    pub fn request_headers(&self) -> &[String] {
        &self.req
    }

    /// The response headers to capture, in the order of [`Entry::resp_headers`].
    pub fn response_headers(&self) -> &[String] {
        &self.resp
    }

    /// Appends the line for `entry` (with its newline) to `out`.
    pub fn render(&self, entry: &Entry, out: &mut Vec<u8>) {
        match &self.kind {
            Kind::Json => {
                if serde_json::to_writer(&mut *out, entry).is_ok() {
                    out.push(b'\n');
                }
            }
            Kind::Text(pieces) => {
                let mut s = String::with_capacity(256);
                for p in pieces {
                    self.piece(p, entry, &mut s);
                }
                if !s.ends_with('\n') {
                    s.push('\n');
                }
                out.extend_from_slice(s.as_bytes());
            }
            Kind::Template(nodes) => {
                let v = self.object(nodes, entry);
                if serde_json::to_writer(&mut *out, &v).is_ok() {
                    out.push(b'\n');
                }
            }
        }
    }

    fn object(&self, nodes: &[(String, Node)], entry: &Entry) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (k, n) in nodes {
            let v = match n {
                Node::Value(v) => v.clone(),
                Node::Object(o) => self.object(o, entry),
                Node::Template(pieces) => self.typed(pieces, entry),
            };
            map.insert(k.clone(), v);
        }
        serde_json::Value::Object(map)
    }

    /// Envoy's typed JSON values: a lone numeric operator is a number, a lone missing value
    /// is `null`, anything else a string.
    fn typed(&self, pieces: &[Piece], entry: &Entry) -> serde_json::Value {
        if let [Piece::Op { op, max_len }] = pieces {
            let mut s = String::new();
            self.piece(
                &Piece::Op {
                    op: op.clone(),
                    max_len: *max_len,
                },
                entry,
                &mut s,
            );
            if s == "-" {
                return serde_json::Value::Null;
            }
            if numeric(op)
                && let Ok(n) = s.parse::<u64>()
            {
                return serde_json::Value::from(n);
            }
            return serde_json::Value::String(s);
        }
        let mut s = String::new();
        for p in pieces {
            self.piece(p, entry, &mut s);
        }
        serde_json::Value::String(s)
    }

    fn piece(&self, p: &Piece, e: &Entry, out: &mut String) {
        match p {
            Piece::Literal(l) => out.push_str(l),
            Piece::Op { op, max_len } => {
                let start = out.len();
                value(self, op, e, out);
                if let Some(max) = max_len {
                    let keep: usize = out[start..]
                        .char_indices()
                        .nth(*max)
                        .map_or(out.len() - start, |(i, _)| i);
                    out.truncate(start + keep);
                }
            }
        }
    }

    fn header<'e>(list: &[String], values: &'e [Option<String>], name: &str) -> Option<&'e str> {
        let i = list.iter().position(|h| h == name)?;
        values.get(i)?.as_deref()
    }
}

fn nodes<'a>(
    map: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
    all: &mut Vec<Vec<Piece>>,
) -> Result<Vec<(String, Node)>, FormatError> {
    let mut out = Vec::new();
    for (k, v) in map {
        let node = match v {
            serde_json::Value::String(s) => {
                let p = log_format::parse(s)?;
                all.push(p.clone());
                Node::Template(p)
            }
            serde_json::Value::Object(o) => Node::Object(nodes(o.iter(), all)?),
            other => Node::Value(other.clone()),
        };
        out.push((k.clone(), node));
    }
    Ok(out)
}

fn numeric(op: &Operator) -> bool {
    matches!(
        op,
        Operator::Plain(
            Plain::ResponseCode
                | Plain::Duration
                | Plain::ResponseDuration
                | Plain::BytesReceived
                | Plain::BytesSent
                | Plain::UpstreamRequestAttemptCount
                | Plain::ConnectionId
        )
    )
}

fn or_dash(out: &mut String, v: Option<&str>) {
    out.push_str(v.filter(|v| !v.is_empty()).unwrap_or("-"));
}

fn without_port(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => addr,
    }
}

fn value(f: &LineFormat, op: &Operator, e: &Entry, out: &mut String) {
    match op {
        Operator::StartTime(None) => or_dash(out, Some(&e.start_time)),
        Operator::StartTime(Some(fmt)) => match e.start {
            Some(t) => strftime(fmt, t, out),
            None => out.push('-'),
        },
        Operator::Req(main, alt) => {
            let v = LineFormat::header(&f.req, &e.req_headers, main).or_else(|| {
                alt.as_deref()
                    .and_then(|a| LineFormat::header(&f.req, &e.req_headers, a))
            });
            or_dash(out, v);
        }
        Operator::Resp(main, alt) => {
            let v = LineFormat::header(&f.resp, &e.resp_headers, main).or_else(|| {
                alt.as_deref()
                    .and_then(|a| LineFormat::header(&f.resp, &e.resp_headers, a))
            });
            or_dash(out, v);
        }
        Operator::Trailer(..) => out.push('-'),
        Operator::Plain(p) => plain(*p, e, out),
    }
}

fn plain(p: Plain, e: &Entry, out: &mut String) {
    match p {
        Plain::ResponseCode => {
            let _ = write!(out, "{}", e.status.unwrap_or(0));
        }
        Plain::ResponseFlags => or_dash(out, Some(e.response_flags)),
        Plain::ResponseFlagsLong => out.push_str(&long_flags(e.response_flags)),
        Plain::ResponseCodeDetails => match (&e.details, e.via_upstream, e.response_flags) {
            (Some(d), _, _) => {
                // Envoy's details are tokens: no whitespace.
                out.extend(d.chars().map(|c| if c.is_whitespace() { '_' } else { c }));
            }
            (None, true, _) => out.push_str("via_upstream"),
            (None, false, "NR") => out.push_str("route_not_found"),
            _ => out.push('-'),
        },
        Plain::ConnectionTerminationDetails => out.push('-'),
        Plain::UpstreamHost => or_dash(out, e.upstream_host.as_deref()),
        Plain::UpstreamCluster | Plain::UpstreamClusterRaw => {
            or_dash(out, e.upstream_cluster.as_deref());
        }
        Plain::UpstreamLocalAddress => or_dash(out, e.upstream_local_address.as_deref()),
        Plain::UpstreamTransportFailureReason => {
            or_dash(out, e.upstream_transport_failure_reason.as_deref());
        }
        Plain::UpstreamRequestAttemptCount => {
            let _ = write!(out, "{}", e.upstream_request_attempt_count.unwrap_or(0));
        }
        Plain::Duration => {
            let _ = write!(out, "{}", e.duration_ms as u64);
        }
        Plain::ResponseDuration => match e.upstream_service_time_ms {
            Some(ms) => {
                let _ = write!(out, "{}", ms as u64);
            }
            None => out.push('-'),
        },
        Plain::BytesReceived => {
            let _ = write!(out, "{}", e.bytes_received);
        }
        Plain::BytesSent => {
            let _ = write!(out, "{}", e.bytes_sent);
        }
        Plain::Protocol => or_dash(out, Some(e.protocol)),
        Plain::DownstreamRemoteAddress | Plain::DownstreamDirectRemoteAddress => {
            or_dash(out, Some(&e.downstream_remote_address));
        }
        Plain::DownstreamRemoteAddressWithoutPort
        | Plain::DownstreamDirectRemoteAddressWithoutPort => {
            or_dash(out, Some(without_port(&e.downstream_remote_address)));
        }
        Plain::DownstreamLocalAddress => or_dash(out, e.downstream_local_address.as_deref()),
        Plain::DownstreamLocalAddressWithoutPort => {
            or_dash(out, e.downstream_local_address.as_deref().map(without_port));
        }
        Plain::DownstreamPeerUriSan => or_dash(out, e.downstream_peer_uri_san.as_deref()),
        Plain::RouteName => or_dash(out, e.route.as_deref()),
        Plain::RequestedServerName => or_dash(out, e.requested_server_name.as_deref()),
        Plain::ConnectionId => {
            let _ = write!(out, "{}", e.connection_id.unwrap_or(0));
        }
        Plain::Hostname => or_dash(out, Some(hostname())),
    }
}

fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "-".to_owned())
    })
}

/// Envoy's long names for `%RESPONSE_FLAGS_LONG%`.
fn long_flags(flags: &str) -> String {
    if flags == "-" || flags.is_empty() {
        return "-".to_owned();
    }
    flags
        .split(',')
        .map(|f| match f {
            "NR" => "NoRouteFound",
            "UH" => "NoHealthyUpstream",
            "UF" => "UpstreamConnectionFailure",
            "UT" => "UpstreamRequestTimeout",
            "UR" => "UpstreamRemoteReset",
            "UC" => "UpstreamConnectionTermination",
            "UO" => "UpstreamOverflow",
            "URX" => "UpstreamRetryLimitExceeded",
            "DC" => "DownstreamConnectionTermination",
            "DPE" => "DownstreamProtocolError",
            "FI" => "FaultInjected",
            "DI" => "DelayInjected",
            "RL" => "RateLimited",
            "LR" => "LocalReset",
            "UAEX" => "UnauthorizedExternalService",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The `strftime` subset Envoy's `%START_TIME(…)%` is used with, in UTC: `%Y %m %d %H %M %S
/// %y %j %e %b %a %s %z %Z %T %F %%`, `%f` (nanoseconds) and `%1f`…`%9f`, `%E3S`-style seconds
/// with fractional digits. Anything else is copied as is.
pub fn strftime(fmt: &str, t: SystemTime, out: &mut String) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let nanos = since.subsec_nanos();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let (y, mo, d) = civil(days);
    let frac = |n: usize, out: &mut String| {
        let digits = format!("{nanos:09}");
        out.push_str(&digits[..n.min(9)]);
    };
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match spec {
            'Y' => write!(out, "{y:04}"),
            'y' => write!(out, "{:02}", y % 100),
            'm' => write!(out, "{mo:02}"),
            'd' => write!(out, "{d:02}"),
            'e' => write!(out, "{d:2}"),
            'H' => write!(out, "{h:02}"),
            'M' => write!(out, "{mi:02}"),
            'S' => write!(out, "{s:02}"),
            's' => write!(out, "{secs}"),
            'z' => write!(out, "+0000"),
            'Z' => write!(out, "UTC"),
            'T' => write!(out, "{h:02}:{mi:02}:{s:02}"),
            'F' => write!(out, "{y:04}-{mo:02}-{d:02}"),
            'j' => write!(out, "{:03}", day_of_year(y, mo, d)),
            'b' => write!(out, "{}", MONTHS[(mo - 1) as usize]),
            'a' => write!(out, "{}", WEEKDAYS[((days + 4) % 7) as usize]),
            'f' => {
                frac(9, out);
                Ok(())
            }
            '%' => write!(out, "%"),
            n @ '1'..='9' if chars.peek() == Some(&'f') => {
                chars.next();
                frac(n as usize - '0' as usize, out);
                Ok(())
            }
            'E' => {
                // %E<n>S: seconds with n fractional digits (%E*S: 9).
                let n = match chars.next() {
                    Some(d @ '0'..='9') => d as usize - '0' as usize,
                    Some('*') => 9,
                    Some(other) => {
                        out.push_str("%E");
                        out.push(other);
                        continue;
                    }
                    None => {
                        out.push_str("%E");
                        break;
                    }
                };
                if chars.peek() == Some(&'S') {
                    chars.next();
                }
                let _ = write!(out, "{s:02}");
                if n > 0 {
                    out.push('.');
                    frac(n, out);
                }
                Ok(())
            }
            other => {
                out.push('%');
                out.push(other);
                Ok(())
            }
        };
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// Year, month, day of `days` since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn day_of_year(y: i64, m: u32, d: u32) -> u32 {
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    CUM[(m - 1) as usize] + d + u32::from(leap && m > 2)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn entry() -> Entry {
        let start = UNIX_EPOCH + Duration::from_millis(1_764_160_496_123);
        Entry {
            start_time: super::super::rfc3339(start),
            start: Some(start),
            listener: Arc::from("in"),
            protocol: "HTTP/1.1",
            status: Some(200),
            response_flags: "-",
            route: Some(Arc::from("r1")),
            upstream_cluster: Some(Arc::from("app")),
            upstream_host: Some("127.0.0.1:9000".into()),
            duration_ms: 12.7,
            upstream_service_time_ms: Some(3.2),
            bytes_received: 5,
            bytes_sent: 42,
            downstream_remote_address: "127.0.0.1:5555".into(),
            downstream_local_address: Some("127.0.0.1:10000".into()),
            via_upstream: true,
            ..Entry::default()
        }
    }

    fn render(f: &LineFormat, e: &Entry) -> String {
        let mut out = Vec::new();
        f.render(e, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn text(s: &str) -> LineFormat {
        LineFormat::compile(&LogFormat {
            text_format: Some(s.into()),
            ..LogFormat::default()
        })
        .unwrap()
    }

    #[test]
    fn the_istio_preset_renders_every_field() {
        let f = LineFormat::compile(&LogFormat {
            format: Some(LogPreset::Istio),
            ..LogFormat::default()
        })
        .unwrap();
        let mut e = entry();
        e.req_headers = f
            .request_headers()
            .iter()
            .map(|h| match h.as_str() {
                ":method" => Some("GET".into()),
                ":path" => Some("/a?b=1".into()),
                ":authority" => Some("svc".into()),
                "x-request-id" => Some("rid".into()),
                _ => None,
            })
            .collect();
        e.resp_headers = vec![Some("3".into())];
        assert_eq!(
            render(&f, &e),
            "[2025-11-26T12:34:56.123Z] \"GET /a?b=1 HTTP/1.1\" 200 - via_upstream - \"-\" 5 42 12 3 \"-\" \"-\" \"rid\" \"svc\" \"127.0.0.1:9000\" app - 127.0.0.1:10000 127.0.0.1:5555 - r1\n"
        );
    }

    #[test]
    fn alternatives_truncation_and_start_time_formats() {
        let f = text(
            "%REQ(X-A?X-B):3% %RESP(X-C)% %START_TIME(%Y/%m/%d %H:%M:%S.%3f %s)% %RESPONSE_FLAGS_LONG%",
        );
        let mut e = entry();
        e.req_headers = vec![None, Some("bvalue".into())];
        e.response_flags = "UF,URX";
        assert_eq!(
            render(&f, &e),
            "bva - 2025/11/26 12:34:56.123 1764160496 UpstreamConnectionFailure,UpstreamRetryLimitExceeded\n"
        );
    }

    #[test]
    fn json_format_types_numbers_and_nulls() {
        let json: std::collections::BTreeMap<String, serde_json::Value> = serde_json::from_str(
            r#"{"code":"%RESPONSE_CODE%","host":"%UPSTREAM_HOST%","ua":"%REQ(USER-AGENT)%","s":"x %BYTES_SENT%","n":{"d":"%DURATION%"},"k":7}"#,
        )
        .unwrap();
        let f = LineFormat::compile(&LogFormat {
            json_format: Some(json),
            ..LogFormat::default()
        })
        .unwrap();
        let mut e = entry();
        e.req_headers = vec![None];
        let v: serde_json::Value = serde_json::from_str(&render(&f, &e)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code":200,"host":"127.0.0.1:9000","ua":null,"s":"x 42","n":{"d":12},"k":7})
        );
    }

    #[test]
    fn strftime_dates() {
        let mut s = String::new();
        strftime(
            "%F %T %j %a %b %E3S",
            UNIX_EPOCH + Duration::from_millis(951_782_400_500),
            &mut s,
        );
        assert_eq!(s, "2000-02-29 00:00:00 060 Tue Feb 00.500");
    }
}
