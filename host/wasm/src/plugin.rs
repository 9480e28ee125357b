//! A plugin generation: a compiled module, linked once (`InstancePre`), validated by a canary
//! instance (`on_vm_start` + `on_configure`), and a pool of instances serving streams. Every
//! callback runs under a CPU deadline and a memory cap; an instance that traps is dropped and
//! never reused, and the plugin's failure policy decides what happens next.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use wasmtime::{Instance, InstancePre, Linker, Store, TypedFunc};

use crate::abi::GuestMemory;
use crate::context::{
    Clock, HostState, HttpCallRequest, HttpCallResponse, Phase, PluginInfo, Properties, SystemClock,
};
pub use crate::context::{Embedder, LogCapture, NoCallouts, PluginLimits};
use crate::engine::{EPOCH_TICK, WasmEngine};
use crate::types::LogLevel;
use crate::{Failure, LoadError, host};

type CallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// What happens when a plugin traps, runs out of time or memory (Istio's `failStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// The failing request gets a local 503; once no healthy instance is left, every request
    /// does until the plugin is reloaded.
    FailClosed,
    /// The failing request, and later ones while the plugin is broken, skip the plugin.
    FailOpen,
    /// The failing request gets a 503; the broken instance is replaced (with exponential backoff
    /// after consecutive failures), and after too many failures in a window the plugin is
    /// quarantined (fails closed) until reloaded.
    Reload,
}

/// The `reload` policy's settings.
#[derive(Debug, Clone)]
pub struct ReloadPolicy {
    /// First backoff after a failure; doubles per consecutive failure (capped at 30 s).
    pub backoff: Duration,
    /// Failures within `window` that quarantine the plugin.
    pub max_failures: u32,
    /// The failure-counting window.
    pub window: Duration,
}

impl Default for ReloadPolicy {
    fn default() -> Self {
        ReloadPolicy {
            backoff: Duration::from_millis(100),
            max_failures: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// Everything needed to load a plugin.
#[derive(Clone)]
pub struct PluginSpec {
    /// Unique plugin name.
    pub name: String,
    /// Where the module came from (for errors).
    pub source: String,
    /// The module bytes.
    pub wasm: Vec<u8>,
    /// Root id (`plugin_root_id`).
    pub root_id: String,
    /// VM id (`plugin_vm_id`; namespaces shared data and queues).
    pub vm_id: String,
    /// `PLUGIN_CONFIGURATION`.
    pub configuration: Vec<u8>,
    /// `VM_CONFIGURATION`.
    pub vm_configuration: Vec<u8>,
    /// WASI environment (`environ_get`), per plugin; the host's environment is not exposed.
    pub env: Vec<(String, String)>,
    /// Budgets.
    pub limits: PluginLimits,
    /// Failure policy.
    pub failure_policy: FailurePolicy,
    /// `reload` policy settings.
    pub reload: ReloadPolicy,
    /// Instances in the pool (at least 1).
    pub instances: usize,
    /// Log level reported to the plugin and applied to its logs.
    pub log_level: LogLevel,
    /// Attributes available without a stream (e.g. node metadata).
    pub properties: Arc<dyn Properties>,
    /// The clock plugins read.
    pub clock: Arc<dyn Clock>,
    /// Where plugin logs are also captured (the test harness reads them).
    pub log_capture: Option<LogCapture>,
    /// Share one VM with the other plugins of the same `vm_id`, module and VM configuration
    /// (Envoy's behaviour: one root context per plugin in the shared VM). Instance count and
    /// memory cap are those of the plugin that created the VM.
    pub share_vm: bool,
}

impl PluginSpec {
    /// A spec with defaults for everything but the name and the bytes.
    pub fn new(name: impl Into<String>, wasm: Vec<u8>) -> PluginSpec {
        let name = name.into();
        PluginSpec {
            source: name.clone(),
            name,
            wasm,
            root_id: String::new(),
            vm_id: String::new(),
            configuration: Vec::new(),
            vm_configuration: Vec::new(),
            env: Vec::new(),
            limits: PluginLimits::default(),
            failure_policy: FailurePolicy::Reload,
            reload: ReloadPolicy::default(),
            instances: 1,
            log_level: LogLevel::Info,
            properties: Arc::new(crate::context::NoProperties),
            clock: Arc::new(SystemClock),
            log_capture: None,
            share_vm: false,
        }
    }
}

/// The guest's callbacks, resolved once per instance. Missing ones are skipped.
#[derive(Default)]
pub(crate) struct Funcs {
    pub(crate) context_create: Option<TypedFunc<(i32, i32), ()>>,
    pub(crate) vm_start: Option<TypedFunc<(i32, i32), i32>>,
    pub(crate) configure: Option<TypedFunc<(i32, i32), i32>>,
    pub(crate) request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub(crate) request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub(crate) request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    pub(crate) response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub(crate) response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub(crate) response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    pub(crate) http_call_response: Option<CallResponseFn>,
    pub(crate) grpc_receive: Option<TypedFunc<(i32, i32, i32), ()>>,
    pub(crate) grpc_close: Option<TypedFunc<(i32, i32, i32), ()>>,
    pub(crate) tick: Option<TypedFunc<i32, ()>>,
    pub(crate) queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    pub(crate) log: Option<TypedFunc<i32, ()>>,
    pub(crate) done: Option<TypedFunc<i32, i32>>,
    pub(crate) delete: Option<TypedFunc<i32, ()>>,
    pub(crate) new_connection: Option<TypedFunc<i32, i32>>,
    pub(crate) downstream_data: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub(crate) upstream_data: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub(crate) downstream_close: Option<TypedFunc<(i32, i32), ()>>,
    pub(crate) upstream_close: Option<TypedFunc<(i32, i32), ()>>,
}

/// One instance: a store and its callbacks.
pub(crate) struct InstanceState {
    pub(crate) store: Store<HostState>,
    pub(crate) funcs: Funcs,
}

/// An instance in the pool.
pub(crate) struct Slot {
    pub(crate) id: u64,
    pub(crate) state: Mutex<InstanceState>,
    pub(crate) broken: AtomicBool,
    /// Context ids, shared by every instance of the VM (root contexts and streams).
    next_context: Arc<AtomicU32>,
    pub(crate) streams: AtomicUsize,
    /// Streams parked in this instance (paused, waiting for a root callback).
    pub(crate) parked: AtomicUsize,
    /// One permit: who may run a callback on the instance now. Async callers wait for it
    /// without blocking their worker thread; the mutex behind it is then uncontended by them.
    pub(crate) gate: Arc<crate::gate::Gate>,
    /// The VM's count of live instances (decremented when this one is dropped).
    live: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The root context id of every instance.
pub(crate) const ROOT_CONTEXT: u32 = 1;

impl Slot {
    /// Locks the instance for a callback; refused once the instance is broken.
    pub(crate) fn lock(&self) -> Result<SlotGuard<'_>, Failure> {
        self.guard(self.state.lock())
    }

    /// [`Slot::lock`], counting in `waits` when another thread holds the instance (the caller
    /// then blocks its thread for the rest of that callback).
    pub(crate) fn lock_counted(&self, waits: &AtomicU64) -> Result<SlotGuard<'_>, Failure> {
        match self.state.try_lock() {
            Some(guard) => self.guard(guard),
            None => {
                waits.fetch_add(1, Ordering::Relaxed);
                self.lock()
            }
        }
    }

    fn guard<'a>(
        &'a self,
        guard: parking_lot::MutexGuard<'a, InstanceState>,
    ) -> Result<SlotGuard<'a>, Failure> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(Failure::Unavailable(
                "the plugin instance was discarded after a failure".into(),
            ));
        }
        Ok(SlotGuard {
            state: guard,
            broken: &self.broken,
        })
    }

    pub(crate) fn next_context_id(&self) -> u32 {
        self.next_context.fetch_add(1, Ordering::Relaxed)
    }
}

