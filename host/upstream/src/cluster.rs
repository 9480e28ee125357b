//! Upstream clusters: endpoint sets (static or resolved from DNS and refreshed), the load
//! balancer over them, and a pooled HTTP client.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use weft_balance::{EndpointState, PickContext, Policy};
use weft_config::EndpointAddress;
use weft_config::schema::{self, ClusterType, LbPolicy, UpstreamProtocol};

use weft_body::ProxyBody;
use weft_observe::metrics::{ClusterMetrics, Metrics};

use crate::clock::now_ms;
use crate::endpoint::{Endpoint, EndpointSet};
use crate::outlier::Observation;
use crate::resilience::{ClusterResilience, Panicked, Untried, in_panic};
use crate::tls::{HttpIo, UpstreamIo, UpstreamTls};

/// HTTP client type used for every cluster.
pub type HttpClient = Client<CountingConnector, ProxyBody>;

/// A cluster's connection pools: the main one, a `downstream` cluster's HTTP/2 one, and the
/// pooled HTTP/1.1 connections ([`crate::h1_pool`]).
#[derive(Debug)]
struct Pools {
    main: HttpClient,
    h2: Option<HttpClient>,
    /// Every cluster whose HTTP/1.1 requests cannot become HTTP/2 (no `h2` in its TLS ALPN);
    /// upgrades and `CONNECT` still use `main`.
    h1: Option<Arc<crate::h1_pool::H1Pool>>,
}

impl Pools {
    fn build(
        config: &schema::Cluster,
        cx_total: &Counter,
        endpoints: &Arc<ArcSwap<EndpointSet>>,
        tls: Option<&Arc<UpstreamTls>>,
    ) -> Pools {
        let client = |h2: bool, tls: Option<Arc<UpstreamTls>>| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(config.connect_timeout));
            connector.set_local_address(config.source_address);
            connector.enforce_http(true);
            let connector = CountingConnector {
                inner: connector,
                opened: cx_total.clone(),
                tls,
                endpoints: endpoints.clone(),
                http1: !h2,
            };
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(config.idle_timeout);
            // Bounded buffers: a slow downstream reader stops the upstream reads
            // (back-pressure) instead of letting a response pile up in the proxy.
            let limit = weft_config::BufferLimit(config.per_connection_buffer_limit_bytes);
            builder
                .http1_max_buf_size(limit.http1_buf(16 * 1024))
                .http2_initial_stream_window_size(limit.h2_stream_window())
                .http2_initial_connection_window_size(limit.h2_connection_window())
                .http2_max_send_buf_size(limit.h2_send_buf());
            if h2 {
                builder.http2_only(true);
            }
            builder.build(connector)
        };
        let limit = weft_config::BufferLimit(config.per_connection_buffer_limit_bytes);
        let h1 = (config.protocol != UpstreamProtocol::Http2
            && config
                .tls
                .as_ref()
                .is_none_or(|t| !t.alpn.iter().any(|a| a == "h2")))
        .then(|| crate::h1_pool::H1Pool::start(config.idle_timeout, limit.http1_buf(16 * 1024)));
        Pools {
            main: client(config.protocol == UpstreamProtocol::Http2, tls.cloned()),
            // A `downstream` cluster's HTTP/2 pool (its TLS offering `h2`).
            h2: (config.protocol == UpstreamProtocol::Downstream)
                .then(|| client(true, tls.map(|t| t.with_alpn(&[b"h2"])))),
            h1,
        }
    }
}

/// An upstream cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Its name.
    pub name: Arc<str>,
    /// Its configuration, kept to decide whether a reload can reuse it.
    pub config: schema::Cluster,
    /// The balancing policy.
    pub policy: LbPolicy,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    /// The configured endpoints now applied: `config.endpoints`, or what
    /// [`Cluster::set_endpoints`] last put in place (an xDS endpoint update).
    applied: ArcSwap<Vec<schema::Endpoint>>,
    /// Pooled client (keeps connections across reloads while the cluster is unchanged); for a
    /// `downstream` cluster, the HTTP/1.1 one. Shared by every thread (what runs outside a
    /// per-worker runtime: plugin HTTP calls, `runtime.accept: shared`).
    pub client: HttpClient,
    /// The shared pools (`client` and a `downstream` cluster's HTTP/2 pool).
    pools: Pools,
    /// Each `runtime.accept: reuseport` worker's own pools, made on its first request: a
    /// request and its upstream connection then stay on one worker, with no wake-up of
    /// another worker's thread per request.
    /// (Set aside on the first request from a worker: nothing in `shared` mode.)
    per_worker: OnceLock<Box<[OnceLock<Pools>]>>,
    /// Its metrics.
    pub metrics: Arc<ClusterMetrics>,
    /// Circuit breakers, health checking, outlier detection.
    pub resilience: ClusterResilience,
    /// Its TLS client side (for `/certs`).
    pub tls: Option<Arc<UpstreamTls>>,
    refresh: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(task) = &self.refresh {
            task.abort();
        }
    }
}

