//! Weft's configuration: the YAML schema ([`schema`]), loading, and validation.
//!
//! A configuration is accepted whole or not at all. [`load`] and [`parse`] return either a
//! [`Config`] that passed every check, or a [`ConfigError`] listing every problem found, each with
//! the file, line, column and field path:
//!
//! ```text
//! weft.yaml:14:19: listeners[0].virtual_hosts[0].routes[1].route.cluster: unknown cluster `bakend`
//! ```
#![forbid(unsafe_code)]

pub mod capture;
mod compose;
mod error;
mod locate;
pub mod log_format;
mod matching;
pub mod observe;
mod preset;
pub mod resilience;
pub mod schema;
pub mod telemetry;
mod tls;
mod validate;
pub mod xds;
mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

pub use compose::{DynamicResources, check_endpoints, compose};
pub use error::{ConfigError, Problem};
pub use locate::{Location, SourceMap};
pub use schema::Config;

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

/// Parses and validates configuration `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    };
    let mut config = match yaml::deserialize(text) {
        Ok(c) => c,
        Err(problem) => return Err(invalid(vec![problem])),
    };
    preset::expand(&mut config);
    let found = validate::validate(&config);
    if found.is_empty() {
        return Ok(config);
    }
    let map = SourceMap::index(text);
    let mut problems: Vec<Problem> = found
        .into_iter()
        .map(|(path, message)| Problem {
            location: map.locate(&path),
            path,
            message,
        })
        .collect();
    problems.sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
    Err(invalid(problems))
}

/// A cluster endpoint's address: an IP and port, or a DNS name to resolve and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// A literal socket address.
    Ip(SocketAddr),
    /// A name resolved (and refreshed) through the system resolver.
    Dns {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl EndpointAddress {
    /// Parses `ip:port`, `[v6]:port` or `name:port`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<EndpointAddress, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(EndpointAddress::Ip(addr));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("`{text}` needs a port (`host:port`)"));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{port}` in `{text}` is not a port number"))?;
        let labels_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    && !label.starts_with('-')
            });
        if !labels_ok {
            return Err(format!(
                "`{host}` in `{text}` is neither an IP address nor a DNS name"
            ));
        }
        Ok(EndpointAddress::Dns {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Ip(a) => a.fmt(f),
            EndpointAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// True for an RFC 9110 token (header names, methods); the `http` crate's check.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && http::HeaderName::from_bytes(s.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests;

/// How a `per_connection_buffer_limit_bytes` maps onto the buffers hyper and h2 offer, for
/// downstream and upstream connections alike (docs/hardening.md lists the figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimit(pub usize);

impl BufferLimit {
    /// An HTTP/1 connection's read (and write queue) bound: a sixteenth of the limit, at least
    /// `floor` (an HTTP/1 head must fit) and hyper's minimum of 8 KiB, at most the limit.
    pub fn http1_buf(self, floor: usize) -> usize {
        (self.0 / 16).max(floor).max(8192).min(self.0.max(8192))
    }

    /// The HTTP/2 receive window of one stream: the limit, at most 1 MiB.
    pub fn h2_stream_window(self) -> u32 {
        u32::try_from(self.0.min(1024 * 1024))
            .unwrap_or(u32::MAX)
            .max(65_535)
    }

    /// The HTTP/2 receive window of the whole connection: the limit.
    pub fn h2_connection_window(self) -> u32 {
        u32::try_from(self.0.min(i32::MAX as usize))
            .unwrap_or(i32::MAX as u32)
            .max(65_535)
    }

    /// The HTTP/2 send buffer of one stream: a sixteenth of the limit, at least 16 KiB.
    pub fn h2_send_buf(self) -> usize {
        (self.0 / 16).max(16 * 1024)
    }
}
