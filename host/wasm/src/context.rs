//! What a callback can see and change: the per-store host state, the plugin-wide settings its
//! host functions read, the data of the stream being served, and the effects a callback requests
//! (acted on by the host after it returns). Also what the embedding provides to every callback
//! ([`Properties`], [`Clock`], [`Embedder`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::abi::{GuestMemory, HeaderList};
use crate::body::BodyBuffer;
use crate::headers::Headers;
use crate::shared::QueueOwner;
use crate::types::{BufferType, LogLevel, MapType, Status};

/// Read-only attributes the embedding exposes to `proxy_get_property` (Envoy's attribute
/// paths: `request.path`, `source.address`, …). Values use Envoy's encodings: strings raw,
/// integers 8-byte little-endian, booleans one byte, timestamps nanoseconds.
pub trait Properties: Send + Sync {
    /// The value at `path` (segments), or `None` when it does not exist.
    fn get(&self, path: &[&str]) -> Option<Vec<u8>>;
}

/// No properties.
#[derive(Debug, Default)]
pub struct NoProperties;

impl Properties for NoProperties {
    fn get(&self, _path: &[&str]) -> Option<Vec<u8>> {
        None
    }
}

/// A local reply a plugin asked for with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status code.
    pub status: u16,
    /// Details (for the access log).
    pub details: String,
    /// Body.
    pub body: Bytes,
    /// Extra headers (validated: no CR, LF or NUL).
    pub headers: HeaderList,
    /// gRPC status, `None` for -1.
    pub grpc_status: Option<i32>,
}

/// An HTTP callout a plugin dispatched with `proxy_http_call`.
#[derive(Debug, Clone)]
pub struct HttpCallRequest {
    /// The token returned to the plugin.
    pub token: u32,
    /// The context that dispatched it (gets `on_http_call_response`).
    pub context_id: u32,
    /// Target cluster name.
    pub cluster: String,
    /// Headers, with `:method`, `:path` and `:authority`.
    pub headers: HeaderList,
    /// Body.
    pub body: Bytes,
    /// Trailers.
    pub trailers: HeaderList,
    /// Deadline.
    pub timeout: Duration,
    /// Set for a unary gRPC call (`proxy_grpc_call`): the request is the gRPC one (`POST
    /// /service/method`, one length-prefixed message) and its outcome reaches
    /// `proxy_on_grpc_receive` / `proxy_on_grpc_close` instead of `proxy_on_http_call_response`.
    pub grpc: bool,
    /// Counts the call in its plugin's callouts in flight until the last clone is dropped.
    pub(crate) in_flight: Option<Arc<InFlight>>,
}

impl HttpCallRequest {
    /// A call not queued yet: [`HostState::push_call`] gives it its token, context and count.
    pub(crate) fn new(
        cluster: String,
        headers: HeaderList,
        body: Bytes,
        trailers: HeaderList,
        timeout: Duration,
        grpc: bool,
    ) -> HttpCallRequest {
        HttpCallRequest {
            token: 0,
            context_id: 0,
            cluster,
            headers,
            body,
            trailers,
            timeout,
            grpc,
            in_flight: None,
        }
    }
}

/// One callout counted in its plugin's callouts in flight; dropping it ends the count.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An HTTP callout's outcome, as the plugin sees it.
#[derive(Debug, Clone, Default)]
pub struct HttpCallResponse {
    /// Response headers, with `:status`.
    pub headers: HeaderList,
    /// Body (the plugin may rewrite it with `proxy_set_buffer_bytes`).
    pub body: BodyBuffer,
    /// Trailers.
    pub trailers: HeaderList,
    /// Envoy's response code details for a reply the host made up itself (`response_timeout`,
    /// `upstream_reset_before_response_started{…}`, `no_healthy_upstream`); `None` for the
    /// upstream's own response (`via_upstream`). A gRPC call's failure message carries them.
    pub details: Option<String>,
}

