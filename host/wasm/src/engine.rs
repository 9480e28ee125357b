//! The wasmtime engine shared by every plugin: epoch interruption for CPU deadlines, the
//! pooling allocator with copy-on-write memory images, and an on-disk cache of compiled
//! modules keyed by the module's sha256 and the engine's compatibility hash.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module, OptLevel};

use crate::LoadError;

/// How often the epoch advances: the granularity of CPU deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where compiled modules are cached (`None`: no disk cache).
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling allocator (falls back to on-demand allocation if it cannot reserve).
    pub pooling: bool,
    /// Largest linear memory any plugin may have (the pooling allocator reserves this).
    pub max_memory_bytes: usize,
    /// An executable that compiles modules in a child process (`<it> plugin compile - --output -`
    /// with this engine's settings; `weft run` sets it to the `weft` binary itself). Cranelift's
    /// working memory then never enters the proxy: the compiled code comes back through the
    /// module cache file. `None` (or no cache directory): compile on a thread of this process.
    pub compiler: Option<PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_dir: default_cache_dir(),
            pooling: true,
            max_memory_bytes: 256 * 1024 * 1024,
            compiler: None,
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("weft").join("wasm"))
}

/// A Wasm runtime, owned by one proxy: the wasmtime engine (and its epoch ticker), the module
/// cache, the VMs plugins share, and the data, queues and metrics they share. Nothing of it is
/// process-wide: two runtimes in one process share nothing. Cheap to clone (a handle).
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    /// The settings a child compiler must use to produce artifacts this engine accepts.
    pooling: bool,
    max_memory_bytes: usize,
    compiler: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    /// VMs shared by plugins with the same `vm_id`, module and VM configuration (type-erased
    /// to keep this module free of the plugin layer), by that key.
    shared_vms: parking_lot::Mutex<HashMap<VmKey, Weak<dyn Any + Send + Sync>>>,
    /// Shared data, queues and plugin-defined metrics of this runtime's plugins.
    shared: Arc<crate::shared::SharedState>,
}

/// What identifies a shared VM, as Envoy keys them: `vm_id`, module sha256, VM configuration.
pub(crate) type VmKey = (String, String, Vec<u8>);

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("cache_dir", &self.inner.cache_dir)
            .finish()
    }
}