/// An instance locked for a callback. When the thread unwinds while holding it (a panic in a host
/// function or in the embedder's code), the guest was stopped mid-callback and its state cannot
/// be trusted: the instance is marked broken and never used again.
pub(crate) struct SlotGuard<'a> {
    state: MutexGuard<'a, InstanceState>,
    broken: &'a AtomicBool,
}

impl Deref for SlotGuard<'_> {
    type Target = InstanceState;
    fn deref(&self) -> &InstanceState {
        &self.state
    }
}

impl DerefMut for SlotGuard<'_> {
    fn deref_mut(&mut self) -> &mut InstanceState {
        &mut self.state
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.broken.store(true, Ordering::SeqCst);
        }
    }
}

/// Counters of one plugin, for `/metrics` and `/plugins`.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Streams served.
    pub streams: AtomicU64,
    /// Traps.
    pub traps: AtomicU64,
    /// CPU deadlines hit.
    pub deadlines: AtomicU64,
    /// Memory caps hit.
    pub out_of_memory: AtomicU64,
    /// Requests that skipped the plugin (fail open).
    pub skipped: AtomicU64,
    /// Requests refused because of the plugin (fail closed, quarantine, reload backoff).
    pub rejected: AtomicU64,
    /// Instances created after the first ones (reload policy).
    pub replaced: AtomicU64,
    /// Callbacks run off the async worker because the plugin was slow ([`crate::pace`]).
    pub pace: crate::pace::Pace,
    /// Callbacks that found their instance running another stream's callback and waited.
    pub instance_waits: AtomicU64,
}

#[derive(Debug, Default)]
struct Health {
    failures: VecDeque<Instant>,
    consecutive: u32,
    retry_at: Option<Instant>,
    quarantined: bool,
    last_error: Option<String>,
}

/// A loaded, validated plugin generation.
pub struct Plugin {
    /// The plugin's name.
    pub name: String,
    /// sha256 of the module.
    pub sha256: String,
    /// The ABI version the module declares (`0.2.0` or `0.2.1`).
    pub abi_version: &'static str,
    /// The failure policy.
    pub policy: FailurePolicy,
    /// Counters.
    pub stats: PluginStats,
    pub(crate) info: Arc<PluginInfo>,
    /// The VM (instance pool) this plugin runs in; shared with other plugins of the same
    /// `vm_id`, module and VM configuration when the spec asks for it.
    pub(crate) vm: Arc<Vm>,
    /// This plugin's root context id in its VM.
    pub(crate) root: u32,
    /// Itself (for background work).
    me: Weak<Plugin>,
    reload: ReloadPolicy,
    health: Mutex<Health>,
    queue_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<u32>>>,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
    loaded_at: std::time::SystemTime,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(task) = self.driver.lock().take() {
            task.abort();
        }
        // In a VM other plugins still use, this plugin's root context ends (`on_done`,
        // `on_delete`), as Envoy ends a removed plugin's root context.
        let others = {
            let mut members = self.vm.members.lock();
            members.retain(|m| m.root != self.root && m.info.strong_count() > 0);
            !members.is_empty()
        };
        if others {
            let ticks = self.deadline_ticks();
            for slot in self.vm.pool.lock().clone() {
                let Ok(mut state) = slot.lock() else { continue };
                state.enter(&self.info, self.root);
                let root = self.root;
                if let Some(f) = state.funcs.done.clone() {
                    let _ = run(&mut state, ticks, Phase::Done, root, |s| {
                        f.call(s, root as i32).map(|_| ())
                    });
                }
                if let Some(f) = state.funcs.delete.clone() {
                    let _ = run(&mut state, ticks, Phase::Done, root, |s| {
                        f.call(s, root as i32)
                    });
                }
                state.store.data_mut().tick_periods.remove(&root);
            }
        }
    }
}

