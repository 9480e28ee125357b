//! Loading a plugin into the real host, with scripted callouts, a manual clock and captured
//! logs and metrics.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use weft_wasm::plugin::LogCapture;
use weft_wasm::{
    Embedder, EngineOptions, FailurePolicy, HttpCallRequest, HttpCallResponse, LoadError, LogLevel,
    Plugin, PluginSpec, Properties, WasmEngine,
};

use crate::{CannedResponse, ManualClock, find, list_pairs};

/// One runtime per test process (it owns the epoch ticker and the pooling reservation; plugins
/// under test share its data, queues and metrics, which are keyed by plugin name and vm_id).
fn engine() -> Result<WasmEngine, LoadError> {
    static ENGINE: OnceLock<Result<WasmEngine, LoadError>> = OnceLock::new();
    ENGINE
        .get_or_init(|| WasmEngine::new(EngineOptions::default()))
        .clone()
}

/// Attribute values by dotted name.
pub(crate) type AttributeMap = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// Plugin-wide attributes (what the root context sees, and the default for every request).
pub(crate) struct PluginAttributes(pub(crate) AttributeMap);

impl Properties for PluginAttributes {
    fn get(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.0.lock().get(&path.join(".")).cloned()
    }
}

/// What a callout to one cluster does.
#[derive(Debug, Clone)]
enum Script {
    Respond(CannedResponse),
    Grpc(GrpcReply),
    Fail,
}

/// A scripted answer to a unary gRPC call (`proxy_grpc_call`), as the server would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcReply {
    /// Status `OK` with this message: the plugin's `on_grpc_call_response` gets status 0 and
    /// the message's size.
    Message(Vec<u8>),
    /// A failure: this gRPC status and message (a "trailers-only" reply).
    Status(u32, String),
}

impl GrpcReply {
    /// The reply as the HTTP/2 exchange that carries it.
    fn response(&self) -> HttpCallResponse {
        let mut headers = weft_wasm::HeaderList::default();
        headers.add(":status", b"200");
        headers.add("content-type", b"application/grpc");
        let mut trailers = weft_wasm::HeaderList::default();
        let body = match self {
            GrpcReply::Message(m) => {
                trailers.add("grpc-status", b"0");
                weft_wasm::grpc::frame(m)
            }
            GrpcReply::Status(code, message) => {
                headers.add("grpc-status", code.to_string().as_bytes());
                headers.add("grpc-message", message.as_bytes());
                weft_wasm::bytes::Bytes::new()
            }
        };
        HttpCallResponse {
            headers,
            body: body.into(),
            trailers,
            details: None,
        }
    }
}

/// A callout the plugin made.
#[derive(Debug, Clone)]
pub struct RecordedCallout {
    /// Target cluster.
    pub cluster: String,
    /// Headers, including `:method`, `:path` and `:authority`.
    pub headers: Vec<(String, String)>,
    /// Body; for a gRPC call, its message (without the 5-byte frame prefix).
    pub body: Vec<u8>,
    /// The timeout the plugin gave.
    pub timeout: Duration,
    /// A unary gRPC call (`proxy_grpc_call`): `:path` is `/service/method`, and the headers
    /// carry the plugin's initial metadata.
    pub grpc: bool,
}

impl RecordedCallout {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        find(&self.headers, name)
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("callout body is not JSON ({e}): {}", self.body_text()))
    }
}

/// Answers callouts from scripts and records them.
#[derive(Default)]
pub(crate) struct ScriptedCallouts {
    scripts: Mutex<HashMap<String, Script>>,
    calls: Mutex<Vec<RecordedCallout>>,
}

impl ScriptedCallouts {
    fn set(&self, cluster: &str, script: Script) {
        self.scripts.lock().insert(cluster.to_owned(), script);
    }