fn config(options: &EngineOptions, pooling: bool) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.parallel_compilation(false);
    c.cranelift_opt_level(OptLevel::Speed);
    c.memory_init_cow(true);
    c.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(20));
    if pooling {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        let slots = pool_slots();
        pool.total_memories(slots);
        pool.total_tables(slots);
        pool.total_core_instances(slots);
        pool.max_memory_size(options.max_memory_bytes);
        c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

/// Slots of the pooling allocator (memories, tables, instances): 1,000, or the
/// `WEFT_WASM_POOL_SLOTS` environment variable (1 to 1,000). A profiling switch:
/// `bench/symbol_order.sh` sets it small, because valgrind cannot reserve the address space of
/// 1,000 memories and wasmtime would fall back to on-demand allocation; with a few slots the
/// profile runs the pooling path the proxy runs natively.
fn pool_slots() -> u32 {
    const DEFAULT: u32 = 1000;
    std::env::var("WEFT_WASM_POOL_SLOTS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| (1..=DEFAULT).contains(n))
        .unwrap_or(DEFAULT)
}

/// The former name of [`WasmRuntime`].
pub type WasmEngine = WasmRuntime;

impl WasmRuntime {
    /// Shared data, queues and plugin-defined metrics of this runtime's plugins.
    pub fn shared(&self) -> &Arc<crate::shared::SharedState> {
        &self.inner.shared
    }

    /// Builds the engine and starts the epoch ticker thread.
    pub fn new(options: EngineOptions) -> Result<WasmRuntime, LoadError> {
        let (engine, pooling) = if options.pooling {
            match Engine::new(&config(&options, true)) {
                Ok(e) => (e, true),
                Err(e) => {
                    tracing::warn!(error = %e, "pooling allocator unavailable; using on-demand allocation");
                    let e = Engine::new(&config(&options, false))
                        .map_err(|e| LoadError::Engine(e.to_string()))?;
                    (e, false)
                }
            }
        } else {
            let e = Engine::new(&config(&options, false))
                .map_err(|e| LoadError::Engine(e.to_string()))?;
            (e, false)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("weft-wasm-epoch".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        Ok(WasmRuntime {
            inner: Arc::new(Inner {
                engine,
                cache_dir: options.cache_dir,
                pooling,
                max_memory_bytes: options.max_memory_bytes,
                compiler: options.compiler,
                stop,
                shared_vms: parking_lot::Mutex::new(HashMap::new()),
                shared: Arc::default(),
            }),
        })
    }

    /// The registry of shared VMs, locked (plugins loading into one VM are serialized).
    pub(crate) fn shared_vms(
        &self,
    ) -> parking_lot::MutexGuard<'_, HashMap<VmKey, Weak<dyn Any + Send + Sync>>> {
        let mut vms = self.inner.shared_vms.lock();
        vms.retain(|_, w| w.strong_count() > 0);
        vms
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compiles `bytes`, or loads the cached compilation. Returns the module and its sha256.
    pub fn compile(&self, bytes: &[u8]) -> Result<(Module, String), LoadError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm);
        }
        let digest = hex(&Sha256::digest(bytes));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut h);
        let cache_file = self
            .inner
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{:016x}.cwasm", h.finish())));
        if let Some(path) = &cache_file
            && path.exists()
            && let Some(m) = self.load_cached(path)
        {
            return Ok((m, digest));
        }
        if let (Some(path), Some(compiler)) = (&cache_file, &self.inner.compiler) {
            match self.compile_in_child(compiler, bytes) {
                Ok(artifact) => match write_cache_entry(path, &artifact) {
                    Ok(()) => {
                        drop(artifact);
                        if let Some(mapped) = self.load_cached(path) {
                            tracing::info!(module = %digest, "plugin module compiled in a child process");
                            return Ok((mapped, digest));
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot write the module cache"),
                },
                Err(ChildCompile::Rejected(why)) => return Err(LoadError::Compile(why)),
                Err(ChildCompile::Unavailable(why)) => {
                    tracing::warn!(compiler = %compiler.display(), %why, "cannot compile in a child process: compiling in this one");
                }
            }
        }
        let module = self.compile_here(bytes)?;
        if let Some(path) = &cache_file
            && let Ok(serialized) = module.serialize()
        {
            match write_cache_entry(path, &serialized) {
                // Run from the file just written: its code is then clean, file-backed pages
                // (shared and reclaimable) rather than anonymous memory for the process's life.
                Ok(()) => {
                    drop(serialized);
                    if let Some(mapped) = self.load_cached(path) {
                        return Ok((mapped, digest));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot write the module cache"),
            }
        }
        Ok((module, digest))
    }

    /// Compiles `bytes` in this process, on a thread of its own (with wasmtime's parallel
    /// compilation off): when it exits, the allocator's caches of Cranelift's short-lived memory
    /// go with it and the freed pages are purged, instead of staying in a pool thread.
    fn compile_here(&self, bytes: &[u8]) -> Result<Module, LoadError> {
        let compiled = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("weft-wasm-compile".into())
                .spawn_scoped(s, || Module::new(&self.inner.engine, bytes))
                .map_err(|e| LoadError::Compile(format!("cannot start the compile thread: {e}")))?
                .join()
                .map_err(|_| LoadError::Compile("the compile thread panicked".into()))
        })?;
        compiled.map_err(|e| LoadError::Compile(format!("{e:#}")))
    }

    /// Compiles `bytes` and returns the serialized artifact (what `weft plugin compile` writes):
    /// loadable by any engine with this one's settings.
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm);
        }
        let module = self.compile_here(bytes)?;
        module
            .serialize()
            .map_err(|e| LoadError::Compile(format!("serialize: {e:#}")))
    }

    /// The arguments a child compiler needs to build artifacts for this engine.
    pub fn compiler_args(&self) -> Vec<String> {
        vec![
            "plugin".into(),
            "compile".into(),
            "-".into(),
            "--output".into(),
            "-".into(),
            format!("--pooling={}", self.inner.pooling),
            format!("--max-memory-bytes={}", self.inner.max_memory_bytes),
        ]
    }

    /// Runs `compiler plugin compile` on `bytes` (module on stdin, artifact on stdout).
    fn compile_in_child(
        &self,
        compiler: &std::path::Path,
        bytes: &[u8],
    ) -> Result<Vec<u8>, ChildCompile> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(compiler)
            .args(self.compiler_args())
            .env("WEFT_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ChildCompile::Unavailable(format!("spawn: {e}")))?;
        // Written from a thread: the child may fill its stdout pipe before reading all of stdin.
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| ChildCompile::Unavailable("no stdin pipe".into()))?;
        let output = std::thread::scope(|s| {
            let writer = s.spawn(move || stdin.write_all(bytes));
            let output = child.wait_with_output();
            let _ = writer.join();
            output
        })
        .map_err(|e| ChildCompile::Unavailable(format!("wait: {e}")))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        match output.status.code() {
            Some(0) if output.stdout.starts_with(b"\x7fELF") => Ok(output.stdout),
            Some(0) => Err(ChildCompile::Unavailable(
                "the child wrote no compiled module".into(),
            )),
            // `weft plugin compile` exits 3 when the module itself does not compile.
            Some(3) => Err(ChildCompile::Rejected(
                stderr
                    .strip_prefix("compile: ")
                    .unwrap_or(stderr)
                    .to_owned(),
            )),
            _ => Err(ChildCompile::Unavailable(format!(
                "{}: {stderr}",
                output.status
            ))),
        }
    }

    /// The cached compilation at `path`, if it may be trusted and loads.
    fn load_cached(&self, path: &std::path::Path) -> Option<Module> {
        if let Err(why) = trusted_cache_entry(path) {
            tracing::warn!(file = %path.display(), %why, "not loading an untrusted module cache entry: compiling instead");
            return None;
        }
        #[expect(unsafe_code, reason = "loading our own precompiled cache entry")]
        // SAFETY: the file was written by `Module::serialize` of an engine with the same
        // compatibility hash (it is in the file name), in a cache directory that
        // `trusted_cache_entry` just checked belongs to this process's user and that no one
        // else can write (nor the file); wasmtime still checks the header and rejects a
        // mismatched or foreign artifact.
        let cached = unsafe { Module::deserialize_file(&self.inner.engine, path) };
        match cached {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring a bad module cache entry");
                None
            }
        }
    }
}

