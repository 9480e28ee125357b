//! One HTTP request (and its response) through the plugin, with the callbacks in Envoy's order.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use weft_wasm::http::header::{HeaderName, HeaderValue};
use weft_wasm::http::{HeaderMap, Method};
use weft_wasm::{Action, Failure, Headers, LocalResponse, Properties, Stream};

use crate::plugin::{AttributeMap, TestPlugin};
use crate::{CannedResponse, find, list_pairs, to_pairs};

/// What the plugin did with a request or response phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stream goes on to the upstream (request) or the client (response).
    Continue,
    /// The plugin paused the stream and did not resume it.
    Paused,
    /// The plugin answered itself (`proxy_send_local_response`).
    LocalReply(LocalReply),
    /// A callback trapped, ran out of CPU time or memory; the proxy applies the plugin's
    /// failure policy (a 503 when failing closed).
    Failed(String),
}

impl Outcome {
    /// True for [`Outcome::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Outcome::Continue)
    }

    /// The local reply, if the plugin sent one.
    pub fn local_reply(&self) -> Option<&LocalReply> {
        match self {
            Outcome::LocalReply(r) => Some(r),
            _ => None,
        }
    }

    /// The local reply; panics (showing the outcome) when there is none.
    #[track_caller]
    pub fn expect_reply(self) -> LocalReply {
        match self {
            Outcome::LocalReply(r) => r,
            other => panic!("expected a local reply, the plugin gave {other:?}"),
        }
    }
}

/// A local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// Status code.
    pub status: u16,
    /// Headers the plugin added.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Details (Envoy's response code details).
    pub details: String,
    /// gRPC status, when the plugin gave one.
    pub grpc_status: Option<i32>,
}

impl LocalReply {
    fn from_host(r: LocalResponse) -> LocalReply {
        LocalReply {
            status: r.status,
            headers: list_pairs(&r.headers),
            body: r.body.to_vec(),
            details: r.details,
            grpc_status: r.grpc_status,
        }
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        find(&self.headers, name)
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics when it is not).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply body is not JSON ({e}): {}", self.body_text()))
    }
}

/// Attributes of one request: its own values, then derived ones, then the plugin-wide ones.
struct RequestAttributes {
    own: Mutex<HashMap<String, Vec<u8>>>,
    plugin: AttributeMap,
}

impl Properties for RequestAttributes {
    fn get(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path.join(".");
        if let Some(v) = self.own.lock().get(&key) {
            return Some(v.clone());
        }
        self.plugin.lock().get(&key).cloned()
    }
}

impl TestPlugin {
    /// A new request (`GET /`, authority `example.com`, scheme `http`) to send through the
    /// plugin.
    pub fn request(&self) -> Exchange<'_> {
        Exchange::new(self)
    }
}

/// One request through the plugin. Build it, [`send_request`](Exchange::send_request), then
/// optionally [`send_response`](Exchange::send_response), then [`finish`](Exchange::finish)
/// (dropping it finishes too).
pub struct Exchange<'p> {
    plugin: &'p TestPlugin,
    method: String,
    path: String,
    authority: String,
    scheme: String,
    headers: Vec<(String, String)>,
    raw_headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
    attributes: Arc<RequestAttributes>,
    stream: Option<Stream>,
    request_body_seen: Vec<u8>,
    response_body_seen: Vec<u8>,
}

impl<'p> Exchange<'p> {
    fn new(plugin: &'p TestPlugin) -> Exchange<'p> {
        Exchange {
            plugin,
            method: "GET".into(),
            path: "/".into(),
            authority: "example.com".into(),
            scheme: "http".into(),
            headers: Vec::new(),
            raw_headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
            attributes: Arc::new(RequestAttributes {
                own: Mutex::new(HashMap::new()),
                plugin: plugin.attributes.clone(),
            }),
            stream: None,
            request_body_seen: Vec::new(),
            response_body_seen: Vec::new(),
        }
    }

    /// The method (default `GET`).
    pub fn method(mut self, method: &str) -> Self {
        self.method = method.to_owned();
        self
    }

    /// The path with query (default `/`).
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    /// The authority (default `example.com`).
    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = authority.to_owned();
        self
    }

    /// The scheme (default `http`).
    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = scheme.to_owned();
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Adds a request header whose value is arbitrary bytes (e.g. not UTF-8, as a hostile
    /// client may send): a plugin must not trap on it.
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.raw_headers
            .push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }

