//! proxy-wasm plugins in the proxy: loading them into handles that can be hot-swapped, the
//! callouts they make to clusters, and the per-plugin stats [`crate::metrics`] exports.
//!
//! A [`PluginHandle`] is what a route's chain holds. It points at the current loaded version;
//! a request takes that version once at its start and keeps it to the end, so a swap never
//! tears a stream: in-flight streams finish on the old version, new streams use the new one.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::BodyExt;
use weft_config::schema;
use weft_wasm::{
    Embedder, EngineOptions, FailurePolicy, HeaderList, HttpCallRequest, HttpCallResponse,
    LoadError, LogLevel, Plugin, PluginLimits, PluginSpec, ReloadPolicy, WasmEngine,
};

use weft_body::ProxyBody;
use weft_upstream::Cluster;

/// Largest callout response body kept for a plugin.
const MAX_CALLOUT_BODY: usize = 4 * 1024 * 1024;

/// A loaded version of a plugin, or why it could not be loaded.
#[derive(Debug)]
pub enum PluginVersion {
    /// Serving.
    Loaded(Arc<Plugin>),
    /// Never loaded (at startup): requests follow the plugin's failure policy.
    Failed {
        /// Why.
        error: String,
    },
}

/// A plugin as routes see it: name, settings, and the current version.
#[derive(Debug)]
pub struct PluginHandle {
    /// The plugin's name.
    pub name: String,
    /// Set when a route overrides the configuration (a separate root context).
    pub variant: Option<String>,
    /// Its configuration entry.
    pub config: schema::Plugin,
    /// The `.wasm` path, resolved against the configuration file's directory.
    pub file: PathBuf,
    /// The configuration bytes passed to `on_configure`.
    pub configuration: Vec<u8>,
    current: ArcSwap<PluginVersion>,
    last_error: Mutex<Option<String>>,
    /// Successful hot swaps.
    pub swaps: AtomicU64,
    /// Rejected new versions.
    pub rejected_versions: AtomicU64,
}

impl PluginHandle {
    /// The version new streams use.
    pub fn current(&self) -> Arc<PluginVersion> {
        self.current.load_full()
    }

    /// The failure policy.
    pub fn policy(&self) -> FailurePolicy {
        policy(self.config.failure_policy)
    }

    /// The last load or swap error.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock() = e;
    }

    /// A label for chains and metrics: `name` or `name[variant]`.
    ///
    /// A variant is named by the first 12 hex digits of its configuration's sha256, never by
    /// the configuration itself: overrides carry secrets (API keys, HMAC keys), and labels are
    /// shown by admin endpoints and in metric labels.
    pub fn label(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}[{}]", self.name, variant_digest(v)),
            None => self.name.clone(),
        }
    }
}

/// The short digest that names a configuration variant in labels.
pub fn variant_digest(configuration_json: &str) -> String {
    let mut hex = sha256_hex(configuration_json.as_bytes());
    hex.truncate(12);
    hex
}

fn policy(p: schema::FailurePolicy) -> FailurePolicy {
    match p {
        schema::FailurePolicy::FailClosed => FailurePolicy::FailClosed,
        schema::FailurePolicy::FailOpen => FailurePolicy::FailOpen,
        schema::FailurePolicy::Reload => FailurePolicy::Reload,
    }
}

fn log_level(s: &str) -> LogLevel {
    match s {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "warn" => LogLevel::Warn,
        "error" => LogLevel::Error,
        "critical" => LogLevel::Critical,
        _ => LogLevel::Info,
    }
}

/// A configuration value as plugin bytes: strings raw, anything else as JSON.
pub fn config_bytes(v: &Option<serde_json::Value>) -> Vec<u8> {
    match v {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        Some(other) => other.to_string().into_bytes(),
    }
}

/// Why a plugin could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("plugins[{name}].file {file}: {error}")]
    Read {
        /// Plugin name.
        name: String,
        /// The path.
        file: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The module was refused.
    #[error("plugins[{name}] ({file}): {error}")]
    Load {
        /// Plugin name.
        name: String,
        /// The path.
        file: String,
        /// Why.
        error: LoadError,
    },
    /// A listener or route names a plugin the configuration does not define.
    #[error("unknown plugin `{name}`")]
    Unknown {
        /// The name.
        name: String,
    },
}

/// A plugin name and its configuration override, if any.
type HandleKey = (String, Option<String>);

