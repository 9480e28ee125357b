//! Running a route's proxy-wasm chain on one request: headers (with pause and callouts),
//! bodies (streamed through each plugin, or buffered when a plugin pauses), trailers, and the
//! final `on_log` / `on_done` / `on_delete`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, request, response};
use http_body::Frame;
use http_body_util::BodyExt;
use parking_lot::{Mutex, MutexGuard};
use weft_wasm::{
    Action, BodyBuffer, Failure, FailurePolicy, Headers, LocalResponse, Properties, Pseudo, Stream,
    StreamData,
};

use weft_body::{BodyFilter, BoxError, ProxyBody};
use weft_extensions::{PluginHandle, PluginVersion};

use crate::reply::LocalReply;

/// Attributes of one request, for `proxy_get_property`, with Envoy's names and encodings.
/// Captured cheaply (shared `Uri` and `Method`) and encoded on demand. The attributes that are
/// request headers (`request.host`, `request.id`, `request.useragent`, `request.referer`) are
/// read by the host from the stream's live map, as Envoy reads them.
pub struct RequestProperties {
    method: http::Method,
    uri: http::Uri,
    peer: SocketAddr,
    local: SocketAddr,
    route: Arc<str>,
    connection_id: u64,
    h2: bool,
    time_ns: u64,
    size: Option<u64>,
    dynamic: Mutex<Dynamic>,
    security: Option<Arc<crate::security::ConnSecurity>>,
    /// A gRPC request (a plugin's local reply becomes a gRPC reply).
    grpc: bool,
}

impl RequestProperties {
    /// Captures the request's attributes.
    pub fn new(
        head: &request::Parts,
        peer: SocketAddr,
        local: SocketAddr,
        route: Arc<str>,
        connection_id: u64,
        h2: bool,
    ) -> RequestProperties {
        RequestProperties {
            method: head.method.clone(),
            uri: head.uri.clone(),
            peer,
            local,
            route,
            connection_id,
            h2,
            time_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64,
            size: head
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            dynamic: Mutex::new(Dynamic::default()),
            security: None,
            grpc: is_grpc(head),
        }
    }

    /// Adds the connection's TLS facts (`connection.mtls`, `source.principal`, …).
    pub fn with_security(mut self, security: Option<Arc<crate::security::ConnSecurity>>) -> Self {
        self.security = security;
        self
    }

    /// True when the request came over TLS (plugins see `:scheme: https`).
    pub fn is_tls(&self) -> bool {
        self.security.as_ref().is_some_and(|c| c.tls)
    }

    /// Records the body bytes received and sent, for `on_log` (`request.size`,
    /// `response.size`; the `*.total_size` add the header bytes).
    pub fn record_sizes(&self, received: u64, sent: u64) {
        let mut d = self.dynamic.lock();
        d.request_size = Some(received);
        d.response_size = Some(sent);
    }

    /// Records `response.code`.
    pub fn set_response_code(&self, code: u16) {
        self.dynamic.lock().response_code = Some(code);
    }

    /// Records `response.code_details` (no copy when it is unchanged or static).
    #[expect(
        clippy::ptr_arg,
        reason = "the Cow is cloned: free for the static details, as most are"
    )]
    pub fn set_code_details(&self, details: &std::borrow::Cow<'static, str>) {
        let mut d = self.dynamic.lock();
        if d.code_details.as_deref() != Some(&**details) {
            d.code_details = Some(details.clone());
        }
    }

    /// Records `response.flags` (Envoy's bit set).
    pub fn set_flags(&self, flags: u64) {
        self.dynamic.lock().flags = Some(flags);
    }

    /// Records the cluster (`xds.cluster_name`).
    pub fn set_cluster(&self, cluster: &Arc<str>) {
        self.dynamic.lock().cluster = Some(cluster.clone());
    }

    /// Records the upstream picked (`upstream.address`, `upstream.port`, `xds.cluster_name`)
    /// and `response.code_details: via_upstream`.
    pub fn set_upstream(&self, cluster: &Arc<str>, addr: SocketAddr) {
        let mut d = self.dynamic.lock();
        d.upstream = Some(addr);
        d.cluster = Some(cluster.clone());
        d.code_details = Some(std::borrow::Cow::Borrowed("via_upstream"));
    }

    /// Records any other value known later, by its dotted path.
    pub fn set(&self, key: &'static str, value: Vec<u8>) {
        let mut d = self.dynamic.lock();
        d.other.retain(|(k, _)| *k != key);
        d.other.push((key, value));
    }
}

impl Properties for RequestProperties {
    fn get(&self, path: &[&str]) -> Option<Vec<u8>> {
        let s = |v: &str| Some(v.as_bytes().to_vec());
        let n = |v: u64| Some(v.to_le_bytes().to_vec());
        match path {
            ["request", "path"] => s(self.uri.path_and_query().map_or("/", |p| p.as_str())),
            ["request", "url_path"] => s(self.uri.path()),
            ["request", "scheme"] => s(if self.is_tls() { "https" } else { "http" }),
            ["request", "method"] => s(self.method.as_str()),
            ["request", "query"] => s(self.uri.query().unwrap_or("")),
            ["request", "protocol"] => s(if self.h2 { "HTTP/2" } else { "HTTP/1.1" }),
            ["request", "time"] => n(self.time_ns),
            ["request", "size"] => self.dynamic.lock().request_size.or(self.size).and_then(n),
            ["response", "code"] => self.dynamic.lock().response_code.map(u64::from).and_then(n),
            ["response", "code_details"] => {
                let d = self.dynamic.lock();
                d.code_details.as_deref().and_then(s)
            }
            // Nothing sent yet and no flag raised, as Envoy reports them before the response
            // (the response phase and `on_log` record the real ones).
            ["response", "size"] => n(self.dynamic.lock().response_size.unwrap_or(0)),
            ["response", "flags"] => n(self.dynamic.lock().flags.unwrap_or(0)),
            ["upstream", "address"] => {
                let addr = self.dynamic.lock().upstream;
                addr.and_then(|a| s(&a.to_string()))
            }
            ["upstream", "port"] => {
                let addr = self.dynamic.lock().upstream;
                addr.and_then(|a| n(u64::from(a.port())))
            }
            ["xds", "cluster_name"] => {
                let cluster = self.dynamic.lock().cluster.clone();
                cluster.and_then(|c| s(&c))
            }
            ["source", "address"] => s(&self.peer.to_string()),
            ["source", "port"] => n(u64::from(self.peer.port())),
            ["destination", "address"] => s(&self.local.to_string()),
            ["destination", "port"] => n(u64::from(self.local.port())),
            ["connection", "id"] => n(self.connection_id),
            ["connection", "mtls"] => Some(vec![u8::from(
                self.security.as_ref().is_some_and(|c| c.mtls()),
            )]),
            ["connection", "tls_version"] => self.security.as_ref()?.version.and_then(s),
            ["connection", "requested_server_name"] => {
                s(self.security.as_ref()?.sni.as_deref().unwrap_or(""))
            }
            ["connection", "uri_san_local_certificate"] => {
                s(self.security.as_ref()?.local_uri.as_deref()?)
            }
            ["connection", "uri_san_peer_certificate"] | ["source", "principal"] => {
                s(&self.security.as_ref()?.peer.as_ref()?.uri_san)
            }
            ["connection", "subject_peer_certificate"] => {
                s(&self.security.as_ref()?.peer.as_ref()?.subject)
            }
            ["connection", "sha256_peer_certificate_digest"] => {
                s(&self.security.as_ref()?.peer.as_ref()?.hash_hex)
            }
            ["xds", "route_name"] | ["route_name"] => s(&self.route),
            _ => {
                let key = path.join(".");
                let d = self.dynamic.lock();
                d.other
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone())
            }
        }
    }
}