/// Uncounts an instance that failed to start.
struct Uncount<'a>(&'a AtomicUsize);

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A plugin of a VM: its root context id and settings.
pub(crate) struct Member {
    pub(crate) root: u32,
    pub(crate) info: Weak<PluginInfo>,
}

/// One VM: a linked module and its pool of instances. Plugins with the same `vm_id`, module and
/// VM configuration share one (Envoy's behaviour): each instance holds one root context per
/// plugin, each started with `on_context_create`, `on_vm_start` and `on_configure`.
pub(crate) struct Vm {
    pre: InstancePre<HostState>,
    engine: WasmEngine,
    target_instances: usize,
    pub(crate) pool: Mutex<Vec<Arc<Slot>>>,
    next_slot: AtomicUsize,
    next_slot_id: AtomicU64,
    next_context: Arc<AtomicU32>,
    pub(crate) members: Mutex<Vec<Member>>,
    /// Instances alive (pooled, or discarded but still held by streams).
    live: Arc<AtomicUsize>,
    /// The pool's largest size ever (healthy instances at once).
    peak: AtomicUsize,
    /// Single flight for replacements: async waiters queue on `replacing` (never blocking a
    /// worker); the builder (on the blocking pool, or a synchronous caller) holds `building`.
    replacing: tokio::sync::Mutex<()>,
    building: Mutex<()>,
}

