//! The shipped plugins (`plugins/*`) and examples, built for `wasm32-wasip1` on first use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::Mutex;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The `.wasm` of the crate at `<workspace>/<dir>` (e.g. `plugins/authz`), built once per test
/// process (cargo makes later builds a no-op). Panics with cargo's error when it does not build.
pub fn wasm_of(dir: &str) -> String {
    static BUILT: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = built.lock();
    if let Some(path) = built.get(dir) {
        return path.clone();
    }
    let path = weft_plugin_build::build_crate(&workspace_root().join(dir))
        .unwrap_or_else(|e| panic!("building {dir}: {e}"));
    let path = path.to_string_lossy().into_owned();
    built.insert(dir.to_owned(), path.clone());
    path
}

/// A shipped plugin by its directory name under `plugins/` (`authz`, `header-rewrite`,
/// `telemetry`).
pub fn shipped_plugin(name: &str) -> String {
    wasm_of(&format!("plugins/{name}"))
}