fn policy_of(c: &schema::Cluster) -> Policy {
    match c.lb_policy {
        LbPolicy::RoundRobin => Policy::RoundRobin,
        LbPolicy::Random => Policy::Random,
        LbPolicy::LeastRequest => Policy::LeastRequest {
            choice_count: c.choice_count,
        },
        LbPolicy::RingHash => Policy::RingHash {
            minimum_ring_size: c.minimum_ring_size,
        },
    }
}

impl Cluster {
    /// Builds a cluster, resolving DNS endpoints once (bounded by `resolve_timeout`) and
    /// starting their refresh.
    pub async fn new(config: &schema::Cluster, metrics: &Metrics) -> Cluster {
        Cluster::with_tls(config, metrics, None).await
    }

    /// [`Cluster::new`] with a TLS client side (`tls` from the cluster's `tls` block).
    pub async fn with_tls(
        config: &schema::Cluster,
        metrics: &Metrics,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Cluster {
        let resilience_metrics = metrics.cluster_resilience(&config.name);
        let metrics = metrics.cluster(&config.name);
        let policy = policy_of(config);
        let addresses: Vec<(EndpointAddress, Placement)> = config
            .endpoints
            .iter()
            .filter_map(|e| {
                EndpointAddress::parse(&e.address)
                    .ok()
                    .map(|a| (a, Placement::of(config, e)))
            })
            .collect();
        let has_dns = addresses
            .iter()
            .any(|(a, _)| matches!(a, EndpointAddress::Dns { .. }));
        let resolved = resolve_all(&addresses, &[]).await;
        let endpoints = Arc::new(ArcSwap::from_pointee(EndpointSet::build(policy, resolved)));
        let refresh = has_dns.then(|| {
            let endpoints = endpoints.clone();
            let every = config.dns_refresh_rate;
            let name = config.name.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let current = endpoints.load_full();
                    let fresh = resolve_all(&addresses, &current.endpoints).await;
                    let changed = fresh.len() != current.endpoints.len()
                        || fresh.iter().zip(current.endpoints.iter()).any(|(a, b)| !Arc::ptr_eq(a, b));
                    if changed {
                        tracing::info!(cluster = %name, endpoints = fresh.len(), "DNS endpoints changed");
                        endpoints.store(Arc::new(EndpointSet::build(policy, fresh)));
                    }
                }
            })
        });
        let pools = Pools::build(config, &metrics.cx_total, &endpoints, tls.as_ref());
        let resilience =
            ClusterResilience::start(config, &endpoints, resilience_metrics, tls.clone());
        Cluster {
            name: config.name.as_str().into(),
            config: config.clone(),
            policy: config.lb_policy,
            endpoints,
            applied: ArcSwap::from_pointee(config.endpoints.clone()),
            client: pools.main.clone(),
            pools,
            per_worker: OnceLock::new(),
            metrics,
            resilience,
            tls,
            refresh,
        }
    }

    /// Opens a connection to `endpoint` for a TCP proxy: within the cluster's connect
    /// timeout, over the cluster's TLS client side when it has one (never plaintext to a TLS
    /// cluster).
    pub async fn connect(&self, endpoint: &Endpoint) -> std::io::Result<UpstreamIo> {
        let connect = async {
            let tcp = match self.config.source_address {
                None => TcpStream::connect(endpoint.addr).await?,
                Some(source) => {
                    let socket = match source {
                        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                    };
                    socket.bind(SocketAddr::new(source, 0))?;
                    socket.connect(endpoint.addr).await?
                }
            };
            let _ = tcp.set_nodelay(true);
            let tls = self.tls.as_deref().filter(|_| !endpoint.plaintext);
            UpstreamTls::wrap(tls, tcp).await
        };
        match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(r) => {
                if r.is_ok() {
                    self.metrics.cx_total.inc();
                }
                r
            }
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timeout",
            )),
        }
    }

    /// True when `config` is this cluster's configuration with the endpoints now applied (a
    /// reload can then reuse it, keeping its pools and statistics).
    pub fn same_config(&self, config: &schema::Cluster) -> bool {
        let applied = self.applied.load();
        if **applied != config.endpoints {
            return false;
        }
        if self.config.endpoints == config.endpoints {
            return self.config == *config;
        }
        // The endpoints were replaced in place: compare the rest.
        let mut rest = config.clone();
        rest.endpoints = self.config.endpoints.clone();
        self.config == rest
    }

    /// Replaces the endpoint set in place, as an xDS endpoint (EDS) update does in Envoy: no
    /// new cluster, pools kept; endpoints whose address and weight are unchanged keep their
    /// statistics, health and ejections. Only IP endpoints, and only for a cluster that
    /// resolves no DNS names (whose refresh would put its own addresses back): otherwise
    /// returns false and changes nothing, and the caller rebuilds the cluster instead.
    pub fn set_endpoints(&self, endpoints: &[schema::Endpoint]) -> bool {
        if self.refresh.is_some() || self.is_original_dst() {
            return false;
        }
        let mut addrs = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            match EndpointAddress::parse(&e.address) {
                Ok(EndpointAddress::Ip(a)) => addrs.push((a, Placement::of(&self.config, e))),
                _ => return false,
            }
        }
        let current = self.endpoints.load_full();
        let mut fresh: Vec<Arc<Endpoint>> = Vec::with_capacity(addrs.len());
        for (addr, place) in addrs {
            if fresh.iter().any(|e| e.addr == addr) {
                continue;
            }
            let reuse = current
                .endpoints
                .iter()
                .find(|e| e.addr == addr && place.fits(e));
            fresh.push(match reuse {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(place.endpoint(addr));
                    // Same address, new weight: keep its health and ejection state.
                    if let Some(old) = current.endpoints.iter().find(|o| o.addr == addr) {
                        e.health.adopt(&old.health);
                    }
                    e
                }
            });
        }
        self.endpoints
            .store(Arc::new(EndpointSet::build(policy_of(&self.config), fresh)));
        self.applied.store(Arc::new(endpoints.to_vec()));
        if !self.config.health_checks.is_empty() {
            let healthy = self
                .endpoints()
                .endpoints
                .iter()
                .filter(|e| !e.health.failed_active_hc.load(Ordering::Relaxed))
                .count();
            self.resilience.metrics.healthy.set(healthy as i64);
        }
        true
    }

    /// The configured endpoints now applied (`config.endpoints` unless replaced in place).
    pub fn applied_endpoints(&self) -> Arc<Vec<schema::Endpoint>> {
        self.applied.load_full()
    }

    /// The HTTP version a request that came downstream as `downstream` goes upstream as.
    pub fn upstream_version(&self, downstream: http::Version) -> http::Version {
        match self.config.protocol {
            UpstreamProtocol::Http1 => http::Version::HTTP_11,
            UpstreamProtocol::Http2 => http::Version::HTTP_2,
            UpstreamProtocol::Downstream if downstream == http::Version::HTTP_2 => {
                http::Version::HTTP_2
            }
            UpstreamProtocol::Downstream => http::Version::HTTP_11,
        }
    }

    /// The pool a request of upstream `version` goes through: the calling worker's own
    /// (`runtime.accept: reuseport`) or the shared one.
    pub fn client_for(&self, version: http::Version) -> &HttpClient {
        let pools = self.pools();
        match &pools.h2 {
            Some(h2) if version == http::Version::HTTP_2 => h2,
            _ => &pools.main,
        }
    }

    /// The calling worker's HTTP/1.1 pool (`None`: the cluster has none, its requests
    /// go through [`client_for`](Self::client_for)).
    pub fn h1_pool(&self) -> Option<&Arc<crate::h1_pool::H1Pool>> {
        self.pools().h1.as_ref()
    }

    /// The calling worker's own pools (`runtime.accept: reuseport`) or the shared ones.
    fn pools(&self) -> &Pools {
        let own = crate::worker::current().and_then(|i| {
            self.per_worker
                .get_or_init(|| {
                    std::iter::repeat_with(OnceLock::new)
                        .take(crate::worker::count())
                        .collect()
                })
                .get(i)
        });
        match own {
            Some(slot) => slot.get_or_init(|| {
                Pools::build(
                    &self.config,
                    &self.metrics.cx_total,
                    &self.endpoints,
                    self.tls.as_ref(),
                )
            }),
            None => &self.pools,
        }
    }

    /// The current endpoint set.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// True for an `original_dst` cluster (Envoy's `ORIGINAL_DST`): each connection or request
    /// goes to its own original destination instead of a listed endpoint.
    pub fn is_original_dst(&self) -> bool {
        self.config.kind == ClusterType::OriginalDst
    }

    /// The endpoint of an `original_dst` cluster for original destination `dst`: `dst`, or the
    /// configured `original_dst.address` at `dst`'s port. Not part of the endpoint set (one
    /// per connection or request), so `/clusters` lists none.
    pub fn original_dst_endpoint(&self, dst: SocketAddr) -> Arc<Endpoint> {
        let ip = self
            .config
            .original_dst
            .as_ref()
            .and_then(|o| o.address)
            .unwrap_or(dst.ip());
        Arc::new(Endpoint::new(SocketAddr::new(ip, dst.port()), 1))
    }
}

