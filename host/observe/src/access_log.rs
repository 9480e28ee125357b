//! The access log: one line for every HTTP request and TCP connection, as Weft's JSON object
//! or in an Envoy format ([`format`]).
//!
//! Entries are handed to a dedicated writer thread through a bounded channel, so a slow disk
//! never stalls a worker; when the channel is full the entry is dropped and counted
//! (`weft_access_log_dropped_total`). Lines are rendered on the writer thread.

pub mod format;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use serde::Serialize;

pub use format::LineFormat;

/// One access-log line.
#[derive(Debug, Default, Serialize)]
pub struct Entry {
    /// RFC 3339 start time.
    pub start_time: String,
    /// Listener name.
    pub listener: Arc<str>,
    /// `HTTP/1.1`, `HTTP/2` or `TCP`.
    pub protocol: &'static str,
    /// Request method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Host / `:authority`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Path and query as received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Response status (0 when none was sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Envoy response flags (`-` when none).
    pub response_flags: &'static str,
    /// Route name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Arc<str>>,
    /// Cluster name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_cluster: Option<Arc<str>>,
    /// Endpoint address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    /// Total duration in milliseconds (fractional).
    pub duration_ms: f64,
    /// Time until the upstream's response headers, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_service_time_ms: Option<f64>,
    /// Body bytes received from downstream.
    pub bytes_received: u64,
    /// Body bytes sent downstream.
    pub bytes_sent: u64,
    /// Downstream peer address.
    pub downstream_remote_address: String,
    /// `x-request-id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `user-agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Why the request was refused or failed, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// Istio's `connection_security_policy`: `mutual_tls` or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_security_policy: Option<&'static str>,
    /// The downstream peer's URI SAN (SPIFFE ID), on mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downstream_peer_uri_san: Option<String>,
    /// Tries sent upstream (1 without retries), as Envoy's `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_request_attempt_count: Option<u32>,
    // The fields below feed Envoy's command operators only (not Weft's JSON line).
    /// The start time (`%START_TIME(fmt)%`).
    #[serde(skip)]
    pub start: Option<std::time::SystemTime>,
    /// Our address on the downstream connection.
    #[serde(skip)]
    pub downstream_local_address: Option<String>,
    /// The TLS SNI the client asked for.
    #[serde(skip)]
    pub requested_server_name: Option<String>,
    /// The downstream connection's id.
    #[serde(skip)]
    pub connection_id: Option<u64>,
    /// Our address on the upstream connection.
    #[serde(skip)]
    pub upstream_local_address: Option<String>,
    /// Why the upstream connection failed, when it did.
    #[serde(skip)]
    pub upstream_transport_failure_reason: Option<String>,
    /// The response came from the upstream (`via_upstream`).
    #[serde(skip)]
    pub via_upstream: bool,
    /// The request headers the line's format reads, in [`LineFormat::request_headers`] order.
    #[serde(skip)]
    pub req_headers: Vec<Option<String>>,
    /// The response headers the format reads, in [`LineFormat::response_headers`] order.
    #[serde(skip)]
    pub resp_headers: Vec<Option<String>>,
    /// The line's format (`None`: the log's default).
    #[serde(skip)]
    pub format: Option<Arc<LineFormat>>,
}

/// Where access-log lines go.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Entry>>,
    dropped: Arc<AtomicU64>,
    format: Arc<LineFormat>,
}

impl AccessLog {
    /// A log that discards everything.
    pub fn off() -> AccessLog {
        AccessLog {
            tx: None,
            dropped: Arc::default(),
            format: Arc::default(),
        }
    }

    /// Opens `path` (`stdout`, `stderr`, `off` or a file, appended to) and starts the writer;
    /// lines without a format of their own use `format`.
    pub fn open(path: &str, format: LineFormat) -> std::io::Result<AccessLog> {
        let sink: Box<dyn Write + Send> = match path {
            "off" => return Ok(AccessLog::off()),
            "stdout" | "/dev/stdout" => Box::new(std::io::stdout()),
            "stderr" | "/dev/stderr" => Box::new(std::io::stderr()),
            file => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)?,
            ),
        };
        let (tx, rx) = sync_channel::<Entry>(8192);
        let format = Arc::new(format);
        let default = format.clone();
        std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
                let mut line = Vec::with_capacity(1024);
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    while let Some(entry) = next {
                        line.clear();
                        entry
                            .format
                            .as_ref()
                            .unwrap_or(&default)
                            .render(&entry, &mut line);
                        let _ = out.write_all(&line);
                        next = rx.try_recv().ok();
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped: Arc::default(),
            format,
        })
    }

    /// The format of lines that have none of their own.
    pub fn default_format(&self) -> &Arc<LineFormat> {
        &self.format
    }

    /// True when entries are written somewhere.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `entry`; never blocks.
    pub fn log(&self, entry: Entry) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_)) = tx.try_send(entry)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Entries dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Formats a wall-clock time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_160_496_123);
        assert_eq!(super::rfc3339(t), "2025-11-26T12:34:56.123Z");
    }
}
