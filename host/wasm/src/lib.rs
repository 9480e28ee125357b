//! Weft's proxy-wasm host: ABI v0.2.1 (and 0.2.0 modules) on wasmtime.
//!
//! Four layers, as the mature hosts split them:
//! 1. [`engine`]: one wasmtime engine (epoch interruption, pooling allocator, copy-on-write
//!    memory images) and a compiled-module cache keyed by sha256.
//! 2. ABI glue (`host`, `abi`, [`shared`]): every host function, guest memory access checked in
//!    one place, shared data, queues and metrics.
//! 3. Context lifecycle ([`plugin`], [`stream`]): root contexts per instance, stream contexts
//!    per request or connection, Envoy's callback order, effects acted on after a callback.
//! 4. Embedding ([`Embedder`], [`Properties`], [`StreamData`]): what the proxy (or the test
//!    harness) provides. This crate knows nothing of hyper.
#![deny(unsafe_code)]

mod abi;
pub mod affinity;
pub mod body;
pub mod codec;
mod context;
pub mod engine;
pub mod gate;
pub mod grpc;
pub mod headers;
mod host;
pub mod offload;
pub mod pace;
pub mod plugin;
pub mod shared;
pub mod stream;
pub mod types;

pub use abi::HeaderList;
pub use body::BodyBuffer;
/// The `bytes` crate body buffers are made of (so embedders use the same version).
pub use bytes;
pub use context::{
    Clock, Effects, Embedder, HttpCallRequest, HttpCallResponse, LocalResponse, NoCallouts,
    NoProperties, PluginLimits, Properties, StreamData, StreamHost, SystemClock,
};
pub use engine::{EngineOptions, WasmEngine, WasmRuntime};
pub use headers::{Headers, InvalidHeader, Pseudo};
/// The `http` crate the live header maps come from (so embedders use the same version).
pub use http;
pub use plugin::{FailurePolicy, Plugin, PluginSpec, ReloadPolicy};
pub use stream::Stream;
pub use types::{Action, LogLevel, PeerType};

/// Why a plugin could not be loaded; the message names what is wrong.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    /// The engine could not be created.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The bytes are not a WebAssembly module.
    #[error("not a WebAssembly module (bad magic bytes)")]
    NotWasm,
    /// Compilation failed.
    #[error("compile: {0}")]
    Compile(String),
    /// No `proxy_abi_version_*` export.
    #[error("not a proxy-wasm module: no proxy_abi_version_* export")]
    NoAbiMarker,
    /// An ABI version this host does not speak.
    #[error("unsupported proxy-wasm ABI `{0}` (supported: 0.2.0, 0.2.1)")]
    UnsupportedAbi(String),
    /// Linking failed (an import this host does not provide, or a wrong signature).
    #[error("link: {0}")]
    Link(String),
    /// A required export is missing.
    #[error("missing export `{0}`")]
    MissingExport(&'static str),
    /// An export has the wrong signature.
    #[error("export `{0}` has the wrong signature")]
    BadExport(&'static str),
    /// Instantiation or a start function failed.
    #[error("start: {0}")]
    Start(String),
    /// `proxy_on_vm_start` returned false.
    #[error("proxy_on_vm_start returned false")]
    VmStartFailed,
    /// `proxy_on_configure` returned false.
    /// The reason is the last warning or error the plugin logged before returning.
    #[error("the plugin rejected its configuration (proxy_on_configure returned false): {0}")]
    ConfigureRejected(String),
}

/// Why a callback did not complete.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Failure {
    /// The guest trapped.
    #[error("trap: {0}")]
    Trap(String),
    /// The callback ran past its CPU deadline.
    #[error("CPU deadline exceeded")]
    Deadline,
    /// The guest hit its memory cap.
    #[error("memory limit exceeded")]
    OutOfMemory,
    /// No instance can serve (broken, quarantined, or restarting).
    #[error("{0}")]
    Unavailable(String),
}

#[cfg(test)]
mod tests;