/// Another state with only one priority level's endpoints available.
struct InLevel<'a> {
    inner: &'a dyn EndpointState,
    set: &'a EndpointSet,
    level: u32,
}

impl EndpointState for InLevel<'_> {
    fn is_available(&self, index: usize) -> bool {
        self.set
            .endpoints
            .get(index)
            .is_some_and(|e| e.priority == self.level)
            && self.inner.is_available(index)
    }
    fn active_requests(&self, index: usize) -> u64 {
        self.inner.active_requests(index)
    }
}

/// Resolves every address; endpoints whose address is unchanged keep their statistics.
/// Where an endpoint sits: its weight, priority level and whether it is reached in plaintext.
#[derive(Debug, Clone, Copy)]
struct Placement {
    weight: u32,
    priority: u32,
    plaintext: bool,
}

impl Placement {
    fn of(config: &schema::Cluster, e: &schema::Endpoint) -> Placement {
        Placement {
            weight: e.weight,
            priority: e.priority,
            plaintext: config
                .tls
                .as_ref()
                .is_some_and(|t| !t.applies_to(&e.labels)),
        }
    }

    /// Whether a live endpoint already sits here (and can keep its statistics).
    fn fits(&self, e: &Endpoint) -> bool {
        e.weight == self.weight && e.priority == self.priority && e.plaintext == self.plaintext
    }

