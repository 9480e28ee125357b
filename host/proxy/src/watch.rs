//! Reload on configuration file changes: the file's directory is watched (so an editor's atomic
//! rename and a Kubernetes ConfigMap's `..data` symlink swap are both seen), events are
//! debounced, and a reload only happens when the file's content actually changed.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::runtime::Proxy;

const DEBOUNCE: Duration = Duration::from_millis(200);

/// Starts watching `path`; changes reload `proxy`. Failing to watch is logged, not fatal.
pub fn spawn(proxy: Proxy, path: PathBuf) {
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
