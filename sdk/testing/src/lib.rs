//! The plugin test harness: a plugin author's `cargo test` runs the plugin's real `.wasm` in
//! Weft's own proxy-wasm host (`weft-wasm`, the code that serves production traffic — no mock
//! of the ABI), with in-memory requests and responses, a manual clock, scripted answers to
//! `proxy_http_call`, and assertions on headers, bodies, local replies, metrics and logs.
//!
//! ```no_run
//! use weft_plugin_test::{CannedResponse, TestPlugin};
//!
//! let plugin = TestPlugin::builder(weft_plugin_test::this_plugin!())
//!     .configuration_json(serde_json::json!({ "greeting": "hi" }))
//!     .load()
//!     .expect("the plugin loads");
//! let mut exchange = plugin.request().path("/api").header("user-agent", "test");
//! assert!(exchange.send_request().is_continue());
//! assert_eq!(exchange.request_header("x-hello").as_deref(), Some("hi"));
//! exchange.send_response(CannedResponse::new(200).body("ok"));
//! exchange.finish();
//! assert_eq!(plugin.counter("hello_greetings"), Some(1));
//! ```
//!
//! [`this_plugin!`] builds the crate under test for `wasm32-wasip1` (release) once per test
//! process, into `target/weft-plugins`; tests then load the module it produced.
#![forbid(unsafe_code)]

mod exchange;
mod plugin;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

pub use exchange::{Exchange, LocalReply, Outcome};
pub use plugin::{GrpcReply, PluginBuilder, RecordedCallout, TestPlugin};
pub use weft_wasm::{Action, LoadError, LogLevel};

/// Builds the plugin crate at `manifest_dir` for `wasm32-wasip1` (once per process) and returns
/// the `.wasm` path. Panics with cargo's error when it does not build.
pub fn build_plugin(manifest_dir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = built.lock();
    if let Some(path) = built.get(manifest_dir) {
        return path.clone();
    }
    let path = weft_plugin_build::build_crate(Path::new(manifest_dir))
        .unwrap_or_else(|e| panic!("building the plugin at {manifest_dir}: {e}"));
    built.insert(manifest_dir.to_owned(), path.clone());
    path
}

/// The `.wasm` of the crate whose tests are running, built on first use.
#[macro_export]
macro_rules! this_plugin {
    () => {
        $crate::build_plugin(env!("CARGO_MANIFEST_DIR"))
    };
}

/// A clock that only moves when told: what `proxy_get_current_time_nanoseconds` returns.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// The time it reads.
    pub fn now(&self) -> SystemTime {
        *self.now.lock()
    }

    /// Moves it forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        *now += by;
    }

    /// Sets it.
    pub fn set(&self, to: SystemTime) {
        *self.now.lock() = to;
    }
}

impl weft_wasm::Clock for ManualClock {
    fn now(&self) -> SystemTime {
        ManualClock::now(self)
    }
}

/// An HTTP response: a scripted answer to a callout, or the upstream's response to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CannedResponse {
    /// Status code.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl CannedResponse {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: u16) -> CannedResponse {
        CannedResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> CannedResponse {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> CannedResponse {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> CannedResponse {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    /// As a callout's response (callout maps are lists: they are the plugin's to read only).
    pub(crate) fn header_list(&self) -> weft_wasm::HeaderList {
        let mut list = weft_wasm::HeaderList::default();
        list.add(":status", self.status.to_string().as_bytes());
        for (k, v) in &self.headers {
            list.add(k, v.as_bytes());
        }
        list
    }

    /// The response's live map as the proxy moves it in: `:status`, then an `http::HeaderMap`.
    pub(crate) fn headers(&self) -> Result<weft_wasm::Headers, String> {
        let status = weft_wasm::http::StatusCode::from_u16(self.status)
            .map_err(|_| format!("invalid response status {}", self.status))?;
        let mut map = weft_wasm::http::HeaderMap::new();
        for (k, v) in &self.headers {
            let n = weft_wasm::http::header::HeaderName::from_bytes(k.as_bytes());
            let v = weft_wasm::http::header::HeaderValue::from_str(v);
            match (n, v) {
                (Ok(n), Ok(v)) => {
                    map.append(n, v);
                }
                _ => return Err(format!("response header `{k}` is not valid on the wire")),
            }
        }
        Ok(weft_wasm::Headers::response(status, map))
    }
}

/// Headers as strings (lossy UTF-8).
pub(crate) fn to_pairs(headers: &weft_wasm::Headers) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// A list's pairs as strings (lossy UTF-8).
pub(crate) fn list_pairs(list: &weft_wasm::HeaderList) -> Vec<(String, String)> {
    list.0
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// The first value of `name` (case-insensitive).
pub(crate) fn find(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}