    fn endpoint(&self, addr: SocketAddr) -> Endpoint {
        Endpoint::new(addr, self.weight).placed(self.priority, self.plaintext)
    }
}

async fn resolve_all(
    addresses: &[(EndpointAddress, Placement)],
    previous: &[Arc<Endpoint>],
) -> Vec<Arc<Endpoint>> {
    let mut out: Vec<Arc<Endpoint>> = Vec::new();
    for (address, place) in addresses {
        let addrs: Vec<SocketAddr> = match address {
            EndpointAddress::Ip(a) => vec![*a],
            EndpointAddress::Dns { host, port } => {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::lookup_host((host.as_str(), *port)),
                )
                .await
                {
                    Ok(Ok(found)) => {
                        let mut v: Vec<SocketAddr> = found.collect();
                        v.sort();
                        v.dedup();
                        v
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%host, error = %e, "DNS resolution failed");
                        // Keep what we had for this name rather than dropping to nothing.
                        previous
                            .iter()
                            .filter(|e| e.addr.port() == *port)
                            .map(|e| e.addr)
                            .collect()
                    }
                    Err(_) => {
                        tracing::warn!(%host, "DNS resolution timed out");
                        previous
                            .iter()
                            .filter(|e| e.addr.port() == *port)
                            .map(|e| e.addr)
                            .collect()
                    }
                }
            }
        };
        for addr in addrs {
            if out.iter().any(|e| e.addr == addr) {
                continue;
            }
            let reuse = previous.iter().find(|e| e.addr == addr && place.fits(e));
            out.push(match reuse {
                Some(e) => e.clone(),
                None => Arc::new(place.endpoint(addr)),
            });
        }
    }
    out
}