/// All plugin handles of the process, the engine, and the embedder for callouts.
pub struct PluginRegistry {
    embedder: Arc<ProxyEmbedder>,
    /// This proxy's Wasm runtime (engine, module cache, shared data, queues, metrics), created
    /// on first use; never shared with another registry.
    runtime: std::sync::OnceLock<Result<WasmEngine, LoadError>>,
    /// The settings that runtime is created with.
    engine_options: EngineOptions,
    handles: Mutex<HashMap<HandleKey, Arc<PluginHandle>>>,
    /// The instances of a plugin with `instances: 0` when the workers are not the loading
    /// runtime's (`runtime.accept: reuseport`: plugins load on the control runtime, a
    /// single-threaded one, and each worker is a runtime of its own).
    default_instances: Option<usize>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry").finish_non_exhaustive()
    }
}

impl Default for PluginRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl PluginRegistry {
    /// This registry's Wasm runtime, created on first use.
    pub fn runtime(&self) -> Result<WasmEngine, LoadError> {
        self.runtime
            .get_or_init(|| WasmEngine::new(self.engine_options.clone()))
            .clone()
    }

    /// Plugin-defined metrics of this registry's plugins (none before the runtime exists).
    pub fn plugin_metrics(&self) -> Vec<Arc<weft_wasm::shared::Metric>> {
        match self.runtime.get() {
            Some(Ok(rt)) => rt.shared().all_metrics(),
            _ => Vec::new(),
        }
    }

    /// Items dropped from this registry's full shared queues.
    pub fn queue_drops(&self) -> u64 {
        match self.runtime.get() {
            Some(Ok(rt)) => rt.shared().queue_drops(),
            _ => 0,
        }
    }
}

impl PluginRegistry {
    /// A registry; its own Wasm runtime is created on first use.
    pub fn new() -> PluginRegistry {
        Self::with_engine_options(EngineOptions::default())
    }

    /// A registry whose Wasm runtime is created with `options` (e.g. a child-process compiler).
    pub fn with_engine_options(options: EngineOptions) -> PluginRegistry {
        PluginRegistry {
            embedder: Arc::new(ProxyEmbedder::default()),
            runtime: std::sync::OnceLock::new(),
            engine_options: options,
            handles: Mutex::new(HashMap::new()),
            default_instances: None,
        }
    }

    /// Plugins with `instances: 0` get `workers` instances (at least 1, at most 64) instead of
    /// one per worker thread of the runtime that loads them: for per-worker runtimes
    /// (`runtime.accept: reuseport`), where that runtime is the single-threaded control one and
    /// one instance would be shared by every worker (a slow callback on it would make the
    /// others wait).
    pub fn with_default_instances(mut self, workers: usize) -> PluginRegistry {
        self.default_instances = Some(workers.clamp(1, 64));
        self
    }

    /// Points callouts at a generation's clusters.
    pub fn set_clusters(&self, clusters: Arc<Vec<Arc<Cluster>>>) {
        self.embedder.clusters.store(clusters);
    }

    /// Every handle, sorted by label.
    pub fn handles(&self) -> Vec<Arc<PluginHandle>> {
        let mut v: Vec<_> = self.handles.lock().values().cloned().collect();
        v.sort_by_key(|h| h.label());
        v
    }

    /// The handle for `plugin` with an optional configuration override. An unchanged handle
    /// is reused; otherwise the module is loaded (off the async threads). With `strict`, a
    /// failure is an error (a reload is refused); without it (startup), the handle records the
    /// failure and requests follow the plugin's failure policy.
    pub async fn resolve(
        &self,
        base_dir: &Path,
        plugin: &schema::Plugin,
        override_config: Option<&serde_json::Value>,
        strict: bool,
    ) -> Result<Arc<PluginHandle>, PluginError> {
        let variant = override_config.map(|v| v.to_string());
        let configuration = match override_config {
            Some(v) => config_bytes(&Some(v.clone())),
            None => config_bytes(&plugin.configuration),
        };
        let file = if is_builtin(Path::new(&plugin.file)) {
            PathBuf::from(&plugin.file)
        } else {
            base_dir.join(&plugin.file)
        };
        let bytes = read_module(&file)
            .await
            .map_err(|error| PluginError::Read {
                name: plugin.name.clone(),
                file: file.display().to_string(),
                error,
            })?;
        let key = (plugin.name.clone(), variant.clone());
        if let Some(existing) = self.handles.lock().get(&key).cloned()
            && existing.config == *plugin
            && existing.file == file
            && let PluginVersion::Loaded(p) = &*existing.current()
            && p.sha256 == sha256_hex(&bytes)
        {
            return Ok(existing);
        }
        let spec = self.spec(plugin, &file, bytes, configuration.clone());
        let version = match self.load(spec).await {
            Ok(p) => PluginVersion::Loaded(p),
            Err(error) => {
                if strict {
                    return Err(PluginError::Load {
                        name: plugin.name.clone(),
                        file: file.display().to_string(),
                        error,
                    });
                }
                tracing::error!(plugin = %plugin.name, file = %file.display(), "plugin failed to load; requests follow its failure policy: {error}");
                PluginVersion::Failed {
                    error: error.to_string(),
                }
            }
        };
        let error = match &version {
            PluginVersion::Failed { error } => Some(error.clone()),
            PluginVersion::Loaded(_) => None,
        };
        let handle = Arc::new(PluginHandle {
            name: plugin.name.clone(),
            variant,
            config: plugin.clone(),
            file,
            configuration,
            current: ArcSwap::from_pointee(version),
            last_error: Mutex::new(error),
            swaps: AtomicU64::new(0),
            rejected_versions: AtomicU64::new(0),
        });
        self.handles.lock().insert(key, handle.clone());
        Ok(handle)
    }