    /// Records `call` and returns its scripted outcome (`None`: the call failed).
    pub(crate) fn answer(&self, call: &HttpCallRequest) -> Option<HttpCallResponse> {
        let body = match call.grpc {
            true => call.body.get(5..).unwrap_or_default().to_vec(),
            false => call.body.to_vec(),
        };
        self.calls.lock().push(RecordedCallout {
            cluster: call.cluster.clone(),
            headers: list_pairs(&call.headers),
            body,
            timeout: call.timeout,
            grpc: call.grpc,
        });
        let script = self.scripts.lock().get(&call.cluster).cloned();
        match script {
            Some(Script::Respond(r)) => Some(HttpCallResponse {
                headers: r.header_list(),
                body: r.body.into(),
                trailers: weft_wasm::HeaderList::default(),
                details: None,
            }),
            Some(Script::Grpc(g)) => Some(g.response()),
            Some(Script::Fail) | None => None,
        }
    }
}

impl Embedder for ScriptedCallouts {
    fn has_cluster(&self, cluster: &str) -> bool {
        self.scripts.lock().contains_key(cluster)
    }

    fn http_call(
        &self,
        call: HttpCallRequest,
    ) -> Pin<Box<dyn Future<Output = Option<HttpCallResponse>> + Send>> {
        let response = self.answer(&call);
        Box::pin(async move { response })
    }
}

