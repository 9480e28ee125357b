//! Dynamic configuration (xDS): listeners and clusters from a control plane, composed with the
//! file's static ones and published through the same reload actor as a file reload.
//!
//! The actor keeps both halves of the live configuration: a file reload is composed with the
//! last accepted dynamic resources, and a dynamic update with the last accepted file. Either
//! half is replaced only when the composed configuration validates, compiles and binds.
//! [`crate::Proxy::apply_dynamic`] sends an update; this module holds what admin shows of it.

/// What a dynamic source shows under `dynamic` in `/config_dump`.
pub trait DynamicStatus: Send + Sync + std::fmt::Debug {
    /// Its resources, versions, last update times and last error, as JSON.
    fn dump(&self) -> serde_json::Value;
}
