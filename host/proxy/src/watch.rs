//! File watchers, on `weft-watch` (one debounced watcher per concern, no periodic rescans):
//! the configuration file reloads the configuration; a changed plugin file hot-swaps that
//! plugin. Both go through the reload actor. Directories are watched, so an editor's atomic
//! rename and a Kubernetes ConfigMap's `..data` symlink swap are both seen; only files whose
//! content changed are reported.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weft_extensions::{PluginVersion, is_builtin, sha256_hex};
use weft_watch::{Changed, Watcher};

use crate::state::State;

/// Quiet time before a burst of file events counts as one change.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Starts the configuration file watcher (for a file source) and the plugin file watcher.
/// Failing to watch is logged, not fatal: SIGHUP and the admin endpoints still work.
pub(crate) fn spawn(state: &Arc<State>) {
    if let crate::ConfigSource::File(path) = &state.source {
        spawn_config_watcher(state.clone(), path.clone());
    }
    spawn_plugin_watcher(state.clone());
}

fn spawn_config_watcher(state: Arc<State>, path: PathBuf) {
    let (watcher, mut changes) = match Watcher::new([path.clone()], DEBOUNCE) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot watch the configuration file; SIGHUP and POST /reload still work");
            return;
        }
    };
    tracing::info!(file = %path.display(), "watching the configuration file");
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                changed = changes.recv() => {
                    if changed.is_none() {
                        return;
                    }
                    // A file deleted (mid-replacement) is not a configuration to load.
                    if path.is_file() {
                        let _ = state.reload().await;
                    }
                }
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

/// The plugin files the live generation uses (built-in modules have none).
fn plugin_files(state: &State) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = state
        .plugins()
        .handles()
        .iter()
        .filter(|h| !is_builtin(&h.file))
        .map(|h| h.file.clone())
        .collect();
    files.sort();
    files.dedup();
    files
}

/// A plugin watcher and its change channel.
type PluginWatch = (Watcher, tokio::sync::mpsc::Receiver<Changed>);

/// Follows the live generation's plugin files. The watcher (two threads: inotify and the
/// debouncer) starts with the first generation that has plugin files, not before: a proxy
/// without plugins runs none (docs/performance.md, "Idle RSS: start-up code grouped").
fn spawn_plugin_watcher(state: Arc<State>) {
    let mut published = state.published.subscribe();
    let mut watch: Option<PluginWatch> = None;
    follow_plugin_files(&mut watch, plugin_files(&state));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // A new generation may use other plugin files: follow them.
                r = published.changed() => {
                    if r.is_err() {
                        return;
                    }
                    follow_plugin_files(&mut watch, plugin_files(&state));
                }
                changed = next_change(&mut watch) => {
                    let Some(changed) = changed else { return };
                    let mut names: Vec<String> = Vec::new();
                    for h in state.plugins().handles() {
                        if is_builtin(&h.file) || !changed.contains(&h.file) {
                            continue;
                        }
                        let now = std::fs::read(&h.file).unwrap_or_default();
                        // Unchanged from the serving version (e.g. already swapped in through
                        // the admin endpoint): nothing to do.
                        let serving = match &*h.current() {
                            PluginVersion::Loaded(p) => Some(p.sha256.clone()),
                            PluginVersion::Failed { .. } => None,
                        };
                        if now.is_empty() || serving.as_deref() == Some(sha256_hex(&now).as_str()) {
                            continue;
                        }
                        if !names.contains(&h.name) {
                            names.push(h.name.clone());
                        }
                    }
                    for name in names {
                        let _ = state.reload_plugin(&name).await;
                    }
                }
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

/// Points the plugin watcher at `files`, starting it when there are files to watch and none
/// runs yet. Failing to watch is logged: the admin endpoint still reloads plugins.
fn follow_plugin_files(watch: &mut Option<PluginWatch>, files: Vec<PathBuf>) {
    match watch {
        Some((watcher, _)) => {
            if let Err(e) = watcher.set_targets(files) {
                tracing::warn!(error = %e, "cannot watch the new generation's plugin files");
            }
        }
        None if files.is_empty() => {}
        None => match Watcher::new(files, DEBOUNCE) {
            Ok(w) => *watch = Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch plugin files; POST /plugins/<name>/reload still works");
            }
        },
    }
}

/// The plugin watcher's next change; pending for ever while no watcher runs.
async fn next_change(watch: &mut Option<PluginWatch>) -> Option<Changed> {
    match watch {
        Some((_, changes)) => changes.recv().await,
        None => std::future::pending().await,
    }
}