    fn spec(
        &self,
        plugin: &schema::Plugin,
        file: &Path,
        wasm: Vec<u8>,
        configuration: Vec<u8>,
    ) -> PluginSpec {
        let mut spec = PluginSpec::new(plugin.name.clone(), wasm);
        spec.source = file.display().to_string();
        spec.root_id = plugin.root_id.clone();
        spec.vm_id = plugin.vm_id.clone().unwrap_or_else(|| plugin.name.clone());
        // An explicit `vm_id` shares one VM with the other plugins of that `vm_id` and module
        // (Envoy's behaviour); the default (the plugin's name) keeps the plugin in its own.
        spec.share_vm = plugin.vm_id.is_some();
        spec.configuration = configuration;
        spec.vm_configuration = config_bytes(&plugin.vm_configuration);
        spec.env = plugin
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        spec.limits = PluginLimits {
            cpu_deadline: plugin.cpu_deadline,
            memory_bytes: plugin.max_memory_bytes,
            max_body_bytes: plugin.max_body_bytes,
            max_random_bytes: plugin.max_random_bytes,
            max_log_line_bytes: plugin.max_log_line_bytes,
            max_fd_write_bytes: plugin.max_fd_write_bytes,
            log_lines_per_second: plugin.log_lines_per_second,
            max_queue_item_bytes: plugin.max_queue_item_bytes,
            max_queue_bytes: plugin.max_queue_bytes,
            max_shared_data_keys: plugin.max_shared_data_keys,
            max_shared_data_bytes: plugin.max_shared_data_bytes,
            max_callouts_in_flight: plugin.max_callouts_in_flight,
        };
        spec.failure_policy = policy(plugin.failure_policy);
        spec.reload = ReloadPolicy {
            backoff: plugin.reload_backoff,
            max_failures: plugin.max_failures,
            window: plugin.failure_window,
        };
        // 0 (the default): one instance per worker thread of the runtime, so that every worker
        // can run the plugin at once.
        spec.instances = match (plugin.instances, self.default_instances) {
            (0, Some(n)) => n,
            (0, None) => tokio::runtime::Handle::try_current()
                .map(|h| h.metrics().num_workers())
                .unwrap_or(1)
                .clamp(1, 64),
            (n, _) => n,
        };
        spec.log_level = log_level(&plugin.log_level);
        spec
    }