/// What a callback asked the host to do once it returns.
#[derive(Debug, Default)]
pub struct Effects {
    /// `proxy_send_local_response`.
    pub local_response: Option<LocalResponse>,
    /// `proxy_continue_stream(HTTP_REQUEST)` (or DOWNSTREAM for TCP).
    pub resume_request: bool,
    /// `proxy_continue_stream(HTTP_RESPONSE)` (or UPSTREAM for TCP).
    pub resume_response: bool,
    /// `proxy_close_stream`.
    pub close: bool,
    /// `proxy_done`.
    pub done: bool,
}

/// The data of one HTTP stream (or TCP connection) as plugins see it.
pub struct StreamData {
    /// Request headers, pseudo-headers first: the embedding's live map, moved in.
    pub request_headers: Headers,
    /// Request trailers.
    pub request_trailers: Headers,
    /// Response headers, `:status` first: the embedding's live map, moved in.
    pub response_headers: Headers,
    /// Response trailers.
    pub response_trailers: Headers,
    /// The request body bytes the current callback sees (the embedding's chunks, moved in).
    pub request_body: BodyBuffer,
    /// The response body bytes the current callback sees.
    pub response_body: BodyBuffer,
    /// TCP: downstream bytes the current callback sees.
    pub downstream_data: BodyBuffer,
    /// TCP: upstream bytes the current callback sees.
    pub upstream_data: BodyBuffer,
    /// Attributes from the embedding.
    pub properties: Arc<dyn Properties>,
    /// Values written with `proxy_set_property` (Envoy's filter state), by dotted path.
    pub filter_state: HashMap<String, Vec<u8>>,
    /// Effects requested by callbacks, taken by the host after each one.
    pub effects: Effects,
    /// Set when a plugin wrote to any header map (the embedding can skip writing back an
    /// unchanged map); the embedding clears it.
    pub headers_modified: bool,
}

impl std::fmt::Debug for StreamData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamData")
            .field("request_headers", &self.request_headers)
            .field("response_headers", &self.response_headers)
            .finish_non_exhaustive()
    }
}

impl StreamData {
    /// Empty stream data with `properties`.
    pub fn new(properties: Arc<dyn Properties>) -> StreamData {
        StreamData {
            request_headers: Headers::default(),
            request_trailers: Headers::default(),
            response_headers: Headers::default(),
            response_trailers: Headers::default(),
            request_body: BodyBuffer::new(),
            response_body: BodyBuffer::new(),
            downstream_data: BodyBuffer::new(),
            upstream_data: BodyBuffer::new(),
            properties,
            filter_state: HashMap::new(),
            effects: Effects::default(),
            headers_modified: false,
        }
    }
}

/// The embedding trait: what host functions read and write of the live stream being served —
/// its header maps (the embedding's own `http::HeaderMap`s, see [`Headers`]), body buffers, local
/// reply (with its gRPC status) and resumption. Callouts go through [`Embedder`], attributes
/// through [`Properties`]. [`StreamData`] implements it for the proxy and for the plugin test
/// harness alike, so both run one code path.
pub trait StreamHost {
    /// True once the response has begun (its headers exist).
    fn responding(&self) -> bool;
    /// The live header map `map` (request/response headers or trailers; `None` for any other
    /// map). `write` records that a plugin may change it (the embedding then applies the
    /// pseudo-headers back).
    fn header_map_mut(&mut self, map: MapType, write: bool) -> Option<&mut Headers>;
    /// The body bytes of `buffer` the current callback sees (`None` for buffers that are not
    /// the stream's): the embedding's `Bytes` chunks, read and written in place.
    fn body_mut(&mut self, buffer: BufferType) -> Option<&mut BodyBuffer>;
    /// Asks for a local reply, acted on once the callback returns.
    fn send_local_response(&mut self, reply: LocalResponse);
    /// Asks to resume the request (`true`) or the response.
    fn resume(&mut self, request: bool);
}

