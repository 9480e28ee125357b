//! Reload on configuration file changes: the file's directory is watched (so an editor's atomic
//! rename and a Kubernetes ConfigMap's `..data` symlink swap are both seen), events are
//! debounced, and a reload only happens when the file's content actually changed.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use std::sync::Arc;

use crate::state::State;

const DEBOUNCE: Duration = Duration::from_millis(200);

/// Starts watching `path`; changes reload `proxy`. Failing to watch is logged, not fatal.
fn spawn_config_watcher(proxy: Arc<State>, path: PathBuf) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the configuration file; SIGHUP and POST /reload still work");
            return;
        }
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the configuration directory");
        return;
    }
    tracing::info!(file = %path.display(), "watching the configuration file");
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        let mut last = std::fs::read(&path).ok();
        while rx.recv().await.is_some() {
            // Debounce: wait until events stop for a moment.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let now = std::fs::read(&path).ok();
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            let _ = proxy.reload().await;
        }
    });
}

/// Watches the directories of every plugin file; a changed file is hot-swapped (validated by a
/// canary first; a bad version is refused and the old one keeps serving).
fn spawn_plugin_watcher(proxy: Arc<State>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    });
    let Ok(mut watcher) = watcher else {
        tracing::warn!("cannot watch plugin files; POST /plugins/<name>/reload still works");
        return;
    };
    tokio::spawn(async move {
        let mut watched: Vec<PathBuf> = Vec::new();
        let mut refresh = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = refresh.tick() => {
                    // Follow configuration reloads: watch the directories of the current files.
                    for h in proxy.plugins().handles() {
                        if weft_extensions::is_builtin(&h.file) {
                            continue;
                        }
                        let dir = h.file.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
                        if !watched.contains(&dir) && watcher.watch(&dir, RecursiveMode::NonRecursive).is_ok() {
                            watched.push(dir);
                        }
                    }
                }
                changed = rx.recv() => {
                    let Some(first) = changed else { return };
                    let mut paths = vec![first];
                    while let Ok(Some(p)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                        paths.push(p);
                    }
                    let handles = proxy.plugins().handles();
                    let mut names: Vec<String> = Vec::new();
                    for h in &handles {
                        if weft_extensions::is_builtin(&h.file) {
                            continue;
                        }
                        let dir_changed = paths.iter().any(|p| p == &h.file || p.parent() == h.file.parent());
                        if !dir_changed {
                            continue;
                        }
                        let now = std::fs::read(&h.file).unwrap_or_default();
                        // Unchanged from the serving version (e.g. already swapped in through
                        // the admin endpoint): nothing to do.
                        let serving = match &*h.current() {
                            weft_extensions::PluginVersion::Loaded(p) => Some(p.sha256.clone()),
                            weft_extensions::PluginVersion::Failed { .. } => None,
                        };
                        if now.is_empty() || serving.as_deref() == Some(weft_extensions::sha256_hex(&now).as_str()) {
                            continue;
                        }
                        if !names.contains(&h.name) {
                            names.push(h.name.clone());
                        }
                    }
                    for name in names {
                        let _ = proxy.reload_plugin(&name).await;
                    }
                }
            }
        }
    });
}

/// Starts the configuration file watcher (for a file source) and the plugin file watcher.
pub(crate) fn spawn(proxy: &Arc<State>) {
    if let crate::ConfigSource::File(path) = &proxy.source {
        spawn_config_watcher(proxy.clone(), path.clone());
    }
    spawn_plugin_watcher(proxy.clone());
}
