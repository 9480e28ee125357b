//! A listener's access-log format on the request path: which format its lines use, and the
//! request and response headers that format reads, captured into the entry (the line itself
//! is rendered on the access log's writer thread).

use std::sync::Arc;

use http::{HeaderMap, Method, Uri};
use weft_config::schema;
use weft_observe::access_log::{Entry, LineFormat};

/// A listener's access-log choice, compiled once per generation.
#[derive(Debug, Clone, Default)]
pub enum ListenerLog {
    /// The `access_log` section's format.
    #[default]
    Default,
    /// No lines for this listener.
    Off,
    /// The listener's own format.
    Format(Arc<LineFormat>),
}

impl ListenerLog {
    /// Compiles listener `l`'s `access_log` (validated with the configuration).
    pub fn build(l: &schema::Listener) -> ListenerLog {
        let Some(a) = &l.access_log else {
            return ListenerLog::Default;
        };
        if a.disabled {
            return ListenerLog::Off;
        }
        match a.log_format().map(|f| LineFormat::compile(&f)) {
            Some(Ok(f)) => ListenerLog::Format(Arc::new(f)),
            Some(Err(e)) => {
                // Unreachable after validation; keep serving with the default format.
                tracing::error!(listener = %l.name, "access_log: {e}");
                ListenerLog::Default
            }
            None => ListenerLog::Default,
        }
    }
}

/// The request as the format's `%REQ(…)%` operators see it.
pub(crate) struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub scheme: &'static str,
}

/// The format `entry` is rendered with.
pub(crate) fn effective<'a>(entry: &'a Entry, default: &'a Arc<LineFormat>) -> &'a LineFormat {
    entry.format.as_deref().unwrap_or(default)
}

/// Captures the request headers `format` reads.
pub(crate) fn capture_request(format: &LineFormat, r: &RequestView<'_>) -> Vec<Option<String>> {
    format
        .request_headers()
        .iter()
        .map(|h| match h.as_str() {
            ":method" => Some(r.method.as_str().to_owned()),
            ":path" => Some(
                r.uri
                    .path_and_query()
                    .map_or_else(|| r.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            ),
            ":authority" | "host" => r.authority.map(str::to_owned),
            ":scheme" => Some(r.scheme.to_owned()),
            name => header(r.headers, name),
        })
        .collect()
}

/// Captures the response headers `entry`'s format reads (`default`: the access log's format,
/// when the entry has none of its own).
pub(crate) fn capture_response(entry: &mut Entry, default: &Arc<LineFormat>, headers: &HeaderMap) {
    let names = effective(entry, default).response_headers();
    if names.is_empty() {
        return;
    }
    entry.resp_headers = names.iter().map(|h| header(headers, h)).collect();
}

/// Captures the request headers again, as they go upstream (`x-request-id` generated,
/// `x-forwarded-for` appended).
pub(crate) fn recapture_request(entry: &mut Entry, default: &Arc<LineFormat>, r: &RequestView<'_>) {
    let f = effective(entry, default);
    if f.request_headers().is_empty() {
        return;
    }
    entry.req_headers = capture_request(f, r);
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in values {
        s.push(',');
        s.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(s)
}