impl Vm {
    /// Creates and initializes one instance: every live member's root context is started.
    fn new_instance(&self, creator: &Arc<PluginInfo>) -> Result<Arc<Slot>, LoadError> {
        let mut store = Store::new(self.engine.engine(), HostState::new(creator.clone()));
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(cpu_budget_check);
        let ticks = deadline_ticks(creator);
        arm_deadline(&mut store, ticks);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| LoadError::Start(format!("{e:#}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(LoadError::MissingExport("memory"))?;
        let alloc = typed::<i32, i32>(&instance, &mut store, "proxy_on_memory_allocate")?
            .or(typed::<i32, i32>(&instance, &mut store, "malloc")?)
            .ok_or(LoadError::MissingExport("proxy_on_memory_allocate"))?;
        store.data_mut().memory = Some(GuestMemory::new(memory));
        store.data_mut().alloc = Some(alloc);
        // Reactor start functions.
        let start_err = |e: wasmtime::Error| LoadError::Start(format!("{e:#}"));
        if let Some(init) = typed::<(), ()>(&instance, &mut store, "_initialize")? {
            init.call(&mut store, ()).map_err(start_err)?;
            if let Some(main) = typed::<(i32, i32), i32>(&instance, &mut store, "main")? {
                arm_deadline(&mut store, ticks);
                main.call(&mut store, (0, 0)).map_err(start_err)?;
            }
        } else if let Some(start) = typed::<(), ()>(&instance, &mut store, "_start")? {
            start.call(&mut store, ()).map_err(start_err)?;
        }
        let funcs = Funcs::resolve(&instance, &mut store)?;
        self.live.fetch_add(1, Ordering::Relaxed);
        // From here the slot's Drop uncounts it; a failure below drops the store only.
        let uncount = Uncount(&self.live);
        let mut state = InstanceState { store, funcs };
        let members: Vec<(u32, Arc<PluginInfo>)> = self
            .members
            .lock()
            .iter()
            .filter_map(|m| Some((m.root, m.info.upgrade()?)))
            .collect();
        for (root, info) in &members {
            start_root(&mut state, info, *root)?;
        }
        std::mem::forget(uncount);
        Ok(Arc::new(Slot {
            id: self.next_slot_id.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(state),
            broken: AtomicBool::new(false),
            next_context: self.next_context.clone(),
            streams: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            gate: crate::gate::Gate::new(),
            live: self.live.clone(),
        }))
    }

    /// Adds a healthy instance to the pool unless it is full; records the pool's peak size.
    fn add(&self, slot: Arc<Slot>) -> bool {
        let mut pool = self.pool.lock();
        if pool.len() >= self.target_instances {
            return false;
        }
        pool.push(slot);
        self.peak.fetch_max(pool.len(), Ordering::Relaxed);
        true
    }
}

/// Starts root context `root` of plugin `info` in an instance: `on_context_create`,
/// `on_vm_start` (Envoy calls it on every plugin's root context, also in a shared VM) and
/// `on_configure`.
fn start_root(
    state: &mut InstanceState,
    info: &Arc<PluginInfo>,
    root: u32,
) -> Result<(), LoadError> {
    let ticks = deadline_ticks(info);
    let call_err = |f: Failure| LoadError::Start(f.to_string());
    state.enter(info, root);
    let id = root as i32;
    if let Some(f) = state.funcs.context_create.clone() {
        run(state, ticks, Phase::Idle, root, |s| f.call(s, (id, 0))).map_err(call_err)?;
    }
    if let Some(f) = state.funcs.vm_start.clone() {
        let size = info.vm_configuration.len() as i32;
        let ok = run(state, ticks, Phase::VmStart, root, |s| {
            f.call(s, (id, size))
        })
        .map_err(call_err)?;
        if ok == 0 {
            return Err(LoadError::VmStartFailed);
        }
    }
    if let Some(f) = state.funcs.configure.clone() {
        let size = info.configuration.len() as i32;
        let ok = run(state, ticks, Phase::Configure, root, |s| {
            f.call(s, (id, size))
        })
        .map_err(call_err)?;
        if ok == 0 {
            let reason = info
                .last_warning
                .lock()
                .take()
                .unwrap_or_else(|| "the plugin logged no reason".to_owned());
            return Err(LoadError::ConfigureRejected(reason));
        }
    }
    Ok(())
}

/// The CPU deadline in epoch ticks (at least one). Runs before every callback: 64-bit
/// arithmetic, the tick a constant (a `u128` division is a libcall).
fn deadline_ticks(info: &PluginInfo) -> u64 {
    let micros = u64::try_from(info.limits.cpu_deadline.as_micros()).unwrap_or(u64::MAX);
    (micros / TICK_MICROS).max(1)
}

/// [`EPOCH_TICK`] in microseconds (at least one).
const TICK_MICROS: u64 = {
    let t = EPOCH_TICK.as_micros();
    if t == 0 { 1 } else { t as u64 }
};

impl Funcs {
    fn resolve(instance: &Instance, store: &mut Store<HostState>) -> Result<Funcs, LoadError> {
        Ok(Funcs {
            context_create: typed(instance, store, "proxy_on_context_create")?,
            vm_start: typed(instance, store, "proxy_on_vm_start")?,
            configure: typed(instance, store, "proxy_on_configure")?,
            request_headers: typed(instance, store, "proxy_on_request_headers")?,
            request_body: typed(instance, store, "proxy_on_request_body")?,
            request_trailers: typed(instance, store, "proxy_on_request_trailers")?,
            response_headers: typed(instance, store, "proxy_on_response_headers")?,
            response_body: typed(instance, store, "proxy_on_response_body")?,
            response_trailers: typed(instance, store, "proxy_on_response_trailers")?,
            http_call_response: typed(instance, store, "proxy_on_http_call_response")?,
            grpc_receive: typed(instance, store, "proxy_on_grpc_receive")?,
            grpc_close: typed(instance, store, "proxy_on_grpc_close")?,
            tick: typed(instance, store, "proxy_on_tick")?,
            queue_ready: typed(instance, store, "proxy_on_queue_ready")?,
            log: typed(instance, store, "proxy_on_log")?,
            done: typed(instance, store, "proxy_on_done")?,
            delete: typed(instance, store, "proxy_on_delete")?,
            new_connection: typed(instance, store, "proxy_on_new_connection")?,
            downstream_data: typed(instance, store, "proxy_on_downstream_data")?,
            upstream_data: typed(instance, store, "proxy_on_upstream_data")?,
            downstream_close: typed(instance, store, "proxy_on_downstream_connection_close")?,
            upstream_close: typed(instance, store, "proxy_on_upstream_connection_close")?,
        })
    }
}

impl InstanceState {
    /// Makes `info`'s root context the current one for the next callbacks (host functions read
    /// the plugin's settings from it). Cheap when it already is.
    pub(crate) fn enter(&mut self, info: &Arc<PluginInfo>, root: u32) {
        let data = self.store.data_mut();
        if !Arc::ptr_eq(&data.plugin, info) {
            data.plugin = info.clone();
            data.limiter.max_memory = info.limits.memory_bytes.max(data.limiter.max_memory);
        }
        data.root_context = root;
    }
}

fn abi_version(module: &wasmtime::Module) -> Result<&'static str, LoadError> {
    let mut other = None;
    for e in module.exports() {
        match e.name() {
            "proxy_abi_version_0_2_1" => return Ok("0.2.1"),
            "proxy_abi_version_0_2_0" => return Ok("0.2.0"),
            n if n.starts_with("proxy_abi_version_") => other = Some(n.to_owned()),
            _ => {}
        }
    }
    match other {
        Some(n) => Err(LoadError::UnsupportedAbi(n)),
        None => Err(LoadError::NoAbiMarker),
    }
}

impl Plugin {
    /// Compiles, links and validates a plugin: a canary instance runs `_initialize`,
    /// `on_vm_start` and `on_configure`; any failure refuses the plugin with the reason. The
    /// canary then joins the pool. CPU-heavy: call it off the request path.
    pub fn load(
        engine: &WasmEngine,
        spec: PluginSpec,
        embedder: Arc<dyn Embedder>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let (module, sha256) = engine.compile(&spec.wasm)?;
        let abi = abi_version(&module)?;
        let (queue_tx, queue_rx) = tokio::sync::mpsc::unbounded_channel();
        let info = Arc::new(PluginInfo {
            name: spec.name.clone(),
            root_id: spec.root_id.clone(),
            vm_id: spec.vm_id.clone(),
            configuration: spec.configuration.clone(),
            vm_configuration: spec.vm_configuration.clone(),
            env: spec.env.clone(),
            limits: spec.limits.clone(),
            log_level: spec.log_level,
            properties: spec.properties.clone(),
            clock: spec.clock.clone(),
            embedder,
            log_capture: spec.log_capture.clone(),
            queue_tx,
            shared: engine.shared().clone(),
            last_warning: Mutex::new(None),
            log_bucket: Mutex::new(crate::context::LogBucket::new(
                spec.limits.log_lines_per_second,
            )),
            logs_dropped: AtomicU64::new(0),
            callouts_in_flight: Arc::default(),
        });
        let key = (
            spec.vm_id.clone(),
            sha256.clone(),
            spec.vm_configuration.clone(),
        );
        // Plugins loading into one shared VM are serialized by the registry's lock.
        let mut registry = spec.share_vm.then(|| engine.shared_vms());
        let existing = registry
            .as_ref()
            .and_then(|r| r.get(&key)?.upgrade())
            .and_then(|vm| vm.downcast::<Vm>().ok())
            // A VM missing instances (failures) is not joined: the plugin gets fresh ones.
            .filter(|vm| vm.pool.lock().len() >= vm.target_instances);
        let (vm, root) = match existing {
            Some(vm) => {
                let root = vm.next_context.fetch_add(1, Ordering::Relaxed);
                let slots = vm.pool.lock().clone();
                for slot in slots {
                    let mut state = slot.lock().map_err(|f| LoadError::Start(f.to_string()))?;
                    start_root(&mut state, &info, root)?;
                }
                vm.members.lock().push(Member {
                    root,
                    info: Arc::downgrade(&info),
                });
                (vm, root)
            }
            None => {
                let mut linker = Linker::new(engine.engine());
                host::add_to_linker(
                    &mut linker,
                    host::Abi::parse(abi).unwrap_or(host::Abi::V0_2_1),
                )
                .map_err(|e| LoadError::Link(format!("{e:#}")))?;
                host::stub_other_wasi_imports(&mut linker, &module)
                    .map_err(|e| LoadError::Link(format!("{e:#}")))?;
                let pre = linker
                    .instantiate_pre(&module)
                    .map_err(|e| LoadError::Link(format!("{e:#}")))?;
                let next_context = Arc::new(AtomicU32::new(ROOT_CONTEXT));
                let root = next_context.fetch_add(1, Ordering::Relaxed);
                let vm = Arc::new(Vm {
                    pre,
                    engine: engine.clone(),
                    target_instances: spec.instances.max(1),
                    pool: Mutex::new(Vec::new()),
                    next_slot: AtomicUsize::new(0),
                    next_slot_id: AtomicU64::new(1),
                    next_context,
                    members: Mutex::new(vec![Member {
                        root,
                        info: Arc::downgrade(&info),
                    }]),
                    live: Arc::new(AtomicUsize::new(0)),
                    peak: AtomicUsize::new(0),
                    replacing: tokio::sync::Mutex::new(()),
                    building: Mutex::new(()),
                });
                // The canary, then the rest of the pool.
                for _ in 0..vm.target_instances {
                    let slot = vm.new_instance(&info)?;
                    vm.add(slot);
                }
                if let Some(r) = registry.as_mut() {
                    let erased: Arc<dyn std::any::Any + Send + Sync> = vm.clone();
                    r.insert(key, Arc::downgrade(&erased));
                }
                (vm, root)
            }
        };
        drop(registry);
        let plugin = Arc::new_cyclic(|me| Plugin {
            me: me.clone(),
            name: spec.name.clone(),
            sha256,
            abi_version: abi,
            policy: spec.failure_policy,
            stats: PluginStats::default(),
            info,
            vm,
            root,
            reload: spec.reload.clone(),
            health: Mutex::new(Health::default()),
            queue_rx: Mutex::new(Some(queue_rx)),
            driver: Mutex::new(None),
            loaded_at: std::time::SystemTime::now(),
        });
        plugin.start_driver();
        Ok(plugin)
    }