/// Attributes known only later in the request, kept typed and encoded when a plugin asks.
#[derive(Default)]
struct Dynamic {
    response_code: Option<u16>,
    code_details: Option<std::borrow::Cow<'static, str>>,
    flags: Option<u64>,
    request_size: Option<u64>,
    response_size: Option<u64>,
    upstream: Option<SocketAddr>,
    cluster: Option<Arc<str>>,
    /// Anything else recorded with [`RequestProperties::set`].
    other: Vec<(&'static str, Vec<u8>)>,
}

/// One plugin's stream for this request.
struct Stage {
    handle: Arc<PluginHandle>,
    stream: Arc<Mutex<Stream>>,
    policy: FailurePolicy,
    skipped: bool,
}

/// What the chain decided.
pub enum Outcome {
    /// Go on.
    Continue,
    /// Answer with this instead.
    Reply(LocalReply),
}

/// The chain's streams for one request.
pub struct WasmExchange {
    stages: Vec<Stage>,
    properties: Arc<RequestProperties>,
    /// The request body was buffered and delivered whole to every plugin already.
    body_delivered: bool,
    /// A plugin answered the request headers with a local reply.
    local_reply: bool,
    /// How long a plugin may hold a paused request (the route timeout).
    hold_limit: Option<std::time::Duration>,
}

/// A plugin's local reply as the client gets it. On a gRPC request (`content-type:
/// application/grpc…`) it is, as Envoy sends it, a trailers-only gRPC response: HTTP 200,
/// `content-type: application/grpc`, `grpc-status` (the plugin's, or mapped from the HTTP
/// status when it gave none) and the body as `grpc-message`. Elsewhere the gRPC status is
/// ignored, as in Envoy.
fn reply_from(local: LocalResponse, grpc: bool) -> LocalReply {
    let mut headers = HeaderMap::new();
    for (k, v) in &local.headers.0 {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(n, v);
        }
    }
    let details = if local.details.is_empty() {
        "wasm_local_reply".to_owned()
    } else {
        local.details
    };
    if grpc {
        let code = local
            .grpc_status
            .and_then(|g| u32::try_from(g).ok())
            .unwrap_or_else(|| weft_wasm::grpc::http_to_grpc_status(local.status));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(code),
        );
        if !local.body.is_empty()
            && let Ok(v) = HeaderValue::from_str(&grpc_message(&local.body))
        {
            headers.insert(HeaderName::from_static("grpc-message"), v);
        }
        return LocalReply {
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
            details,
            flag: None,
        };
    }
    // As Envoy: a body without a declared type is text.
    if !local.body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    LocalReply {
        status: StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        headers,
        body: local.body,
        details,
        flag: None,
    }
}

/// A `grpc-message` value: the gRPC spec's percent-encoding (bytes outside printable ASCII,
/// and `%`).
fn grpc_message(body: &[u8]) -> String {
    let mut out = String::with_capacity(body.len());
    for &b in body {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// True for a gRPC request (Envoy's `Grpc::Common::isGrpcRequestHeaders`).
fn is_grpc(head: &request::Parts) -> bool {
    head.headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn failure_reply(label: &str, failure: &Failure) -> LocalReply {
    LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"plugin failure\n"),
        details: format!("plugin {label}: {failure}"),
        flag: None,
    }
}

fn lock(stream: &Arc<Mutex<Stream>>) -> MutexGuard<'_, Stream> {
    stream.lock()
}

/// Waits, without blocking the worker thread, until the stream's instance is free, and grants
/// the next callback the permit (see `Stream::gate`).
async fn gated(stream: &Arc<Mutex<Stream>>) {
    let gate = {
        let mut s = lock(stream);
        // The usual case: the instance is free, no need to wait.
        if s.try_gate() {
            return;
        }
        s.plugin()
            .stats
            .instance_waits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.gate()
    };
    let pass = gate.enter().await;
    lock(stream).grant(pass);
}

/// Runs one callback of `stream` (after [`gated`]): inline, or, for a slow plugin on a
/// current-thread runtime (`runtime.accept: reuseport`, `workers: 1`), on a low-priority
/// offload thread, awaited without blocking the worker (see `weft_wasm::pace`). `cancelled`
/// stands for the outcome when the callback could not run there.
async fn callback<R: Send + 'static>(
    stream: &Arc<Mutex<Stream>>,
    f: impl FnOnce(&mut Stream) -> R + Send + 'static,
    cancelled: impl FnOnce(Failure) -> R,
) -> R {
    {
        let mut s = lock(stream);
        if !s.offload_now() {
            return f(&mut s);
        }
    }
    let s = stream.clone();
    match weft_wasm::pace::off_worker(move || f(&mut s.lock())).await {
        Some(r) => r,
        None => cancelled(Failure::Unavailable(
            "the runtime shut down before the plugin's callback ran".into(),
        )),
    }
}

/// What a headers callback returned.
struct HeadersOutcome {
    action: Result<Action, Failure>,
    /// The plugin continued and left no effect and no callout: nothing to settle (the usual
    /// case; [`WasmExchange::settle`] would return `Continue` at once).
    quiet: bool,
    /// Quiet, and the plugin wrote to the headers (read and cleared under the callback's lock).
    modified: bool,
}

/// One headers callback (`run`: `on_request_headers` or `on_response_headers`) once the
/// stream's instance is free: the live map is moved into the plugin's stream (`field`) for the
/// callback and back out into `headers`, unless the plugin paused (then it stays in the stream,
/// for the callbacks that resume it).
async fn headers_callback(
    stream: &Arc<Mutex<Stream>>,
    headers: &mut Headers,
    end_of_stream: bool,
    field: fn(&mut StreamData) -> &mut Headers,
    run: fn(&mut Stream, bool) -> Result<Action, Failure>,
) -> HeadersOutcome {
    gated(stream).await;
    let live = std::mem::take(headers);
    let (outcome, back) = callback(
        stream,
        move |s| {
            *field(s.data()) = live;
            let r = run(s, end_of_stream);
            let back = if matches!(r, Ok(Action::Pause)) {
                Headers::default()
            } else {
                std::mem::take(field(s.data()))
            };
            let quiet = matches!(r, Ok(Action::Continue)) && !s.has_pending();
            let modified = quiet && std::mem::take(&mut s.data().headers_modified);
            let outcome = HeadersOutcome {
                action: r,
                quiet,
                modified,
            };
            (outcome, back)
        },
        |f| {
            let outcome = HeadersOutcome {
                action: Err(f),
                quiet: false,
                modified: false,
            };
            (outcome, Headers::default())
        },
    )
    .await;
    if !matches!(outcome.action, Ok(Action::Pause)) {
        *headers = back;
    }
    outcome
}