    /// Sets the request body (sent as one chunk, end of stream).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a request trailer.
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Sets an attribute of this request (overrides derived and plugin-wide values).
    pub fn property(self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.attributes
            .own
            .lock()
            .insert(name.to_owned(), value.into());
        self
    }

    /// Sets an integer attribute of this request.
    pub fn property_u64(self, name: &str, value: u64) -> Self {
        self.property(name, value.to_le_bytes().to_vec())
    }

    /// The attributes Weft derives from the request, unless set explicitly.
    fn derive_attributes(&self) {
        let mut own = self.attributes.own.lock();
        let (url_path, query) = match self.path.split_once('?') {
            Some((p, q)) => (p.to_owned(), q.to_owned()),
            None => (self.path.clone(), String::new()),
        };
        // `request.host`, `request.id`, `request.useragent` and `request.referer` are not
        // here: the host reads them from the stream's live request map, as in the proxy.
        let derived: [(&str, Vec<u8>); 9] = [
            ("request.path", self.path.clone().into_bytes()),
            ("request.url_path", url_path.into_bytes()),
            ("request.query", query.into_bytes()),
            ("request.method", self.method.clone().into_bytes()),
            ("request.scheme", self.scheme.clone().into_bytes()),
            ("request.protocol", b"HTTP/1.1".to_vec()),
            ("source.address", b"127.0.0.1:40000".to_vec()),
            ("destination.address", b"127.0.0.1:10000".to_vec()),
            ("connection.mtls", vec![0]),
        ];
        for (k, v) in derived {
            own.entry(k.to_owned()).or_insert(v);
        }
        let now = self
            .plugin
            .clock()
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        own.entry("request.time".into())
            .or_insert(now.to_le_bytes().to_vec());
    }

    fn stream(&mut self) -> Result<&mut Stream, Failure> {
        if self.stream.is_none() {
            self.derive_attributes();
            let props: Arc<dyn Properties> = self.attributes.clone();
            self.stream = Some(Stream::new(&self.plugin.plugin, props)?);
        }
        self.stream
            .as_mut()
            .ok_or_else(|| Failure::Unavailable("no stream".into()))
    }