impl StreamHost for StreamData {
    fn responding(&self) -> bool {
        !self.response_headers.is_empty()
    }

    fn header_map_mut(&mut self, map: MapType, write: bool) -> Option<&mut Headers> {
        if write {
            self.headers_modified = true;
        }
        Some(match map {
            MapType::HttpRequestHeaders => &mut self.request_headers,
            MapType::HttpRequestTrailers => &mut self.request_trailers,
            MapType::HttpResponseHeaders => &mut self.response_headers,
            MapType::HttpResponseTrailers => &mut self.response_trailers,
            _ => return None,
        })
    }

    fn body_mut(&mut self, buffer: BufferType) -> Option<&mut BodyBuffer> {
        Some(match buffer {
            BufferType::HttpRequestBody => &mut self.request_body,
            BufferType::HttpResponseBody => &mut self.response_body,
            BufferType::DownstreamData => &mut self.downstream_data,
            BufferType::UpstreamData => &mut self.upstream_data,
            _ => return None,
        })
    }

    fn send_local_response(&mut self, reply: LocalResponse) {
        self.effects.local_response = Some(reply);
    }

    fn resume(&mut self, request: bool) {
        if request {
            self.effects.resume_request = true;
        } else {
            self.effects.resume_response = true;
        }
    }
}

/// Which callback is running, for the spec's access rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Idle,
    VmStart,
    Configure,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    HttpCallResponse,
    Tick,
    QueueReady,
    Log,
    Done,
    NewConnection,
    DownstreamData,
    UpstreamData,
    ConnectionClose,
}

/// A clock plugins read (`proxy_get_current_time_nanoseconds`, WASI `clock_time_get`); the
/// test harness substitutes a controllable one.
pub trait Clock: Send + Sync {
    /// Wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The memory limiter of one store; remembers whether a growth was refused, so that a trap that
/// follows is reported as out-of-memory.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub(crate) max_memory: usize,
    pub(crate) refused: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The state of one wasmtime store (one plugin instance).
pub(crate) struct HostState {
    pub(crate) plugin: Arc<PluginInfo>,
    pub(crate) memory: Option<GuestMemory>,
    pub(crate) alloc: Option<wasmtime::TypedFunc<i32, i32>>,
    pub(crate) limiter: Limiter,
    pub(crate) phase: Phase,
    /// The context the current callback runs for (changed by `proxy_set_effective_context`).
    pub(crate) context_id: u32,
    /// The context whose stream data is loaded in `stream`.
    pub(crate) stream_context: u32,
    pub(crate) root_context: u32,
    /// Boxed: moved in and out of the store around every callback (a pointer, not the struct).
    pub(crate) stream: Option<Box<StreamData>>,
    /// Streams of this instance held by a `Pause` with nothing pending (Envoy's
    /// `StopIteration`), by context id: a root callback (`on_tick`, `on_queue_ready`, a callout
    /// response) reaches them through `proxy_set_effective_context` and resumes them.
    pub(crate) parked: HashMap<u32, Parked>,
    /// Metric handles this instance used, by id.
    pub(crate) metrics: HashMap<u32, Arc<crate::shared::Metric>>,
    /// The callout response visible during `on_http_call_response`.
    pub(crate) callout: Option<HttpCallResponse>,
    /// Callouts dispatched by the current callback.
    pub(crate) calls: Vec<HttpCallRequest>,
    pub(crate) next_token: u32,
    /// The tick period each root context asked for (one per plugin sharing the VM).
    pub(crate) tick_periods: HashMap<u32, Duration>,
    /// Root-context filter state (`proxy_set_property` outside a stream).
    pub(crate) root_state: HashMap<String, Vec<u8>>,
    /// `proxy_get_status` of the last callout.
    pub(crate) last_status: (u32, Vec<u8>),
    /// The gRPC message visible during `proxy_on_grpc_receive` (`GrpcReceiveBuffer`).
    pub(crate) grpc_message: Option<BodyBuffer>,
    /// Tokens of this instance's gRPC calls still in flight, oldest first (for
    /// `proxy_grpc_cancel` / `proxy_grpc_close`; bounded, see [`crate::grpc::MAX_PENDING`]).
    pub(crate) grpc_pending: std::collections::VecDeque<u32>,
    pub(crate) started: std::time::Instant,
    /// The running call's CPU checkpoint, taken at its first epoch wake-up (never for calls
    /// that end sooner): thread CPU time then, and the CPU time assumed used before it.
    pub(crate) cpu_checkpoint: Option<(std::time::Duration, std::time::Duration)>,
    /// Wall time of the running call's first deadline window (counted as CPU at the checkpoint).
    pub(crate) first_window: std::time::Duration,
    /// Header names this instance wrote lately, parsed (`proxy_add_header_map_value`,
    /// `proxy_replace_header_map_value`).
    pub(crate) header_names: crate::headers::NameCache,
}

impl HostState {
    /// Queues `call` as made by the running callback's context, with the next token (never
    /// 0), which it returns; `InternalFailure` (nothing queued) when the plugin already has
    /// `max_callouts_in_flight` callouts in flight.
    pub(crate) fn push_call(
        &mut self,
        mut call: HttpCallRequest,
    ) -> Result<u32, crate::types::Status> {
        let counter = &self.plugin.callouts_in_flight;
        let limit = self.plugin.limits.max_callouts_in_flight;
        let admitted = counter.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| (n < limit).then_some(n + 1),
        );
        if admitted.is_err() {
            return Err(crate::types::Status::InternalFailure);
        }
        call.in_flight = Some(Arc::new(InFlight(counter.clone())));
        self.next_token = self.next_token.wrapping_add(1).max(1);
        call.token = self.next_token;
        call.context_id = self.context_id;
        self.calls.push(call);
        Ok(self.next_token)
    }