/// Why a child compile gave no artifact.
enum ChildCompile {
    /// The module does not compile (the child said why).
    Rejected(String),
    /// The child could not run or did not answer: compile in this process instead.
    Unavailable(String),
}

/// Writes a compiled artifact to the module cache (directory 0700, file 0600, atomically).
fn write_cache_entry(path: &std::path::Path, artifact: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(artifact)?;
    std::fs::rename(&tmp, path)
}

/// A module cache entry may be deserialized (which trusts its machine code) only when it and its
/// directory belong to this process's effective user and neither is writable by group or others:
/// otherwise another user could have planted code in it. `Err`: why not.
pub(crate) fn trusted_cache_entry(file: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let dir = file.parent().ok_or("the entry has no directory")?;
    for (what, path) in [("directory", dir), ("file", file)] {
        let m = std::fs::symlink_metadata(path).map_err(|e| format!("{what}: {e}"))?;
        if m.file_type().is_symlink() {
            return Err(format!("the {what} {} is a symbolic link", path.display()));
        }
        if m.uid() != me {
            return Err(format!(
                "the {what} {} belongs to uid {}, not to this process's uid {me}",
                path.display(),
                m.uid()
            ));
        }
        if m.mode() & 0o022 != 0 {
            return Err(format!(
                "the {what} {} is writable by group or others (mode {:o})",
                path.display(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