/// Request headers as plugins see them: the request's own header map, moved (not copied), with
/// the pseudo-headers of the request line first and `host` folded into `:authority`.
fn request_map(head: &mut request::Parts, authority: &str, scheme: &'static str) -> Headers {
    let map = std::mem::take(&mut head.headers);
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    Headers::request(&head.method, scheme, authority, path, map)
}

/// Moves the (possibly plugin-edited) request headers back into the request; the request line
/// follows the pseudo-headers only when a plugin wrote to the map.
fn restore_request(
    head: &mut request::Parts,
    headers: &mut Headers,
    modified: bool,
    had_host: bool,
) {
    let (pseudo, map) = headers.take_parts();
    apply_request(head, pseudo, map, modified, had_host);
}

fn apply_request(
    head: &mut request::Parts,
    pseudo: Pseudo,
    mut map: HeaderMap,
    modified: bool,
    had_host: bool,
) {
    for (k, v) in pseudo {
        match k.as_ref() {
            ":authority" if modified || had_host => {
                map.insert(header::HOST, v);
            }
            // A write to the map usually leaves the request line alone: compare before parsing.
            ":method" if modified && v.as_bytes() != head.method.as_str().as_bytes() => {
                if let Ok(m) = http::Method::from_bytes(v.as_bytes()) {
                    head.method = m;
                }
            }
            ":path"
                if modified
                    && Some(v.as_bytes())
                        != head.uri.path_and_query().map(|p| p.as_str().as_bytes()) =>
            {
                if let Ok(pq) = http::uri::PathAndQuery::try_from(v.as_bytes()) {
                    let mut parts = head.uri.clone().into_parts();
                    parts.path_and_query = Some(pq);
                    if let Ok(u) = http::Uri::from_parts(parts) {
                        head.uri = u;
                    }
                }
            }
            _ => {}
        }
    }
    head.headers = map;
}

/// Response headers as plugins see them: the response's own map, moved, after `:status`.
fn response_map(head: &mut response::Parts) -> Headers {
    Headers::response(head.status, std::mem::take(&mut head.headers))
}

/// Moves the response headers back; `:status` is applied when a plugin wrote to the map.
fn restore_response(head: &mut response::Parts, headers: &mut Headers, modified: bool) {
    let (pseudo, map) = headers.take_parts();
    apply_response(head, &pseudo, map, modified);
}

fn apply_response(head: &mut response::Parts, pseudo: &Pseudo, map: HeaderMap, modified: bool) {
    if modified
        && let Some((_, v)) = pseudo.iter().find(|(k, _)| k == ":status")
        && let Some(s) = v.to_str().ok().and_then(|s| s.parse::<u16>().ok())
        && let Ok(status) = StatusCode::from_u16(s)
    {
        head.status = status;
    }
    head.headers = map;
}

impl WasmExchange {
    /// Creates a stream context in every plugin of `chain`, applying failure policies to
    /// plugins that cannot serve.
    pub async fn start(
        chain: &[Arc<PluginHandle>],
        properties: Arc<RequestProperties>,
    ) -> Result<WasmExchange, LocalReply> {
        let mut stages = Vec::with_capacity(chain.len());
        for handle in chain {
            let policy = handle.policy();
            let started = match &*handle.current() {
                PluginVersion::Loaded(plugin) => {
                    let plugin = plugin.clone();
                    Stream::start(&plugin, properties.clone()).await
                }
                PluginVersion::Failed { error } => {
                    Err(Failure::Unavailable(format!("not loaded: {error}")))
                }
            };
            match started {
                Ok(stream) => stages.push(Stage {
                    handle: handle.clone(),
                    stream: Arc::new(Mutex::new(stream)),
                    policy,
                    skipped: false,
                }),
                Err(f) => {
                    count(handle, policy);
                    if policy != FailurePolicy::FailOpen {
                        return Err(failure_reply(&handle.label(), &f));
                    }
                }
            }
        }
        Ok(WasmExchange {
            stages,
            properties,
            body_delivered: false,
            local_reply: false,
            hold_limit: None,
        })
    }

    /// Bounds how long a plugin may hold a request it paused with nothing pending (the route
    /// timeout; `None`: only the stream idle timeout bounds it).
    pub fn with_hold_limit(mut self, limit: Option<std::time::Duration>) -> WasmExchange {
        self.hold_limit = limit;
        self
    }

    /// The request's attributes (to record the response code and upstream later).
    pub fn properties(&self) -> &RequestProperties {
        &self.properties
    }

    /// Applies the failure policy of stage `i`; `Err` is the reply for fail-closed.
    fn failed(&mut self, i: usize, failure: &Failure) -> Result<(), LocalReply> {
        let stage = &mut self.stages[i];
        stage.skipped = true;
        count(&stage.handle, stage.policy);
        if stage.policy == FailurePolicy::FailOpen {
            Ok(())
        } else {
            Err(failure_reply(&stage.handle.label(), failure))
        }
    }

    /// Runs `on_request_headers` through the chain, handling pauses (callouts, body
    /// buffering). `body` may be replaced by a buffered one.
    pub async fn request_headers(
        &mut self,
        head: &mut request::Parts,
        authority: &str,
        body: &mut ProxyBody,
        max_body: usize,
    ) -> Outcome {
        let had_host = head.headers.contains_key(header::HOST);
        let mut headers = request_map(head, authority, self.scheme());
        let mut modified = false;
        let mut buffered: Option<BodyBuffer> = None;
        for i in 0..self.stages.len() {
            if self.stages[i].skipped {
                continue;
            }
            let end_of_stream = buffered.is_none() && http_body::Body::is_end_stream(body);
            let outcome = headers_callback(
                &self.stages[i].stream,
                &mut headers,
                end_of_stream,
                |d| &mut d.request_headers,
                Stream::on_request_headers,
            )
            .await;
            if outcome.quiet {
                modified |= outcome.modified;
                continue;
            }
            let action = match outcome.action {
                Ok(a) => a,
                Err(f) => match self.failed(i, &f) {
                    Ok(()) => continue,
                    Err(r) => {
                        restore_request(head, &mut headers, modified, had_host);
                        return Outcome::Reply(r);
                    }
                },
            };
            let paused = action == Action::Pause;
            let mut settled = self.settle(i, action).await;
            if matches!(settled, Settled::Stalled) {
                // Paused with nothing pending (Envoy's StopIteration). A body the plugin may be
                // waiting for is buffered (bounded) and delivered whole to every plugin, once;
                // then, unless a callback resumed it, the stream is held until the plugin
                // resumes it from a root callback (`on_tick`, …), bounded by the route timeout.
                // A request without a body gets no body callback and no `Content-Length: 0`.
                if buffered.is_none() && !http_body::Body::is_end_stream(body) {
                    // The plugins before this one see the headers in their body callback too.
                    let seen = lock(&self.stages[i].stream).data().request_headers.clone();
                    for stage in &self.stages[..i] {
                        lock(&stage.stream).data().request_headers = seen.clone();
                    }
                    drop(seen);
                    let out = match buffer_body(body, max_body).await {
                        Ok(w) => self.request_body_whole(w, i).await,
                        Err(r) => Err(r),
                    };
                    match out {
                        Ok(b) => buffered = Some(b),
                        Err(reply) => {
                            let mut s = lock(&self.stages[i].stream);
                            headers = std::mem::take(&mut s.data().request_headers);
                            drop(s);
                            restore_request(head, &mut headers, modified, had_host);
                            return Outcome::Reply(reply);
                        }
                    }
                }
                settled = self.hold(i).await;
            }
            {
                let mut s = lock(&self.stages[i].stream);
                // Callbacks after a pause (callout responses, a body callback, a root callback
                // that resumed it) may have edited the headers: they stayed in the stream.
                if paused {
                    headers = std::mem::take(&mut s.data().request_headers);
                }
                modified |= std::mem::take(&mut s.data().headers_modified);
            }
            if let Settled::Reply(r) = settled {
                // As Envoy's encoder chain: the reply passes back through this plugin and
                // those before it, not through the plugins after it.
                for later in &mut self.stages[i + 1..] {
                    later.skipped = true;
                }
                self.local_reply = true;
                self.finish_request(head, &mut headers, modified, had_host);
                return Outcome::Reply(r);
            }
        }
        self.finish_request(head, &mut headers, modified, had_host);
        if let Some(b) = buffered {
            // Every plugin has seen the whole body, with `end_of_stream`: once.
            self.body_delivered = true;
            head.headers.remove(header::TRANSFER_ENCODING);
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
            *body = ProxyBody::frames(data_frames(b).collect());
        }
        Outcome::Continue
    }

