//! The one file watcher of Weft: configuration files, plugin files and TLS material all follow
//! their files through it.
//!
//! A [`Watcher`] follows a set of [`WatchTarget`]s — single files, or the files of a directory
//! that have a given extension — by watching the *directories* that hold them, non-recursively.
//! That way every way of replacing a file is seen:
//!
//! - written in place;
//! - replaced by an atomic rename (editors, `weft ca`, the certificate agent);
//! - swapped through a symlink, as Kubernetes does for mounted ConfigMaps and Secrets (the
//!   `..data` link is renamed over);
//! - created after the watcher started, or deleted.
//!
//! Events are debounced by [`notify_debouncer_full`]. After each debounce window, the targets
//! of the directories that saw events are read again and compared (length and a hash of the
//! content) with what was seen before; only the requested paths whose content really changed
//! are reported, together, as one [`Changed`] on a tokio channel. Opening or reading a file,
//! `touch` and `chmod` are not changes, and several writes within a window are one change.
//! There is no periodic rescan: nothing is read unless an event came.
//!
//! Dropping the [`Watcher`] stops it: the channel closes (after at most one more [`Changed`]
//! that was already on its way).
//!
//! ```no_run
//! # async fn run() -> Result<(), weft_watch::WatchError> {
//! use std::path::PathBuf;
//! use std::time::Duration;
//! use weft_watch::{WatchTarget, Watcher};
//!
//! let config = PathBuf::from("/etc/weft/weft.yaml");
//! let plugins = WatchTarget::dir("/etc/weft/plugins", Some("wasm"));
//! let (watcher, mut changes) = Watcher::new(
//!     [WatchTarget::from(config.clone()), plugins],
//!     Duration::from_millis(200),
//! )?;
//! while let Some(changed) = changes.recv().await {
//!     if changed.contains(&config) {
//!         // reload the configuration
//!     }
//!     for wasm in changed.paths.iter().filter(|p| p.extension().is_some_and(|e| e == "wasm")) {
//!         // hot-swap the plugin built from `wasm`
//!     }
//! }
//! drop(watcher);
//! # Ok(())
//! # }
//! ```
//!
//! Limits: a watched directory must exist when it is watched, and a watched directory that is
//! itself removed or renamed stops being followed (call [`Watcher::set_targets`] again). A
//! target that is a symlink into *another* directory is only seen changing when something in
//! its own directory changes (the Kubernetes layout keeps the whole chain in one directory).

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::hash::Hasher as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::notify::event::{AccessKind, AccessMode};
use notify_debouncer_full::notify::{self, EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// How many [`Changed`] reports may wait unread. When the channel is full the watcher waits for
/// the reader, collecting (and merging) further events meanwhile.
pub const CHANNEL_CAPACITY: usize = 16;

/// The shortest debounce window used (a zero window would make the debouncer spin).
pub const MIN_DEBOUNCE: Duration = Duration::from_millis(10);

/// What to follow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchTarget {
    /// One file. It need not exist yet, but its directory must.
    File(PathBuf),
    /// The files directly inside a directory (not below it); with an extension, only the files
    /// whose name ends with `.<extension>`. Hidden files (name starting with `.`) and entries
    /// that are not regular files (after following symlinks) are left out.
    Dir {
        /// The directory.
        path: PathBuf,
        /// Extension without the dot (`wasm`); `None` takes every file.
        extension: Option<String>,
    },
}

impl WatchTarget {
    /// A single file.
    pub fn file(path: impl Into<PathBuf>) -> WatchTarget {
        WatchTarget::File(path.into())
    }

    /// The files of `path` with `extension` (every file when `None`).
    pub fn dir(path: impl Into<PathBuf>, extension: Option<&str>) -> WatchTarget {
        WatchTarget::Dir {
            path: path.into(),
            extension: extension.map(str::to_owned),
        }
    }

    /// The directory watched for this target: a file's parent (`.` for a bare file name), or the
    /// directory itself.
    pub fn directory(&self) -> PathBuf {
        match self {
            WatchTarget::File(path) => path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            WatchTarget::Dir { path, .. } => path.clone(),
        }
    }
}

impl From<PathBuf> for WatchTarget {
    fn from(path: PathBuf) -> WatchTarget {
        WatchTarget::File(path)
    }
}

impl From<&Path> for WatchTarget {
    fn from(path: &Path) -> WatchTarget {
        WatchTarget::File(path.to_owned())
    }
}

/// The targets whose content changed during one debounce window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Sorted, each once: a [`WatchTarget::File`]'s path exactly as it was given, or a
    /// [`WatchTarget::Dir`]'s directory (as given) joined with the file's name. A deleted file
    /// is a change too.
    pub paths: Vec<PathBuf>,
}