    /// Sends the request headers (and body, and trailers) through the plugin, answering any
    /// callouts it makes from the scripts. Returns what the plugin decided.
    pub fn send_request(&mut self) -> Outcome {
        // The same live map the proxy moves in: an `http::HeaderMap` with the pseudo-headers
        // of the request line (`host` folded into `:authority`).
        let mut map = HeaderMap::new();
        let pairs = self.headers.iter().map(|(k, v)| (k, v.as_bytes()));
        for (k, v) in pairs.chain(self.raw_headers.iter().map(|(k, v)| (k, v.as_slice()))) {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                (Ok(n), Ok(v)) => {
                    map.append(n, v);
                }
                _ => {
                    return Outcome::Failed(format!(
                        "request header `{k}` is not valid on the wire (a proxy would refuse it)"
                    ));
                }
            }
        }
        let method = match Method::from_bytes(self.method.as_bytes()) {
            Ok(m) => m,
            Err(_) => return Outcome::Failed(format!("invalid method `{}`", self.method)),
        };
        let headers = Headers::request(&method, &self.scheme, &self.authority, &self.path, map);
        let has_body = !self.body.is_empty();
        let has_trailers = !self.trailers.is_empty();
        let body = self.body.clone();
        let mut trailers = Headers::default();
        for (k, v) in &self.trailers {
            if trailers.add(k, v.as_bytes()).is_err() {
                return Outcome::Failed(format!("request trailer `{k}` is not valid on the wire"));
            }
        }
        let result = (|| -> Result<Outcome, Failure> {
            let stream = self.stream()?;
            stream.data().request_headers = headers;
            let action = stream.on_request_headers(!has_body && !has_trailers)?;
            let outcome = self.settle(action, Phase::Request)?;
            if outcome != Outcome::Continue || (!has_body && !has_trailers) {
                return Ok(outcome);
            }
            if has_body {
                let stream = self.stream()?;
                stream.data().request_body = body.into();
                let action = stream.on_request_body(!has_trailers)?;
                let outcome = self.settle(action, Phase::Request)?;
                let seen = self.stream()?.data().request_body.take().into_vec();
                self.request_body_seen = seen;
                if outcome != Outcome::Continue || !has_trailers {
                    return Ok(outcome);
                }
            }
            let stream = self.stream()?;
            stream.data().request_trailers = trailers;
            let action = stream.on_request_trailers()?;
            self.settle(action, Phase::Request)
        })();
        result.unwrap_or_else(|f| Outcome::Failed(f.to_string()))
    }

    /// Sends the upstream's response through the plugin (headers, then the body as one
    /// chunk). `response.code` is set for the plugin's property reads.
    pub fn send_response(&mut self, response: CannedResponse) -> Outcome {
        self.attributes.own.lock().insert(
            "response.code".into(),
            u64::from(response.status).to_le_bytes().to_vec(),
        );
        let has_body = !response.body.is_empty();
        let headers = match response.headers() {
            Ok(h) => h,
            Err(e) => return Outcome::Failed(e),
        };
        let body = response.body;
        let result = (|| -> Result<Outcome, Failure> {
            let stream = self.stream()?;
            stream.data().response_headers = headers;
            let action = stream.on_response_headers(!has_body)?;
            let outcome = self.settle(action, Phase::Response)?;
            if outcome != Outcome::Continue || !has_body {
                return Ok(outcome);
            }
            let stream = self.stream()?;
            stream.data().response_body = body.into();
            let action = stream.on_response_body(true)?;
            let outcome = self.settle(action, Phase::Response)?;
            let seen = self.stream()?.data().response_body.take().into_vec();
            self.response_body_seen = seen;
            Ok(outcome)
        })();
        result.unwrap_or_else(|f| Outcome::Failed(f.to_string()))
    }

    /// Answers the callouts a callback made (and those their handlers make, up to a bound),
    /// then reads the effects: a local reply, or a resume of a paused stream.
    fn settle(&mut self, action: Action, phase: Phase) -> Result<Outcome, Failure> {
        let callouts = self.plugin.callouts.clone();
        let stream = self.stream()?;
        let mut resumed = false;
        for _ in 0..100 {
            let effects = stream.take_effects();
            if let Some(reply) = effects.local_response {
                return Ok(Outcome::LocalReply(LocalReply::from_host(reply)));
            }
            resumed |= match phase {
                Phase::Request => effects.resume_request,
                Phase::Response => effects.resume_response,
            };
            let calls = stream.take_calls();
            if calls.is_empty() {
                break;
            }
            for call in calls {
                let response = callouts.answer(&call);
                stream.on_http_call_response(&call, response)?;
            }
        }
        Ok(match action {
            Action::Continue => Outcome::Continue,
            Action::Pause if resumed => Outcome::Continue,
            Action::Pause => Outcome::Paused,
        })
    }

    /// Runs `on_log`, `on_done` and `on_delete` (also done on drop).
    pub fn finish(mut self) {
        if let Some(mut s) = self.stream.take() {
            s.finish();
        }
    }

    /// The request headers as the plugin left them (pseudo-headers included).
    pub fn request_headers(&mut self) -> Vec<(String, String)> {
        match self.stream.as_mut() {
            Some(s) => to_pairs(&s.data().request_headers),
            None => Vec::new(),
        }
    }

    /// A request header as the plugin left it.
    pub fn request_header(&mut self, name: &str) -> Option<String> {
        find(&self.request_headers(), name)
    }

    /// The request body as the plugin left it (what goes upstream).
    pub fn request_body(&self) -> &[u8] {
        &self.request_body_seen
    }

    /// The response headers as the plugin left them (`:status` included).
    pub fn response_headers(&mut self) -> Vec<(String, String)> {
        match self.stream.as_mut() {
            Some(s) => to_pairs(&s.data().response_headers),
            None => Vec::new(),
        }
    }

    /// A response header as the plugin left it.
    pub fn response_header(&mut self, name: &str) -> Option<String> {
        find(&self.response_headers(), name)
    }

    /// The response body as the plugin left it (what goes to the client).
    pub fn response_body(&self) -> &[u8] {
        &self.response_body_seen
    }

    /// Values the plugin wrote with `proxy_set_property` (filter state), by dotted path.
    pub fn filter_state(&mut self, path: &str) -> Option<Vec<u8>> {
        self.stream
            .as_mut()
            .and_then(|s| s.data().filter_state.get(path).cloned())
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Request,
    Response,
}