    pub(crate) fn new(plugin: Arc<PluginInfo>) -> HostState {
        let max_memory = plugin.limits.memory_bytes;
        HostState {
            plugin,
            memory: None,
            alloc: None,
            limiter: Limiter {
                max_memory,
                refused: false,
            },
            phase: Phase::Idle,
            context_id: 0,
            stream_context: 0,
            root_context: 0,
            stream: None,
            parked: HashMap::new(),
            metrics: HashMap::new(),
            callout: None,
            calls: Vec::new(),
            next_token: 0,
            tick_periods: HashMap::new(),
            root_state: HashMap::new(),
            last_status: (0, Vec::new()),
            grpc_message: None,
            grpc_pending: std::collections::VecDeque::new(),
            started: std::time::Instant::now(),
            cpu_checkpoint: None,
            first_window: std::time::Duration::ZERO,
            header_names: crate::headers::NameCache::default(),
        }
    }

    /// The stream data of the effective context: the loaded stream, or a parked one.
    pub(crate) fn stream_mut(&mut self) -> Result<&mut StreamData, Status> {
        if self.context_id == self.stream_context
            && let Some(s) = self.stream.as_deref_mut()
        {
            return Ok(s);
        }
        self.parked
            .get_mut(&self.context_id)
            .map(|p| &mut *p.data)
            .ok_or(Status::BadArgument)
    }

    /// The stream data of the effective context, read-only.
    pub(crate) fn stream_ref(&self) -> Option<&StreamData> {
        if self.context_id == self.stream_context
            && let Some(s) = self.stream.as_deref()
        {
            return Some(s);
        }
        self.parked.get(&self.context_id).map(|p| &*p.data)
    }

    /// True when `id` names a stream a callback can address: the loaded one or a parked one.
    pub(crate) fn addressable(&self, id: u32) -> bool {
        (id == self.stream_context && self.stream.is_some()) || self.parked.contains_key(&id)
    }