/// Builds a [`TestPlugin`].
pub struct PluginBuilder {
    wasm: Result<Vec<u8>, String>,
    source: PathBuf,
    spec_name: String,
    configuration: Vec<u8>,
    vm_configuration: Vec<u8>,
    root_id: String,
    vm_id: Option<String>,
    attributes: HashMap<String, Vec<u8>>,
    scripts: Vec<(String, Script)>,
    start: SystemTime,
    cpu_deadline: Duration,
    memory_bytes: usize,
    log_level: LogLevel,
    env: Vec<(String, String)>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl PluginBuilder {
    /// Plugin configuration (`on_configure`), raw.
    pub fn configuration(mut self, bytes: impl Into<Vec<u8>>) -> PluginBuilder {
        self.configuration = bytes.into();
        self
    }

    /// Plugin configuration as JSON.
    pub fn configuration_json(self, value: serde_json::Value) -> PluginBuilder {
        self.configuration(value.to_string())
    }

    /// VM configuration (`on_vm_start`), raw.
    pub fn vm_configuration(mut self, bytes: impl Into<Vec<u8>>) -> PluginBuilder {
        self.vm_configuration = bytes.into();
        self
    }

    /// The root id (`plugin_root_id`).
    pub fn root_id(mut self, id: &str) -> PluginBuilder {
        self.root_id = id.to_owned();
        self
    }

    /// The VM id, which namespaces shared data and queues (default: unique per test plugin,
    /// so tests running in parallel do not share data).
    pub fn vm_id(mut self, id: &str) -> PluginBuilder {
        self.vm_id = Some(id.to_owned());
        self
    }

    /// A plugin-wide attribute (seen by the root context and by every request unless the
    /// request overrides it). Strings as bytes; see [`PluginBuilder::property_u64`].
    pub fn property(mut self, name: &str, value: impl Into<Vec<u8>>) -> PluginBuilder {
        self.attributes.insert(name.to_owned(), value.into());
        self
    }

    /// An integer attribute (8-byte little-endian, as Envoy encodes them).
    pub fn property_u64(self, name: &str, value: u64) -> PluginBuilder {
        self.property(name, value.to_le_bytes().to_vec())
    }

    /// Callouts to `cluster` get `response`.
    pub fn callout(mut self, cluster: &str, response: CannedResponse) -> PluginBuilder {
        self.scripts
            .push((cluster.to_owned(), Script::Respond(response)));
        self
    }

    /// gRPC calls to `cluster` get `reply` (the plugin names the cluster, or a `GrpcService`
    /// whose `envoy_grpc.cluster_name` is it).
    pub fn grpc_callout(mut self, cluster: &str, reply: GrpcReply) -> PluginBuilder {
        self.scripts.push((cluster.to_owned(), Script::Grpc(reply)));
        self
    }

    /// `cluster` exists but callouts to it fail (as a connect error or timeout does).
    pub fn failing_callout(mut self, cluster: &str) -> PluginBuilder {
        self.scripts.push((cluster.to_owned(), Script::Fail));
        self
    }

    /// What the clock reads at load (default: 2026-01-01T00:00:00Z).
    pub fn start_time(mut self, at: SystemTime) -> PluginBuilder {
        self.start = at;
        self
    }

    /// CPU time one callback may take (default 1 s: generous for debug machines; production
    /// defaults to 10 ms).
    pub fn cpu_deadline(mut self, deadline: Duration) -> PluginBuilder {
        self.cpu_deadline = deadline;
        self
    }

    /// Linear memory cap (default 64 MiB).
    pub fn max_memory_bytes(mut self, bytes: usize) -> PluginBuilder {
        self.memory_bytes = bytes;
        self
    }

    /// The log level reported to the plugin (default `Trace`: every line is captured).
    pub fn log_level(mut self, level: LogLevel) -> PluginBuilder {
        self.log_level = level;
        self
    }

    /// A WASI environment variable.
    pub fn env(mut self, key: &str, value: &str) -> PluginBuilder {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Loads the plugin: compile, `_initialize`, `on_vm_start`, `on_configure` — exactly as
    /// Weft does. `Err` when any of them fails (e.g. the plugin rejects its configuration);
    /// the plugin's log lines say why ([`LoadFailure::logs`]).
    pub fn load(self) -> Result<TestPlugin, LoadFailure> {
        let logs: LogCapture = Arc::new(Mutex::new(Vec::new()));
        let wasm = match self.wasm {
            Ok(w) => w,
            Err(e) => {
                return Err(LoadFailure {
                    error: LoadError::Start(e),
                    logs: Vec::new(),
                });
            }
        };
        let engine = engine().map_err(|error| LoadFailure {
            error,
            logs: Vec::new(),
        })?;
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}#{n}", self.spec_name);
        let clock = Arc::new(ManualClock::new(self.start));
        let attributes: AttributeMap = Arc::new(Mutex::new(self.attributes));
        {
            let mut a = attributes.lock();
            a.entry("plugin_name".into())
                .or_insert_with(|| self.spec_name.clone().into_bytes());
            a.entry("plugin_root_id".into())
                .or_insert_with(|| self.root_id.clone().into_bytes());
        }
        let callouts = Arc::new(ScriptedCallouts::default());
        for (cluster, script) in self.scripts {
            callouts.set(&cluster, script);
        }
        let mut spec = PluginSpec::new(name.clone(), wasm);
        spec.source = self.source.display().to_string();
        spec.root_id = self.root_id;
        spec.vm_id = self
            .vm_id
            .unwrap_or_else(|| format!("weft-plugin-test-{n}"));
        spec.configuration = self.configuration;
        spec.vm_configuration = self.vm_configuration;
        spec.env = self.env;
        spec.limits.cpu_deadline = self.cpu_deadline;
        spec.limits.memory_bytes = self.memory_bytes;
        spec.failure_policy = FailurePolicy::FailClosed;
        spec.log_level = self.log_level;
        spec.properties = Arc::new(PluginAttributes(attributes.clone()));
        spec.clock = clock.clone();
        spec.log_capture = Some(logs.clone());
        let plugin = Plugin::load(&engine, spec, callouts.clone()).map_err(|error| {
            let logs = logs.lock().clone();
            LoadFailure { error, logs }
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LoadFailure {
                error: LoadError::Engine(format!("tokio runtime: {e}")),
                logs: Vec::new(),
            })?;
        Ok(TestPlugin {
            plugin,
            name,
            clock,
            logs,
            attributes,
            callouts,
            runtime,
        })
    }
}

/// Why a plugin did not load, with what it logged.
#[derive(Debug)]
pub struct LoadFailure {
    /// The host's reason.
    pub error: LoadError,
    /// The plugin's log lines up to the failure (configuration errors are usually here).
    pub logs: Vec<(LogLevel, String)>,
}

impl LoadFailure {
    /// True when a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|(_, l)| l.contains(needle))
    }
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        for (level, line) in &self.logs {
            write!(f, "\n  [{level:?}] {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadFailure {}

/// A plugin loaded into Weft's host for a test.
pub struct TestPlugin {
    pub(crate) plugin: Arc<Plugin>,
    name: String,
    clock: Arc<ManualClock>,
    logs: LogCapture,
    pub(crate) attributes: AttributeMap,
    pub(crate) callouts: Arc<ScriptedCallouts>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for TestPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPlugin")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestPlugin {
    /// Starts building a test plugin from a `.wasm` file (usually [`crate::this_plugin!`]).
    pub fn builder(wasm: impl AsRef<Path>) -> PluginBuilder {
        let path = wasm.as_ref().to_owned();
        let stem = path
            .file_stem()
            .map_or_else(|| "plugin".to_owned(), |s| s.to_string_lossy().into_owned());
        PluginBuilder {
            wasm: std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display())),
            source: path,
            spec_name: stem,
            configuration: Vec::new(),
            vm_configuration: Vec::new(),
            root_id: String::new(),
            vm_id: None,
            attributes: HashMap::new(),
            scripts: Vec::new(),
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            cpu_deadline: Duration::from_secs(1),
            memory_bytes: 64 * 1024 * 1024,
            log_level: LogLevel::Trace,
            env: Vec::new(),
        }
    }

    /// The host's handle on the plugin (state, stats).
    pub fn host(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The name the plugin was registered under (unique per test plugin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The clock the plugin reads.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Sets a plugin-wide attribute after load.
    pub fn set_property(&self, name: &str, value: impl Into<Vec<u8>>) {
        self.attributes.lock().insert(name.to_owned(), value.into());
    }

    /// Callouts to `cluster` get `response` from now on.
    pub fn set_callout(&self, cluster: &str, response: CannedResponse) {
        self.callouts.set(cluster, Script::Respond(response));
    }

    /// gRPC calls to `cluster` get `reply` from now on.
    pub fn set_grpc_callout(&self, cluster: &str, reply: GrpcReply) {
        self.callouts.set(cluster, Script::Grpc(reply));
    }

    /// Callouts to `cluster` fail from now on.
    pub fn set_failing_callout(&self, cluster: &str) {
        self.callouts.set(cluster, Script::Fail);
    }

    /// Every callout made so far, in order.
    pub fn callouts(&self) -> Vec<RecordedCallout> {
        self.callouts.calls.lock().clone()
    }

    /// Runs `on_tick` once (whatever the tick period) and delivers the responses of the
    /// callouts it made before returning. False when the plugin set no tick period.
    pub fn tick(&self) -> bool {
        let ticked = {
            let _guard = self.runtime.enter();
            self.plugin.tick()
        };
        self.settle_root_callouts();
        ticked
    }

    /// Runs the background tasks that deliver root-context callout responses.
    fn settle_root_callouts(&self) {
        self.runtime.block_on(async {
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
        });
    }

    /// The plugin's log lines so far.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.lock().clone()
    }

    /// True when a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().iter().any(|(_, l)| l.contains(needle))
    }

    /// Forgets the log lines captured so far.
    pub fn clear_logs(&self) {
        self.logs.lock().clear();
    }

    fn metric(&self, name: &str) -> Option<Arc<weft_wasm::shared::Metric>> {
        engine()
            .ok()?
            .shared()
            .all_metrics()
            .into_iter()
            .find(|m| m.plugin == self.name && m.name == name)
    }

    /// A counter's value.
    pub fn counter(&self, name: &str) -> Option<i64> {
        self.metric(name)
            .filter(|m| m.kind == weft_wasm::types::MetricType::Counter)
            .map(|m| m.value())
    }

    /// A gauge's value.
    pub fn gauge(&self, name: &str) -> Option<i64> {
        self.metric(name)
            .filter(|m| m.kind == weft_wasm::types::MetricType::Gauge)
            .map(|m| m.value())
    }

    /// A histogram's observation count and sum.
    pub fn histogram(&self, name: &str) -> Option<(u64, i64)> {
        self.metric(name)
            .filter(|m| m.kind == weft_wasm::types::MetricType::Histogram)
            .map(|m| (m.count(), m.value()))
    }

    /// The names of the metrics the plugin defined, sorted.
    pub fn metric_names(&self) -> Vec<String> {
        let all = engine()
            .map(|e| e.shared().all_metrics())
            .unwrap_or_default();
        let mut names: Vec<String> = all
            .into_iter()
            .filter(|m| m.plugin == self.name)
            .map(|m| m.name.clone())
            .collect();
        names.sort();
        names
    }

    /// True once the plugin failed and no instance can serve (fail-closed).
    pub fn is_broken(&self) -> bool {
        self.plugin.is_broken()
    }
}