    /// Moves the final request headers back into the request ([`restore_request`]) and gives
    /// every plugin a reference to one read-only copy of them, for the response phase and
    /// `on_log` (the request's own map goes upstream).
    fn finish_request(
        &self,
        head: &mut request::Parts,
        headers: &mut Headers,
        modified: bool,
        had_host: bool,
    ) {
        let (pseudo, map, snapshot) = headers.take_parts_keeping();
        self.share_request(&snapshot);
        apply_request(head, pseudo, map, modified, had_host);
    }

    /// The response counterpart of [`finish_request`](Self::finish_request).
    fn finish_response(&self, head: &mut response::Parts, headers: &mut Headers, modified: bool) {
        let (pseudo, map, snapshot) = headers.take_parts_keeping();
        self.share_response(&snapshot);
        apply_response(head, &pseudo, map, modified);
    }

    /// Gives every plugin of the chain a reference to the final request headers (for the
    /// response phase and `on_log`, where they are read-only).
    fn share_request(&self, headers: &Headers) {
        if headers.is_empty() {
            return;
        }
        for stage in &self.stages {
            lock(&stage.stream).data().request_headers = headers.clone();
        }
    }

    /// The response counterpart of [`share_request`](Self::share_request).
    fn share_response(&self, headers: &Headers) {
        for stage in &self.stages {
            lock(&stage.stream).data().response_headers = headers.clone();
        }
    }

    /// `:scheme` as plugins see it: `https` on a TLS listener.
    fn scheme(&self) -> &'static str {
        if self.properties.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// After a pausing callback: runs callouts and their responses until the plugin resumes,
    /// replies, or has nothing left to wait for.
    async fn settle(&mut self, i: usize, mut action: Action) -> Settled {
        loop {
            let (effects, calls) = {
                let mut s = lock(&self.stages[i].stream);
                (s.take_effects(), s.take_calls())
            };
            if let Some(local) = effects.local_response {
                return Settled::Reply(reply_from(local, self.properties.grpc));
            }
            if effects.close {
                return Settled::Reply(LocalReply {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                    details: format!("plugin {} closed the stream", self.stages[i].handle.label()),
                    flag: None,
                });
            }
            if effects.resume_request || effects.resume_response {
                action = Action::Continue;
            }
            if action == Action::Continue && calls.is_empty() {
                return Settled::Continue;
            }
            if calls.is_empty() {
                return Settled::Stalled;
            }
            let plugin = lock(&self.stages[i].stream).plugin().clone();
            for call in calls {
                let response = plugin_call(&plugin, &call).await;
                gated(&self.stages[i].stream).await;
                let r = callback(
                    &self.stages[i].stream,
                    move |s| s.on_http_call_response(&call, response),
                    Err,
                )
                .await;
                if let Err(f) = r {
                    return match self.failed(i, &f) {
                        Ok(()) => Settled::Continue,
                        Err(reply) => Settled::Reply(reply),
                    };
                }
            }
            if action == Action::Continue {
                // Callouts fired by a plugin that did not pause: responses are delivered, the
                // request never waited for them beyond this point.
                continue;
            }
        }
    }

    /// Delivers the whole request body to every plugin (`on_request_body`, end of stream).
    /// Effects of stage `holder` (the one that paused) other than a local reply are kept for
    /// [`hold`](Self::hold): it may resume from its body callback.
    async fn request_body_whole(
        &mut self,
        whole: BodyBuffer,
        holder: usize,
    ) -> Result<BodyBuffer, LocalReply> {
        let mut data = whole;
        for i in 0..self.stages.len() {
            if self.stages[i].skipped {
                continue;
            }
            gated(&self.stages[i].stream).await;
            let body = data.take();
            let (r, back) = callback(
                &self.stages[i].stream,
                move |s| {
                    s.data().request_body = body;
                    let r = s.on_request_body(true);
                    (r, s.data().request_body.take())
                },
                |f| (Err(f), BodyBuffer::new()),
            )
            .await;
            data = back;
            if let Err(f) = r {
                self.failed(i, &f)?;
            }
            let local = {
                let mut s = lock(&self.stages[i].stream);
                if i == holder {
                    s.data().effects.local_response.take()
                } else {
                    s.take_effects().local_response
                }
            };
            if let Some(local) = local {
                return Err(reply_from(local, self.properties.grpc));
            }
        }
        Ok(data)
    }

    /// Holds stage `i`, paused with nothing pending, until its plugin resumes it (or replies,
    /// or closes it) from a root callback — Envoy keeps such a stream until
    /// `proxy_continue_stream`. Bounded by the route timeout (504, flag `UT`; Envoy would hold
    /// it until the stream idle timeout). A failure of the instance meanwhile applies the
    /// plugin's failure policy.
    async fn hold(&mut self, i: usize) -> Settled {
        let deadline = self.hold_limit.map(|d| tokio::time::Instant::now() + d);
        loop {
            let parked = lock(&self.stages[i].stream).park();
            let wake = match parked {
                Ok(w) => w,
                Err(f) => return self.failed_settled(i, &f),
            };
            let woke = match deadline {
                Some(d) => tokio::time::timeout_at(d, wake.notified()).await.is_ok(),
                None => {
                    wake.notified().await;
                    true
                }
            };
            let failed = {
                let mut s = lock(&self.stages[i].stream);
                s.unpark();
                s.failed()
            };
            if failed {
                let f = Failure::Unavailable(format!(
                    "plugin {} instance failed while it held the request",
                    self.stages[i].handle.label()
                ));
                return self.failed_settled(i, &f);
            }
            if !woke {
                return Settled::Reply(
                    LocalReply::text(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                        weft_observe::flags::UPSTREAM_TIMEOUT,
                    )
                    .detailed(&format!(
                        "plugin {} held the request past the route timeout",
                        self.stages[i].handle.label()
                    )),
                );
            }
            match self.settle(i, Action::Pause).await {
                Settled::Stalled => continue,
                other => return other,
            }
        }
    }