    pub(crate) fn deadline_ticks(&self) -> u64 {
        deadline_ticks(&self.info)
    }

    /// The embedding (for running callouts).
    pub fn embedder(&self) -> Arc<dyn Embedder> {
        self.info.embedder.clone()
    }

    /// The plugin's budgets.
    pub fn limits(&self) -> &PluginLimits {
        &self.info.limits
    }

    /// When this generation was loaded.
    pub fn loaded_at(&self) -> std::time::SystemTime {
        self.loaded_at
    }

    /// Healthy instances now.
    pub fn healthy_instances(&self) -> usize {
        self.vm.pool.lock().len()
    }

    /// True when the plugin cannot serve: quarantined, or no instance left and no replacement
    /// will be made (fail-open and fail-closed policies).
    pub fn is_broken(&self) -> bool {
        let quarantined = self.health.lock().quarantined;
        quarantined || (self.policy != FailurePolicy::Reload && self.healthy_instances() == 0)
    }

    /// Log lines dropped by the plugin's log-rate limit.
    pub fn logs_dropped(&self) -> u64 {
        self.info.logs_dropped.load(Ordering::Relaxed)
    }

    /// The last failure's description.
    pub fn last_error(&self) -> Option<String> {
        self.health.lock().last_error.clone()
    }

    /// A human-readable state: `ok`, `degraded`, `broken`, `backoff` or `quarantined`.
    pub fn state(&self) -> &'static str {
        if self.health.lock().quarantined {
            return "quarantined";
        }
        let healthy = self.healthy_instances();
        if healthy == 0 {
            if self.policy == FailurePolicy::Reload {
                "backoff"
            } else {
                "broken"
            }
        } else if healthy < self.vm.target_instances {
            "degraded"
        } else {
            "ok"
        }
    }

