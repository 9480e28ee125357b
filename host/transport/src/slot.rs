//! Listener slots: a bound socket that outlives configuration generations, and the listener
//! configuration its connections use now (swapped atomically on reload).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_config::schema::{self, FilterChainMatch};
use weft_extensions::PluginHandle;
use weft_http::{HttpListener, ListenerSource};
use weft_observe::Metrics;
use weft_observe::metrics::ListenerMetrics;
use weft_upstream::Cluster;

use crate::tls::ListenerTls;
use crate::workers::{Acceptors, Worker};

/// What every connection shares: metrics and what the HTTP layer shares (the access log).
#[derive(Debug)]
pub struct Shared {
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// The HTTP layer's shared state.
    pub http: Arc<weft_http::Shared>,
}

/// A listener's share of a generation.
#[derive(Debug)]
pub enum ListenerGen {
    /// An HTTP listener.
    Http(HttpEntry),
    /// A TCP listener.
    Tcp(Box<TcpTarget>),
    /// A capture listener (`original_dst: true`).
    Capture(Box<CaptureEntry>),
}

/// An HTTP listener: its TLS termination (transport) and its routes and chains (HTTP layer).
#[derive(Debug)]
pub struct HttpEntry {
    /// Routes, chains, clusters.
    pub http: Arc<HttpListener>,
    /// TLS (`None`: plaintext only).
    pub tls: Option<Arc<ListenerTls>>,
}

/// A TCP listener's target.
#[derive(Debug)]
pub struct TcpTarget {
    /// Listener name.
    pub name: Arc<str>,
    /// The generation this belongs to.
    pub generation: u64,
    /// Its configuration.
    pub config: schema::Listener,
    /// The cluster connections go to.
    pub cluster: Arc<Cluster>,
    /// Metric handles.
    pub metrics: Arc<ListenerMetrics>,
    /// proxy-wasm network filters, in order.
    pub wasm: Vec<Arc<PluginHandle>>,
    /// Istio's standard TCP metrics (`None`: turned off).
    pub istio: Option<Arc<weft_observe::istio::Reporting>>,
}

impl ListenerGen {
    /// The listener's configuration.
    pub fn config(&self) -> &schema::Listener {
        match self {
            ListenerGen::Http(h) => &h.http.settings.config,
            ListenerGen::Tcp(t) => &t.config,
            ListenerGen::Capture(c) => &c.config,
        }
    }

    /// The listener's metrics.
    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        match self {
            ListenerGen::Http(h) => &h.http.settings.metrics,
            ListenerGen::Tcp(t) => &t.metrics,
            ListenerGen::Capture(c) => &c.metrics,
        }
    }
}

/// A bound listener socket and the configuration its connections use now.
#[derive(Debug)]
pub struct ListenerSlot {
    /// Listener name.
    pub name: Arc<str>,
    /// The address it is bound to (the real port when the configuration said 0).
    pub local_addr: SocketAddr,
    /// The address as configured, to notice a change on reload.
    pub configured_addr: SocketAddr,
    current: ArcSwap<ListenerGen>,
    pub(crate) stop: CancellationToken,
    /// Connections open on this socket, across generations (for `max_connections`).
    pub(crate) open: AtomicU32,
}

impl ListenerSlot {
    /// The listener's configuration in the live generation.
    pub fn current(&self) -> Arc<ListenerGen> {
        self.current.load_full()
    }

    /// Switches new requests and connections to `next`.
    pub fn publish(&self, next: Arc<ListenerGen>) {
        self.current.store(next);
    }

    /// Stops accepting (connections already accepted carry on).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// A listener's slot and its bound sockets, not accepting yet ([`crate::serve`] starts them).
#[derive(Debug)]
pub struct Bound {
    /// The slot.
    pub slot: Arc<ListenerSlot>,
    /// The sockets: one accepted on the binding runtime, or one per worker, registered with
    /// (and to be accepted on) that worker's runtime.
    pub(crate) sockets: Vec<(TcpListener, Option<Worker>)>,
}

/// Binds `lgen`'s address and returns its slot: one socket, or under
/// [`Acceptors::Reuseport`] one `SO_REUSEPORT` socket per worker (all on the port the first
/// one got when the configuration says port 0).
pub async fn bind(lgen: Arc<ListenerGen>, acceptors: &Acceptors) -> std::io::Result<Bound> {
    let cfg = lgen.config();
    let mut sockets = Vec::new();
    match acceptors {
        Acceptors::Shared => sockets.push((listen(cfg.address, false)?, None)),
        Acceptors::Reuseport(workers) => {
            let mut address = cfg.address;
            for worker in workers.all() {
                // Registered with the worker's I/O driver: its accept loop runs there.
                let listener = {
                    let _on = worker.handle.enter();
                    listen(address, true)?
                };
                address = listener.local_addr()?;
                sockets.push((listener, Some(worker.clone())));
            }
        }
    }
    let Some((first, _)) = sockets.first() else {
        return Err(std::io::Error::other("no worker to accept on"));
    };
    let slot = Arc::new(ListenerSlot {
        name: cfg.name.as_str().into(),
        local_addr: first.local_addr()?,
        configured_addr: cfg.address,
        current: ArcSwap::new(lgen.clone()),
        stop: CancellationToken::new(),
        open: AtomicU32::new(0),
    });
    Ok(Bound { slot, sockets })
}

/// A listening socket on `address` (registered with the current runtime).
fn listen(address: SocketAddr, reuseport: bool) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.set_nodelay(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

impl ListenerSource for ListenerSlot {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn http(&self) -> Option<Arc<HttpListener>> {
        match &**self.current.load() {
            ListenerGen::Http(h) => Some(h.http.clone()),
            ListenerGen::Tcp(_) | ListenerGen::Capture(_) => None,
        }
    }

    fn metrics(&self) -> Arc<ListenerMetrics> {
        self.current.load().metrics().clone()
    }
}

/// One filter chain of a capture listener.
#[derive(Debug)]
pub struct CaptureChain {
    /// Its name (the target listener's unless named).
    pub name: Arc<str>,
    /// Its match.
    pub matcher: FilterChainMatch,
    /// The listener (`bind_to_port: false`) it hands connections to.
    pub target: Arc<str>,
}

/// A capture listener's share of a generation.
#[derive(Debug)]
pub struct CaptureEntry {
    /// Listener name.
    pub name: Arc<str>,
    /// Its configuration.
    pub config: schema::Listener,
    /// Its metrics.
    pub metrics: Arc<ListenerMetrics>,
    /// Filter chains, in configuration order.
    pub chains: Vec<CaptureChain>,
    /// The listeners the chains name, in the same generation.
    pub targets: HashMap<String, Arc<ListenerGen>>,
    /// Where an unmatched connection goes: the passthrough (`original_dst`) cluster under
    /// `allow_any`, `BlackHoleCluster` (no endpoint) under `registry_only`.
    pub fallback: Arc<TcpTarget>,
    /// Ports an original destination must not have: Weft's own capture listeners and
    /// sidecar ports (a connection to them would loop through the proxy).
    pub own_ports: Vec<u16>,
}