    /// The failure policy of stage `i` as a settlement.
    fn failed_settled(&mut self, i: usize, failure: &Failure) -> Settled {
        match self.failed(i, failure) {
            Ok(()) => Settled::Continue,
            Err(reply) => Settled::Reply(reply),
        }
    }

    /// A body filter that streams request body frames through the chain.
    pub fn request_body_pipeline(&self) -> Pipeline {
        Pipeline::new(&self.stages, Direction::Request, self.properties.grpc)
    }

    /// A reply the chain made (a plugin's local reply, or a failure under `fail_closed`), as
    /// the client will get it. A plugin's own local reply runs through the response callbacks
    /// of that plugin and those before it (Envoy's encoder chain: they may add headers or
    /// rewrite the body); every reply records `response.code` and `response.code_details` for
    /// `on_log`.
    pub async fn reply(&mut self, reply: LocalReply, max_body: usize) -> LocalReply {
        self.properties.set_response_code(reply.status.as_u16());
        self.properties
            .set_code_details(&std::borrow::Cow::Owned(reply.details.clone()));
        if !std::mem::take(&mut self.local_reply) {
            return reply;
        }
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = reply.status;
        head.headers = reply.headers.clone();
        if !head.headers.contains_key(header::CONTENT_LENGTH) {
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(reply.body.len()));
        }
        let body = match self
            .response(&mut head, ProxyBody::full(reply.body.clone()), max_body)
            .await
        {
            Ok(body) => body,
            Err(r) => return r,
        };
        let body = match http_body_util::Limited::new(body, max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => return reply,
        };
        head.headers.remove(header::CONTENT_LENGTH);
        LocalReply {
            status: head.status,
            headers: head.headers,
            body,
            details: reply.details,
            flag: reply.flag,
        }
    }

    /// The request body to send upstream, streamed through the plugins' `on_request_body`,
    /// keeping the client's framing: a body with `Content-Length` keeps it unless a plugin
    /// changes the length. The head is held until the first bytes have passed every plugin (as
    /// for responses): a plugin that buffers to the end gets an exact `Content-Length` for its
    /// rewritten body; one that changed the first bytes' length makes the body chunked; one that
    /// changes the length later fails the upstream request (500) rather than break the framing.
    /// A body already delivered whole (a pause in `on_request_headers`) is not delivered again.
    pub async fn request_body(
        &mut self,
        head: &mut request::Parts,
        mut body: ProxyBody,
    ) -> Result<ProxyBody, LocalReply> {
        if self.body_delivered || http_body::Body::is_end_stream(&body) {
            return Ok(body);
        }
        let mut pipeline = self.request_body_pipeline();
        if pipeline.is_empty() {
            return Ok(body);
        }
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let Some(declared) = declared else {
            // Chunked in, chunked out.
            return Ok(ProxyBody::piped(VecDeque::new(), body, Box::new(pipeline)));
        };
        let mut prefix: VecDeque<Frame<Bytes>> = VecDeque::new();
        let (mut seen, mut emitted) = (0u64, 0u64);
        let mut ended = false;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        seen += data.len() as u64;
                        let eos = http_body::Body::is_end_stream(&body);
                        let out = pipeline
                            .push_buffer(data.into(), eos)
                            .map_err(|e| e.reply())?;
                        emitted += out.len() as u64;
                        prefix.extend(data_frames(out));
                        if eos {
                            ended = true;
                            break;
                        }
                        if emitted > 0 {
                            break;
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let (out, trailers) =
                                pipeline.trailers(trailers).map_err(|e| e.reply())?;
                            emitted += out.len() as u64;
                            if !out.is_empty() {
                                prefix.push_back(Frame::data(out));
                            }
                            prefix.push_back(Frame::trailers(trailers));
                        }
                        ended = true;
                        break;
                    }
                },
                Some(Err(e)) => {
                    return Err(LocalReply {
                        status: StatusCode::BAD_REQUEST,
                        headers: HeaderMap::new(),
                        body: Bytes::new(),
                        details: format!("body read failed: {e}"),
                        flag: None,
                    });
                }
                None => {
                    let out = pipeline
                        .push_buffer(BodyBuffer::new(), true)
                        .map_err(|e| e.reply())?;
                    emitted += out.len() as u64;
                    prefix.extend(data_frames(out));
                    ended = true;
                    break;
                }
            }
        }
        if ended {
            if prefix.iter().any(Frame::is_trailers) {
                // Trailers need chunked framing.
                head.headers.remove(header::CONTENT_LENGTH);
            } else if emitted != declared {
                head.headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(emitted));
            }
            return Ok(ProxyBody::frames(prefix));
        }
        if emitted != seen {
            // Rewritten while still streaming: the length is no longer known.
            head.headers.remove(header::CONTENT_LENGTH);
            return Ok(ProxyBody::piped(prefix, body, Box::new(pipeline)));
        }
        let guard = LengthGuard {
            pipeline,
            remaining: declared.saturating_sub(emitted),
        };
        Ok(ProxyBody::piped(prefix, body, Box::new(guard)))
    }

    /// Runs `on_response_headers` in reverse order; then, unless the response has no body,
    /// holds the headers until the first body bytes have passed every plugin, so that a plugin
    /// that buffers and rewrites the body gets a correct Content-Length (Envoy keeps the old
    /// one). Returns the body to send.
    pub async fn response(
        &mut self,
        head: &mut response::Parts,
        body: ProxyBody,
        max_body: usize,
    ) -> Result<ProxyBody, LocalReply> {
        self.properties.set_response_code(head.status.as_u16());
        let mut headers = response_map(head);
        let mut modified = false;
        let end_of_stream = http_body::Body::is_end_stream(&body);
        let mut whole_body: Option<BodyBuffer> = None;
        let mut body = body;
        for i in (0..self.stages.len()).rev() {
            if self.stages[i].skipped {
                continue;
            }
            let outcome = headers_callback(
                &self.stages[i].stream,
                &mut headers,
                end_of_stream,
                |d| &mut d.response_headers,
                Stream::on_response_headers,
            )
            .await;
            if outcome.quiet {
                modified |= outcome.modified;
                continue;
            }
            let action = match outcome.action {
                Ok(a) => a,
                Err(f) => {
                    if let Err(r) = self.failed(i, &f) {
                        restore_response(head, &mut headers, modified);
                        return Err(r);
                    }
                    continue;
                }
            };
            let paused = action == Action::Pause;
            let settled = self.settle(i, action).await;
            {
                let mut s = lock(&self.stages[i].stream);
                if paused {
                    headers = std::mem::take(&mut s.data().response_headers);
                }
                modified |= std::mem::take(&mut s.data().headers_modified);
            }
            match settled {
                Settled::Reply(r) => {
                    self.finish_response(head, &mut headers, modified);
                    return Err(r);
                }
                Settled::Continue => {}
                Settled::Stalled if whole_body.is_none() => {
                    // Later plugins (and this one's body callback) still see the headers.
                    self.share_response(&headers);
                    let whole = buffer_body(&mut body, max_body).await.map_err(|mut r| {
                        r.status = StatusCode::INTERNAL_SERVER_ERROR;
                        r
                    });
                    match whole {
                        Ok(w) => whole_body = Some(w),
                        Err(r) => {
                            restore_response(head, &mut headers, modified);
                            return Err(r);
                        }
                    }
                }
                Settled::Stalled => {}
            }
        }
        // Every plugin keeps the final response headers (body callbacks, `on_log`): shared.
        self.finish_response(head, &mut headers, modified);
        let mut pipeline = Pipeline::new(&self.stages, Direction::Response, self.properties.grpc);
        if let Some(whole) = whole_body {
            let out = pipeline.push_buffer(whole, true).map_err(|e| e.reply())?;
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
            return Ok(ProxyBody::frames(data_frames(out).collect()));
        }
        if end_of_stream || pipeline.is_empty() {
            return Ok(body);
        }
        // Hold the headers until the first bytes pass (or the plugins buffer it all).
        let mut prefix: VecDeque<Frame<Bytes>> = VecDeque::new();
        let mut seen = 0usize;
        let mut emitted = 0usize;
        let mut ended = false;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        seen += data.len();
                        let eos = http_body::Body::is_end_stream(&body);
                        let out = pipeline
                            .push_buffer(data.into(), eos)
                            .map_err(|e| e.reply())?;
                        emitted += out.len();
                        prefix.extend(data_frames(out));
                        if eos {
                            ended = true;
                            break;
                        }
                        if emitted > 0 {
                            break;
                        }
                        if seen > max_body {
                            return Err(LocalReply {
                                status: StatusCode::INTERNAL_SERVER_ERROR,
                                headers: HeaderMap::new(),
                                body: Bytes::from_static(
                                    b"response body too large for a plugin buffer\n",
                                ),
                                details: "wasm_buffer_overflow".into(),
                                flag: None,
                            });
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let (out, trailers) =
                                pipeline.trailers(trailers).map_err(|e| e.reply())?;
                            emitted += out.len();
                            if !out.is_empty() {
                                prefix.push_back(Frame::data(out));
                            }
                            prefix.push_back(Frame::trailers(trailers));
                        }
                        ended = true;
                        break;
                    }
                },
                Some(Err(_)) => {
                    return Err(LocalReply {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        headers: HeaderMap::new(),
                        body: Bytes::from_static(b"upstream reset\n"),
                        details: "upstream_reset_while_buffering".into(),
                        flag: None,
                    });
                }
                None => {
                    let out = pipeline
                        .push_buffer(BodyBuffer::new(), true)
                        .map_err(|e| e.reply())?;
                    emitted += out.len();
                    prefix.extend(data_frames(out));
                    ended = true;
                    break;
                }
            }
        }
        if ended {
            // The usual case, a body the plugins passed unchanged with its `Content-Length`:
            // nothing to rewrite (formatting the length allocates).
            let framed = !head.headers.contains_key(header::TRANSFER_ENCODING)
                && head
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                    == Some(emitted);
            if !framed {
                head.headers.remove(header::TRANSFER_ENCODING);
                head.headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(emitted));
            }
            return Ok(ProxyBody::frames(prefix));
        }
        if emitted != seen {
            // Already rewritten and still streaming: the length is no longer known.
            head.headers.remove(header::CONTENT_LENGTH);
        }
        Ok(ProxyBody::piped(prefix, body, Box::new(pipeline)))
    }

    /// `on_log`, `on_done`, `on_delete` for every plugin, in chain order: inline while each
    /// plugin's instance is free and the plugin is not slow (the usual case). From the first
    /// that is busy (another stream's callback holds it, e.g. a slow plugin's, offloaded) or
    /// slow, the rest of the chain ends in a task of its own, in the same order, waiting for
    /// each instance without blocking the worker, and running a slow plugin's end callbacks
    /// off the worker as its other callbacks are.
    pub fn finish(self) {
        let mut streams = self.stages.into_iter().map(|stage| stage.stream);
        while let Some(stream) = streams.next() {
            {
                let mut s = lock(&stream);
                if s.try_gate() && !s.offload_now() {
                    s.finish();
                    continue;
                }
            }
            let rest: Vec<Arc<Mutex<Stream>>> = std::iter::once(stream).chain(streams).collect();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        for stream in rest {
                            gated(&stream).await;
                            callback(&stream, Stream::finish, |_| ()).await;
                        }
                    });
                }
                // No runtime to wait on (dropped outside one, e.g. at shutdown): wait here.
                Err(_) => {
                    for stream in rest {
                        lock(&stream).finish();
                    }
                }
            }
            return;
        }
    }
}