    /// The instance for a new stream: the calling worker thread's home instance while it is
    /// free (see [`crate::affinity`]), else the least-loaded healthy one (fewest open streams;
    /// ties in round robin).
    fn pick(&self) -> Option<Arc<Slot>> {
        let pool = self.vm.pool.lock();
        let n = pool.len();
        if n == 0 {
            return None;
        }
        if let Some(home) = crate::affinity::home(n).and_then(|i| pool.get(i))
            && home.gate.is_free()
        {
            return Some(home.clone());
        }
        let start = self.vm.next_slot.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| &pool[(start + k) % n])
            .min_by_key(|s| s.streams.load(Ordering::Relaxed))
            .cloned()
    }

    /// Why no instance can be made now, if so (policy, quarantine, back-off).
    fn cannot_replace(&self) -> Option<Failure> {
        if self.policy != FailurePolicy::Reload {
            return Some(Failure::Unavailable(format!(
                "plugin {} is broken",
                self.name
            )));
        }
        let h = self.health.lock();
        if h.quarantined {
            return Some(Failure::Unavailable(format!(
                "plugin {} is quarantined",
                self.name
            )));
        }
        if h.retry_at.is_some_and(|t| Instant::now() < t) {
            return Some(Failure::Unavailable(format!(
                "plugin {} is restarting (backoff)",
                self.name
            )));
        }
        None
    }

    /// An instance for a new stream: the least-loaded healthy one. Under the `reload` policy,
    /// with none left and the back-off passed, one replacement is built (single flight: the
    /// pool never grows past its size). [`Plugin::ready`] builds it off the worker thread
    /// first; this synchronous path only builds when called without it.
    pub(crate) fn checkout(&self) -> Result<Arc<Slot>, Failure> {
        if let Some(slot) = self.pick() {
            return Ok(slot);
        }
        if let Some(f) = self.cannot_replace() {
            return Err(f);
        }
        self.refill_one(1)
    }

    /// Single flight: unless the pool already has `until` instances (then the least-loaded
    /// one), builds one and adds it (never past the pool's size).
    fn refill_one(&self, until: usize) -> Result<Arc<Slot>, Failure> {
        let _flight = self.vm.building.lock();
        if self.vm.pool.lock().len() >= until
            && let Some(slot) = self.pick()
        {
            return Ok(slot);
        }
        if let Some(f) = self.cannot_replace() {
            return Err(f);
        }
        match self.vm.new_instance(&self.info) {
            Ok(slot) => {
                self.stats.replaced.fetch_add(1, Ordering::Relaxed);
                tracing::info!(plugin = %self.name, "replaced a failed instance");
                self.vm.add(slot.clone());
                self.health.lock().retry_at = None;
                Ok(slot)
            }
            Err(e) => {
                self.record_failure(&e.to_string());
                Err(Failure::Unavailable(format!(
                    "plugin {} cannot restart: {e}",
                    self.name
                )))
            }
        }
    }

    /// Makes sure a new stream will find an instance without building one on the worker
    /// thread: under the `reload` policy, with none left, one replacement is built on the
    /// blocking pool while callers wait asynchronously (single flight). A no-op when an
    /// instance is there or none can be made (the stream then gets the reason).
    pub async fn ready(self: &Arc<Self>) {
        if !self.vm.pool.lock().is_empty() || self.cannot_replace().is_some() {
            return;
        }
        let _flight = self.vm.replacing.lock().await;
        if !self.vm.pool.lock().is_empty() {
            return;
        }
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.refill_one(1)).await;
    }

    /// In the background after a failure (reload policy): once the back-off has passed,
    /// rebuilds the pool to its size, one instance at a time on the blocking pool, single
    /// flight with [`Plugin::ready`].
    fn refill_later(&self) {
        if self.policy != FailurePolicy::Reload {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = self.me.clone();
        let wait = self.health.lock().retry_at.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        });
        handle.spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(p) = weak.upgrade() else { return };
            let _flight = p.vm.replacing.lock().await;
            while p.vm.pool.lock().len() < p.vm.target_instances && p.cannot_replace().is_none() {
                let me = p.clone();
                let target = p.vm.target_instances;
                match tokio::task::spawn_blocking(move || me.refill_one(target)).await {
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
        });
    }

    /// Instances alive now (pooled, or discarded but still held by a stream).
    pub fn live_instances(&self) -> usize {
        self.vm.live.load(Ordering::Relaxed)
    }

    /// The most healthy instances ever pooled at once in this plugin's VM (never more than
    /// its size: replacements are single flight).
    pub fn peak_instances(&self) -> usize {
        self.vm.peak.load(Ordering::Relaxed)
    }

    /// The pool's size.
    pub fn target_instances(&self) -> usize {
        self.vm.target_instances
    }

    /// Drops `slot` after a failure and applies the policy's bookkeeping.
    pub(crate) fn instance_failed(&self, slot: &Slot, failure: &Failure) {
        if slot.broken.swap(true, Ordering::SeqCst) {
            return;
        }
        match failure {
            Failure::Deadline => self.stats.deadlines.fetch_add(1, Ordering::Relaxed),
            Failure::OutOfMemory => self.stats.out_of_memory.fetch_add(1, Ordering::Relaxed),
            _ => self.stats.traps.fetch_add(1, Ordering::Relaxed),
        };
        self.vm.pool.lock().retain(|s| s.id != slot.id);
        // Streams parked in the instance can no longer be resumed by it: wake them (they see
        // the failure).
        for p in slot.state.lock().store.data().parked.values() {
            p.wake.notify_one();
        }
        tracing::warn!(plugin = %self.name, policy = ?self.policy, "plugin instance failed and was discarded: {failure}");
        self.record_failure(&failure.to_string());
        self.refill_later();
    }

    fn record_failure(&self, what: &str) {
        let mut h = self.health.lock();
        let now = Instant::now();
        h.last_error = Some(what.to_owned());
        h.failures.push_back(now);
        while h
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.reload.window)
        {
            h.failures.pop_front();
        }
        h.consecutive += 1;
        if self.policy == FailurePolicy::Reload {
            if h.failures.len() as u32 >= self.reload.max_failures {
                if !h.quarantined {
                    tracing::error!(plugin = %self.name, failures = h.failures.len(), "plugin quarantined until reloaded");
                }
                h.quarantined = true;
            } else {
                h.retry_at = Some(now + backoff(self.reload.backoff, h.consecutive));
            }
        }
    }

    pub(crate) fn stream_succeeded(&self) {
        self.health.lock().consecutive = 0;
    }

    /// Runs `on_tick` on the first healthy instance (timers fire once per plugin, not once per
    /// worker), and on every other instance holding parked streams (paused with nothing
    /// pending), whose root context is the only one that can resume them. Returns false when
    /// no tick period is set.
    pub fn tick(&self) -> bool {
        let slots: Vec<Arc<Slot>> = {
            let pool = self.vm.pool.lock();
            pool.iter()
                .enumerate()
                .filter(|(i, s)| *i == 0 || s.parked.load(Ordering::Relaxed) > 0)
                .map(|(_, s)| s.clone())
                .collect()
        };
        let mut ticked = false;
        for slot in slots {
            ticked |= self.tick_on(&slot);
        }
        ticked
    }

    fn tick_on(&self, slot: &Arc<Slot>) -> bool {
        let root = self.root;
        let result = {
            let Ok(mut state) = slot.lock() else {
                return false;
            };
            if !state.store.data().tick_periods.contains_key(&root) {
                return false;
            }
            let Some(f) = state.funcs.tick.clone() else {
                return false;
            };
            state.enter(&self.info, root);
            let r = run(&mut state, self.deadline_ticks(), Phase::Tick, root, |s| {
                f.call(s, root as i32)
            });
            let calls = std::mem::take(&mut state.store.data_mut().calls);
            r.map(|()| calls)
        };
        match result {
            Ok(calls) => {
                self.dispatch_root_calls(slot, calls);
                true
            }
            Err(f) => {
                self.instance_failed(slot, &f);
                true
            }
        }
    }

    /// The tick period the primary instance's root context asked for.
    pub fn tick_period(&self) -> Option<Duration> {
        let slot = self.primary()?;
        let state = slot.lock().ok()?;
        state.store.data().tick_periods.get(&self.root).copied()
    }

    fn primary(&self) -> Option<Arc<Slot>> {
        self.vm.pool.lock().first().cloned()
    }

    /// Delivers `on_queue_ready` for `queue` on the primary instance.
    pub fn queue_ready(&self, queue: u32) {
        let Some(slot) = self.primary() else {
            return;
        };
        let root = self.root;
        let result = {
            let Ok(mut state) = slot.lock() else {
                return;
            };
            let Some(f) = state.funcs.queue_ready.clone() else {
                return;
            };
            state.enter(&self.info, root);
            let r = run(
                &mut state,
                self.deadline_ticks(),
                Phase::QueueReady,
                root,
                |s| f.call(s, (root as i32, queue as i32)),
            );
            let calls = std::mem::take(&mut state.store.data_mut().calls);
            r.map(|()| calls)
        };
        match result {
            Ok(calls) => self.dispatch_root_calls(&slot, calls),
            Err(f) => self.instance_failed(&slot, &f),
        }
    }

    /// Callouts made by a root context run in the background; their responses go back to the
    /// same instance.
    fn dispatch_root_calls(&self, slot: &Arc<Slot>, calls: Vec<HttpCallRequest>) {
        if calls.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(plugin = %self.name, "no runtime to run root-context callouts");
            return;
        };
        for call in calls {
            let embedder = self.info.embedder.clone();
            let info = self.info.clone();
            let root = self.root;
            let slot = slot.clone();
            let ticks = self.deadline_ticks();
            let token = call.token;
            let ctx = call.context_id;
            let grpc = call.grpc;
            handle.spawn(async move {
                let response = embedder.http_call(call).await;
                if slot.broken.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut state) = slot.lock() else {
                    return;
                };
                state.enter(&info, root);
                let _ = deliver_call_response(&mut state, ticks, ctx, token, grpc, response);
            });
        }
    }

    fn start_driver(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut rx) = self.queue_rx.lock().take() else {
            return;
        };
        let weak: Weak<Plugin> = Arc::downgrade(self);
        let task = handle.spawn(async move {
            let mut next_tick: Option<tokio::time::Instant> = None;
            loop {
                let sleep_until = next_tick
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_millis(200));
                tokio::select! {
                    q = rx.recv() => {
                        let Some(q) = q else { return };
                        let Some(p) = weak.upgrade() else { return };
                        p.queue_ready(q);
                    }
                    _ = tokio::time::sleep_until(sleep_until) => {
                        let Some(p) = weak.upgrade() else { return };
                        if next_tick.is_some() {
                            p.tick();
                        }
                        next_tick = p.tick_period().map(|d| tokio::time::Instant::now() + d);
                    }
                }
            }
        });
        *self.driver.lock() = Some(task);
    }
}

