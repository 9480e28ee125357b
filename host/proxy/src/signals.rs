//! Process signals: SIGTERM and SIGINT drain, SIGHUP reloads.

/// SIGTERM, SIGINT and SIGHUP handlers; install them before starting the proxy.
#[derive(Debug)]
pub struct Signals {
    pub(crate) term: tokio::signal::unix::Signal,
    pub(crate) int: tokio::signal::unix::Signal,
    pub(crate) hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside a tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}