fn count(handle: &PluginHandle, policy: FailurePolicy) {
    if let PluginVersion::Loaded(p) = &*handle.current() {
        let c = if policy == FailurePolicy::FailOpen {
            &p.stats.skipped
        } else {
            &p.stats.rejected
        };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn plugin_call(
    plugin: &Arc<weft_wasm::Plugin>,
    call: &weft_wasm::HttpCallRequest,
) -> Option<weft_wasm::HttpCallResponse> {
    plugin.embedder().http_call(call.clone()).await
}

enum Settled {
    Continue,
    Stalled,
    Reply(LocalReply),
}

/// Reads the whole body (its chunks, not copied), refusing more than `max` bytes with 413.
async fn buffer_body(body: &mut ProxyBody, max: usize) -> Result<BodyBuffer, LocalReply> {
    let mut out = BodyBuffer::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| LocalReply {
            status: StatusCode::BAD_REQUEST,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            details: format!("body read failed: {e}"),
            flag: None,
        })?;
        if let Ok(data) = frame.into_data() {
            out.push(data);
            if out.len() > max {
                return Err(LocalReply {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    headers: HeaderMap::new(),
                    body: Bytes::from_static(b"Payload Too Large"),
                    details: "wasm_buffer_overflow".into(),
                    flag: None,
                });
            }
        }
    }
    Ok(out)
}

/// The chunks of `buffer` as data frames, as they are (not joined).
fn data_frames(buffer: BodyBuffer) -> impl Iterator<Item = Frame<Bytes>> {
    buffer.into_chunks().map(Frame::data)
}

/// The reply for a body over a plugin's `max_body_bytes` (Envoy: 413 for a request, 500 for a
/// response).
fn body_too_large(direction: Direction, label: &str) -> LocalReply {
    let (status, body): (StatusCode, &'static [u8]) = match direction {
        Direction::Request => (StatusCode::PAYLOAD_TOO_LARGE, b"Payload Too Large"),
        Direction::Response => (
            StatusCode::INTERNAL_SERVER_ERROR,
            b"response body too large for a plugin buffer\n",
        ),
    };
    LocalReply {
        status,
        headers: HeaderMap::new(),
        body: Bytes::from_static(body),
        details: format!("wasm_buffer_overflow: plugin {label} held more than max_body_bytes"),
        flag: None,
    }
}