impl Changed {
    /// Whether `path` (spelt as it was given) is among the changed paths.
    pub fn contains(&self, path: &Path) -> bool {
        self.paths.iter().any(|p| p == path)
    }
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The platform watcher could not be created (e.g. the inotify instance limit).
    #[error("cannot start a file watcher: {0}")]
    Start(#[source] notify::Error),
    /// A directory to watch does not exist or cannot be resolved.
    #[error("{}: cannot watch this directory: {source}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why it cannot be resolved.
        #[source]
        source: std::io::Error,
    },
    /// The platform watcher refused a directory (e.g. the inotify watch limit).
    #[error("{}: cannot watch this directory: {source}", dir.display())]
    Watch {
        /// The directory (resolved).
        dir: PathBuf,
        /// The watcher's error.
        #[source]
        source: notify::Error,
    },
}

/// What a file looked like: enough to tell that its content changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: usize,
    hash: u64,
}

/// Reads a regular file (following symlinks); `None` when missing, unreadable or not a file.
fn fingerprint(path: &Path) -> Option<Fingerprint> {
    // Checked before opening: opening a FIFO would block.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0usize;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.write(buf.get(..n)?);
                len = len.saturating_add(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(Fingerprint {
        len,
        hash: hasher.finish(),
    })
}

fn has_extension(path: &Path, extension: Option<&str>) -> bool {
    extension.is_none_or(|e| path.extension() == Some(OsStr::new(e)))
}

/// The matching files of a directory target, keyed by their reported path.
fn scan_dir(dir: &Path, extension: Option<&str>) -> BTreeMap<PathBuf, Fingerprint> {
    let mut files = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        let path = dir.join(&name);
        if !has_extension(&path, extension) {
            continue;
        }
        if let Some(fp) = fingerprint(&path) {
            files.insert(path, fp);
        }
    }
    files
}

/// What was last seen of a target.
#[derive(Debug)]
enum Seen {
    File(Option<Fingerprint>),
    Dir(BTreeMap<PathBuf, Fingerprint>),
}

fn look(target: &WatchTarget) -> Seen {
    match target {
        WatchTarget::File(path) => Seen::File(fingerprint(path)),
        WatchTarget::Dir { path, extension } => Seen::Dir(scan_dir(path, extension.as_deref())),
    }
}

#[derive(Debug)]
struct Entry {
    target: WatchTarget,
    /// The resolved directory watched for it (event paths are under this spelling).
    key: PathBuf,
    seen: Seen,
}

impl Entry {
    fn new(target: WatchTarget, key: PathBuf) -> Entry {
        let seen = look(&target);
        Entry { target, key, seen }
    }

    /// Looks again; adds what changed since the last look to `changed`.
    fn refresh(&mut self, changed: &mut BTreeSet<PathBuf>) {
        let now = look(&self.target);
        match (&self.target, &self.seen, &now) {
            (WatchTarget::File(path), Seen::File(before), Seen::File(after)) if before != after => {
                changed.insert(path.clone());
            }
            (_, Seen::Dir(before), Seen::Dir(after)) => {
                for (path, fp) in after {
                    if before.get(path) != Some(fp) {
                        changed.insert(path.clone());
                    }
                }
                for path in before.keys() {
                    if !after.contains_key(path) {
                        changed.insert(path.clone());
                    }
                }
            }
            // `look` always answers in the target's own shape.
            _ => {}
        }
        self.seen = now;
    }
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Entry>,
}

/// Whether an event may mean that content changed. Opening, reading and closing a file read-only
/// do not — and this watcher's own reads would otherwise wake it up forever.
fn may_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Handles one debounce window: looks again at the targets of the directories that saw events
/// and says what changed.
fn on_events(state: &Mutex<State>, result: DebounceEventResult) -> Option<Changed> {
    let mut all = false;
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    match result {
        Ok(events) => {
            for event in &events {
                if event.need_rescan() || (event.paths.is_empty() && may_change(&event.kind)) {
                    // Events were lost (or the event names nothing): look at everything.
                    all = true;
                    continue;
                }
                if !may_change(&event.kind) {
                    continue;
                }
                for path in &event.paths {
                    match path.parent() {
                        Some(dir) => {
                            dirs.insert(dir.to_path_buf());
                        }
                        None => all = true,
                    }
                }
            }
        }
        Err(errors) => {
            for e in &errors {
                tracing::warn!(error = %e, "file watcher error; looking at every watched file");
            }
            all = true;
        }
    }
    if !all && dirs.is_empty() {
        return None;
    }
    let mut changed = BTreeSet::new();
    let mut state = state.lock();
    // An event outside the watched directories' spelling (e.g. about a watched directory
    // itself): look at everything rather than guess.
    if !all
        && dirs
            .iter()
            .any(|d| !state.entries.iter().any(|e| &e.key == d))
    {
        all = true;
    }
    for entry in &mut state.entries {
        if all || dirs.contains(&entry.key) {
            entry.refresh(&mut changed);
        }
    }
    drop(state);
    (!changed.is_empty()).then(|| Changed {
        paths: changed.into_iter().collect(),
    })
}