    async fn load(&self, spec: PluginSpec) -> Result<Arc<Plugin>, LoadError> {
        let engine = self.runtime()?;
        let embedder: Arc<dyn Embedder> = self.embedder.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // Entering the runtime lets the plugin start its timer and queue driver.
            let _guard = handle.enter();
            Plugin::load(&engine, spec, embedder)
        })
        .await
        .map_err(|e| LoadError::Start(format!("loader task failed: {e}")))?
    }

    /// Hot-swaps every handle of plugin `name` (every configuration variant routes use) from
    /// its file, all or nothing: each new version is compiled, started and configured (a
    /// canary) first; only when every variant passed are they all swapped in. Any failure keeps
    /// every old version serving and is reported. Returns the number of handles swapped.
    pub async fn reload(&self, name: &str) -> Result<usize, PluginError> {
        let handles: Vec<Arc<PluginHandle>> = self
            .handles
            .lock()
            .values()
            .filter(|p| p.name == name)
            .cloned()
            .collect();
        let mut ready = Vec::with_capacity(handles.len());
        for handle in &handles {
            let bytes = read_module(&handle.file)
                .await
                .map_err(|error| PluginError::Read {
                    name: name.to_owned(),
                    file: handle.file.display().to_string(),
                    error,
                })?;
            let spec = self.spec(
                &handle.config,
                &handle.file,
                bytes,
                handle.configuration.clone(),
            );
            match self.load(spec).await {
                Ok(p) => ready.push((handle, p)),
                Err(error) => {
                    let msg = error.to_string();
                    for h in &handles {
                        h.rejected_versions.fetch_add(1, Ordering::Relaxed);
                        h.set_error(Some(msg.clone()));
                    }
                    tracing::error!(plugin = %handle.label(), "new plugin version rejected, every variant keeps its old version: {msg}");
                    return Err(PluginError::Load {
                        name: name.to_owned(),
                        file: handle.file.display().to_string(),
                        error,
                    });
                }
            }
        }
        let swapped = ready.len();
        for (handle, p) in ready {
            tracing::info!(plugin = %handle.label(), sha256 = %p.sha256, "plugin swapped");
            handle.current.store(Arc::new(PluginVersion::Loaded(p)));
            handle.swaps.fetch_add(1, Ordering::Relaxed);
            handle.set_error(None);
        }
        Ok(swapped)
    }

    /// Drops handles no generation uses any more.
    pub fn retain(&self, used: &[Arc<PluginHandle>]) {
        self.handles
            .lock()
            .retain(|_, v| used.iter().any(|u| Arc::ptr_eq(u, v)));
    }
}

/// Lower-case hex sha256, as `Plugin::sha256`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Callouts from plugins go to the live generation's clusters.
#[derive(Debug, Default)]
pub struct ProxyEmbedder {
    clusters: ArcSwap<Vec<Arc<Cluster>>>,
}

impl Embedder for ProxyEmbedder {
    fn has_cluster(&self, cluster: &str) -> bool {
        self.clusters.load().iter().any(|c| *c.name == *cluster)
    }

    fn http_call(
        &self,
        call: HttpCallRequest,
    ) -> Pin<Box<dyn Future<Output = Option<HttpCallResponse>> + Send>> {
        let cluster = self
            .clusters
            .load()
            .iter()
            .find(|c| *c.name == *call.cluster)
            .cloned();
        Box::pin(async move {
            let cluster = cluster?;
            let grpc = call.grpc;
            let timeout = if call.timeout.is_zero() {
                Duration::from_secs(10)
            } else {
                call.timeout
            };
            match tokio::time::timeout(timeout, callout(&cluster, call)).await {
                Ok(r) => r,
                // Envoy's async client answers a timed-out call itself; plugins check for it.
                Err(_) => Some(made_up(
                    grpc,
                    504,
                    "upstream request timeout",
                    "response_timeout",
                )),
            }
        })
    }
}

/// A reply the host makes up for a callout that got none, with Envoy's status, headers and body
/// (`:status`, `content-length`, `content-type: text/plain`).
fn synthesized(status: u16, body: &str) -> HttpCallResponse {
    let mut headers = HeaderList::default();
    headers.add(":status", status.to_string().as_bytes());
    headers.add("content-length", body.len().to_string().as_bytes());
    headers.add("content-type", b"text/plain");
    HttpCallResponse {
        headers,
        body: body.as_bytes().to_vec().into(),
        trailers: HeaderList::default(),
        details: None,
    }
}

/// [`synthesized`], or for a gRPC call the "trailers-only" gRPC reply Envoy's router makes of
/// the same failure, with Envoy's response code `details` (part of a gRPC failure's message).
fn made_up(grpc: bool, status: u16, text: &str, details: &str) -> HttpCallResponse {
    if grpc {
        weft_wasm::grpc::local_reply(status, text, details)
    } else {
        synthesized(status, text)
    }
}