/// Which body a pipeline filters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Request body, chain order.
    Request,
    /// Response body, reverse order.
    Response,
}

struct PipeStage {
    /// The plugin (its label is built only for an error reply).
    handle: Arc<PluginHandle>,
    stream: Arc<Mutex<Stream>>,
    policy: FailurePolicy,
    /// What the plugin holds while paused: the chunks as they came (not copied).
    held: BodyBuffer,
    /// The plugin's `max_body_bytes`: the most it may hold while paused.
    max_held: usize,
    disabled: bool,
}

/// Streams body frames through each plugin's body callback; a plugin that returns Pause holds
/// the bytes (they are released when it continues or the stream ends).
pub struct Pipeline {
    stages: Vec<PipeStage>,
    direction: Direction,
    ended: bool,
    /// Set once a plugin held more than its `max_body_bytes`: every later push fails the same.
    overflowed: Option<LocalReply>,
    /// The request is gRPC (a local reply is a gRPC one).
    grpc: bool,
}

/// A plugin failed or replied in the middle of a body.
pub struct PipelineError(LocalReply);

impl PipelineError {
    fn reply(self) -> LocalReply {
        self.0
    }

    /// The reply this error stands for, when `error` (or an error it wraps, e.g. an upstream
    /// request whose body failed) is one.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<LocalReply> {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(cur) = e {
            if let Some(p) = cur.downcast_ref::<PipelineError>() {
                return Some(p.0.clone());
            }
            e = cur.source();
        }
        None
    }
}

impl std::fmt::Debug for PipelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.details)
    }
}

impl std::fmt::Display for PipelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.details)
    }
}

impl std::error::Error for PipelineError {}

impl Pipeline {
    fn new(stages: &[Stage], direction: Direction, grpc: bool) -> Pipeline {
        let mut v: Vec<PipeStage> = stages
            .iter()
            .filter(|s| !s.skipped)
            .map(|s| PipeStage {
                handle: s.handle.clone(),
                stream: s.stream.clone(),
                policy: s.policy,
                held: BodyBuffer::new(),
                max_held: s.handle.config.max_body_bytes,
                disabled: false,
            })
            .collect();
        if direction == Direction::Response {
            v.reverse();
        }
        Pipeline {
            stages: v,
            direction,
            ended: false,
            overflowed: None,
            grpc,
        }
    }

    /// True when no plugin takes part.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Passes `data` through every stage; returns what comes out. Nothing is copied: the
    /// chunks move from stage to stage, onto those a paused plugin holds; a chunk no plugin
    /// changed comes out as the same `Bytes` it came in as.
    pub fn push_buffer(
        &mut self,
        data: BodyBuffer,
        end_of_stream: bool,
    ) -> Result<BodyBuffer, PipelineError> {
        if let Some(reply) = &self.overflowed {
            return Err(PipelineError(reply.clone()));
        }
        if self.ended {
            return Ok(data);
        }
        self.ended = end_of_stream;
        let mut chunk = data;
        for stage in &mut self.stages {
            if stage.disabled {
                continue;
            }
            if !stage.held.is_empty()
                && stage.held.len().saturating_add(chunk.len()) > stage.max_held
            {
                // The plugin paused and would hold more than its `max_body_bytes`: Envoy's
                // buffer overflow, 413 for a request; 500 for a response (its headers are still
                // held while the first bytes pass, see `WasmExchange::response`).
                stage.held = BodyBuffer::new();
                let reply = body_too_large(self.direction, &stage.handle.label());
                self.overflowed = Some(reply.clone());
                return Err(PipelineError(reply));
            }
            stage.held.append(chunk.take());
            let (result, out, effects) = {
                let mut s = lock(&stage.stream);
                let held = stage.held.take();
                let r = match self.direction {
                    Direction::Request => {
                        s.data().request_body = held;
                        let r = s.on_request_body(end_of_stream);
                        (r, s.data().request_body.take())
                    }
                    Direction::Response => {
                        s.data().response_body = held;
                        let r = s.on_response_body(end_of_stream);
                        (r, s.data().response_body.take())
                    }
                };
                (r.0, r.1, s.take_effects())
            };
            if let Some(local) = effects.local_response {
                return Err(PipelineError(reply_from(local, self.grpc)));
            }
            match result {
                Ok(Action::Pause)
                    if !end_of_stream && !effects.resume_request && !effects.resume_response =>
                {
                    if out.len() > stage.max_held {
                        let reply = body_too_large(self.direction, &stage.handle.label());
                        self.overflowed = Some(reply.clone());
                        return Err(PipelineError(reply));
                    }
                    stage.held = out;
                    return Ok(BodyBuffer::new());
                }
                Ok(_) => chunk = out,
                Err(f) => {
                    stage.disabled = true;
                    if stage.policy == FailurePolicy::FailOpen {
                        // Pass what it held, unchanged.
                        chunk = out;
                    } else {
                        return Err(PipelineError(failure_reply(&stage.handle.label(), &f)));
                    }
                }
            }
        }
        Ok(chunk)
    }

    /// The end of the body with trailers: held bytes are released (end of stream), then each
    /// plugin sees the trailers.
    pub fn trailers(&mut self, trailers: HeaderMap) -> Result<(Bytes, HeaderMap), PipelineError> {
        let out = if self.ended {
            Bytes::new()
        } else {
            self.push_buffer(BodyBuffer::new(), true)?.into_bytes()
        };
        let mut list = Headers::from_map(trailers);
        for stage in &mut self.stages {
            if stage.disabled {
                continue;
            }
            let mut s = lock(&stage.stream);
            let r = match self.direction {
                Direction::Request => {
                    s.data().request_trailers = std::mem::take(&mut list);
                    let r = s.on_request_trailers();
                    list = std::mem::take(&mut s.data().request_trailers);
                    r
                }
                Direction::Response => {
                    s.data().response_trailers = std::mem::take(&mut list);
                    let r = s.on_response_trailers();
                    list = std::mem::take(&mut s.data().response_trailers);
                    r
                }
            };
            if let Err(f) = r
                && stage.policy != FailurePolicy::FailOpen
            {
                return Err(PipelineError(failure_reply(&stage.handle.label(), &f)));
            }
        }
        // Every plugin keeps the trailers for `on_log` (shared, read-only).
        for stage in &self.stages {
            let mut s = lock(&stage.stream);
            match self.direction {
                Direction::Request => s.data().request_trailers = list.clone(),
                Direction::Response => s.data().response_trailers = list.clone(),
            }
        }
        Ok((out, list.take_parts().1))
    }
}

/// The rest of a request body whose `Content-Length` went upstream unchanged: a plugin that
/// changes the length now fails the body (the upstream request is aborted) instead of sending
/// more or fewer bytes than declared.
struct LengthGuard {
    pipeline: Pipeline,
    remaining: u64,
}