/// The longest back-off of the `reload` policy.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The back-off after `consecutive` failures: `first` doubled per failure after the first,
/// capped at [`MAX_BACKOFF`]; saturating, so no `first` or count can overflow.
pub(crate) fn backoff(first: Duration, consecutive: u32) -> Duration {
    let factor = 1u32 << consecutive.saturating_sub(1).min(8);
    first
        .checked_mul(factor)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

/// Starts a guest call's CPU budget. Reading the thread's CPU clock is a system call, too dear
/// for every callback, so it is read only by calls that run long enough to reach their first
/// epoch wake-up, after half the budget of wall time: that first window counts as CPU spent
/// (an upper bound) and the rest of the budget is measured in thread CPU time from there. A
/// spinning guest is interrupted after its budget of CPU; a short call that was merely
/// descheduled (a busy machine) is not, unless it also burns the rest of its budget.
pub(crate) fn arm_deadline(store: &mut Store<HostState>, ticks: u64) {
    let first = (ticks / 2).max(1);
    store.set_epoch_deadline(first);
    let state = store.data_mut();
    state.cpu_checkpoint = None;
    state.first_window = EPOCH_TICK * u32::try_from(first).unwrap_or(u32::MAX);
}

/// Runs when a call reaches its epoch deadline (see [`arm_deadline`]).
fn cpu_budget_check(
    mut ctx: wasmtime::StoreContextMut<'_, HostState>,
) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    let state = ctx.data_mut();
    let budget = state.plugin.limits.cpu_deadline;
    let now = cpu_time::ThreadTime::now().as_duration();
    let used = match state.cpu_checkpoint {
        None => {
            state.cpu_checkpoint = Some((now, state.first_window));
            state.first_window
        }
        Some((checkpoint, before)) => before + now.saturating_sub(checkpoint),
    };
    if used >= budget {
        return Ok(wasmtime::UpdateDeadline::Interrupt);
    }
    let left = u64::try_from((budget - used).as_micros()).unwrap_or(u64::MAX);
    let remaining = (left / TICK_MICROS).max(1);
    Ok(wasmtime::UpdateDeadline::Continue(remaining))
}