/// A running watcher; dropping it stops watching. See the crate documentation.
pub struct Watcher {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    state: Arc<Mutex<State>>,
    /// The resolved directories watched.
    dirs: BTreeSet<PathBuf>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("targets", &self.targets())
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// Starts watching `targets`; changes are reported on the returned channel, at most once
    /// per `debounce` window (at least [`MIN_DEBOUNCE`]). Fails when a target's directory does
    /// not exist or cannot be watched. Needs no tokio runtime (the channel is read from one).
    pub fn new<I, T>(
        targets: I,
        debounce: Duration,
    ) -> Result<(Watcher, mpsc::Receiver<Changed>), WatchError>
    where
        I: IntoIterator<Item = T>,
        T: Into<WatchTarget>,
    {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let state = Arc::new(Mutex::new(State::default()));
        let seen = Arc::clone(&state);
        let handler = move |result: DebounceEventResult| {
            if let Some(changed) = on_events(&seen, result) {
                // This runs on the debouncer's own thread, never inside a runtime: blocking
                // only waits for the reader, and a closed channel returns at once.
                if tx.blocking_send(changed).is_err() {
                    tracing::debug!("file watcher: nobody reads the changes any more");
                }
            }
        };
        let debouncer =
            notify_debouncer_full::new_debouncer(debounce.max(MIN_DEBOUNCE), None, handler)
                .map_err(WatchError::Start)?;
        let mut watcher = Watcher {
            debouncer,
            state,
            dirs: BTreeSet::new(),
        };
        watcher.set_targets(targets)?;
        Ok((watcher, rx))
    }

    /// Replaces the targets (e.g. after a configuration reload changed the plugin files).
    /// Targets kept keep what was seen of them; new ones start from their current content;
    /// directories no longer needed are unwatched. On error nothing changes.
    pub fn set_targets<I, T>(&mut self, targets: I) -> Result<(), WatchError>
    where
        I: IntoIterator<Item = T>,
        T: Into<WatchTarget>,
    {
        let mut wanted: Vec<(WatchTarget, PathBuf)> = Vec::new();
        for target in targets {
            let target = target.into();
            if wanted.iter().any(|(t, _)| *t == target) {
                continue;
            }
            let dir = target.directory();
            let key = std::fs::canonicalize(&dir).map_err(|source| WatchError::Dir {
                dir: dir.clone(),
                source,
            })?;
            wanted.push((target, key));
        }
        let keys: BTreeSet<PathBuf> = wanted.iter().map(|(_, k)| k.clone()).collect();

        // Watch first, then look, so no change after the look can be missed.
        let mut added: Vec<PathBuf> = Vec::new();
        for key in keys.difference(&self.dirs) {
            if let Err(source) = self.debouncer.watch(key, RecursiveMode::NonRecursive) {
                for k in &added {
                    if let Err(e) = self.debouncer.unwatch(k) {
                        tracing::debug!(dir = %k.display(), error = %e, "file watcher: unwatch");
                    }
                }
                return Err(WatchError::Watch {
                    dir: key.clone(),
                    source,
                });
            }
            added.push(key.clone());
        }
        {
            let mut state = self.state.lock();
            let mut old = std::mem::take(&mut state.entries);
            for (target, key) in wanted {
                let entry = match old.iter().position(|e| e.target == target && e.key == key) {
                    Some(i) => old.swap_remove(i),
                    None => Entry::new(target, key),
                };
                state.entries.push(entry);
            }
        }
        for key in self.dirs.difference(&keys) {
            // The directory may be gone already; nothing to undo then.
            if let Err(e) = self.debouncer.unwatch(key) {
                tracing::debug!(dir = %key.display(), error = %e, "file watcher: unwatch");
            }
        }
        self.dirs = keys;
        Ok(())
    }

    /// The current targets.
    pub fn targets(&self) -> Vec<WatchTarget> {
        self.state
            .lock()
            .entries
            .iter()
            .map(|e| e.target.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