/// Performs one callout. Failures before a response are answered as Envoy's router answers them
/// (503 with its text); a response whose body fails (reset, over `MAX_CALLOUT_BODY`) is `None`
/// (Envoy: `on_http_call_response` with no headers).
async fn callout(cluster: &Cluster, call: HttpCallRequest) -> Option<HttpCallResponse> {
    let grpc = call.grpc;
    let Some(endpoint) = cluster.endpoints().pick(None).cloned() else {
        return Some(made_up(
            grpc,
            503,
            "no healthy upstream",
            "no_healthy_upstream",
        ));
    };
    let method = call.headers.get(":method").unwrap_or(b"GET");
    let path = String::from_utf8_lossy(call.headers.get(":path").unwrap_or(b"/")).into_owned();
    let uri = Uri::builder()
        .scheme("http")
        .authority(endpoint.authority.clone())
        .path_and_query(path)
        .build()
        .ok()?;
    let mut req = Request::builder()
        .method(http::Method::from_bytes(method).ok()?)
        .uri(uri)
        .body(ProxyBody::full(call.body))
        .ok()?;
    for (k, v) in &call.headers.0 {
        let name = if k == ":authority" {
            http::header::HOST
        } else if k.starts_with(':') {
            continue;
        } else {
            HeaderName::from_bytes(k.as_bytes()).ok()?
        };
        req.headers_mut()
            .append(name, HeaderValue::from_bytes(v).ok()?);
    }
    let resp = match cluster.client.request(req).await {
        Ok(resp) => resp,
        Err(e) => {
            let (reason, details) = if e.is_connect() {
                // Envoy's details name the socket error: `delayed_connect_error:_Connection_refused`.
                let failure = match os_error(&e) {
                    Some(text) => format!("|delayed_connect_error:_{}", text.replace(' ', "_")),
                    None => String::new(),
                };
                (
                    "remote connection failure",
                    format!(
                        "upstream_reset_before_response_started{{remote_connection_failure{failure}}}"
                    ),
                )
            } else {
                (
                    "connection termination",
                    "upstream_reset_before_response_started{connection_termination}".to_owned(),
                )
            };
            return Some(made_up(
                grpc,
                503,
                &format!(
                    "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
                ),
                &details,
            ));
        }
    };
    let (parts, body) = resp.into_parts();
    let mut headers = HeaderList::default();
    headers.add(":status", parts.status.as_str().as_bytes());
    for (k, v) in &parts.headers {
        headers.add(k.as_str(), v.as_bytes());
    }
    let collected = http_body_util::Limited::new(body, MAX_CALLOUT_BODY)
        .collect()
        .await
        .ok()?;
    let mut trailers = HeaderList::default();
    if let Some(t) = collected.trailers() {
        for (k, v) in t {
            trailers.add(k.as_str(), v.as_bytes());
        }
    }
    let body: Bytes = collected.to_bytes();
    Some(HttpCallResponse {
        headers,
        body: body.into(),
        trailers,
        details: None,
    })
}

/// The operating system's text for the socket error under `e` (`Connection refused`), as
/// `strerror` gives it.
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(code) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            let text = std::io::Error::from_raw_os_error(code).to_string();
            return Some(match text.split_once(" (os error") {
                Some((t, _)) => t.to_owned(),
                None => text,
            });
        }
        cur = err.source();
    }
    None
}

/// How a configuration names a module embedded in the binary: `file: builtin:<name>`.
pub const BUILTIN_PREFIX: &str = "builtin:";

static BUILTINS: std::sync::OnceLock<Mutex<HashMap<String, &'static [u8]>>> =
    std::sync::OnceLock::new();

/// Makes modules embedded in the binary available as `file: builtin:<name>` (the `weft` binary
/// registers the shipped plugins at start).
pub fn register_builtin_plugins(modules: &[(&str, &'static [u8])]) {
    let mut map = BUILTINS.get_or_init(|| Mutex::new(HashMap::new())).lock();
    for (name, bytes) in modules {
        map.insert((*name).to_owned(), *bytes);
    }
}

/// True when `file` names an embedded module.
pub fn is_builtin(file: &Path) -> bool {
    file.to_str().is_some_and(|f| f.starts_with(BUILTIN_PREFIX))
}

/// A module's bytes: an embedded one for `builtin:<name>`, else the file's.
async fn read_module(file: &Path) -> std::io::Result<Vec<u8>> {
    let Some(name) = file.to_str().and_then(|f| f.strip_prefix(BUILTIN_PREFIX)) else {
        return tokio::fs::read(file).await;
    };
    let map = BUILTINS.get_or_init(|| Mutex::new(HashMap::new())).lock();
    match map.get(name) {
        Some(bytes) => Ok(bytes.to_vec()),
        None => {
            let mut known: Vec<&str> = map.keys().map(String::as_str).collect();
            known.sort_unstable();
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "no builtin plugin `{name}` in this binary (builtins: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ))
        }
    }
}