fn typed<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &'static str,
) -> Result<Option<TypedFunc<P, R>>, LoadError> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|_| LoadError::BadExport(name)),
    }
}

/// Runs one guest call under the CPU deadline, classifying failures.
pub(crate) fn run<R>(
    state: &mut InstanceState,
    deadline_ticks: u64,
    phase: Phase,
    context_id: u32,
    call: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
) -> Result<R, Failure> {
    let store = &mut state.store;
    arm_deadline(store, deadline_ticks);
    {
        let data = store.data_mut();
        data.phase = phase;
        data.context_id = context_id;
    }
    let result = call(store);
    let data = store.data_mut();
    data.phase = Phase::Idle;
    result.map_err(|e| classify_error(e, data.limiter.refused))
}

pub(crate) fn classify_error(e: wasmtime::Error, memory_refused: bool) -> Failure {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>()
        && *trap == wasmtime::Trap::Interrupt
    {
        return Failure::Deadline;
    }
    if memory_refused {
        return Failure::OutOfMemory;
    }
    Failure::Trap(format!("{e:#}"))
}

pub(crate) fn deliver_call_response(
    state: &mut InstanceState,
    ticks: u64,
    context_id: u32,
    token: u32,
    grpc: bool,
    response: Option<HttpCallResponse>,
) -> Result<(), Failure> {
    if grpc {
        return deliver_grpc_response(state, ticks, context_id, token, response);
    }
    let Some(f) = state.funcs.http_call_response.clone() else {
        return Ok(());
    };
    let (n_headers, body, n_trailers) = match &response {
        Some(r) => (
            r.headers.0.len() as i32,
            r.body.len() as i32,
            r.trailers.0.len() as i32,
        ),
        None => (0, 0, 0),
    };
    {
        let data = state.store.data_mut();
        data.last_status = match &response {
            Some(_) => (0, Vec::new()),
            None => (1, b"callout failed".to_vec()),
        };
        // A failed callout reads as empty maps and body (as in Envoy), not NOT_FOUND, which
        // the Rust SDK's getters turn into a panic.
        data.callout = Some(response.unwrap_or_default());
    }
    let r = run(state, ticks, Phase::HttpCallResponse, context_id, |s| {
        f.call(
            s,
            (context_id as i32, token as i32, n_headers, body, n_trailers),
        )
    });
    state.store.data_mut().callout = None;
    r
}

/// Delivers a unary gRPC call's outcome as Envoy does: a message to `proxy_on_grpc_receive`
/// (readable as `GrpcReceiveBuffer`), a failure to `proxy_on_grpc_close` (its status and
/// message through `proxy_get_status`). A call the plugin cancelled gets nothing.
fn deliver_grpc_response(
    state: &mut InstanceState,
    ticks: u64,
    context_id: u32,
    token: u32,
    response: Option<HttpCallResponse>,
) -> Result<(), Failure> {
    {
        let pending = &mut state.store.data_mut().grpc_pending;
        match pending.iter().position(|&t| t == token) {
            Some(i) => {
                pending.remove(i);
            }
            // Cancelled (or forgotten past `MAX_PENDING`, then delivered: nothing is lost).
            None if pending.len() < crate::grpc::MAX_PENDING => return Ok(()),
            None => {}
        }
    }
    match crate::grpc::outcome(response) {
        crate::grpc::Outcome::Message(message) => {
            let Some(f) = state.funcs.grpc_receive.clone() else {
                return Ok(());
            };
            let size = message.len() as i32;
            {
                let data = state.store.data_mut();
                data.last_status = (0, Vec::new());
                data.grpc_message = Some(message.into());
            }
            let r = run(state, ticks, Phase::HttpCallResponse, context_id, |s| {
                f.call(s, (context_id as i32, token as i32, size))
            });
            state.store.data_mut().grpc_message = None;
            r
        }
        crate::grpc::Outcome::Close(code, message) => {
            let Some(f) = state.funcs.grpc_close.clone() else {
                return Ok(());
            };
            state.store.data_mut().last_status = (code, message);
            run(state, ticks, Phase::HttpCallResponse, context_id, |s| {
                f.call(s, (context_id as i32, token as i32, code as i32))
            })
        }
    }
}