    /// Metric `id`, from this instance's cache of handles (the runtime's registry is
    /// locked only on an instance's first use of an id).
    pub(crate) fn metric(&mut self, id: u32) -> Option<Arc<crate::shared::Metric>> {
        if let Some(m) = self.metrics.get(&id) {
            return Some(m.clone());
        }
        let m = self.plugin.shared.metric(id)?;
        self.metrics.insert(id, m.clone());
        Some(m)
    }

    /// Wakes the effective context's stream if it is parked (it asked for something: resume,
    /// local reply, close).
    pub(crate) fn wake_parked(&self) {
        if let Some(p) = self.parked.get(&self.context_id) {
            p.wake.notify_one();
        }
    }
}

/// A stream held by its plugin (paused with nothing pending), waiting for a root callback to
/// resume it.
pub(crate) struct Parked {
    pub(crate) data: Box<StreamData>,
    pub(crate) wake: Arc<tokio::sync::Notify>,
}

/// What the embedding (the proxy, or the test harness) provides to plugins.
pub trait Embedder: Send + Sync {
    /// True when `cluster` can take HTTP callouts.
    fn has_cluster(&self, cluster: &str) -> bool;
    /// Performs an HTTP callout; `None` when it failed (connect error, timeout, reset).
    fn http_call(
        &self,
        call: HttpCallRequest,
    ) -> Pin<Box<dyn Future<Output = Option<HttpCallResponse>> + Send>>;
}

/// An embedder with no clusters: every callout is refused.
#[derive(Debug, Default)]
pub struct NoCallouts;

impl Embedder for NoCallouts {
    fn has_cluster(&self, _cluster: &str) -> bool {
        false
    }
    fn http_call(
        &self,
        _call: HttpCallRequest,
    ) -> Pin<Box<dyn Future<Output = Option<HttpCallResponse>> + Send>> {
        Box::pin(async { None })
    }
}

/// Where plugin log lines are captured: level and message.
pub type LogCapture = Arc<Mutex<Vec<(LogLevel, String)>>>;

/// Budgets of one plugin. Every bound a plugin can push against is here, with its default;
/// docs/abi.md lists what the plugin sees when it is exceeded.
#[derive(Debug, Clone)]
pub struct PluginLimits {
    /// CPU time one callback may take.
    pub cpu_deadline: Duration,
    /// Linear memory cap per instance.
    pub memory_bytes: usize,
    /// Most body bytes buffered while the plugin pauses a stream.
    pub max_body_bytes: usize,
    /// Most bytes one WASI `random_get` may ask for (more: `EINVAL`, nothing written).
    pub max_random_bytes: usize,
    /// Longest log line (`proxy_log`, and each line written to stdout/stderr); longer lines are
    /// cut and end with a `…[truncated N bytes]` marker.
    pub max_log_line_bytes: usize,
    /// Most bytes one WASI `fd_write` to stdout/stderr captures; the rest is reported written
    /// and dropped.
    pub max_fd_write_bytes: usize,
    /// Log lines per second (a token bucket with a one-second burst); excess lines are dropped
    /// and counted.
    pub log_lines_per_second: u32,
    /// Largest shared-queue item (more: `BadArgument`).
    pub max_queue_item_bytes: usize,
    /// Most bytes queued in one shared queue; a full queue drops its oldest items.
    pub max_queue_bytes: usize,
    /// Most shared-data keys per `vm_id` (a new key past it: `BadArgument`).
    pub max_shared_data_keys: usize,
    /// Most shared-data bytes (keys and values) per `vm_id` (a write past it: `BadArgument`).
    pub max_shared_data_bytes: usize,
    /// Most callouts (HTTP and gRPC) of the plugin in flight at once, from dispatch until the
    /// response is delivered or the call is dropped (one more: `InternalFailure`).
    pub max_callouts_in_flight: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            cpu_deadline: Duration::from_millis(10),
            memory_bytes: 64 * 1024 * 1024,
            max_body_bytes: 1024 * 1024,
            max_random_bytes: 64 * 1024,
            max_log_line_bytes: 4096,
            max_fd_write_bytes: 64 * 1024,
            log_lines_per_second: 100,
            max_queue_item_bytes: 64 * 1024,
            max_queue_bytes: 4 * 1024 * 1024,
            max_shared_data_keys: 4096,
            max_shared_data_bytes: 16 * 1024 * 1024,
            max_callouts_in_flight: 1024,
        }
    }
}