/// `HttpConnector` that counts the connections it opens, and runs the TLS handshake when the
/// cluster has `tls`.
#[derive(Clone, Debug)]
pub struct CountingConnector {
    inner: HttpConnector,
    opened: Counter,
    tls: Option<Arc<UpstreamTls>>,
    /// The cluster's endpoints (some may be reached in plaintext despite `tls`).
    endpoints: Arc<ArcSwap<EndpointSet>>,
    /// HTTP/1 cluster: responses are checked ([`HttpIo`]).
    http1: bool,
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = TokioIo<HttpIo>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let plaintext = self.tls.is_some()
            && uri
                .authority()
                .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
                .is_some_and(|addr| self.endpoints.load().is_plaintext(&addr));
        let fut = self.inner.call(uri);
        let opened = self.opened.clone();
        let tls = self.tls.clone().filter(|_| !plaintext);
        let http1 = self.http1;
        Box::pin(async move {
            let io: TcpStream = fut.await?.into_inner();
            let io = UpstreamTls::wrap(tls.as_deref(), io).await?;
            opened.inc();
            Ok(TokioIo::new(HttpIo::new(io, http1)))
        })
    }
}

/// Endpoint picks and outlier bookkeeping.
impl Cluster {
    /// Picks an endpoint of `set` for try `attempt` (0 first). A retry avoids every endpoint in
    /// `tried` while another is available, else at least the last one tried; panic mode
    /// balances over every endpoint when too few are available.
    pub fn pick_endpoint(
        &self,
        set: &EndpointSet,
        hash: Option<u64>,
        attempt: u32,
        tried: &[usize],
    ) -> Option<(usize, Arc<Endpoint>)> {
        let balancer = set.balancer()?;
        let now = now_ms();
        let total = set.endpoints.len();
        let available = set
            .endpoints
            .iter()
            .filter(|e| e.health.is_available(now))
            .count();
        let panicked = Panicked(set);
        let state: &dyn EndpointState =
            if in_panic(available, total, self.resilience.panic_threshold) {
                self.resilience.metrics.panic.inc();
                &panicked
            } else {
                set
            };
        // Several priority levels: the pick stays within the level Envoy's priority load
        // chooses (when none has an available endpoint, panic mode or not, all levels).
        let level = set.pick_level(now).map(|level| InLevel {
            inner: state,
            set,
            level,
        });
        let state: &dyn EndpointState = match &level {
            Some(l) => l,
            None => state,
        };
        let mut ctx = PickContext::new(state);
        ctx.hash = hash;
        let picked = match tried.last() {
            None => balancer.pick(&ctx),
            Some(&last) => {
                let untried = Untried {
                    inner: state,
                    tried,
                };
                let mut fresh = PickContext::new(&untried);
                fresh.hash = hash;
                balancer
                    .pick(&fresh)
                    .or_else(|| balancer.pick(&ctx.retry(attempt, last)))
            }
        };
        let i = picked?;
        set.endpoints.get(i).map(|e| (i, e.clone()))
    }

    /// Feeds one try's result to outlier detection.
    pub fn observe(&self, set: &EndpointSet, endpoint: &Endpoint, o: Observation) {
        if let Some(cfg) = &self.resilience.outlier {
            crate::outlier::record(set, endpoint, cfg, o, &self.resilience.metrics, &self.name);
        }
    }

    /// Takes over the health and ejection state of `old`'s endpoints with the same address
    /// (a reload that changed the cluster's settings but not its endpoints).
    pub fn adopt_endpoint_state(&self, old: &Cluster) {
        let old_set = old.endpoints();
        for e in self.endpoints().endpoints.iter() {
            if let Some(o) = old_set.endpoints.iter().find(|o| o.addr == e.addr)
                && !Arc::ptr_eq(o, e)
            {
                e.health.adopt(&o.health);
            }
        }
        let healthy = self
            .endpoints()
            .endpoints
            .iter()
            .filter(|e| !e.health.failed_active_hc.load(Ordering::Relaxed))
            .count();
        if !self.config.health_checks.is_empty() {
            self.resilience.metrics.healthy.set(healthy as i64);
        }
    }
}