impl LengthGuard {
    fn take(&mut self, n: usize, end_of_stream: bool) -> Result<(), BoxError> {
        let n = n as u64;
        if n > self.remaining || (end_of_stream && n != self.remaining) {
            return Err(Box::new(PipelineError(LocalReply {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"plugin changed the request body length\n"),
                details: "wasm_body_length_changed: a plugin changed the length of a request \
                          body already forwarded with its Content-Length"
                    .into(),
                flag: None,
            })));
        }
        self.remaining -= n;
        Ok(())
    }
}

impl BodyFilter for LengthGuard {
    fn push(
        &mut self,
        data: Bytes,
        end_of_stream: bool,
        out: &mut VecDeque<Frame<Bytes>>,
    ) -> Result<(), BoxError> {
        let chunks = Pipeline::push_buffer(&mut self.pipeline, data.into(), end_of_stream)?;
        self.take(chunks.len(), end_of_stream)?;
        out.extend(data_frames(chunks));
        Ok(())
    }

    fn trailers(&mut self, trailers: HeaderMap) -> Result<(Bytes, HeaderMap), BoxError> {
        let (out, trailers) = Pipeline::trailers(&mut self.pipeline, trailers)?;
        self.take(out.len(), true)?;
        Ok((out, trailers))
    }
}

impl BodyFilter for Pipeline {
    fn push(
        &mut self,
        data: Bytes,
        end_of_stream: bool,
        out: &mut VecDeque<Frame<Bytes>>,
    ) -> Result<(), BoxError> {
        let chunks = Pipeline::push_buffer(self, data.into(), end_of_stream)
            .map_err(|e| Box::new(e) as BoxError)?;
        out.extend(data_frames(chunks));
        Ok(())
    }

    fn trailers(&mut self, trailers: HeaderMap) -> Result<(Bytes, HeaderMap), BoxError> {
        Pipeline::trailers(self, trailers).map_err(|e| Box::new(e) as BoxError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use weft_extensions::PluginRegistry;

    /// A chain of one `hostcalls` fixture plugin with `configuration` and `max_body_bytes`.
    async fn exchange(configuration: serde_json::Value, max_body: usize) -> WasmExchange {
        let plugin: weft_config::schema::Plugin = serde_json::from_value(serde_json::json!({
            "name": "hostcalls",
            "file": weft_test_artifacts::HOSTCALLS,
            "configuration": configuration,
            "max_body_bytes": max_body,
        }))
        .expect("plugin entry");
        let registry = PluginRegistry::new();
        let handle = registry
            .resolve(std::path::Path::new("/"), &plugin, None, true)
            .await
            .expect("fixture loads");
        let (head, ()) = http::Request::new(()).into_parts();
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let props = Arc::new(RequestProperties::new(
            &head,
            addr,
            addr,
            Arc::from("r"),
            1,
            false,
        ));
        match WasmExchange::start(&[handle], props).await {
            Ok(e) => e,
            Err(r) => panic!("chain failed to start: {}", r.details),
        }
    }

    /// Chunks as hyper hands them over: views of one shared read buffer.
    fn hyper_like_chunks(sizes: &[usize]) -> Vec<Bytes> {
        let total: usize = sizes.iter().sum();
        let mut buf = BytesMut::from(&(0..total).map(|i| i as u8).collect::<Vec<u8>>()[..]);
        sizes.iter().map(|n| buf.split_to(*n).freeze()).collect()
    }

    fn post(len: usize) -> request::Parts {
        let (mut head, ()) = http::Request::post("/")
            .body(())
            .expect("request")
            .into_parts();
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        head
    }

    async fn drain(mut body: ProxyBody) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("body frame").into_data() {
                out.push(data);
            }
        }
        out
    }

    /// A stream's end callbacks never wait on the worker for an instance that another stream's
    /// callback holds: `finish` returns at once (on this current-thread runtime, waiting would
    /// deadlock the test), and they run once the instance is free.
    #[tokio::test]
    async fn end_callbacks_wait_for_a_busy_instance_without_blocking_the_worker() {
        let mut ex = exchange(serde_json::json!({}), 1 << 20).await;
        // The first callback uses the permit the stream started with.
        let (mut head, ()) = http::Request::get("/")
            .body(())
            .expect("request")
            .into_parts();
        let mut body = ProxyBody::empty();
        assert!(matches!(
            ex.request_headers(&mut head, "a", &mut body, 1 << 20).await,
            Outcome::Continue
        ));
        let stream = ex.stages[0].stream.clone();
        let gate = lock(&stream).gate();
        let held = gate.enter().await;
        ex.finish();
        assert!(
            !lock(&stream).is_finished(),
            "ended while the instance was busy"
        );
        drop(held);
        for _ in 0..1000 {
            if lock(&stream).is_finished() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the end callbacks never ran once the instance was free");
    }

    #[tokio::test]
    async fn chunks_no_plugin_changes_go_upstream_without_a_copy() {
        let mut ex = exchange(serde_json::json!({}), 1 << 20).await;
        let chunks = hyper_like_chunks(&[1000, 20_000, 3]);
        let mut head = post(21_003);
        let body = ProxyBody::frames(chunks.iter().cloned().map(Frame::data).collect());
        let out = match ex.request_body(&mut head, body).await {
            Ok(b) => drain(b).await,
            Err(r) => panic!("refused: {}", r.details),
        };
        assert_eq!(out.len(), chunks.len());
        for (sent, got) in chunks.iter().zip(&out) {
            assert_eq!(sent, got);
            // The same bytes in memory: moved through the plugin, not copied.
            assert_eq!(sent.as_ptr(), got.as_ptr());
        }
        // The client's framing is kept.
        assert_eq!(head.headers[header::CONTENT_LENGTH], "21003");
        ex.finish();
    }

    #[tokio::test]
    async fn held_chunks_are_released_whole_and_bounded_by_their_length() {
        // The plugin pauses until the end of the stream, then reads the whole body.
        let config = serde_json::json!({"request_body": "buffer"});
        let ex = exchange(config.clone(), 64 * 1024).await;
        let mut pipeline = ex.request_body_pipeline();
        let chunks = hyper_like_chunks(&[10_000, 10_000, 5]);
        for c in &chunks[..2] {
            let out = pipeline.push_buffer(c.clone().into(), false);
            assert!(out.map(|o| o.is_empty()).unwrap_or(false));
        }
        let out = match pipeline.push_buffer(chunks[2].clone().into(), true) {
            Ok(o) => o,
            Err(e) => panic!("refused: {e}"),
        };
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(out.to_vec(), whole);
        ex.finish();

        // Past `max_body_bytes` while paused: 413, counted on the held chunks' length.
        let ex = exchange(config, 15_000).await;
        let mut pipeline = ex.request_body_pipeline();
        let out = pipeline.push_buffer(chunks[0].clone().into(), false);
        assert!(out.map(|o| o.is_empty()).unwrap_or(false));
        match pipeline.push_buffer(chunks[1].clone().into(), false) {
            Ok(_) => panic!("20000 bytes held past a 15000-byte bound"),
            Err(e) => assert_eq!(e.reply().status, StatusCode::PAYLOAD_TOO_LARGE),
        }
        ex.finish();
    }
}