/// A token bucket of log lines: `rate` per second, bursts of up to `rate`.
#[derive(Debug)]
pub(crate) struct LogBucket {
    tokens: f64,
    last: std::time::Instant,
}

impl LogBucket {
    pub(crate) fn new(rate: u32) -> LogBucket {
        LogBucket {
            tokens: f64::from(rate),
            last: std::time::Instant::now(),
        }
    }

    /// Takes a token if one is left.
    pub(crate) fn take(&mut self, rate: u32) -> bool {
        let now = std::time::Instant::now();
        let rate = f64::from(rate);
        let refill = now.duration_since(self.last).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// `text` cut to at most `max` bytes (on a character boundary) with a marker saying how much was
/// cut; `text` itself when it fits.
pub(crate) fn truncate_line(text: &str, max: usize, dropped_before: usize) -> String {
    let cut = if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        end
    } else {
        text.len()
    };
    let dropped = dropped_before + (text.len() - cut);
    if dropped == 0 {
        return text.to_owned();
    }
    format!("{}…[truncated {dropped} bytes]", &text[..cut])
}

/// The parts of a spec every instance's host functions read.
pub(crate) struct PluginInfo {
    pub(crate) name: String,
    pub(crate) root_id: String,
    pub(crate) vm_id: String,
    pub(crate) configuration: Vec<u8>,
    pub(crate) vm_configuration: Vec<u8>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) limits: PluginLimits,
    pub(crate) log_level: LogLevel,
    pub(crate) properties: Arc<dyn Properties>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) embedder: Arc<dyn Embedder>,
    pub(crate) log_capture: Option<LogCapture>,
    pub(crate) queue_tx: tokio::sync::mpsc::UnboundedSender<u32>,
    /// The runtime's shared data, queues and metrics.
    pub(crate) shared: Arc<crate::shared::SharedState>,
    /// The last warning or error the plugin logged (what a refused configuration reports).
    pub(crate) last_warning: Mutex<Option<String>>,
    /// The log-rate token bucket.
    pub(crate) log_bucket: Mutex<LogBucket>,
    /// Log lines dropped by the rate limit.
    pub(crate) logs_dropped: std::sync::atomic::AtomicU64,
    /// The plugin's callouts in flight (see [`PluginLimits::max_callouts_in_flight`]).
    pub(crate) callouts_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl PluginInfo {
    pub(crate) fn log(&self, level: LogLevel, msg: &str) {
        if level >= LogLevel::Warn {
            *self.last_warning.lock() = Some(msg.chars().take(1024).collect());
        }
        if level < self.log_level {
            return;
        }
        if !self
            .log_bucket
            .lock()
            .take(self.limits.log_lines_per_second)
        {
            self.logs_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let plugin = self.name.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{msg}"),
            LogLevel::Debug => tracing::debug!(plugin, "{msg}"),
            LogLevel::Info => tracing::info!(plugin, "{msg}"),
            LogLevel::Warn => tracing::warn!(plugin, "{msg}"),
            LogLevel::Error => tracing::error!(plugin, "{msg}"),
            // `tracing` has no level above error: the line says it is critical, as Envoy's
            // `[critical][wasm]` does (Rust SDK panic messages come at this level).
            LogLevel::Critical => tracing::error!(plugin, severity = "critical", "{msg}"),
        }
        if let Some(c) = &self.log_capture {
            c.lock().push((level, msg.to_owned()));
        }
    }

    pub(crate) fn env_block(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    pub(crate) fn queue_owner(&self) -> QueueOwner {
        QueueOwner {
            notify: self.queue_tx.clone(),
        }
    }
}
