//! Upstream clusters: endpoint sets (static or resolved from DNS and refreshed), the load
//! balancer over them, and a pooled HTTP client.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use weft_balance::{Balancer, EndpointState, PickContext, Policy};
use weft_config::EndpointAddress;
use weft_config::schema::{self, LbPolicy, UpstreamProtocol};

use weft_body::ProxyBody;
use weft_observe::metrics::{ClusterMetrics, Metrics};

/// One resolved endpoint and its live statistics.
#[derive(Debug)]
pub struct Endpoint {
    /// Its socket address.
    pub addr: SocketAddr,
    /// `ip:port` as a URI authority, built once.
    pub authority: http::uri::Authority,
    /// Balancing weight.
    pub weight: u32,
    /// Requests in flight.
    pub active: AtomicU64,
    /// Requests sent.
    pub rq_total: AtomicU64,
    /// Requests that failed (connect failure, reset, timeout, 5xx).
    pub rq_error: AtomicU64,
    /// Connection attempts that failed.
    pub cx_connect_fail: AtomicU64,
    /// Active health check and outlier state.
    pub health: crate::health::EndpointHealth,
}

/// The endpoints of a cluster at one moment, with the balancer built over them.
#[derive(Debug)]
pub struct EndpointSet {
    /// The endpoints, indexed as the balancer sees them.
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Option<Balancer>,
}

impl EndpointState for EndpointSet {
    fn is_available(&self, index: usize) -> bool {
        let now = crate::health::now_ms();
        self.endpoints
            .get(index)
            .is_some_and(|e| e.health.is_available(now))
    }
    fn active_requests(&self, index: usize) -> u64 {
        self.endpoints
            .get(index)
            .map_or(0, |e| e.active.load(Ordering::Relaxed))
    }
}

impl EndpointSet {
    fn build(policy: Policy, endpoints: Vec<Arc<Endpoint>>) -> EndpointSet {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let keys: Vec<Vec<u8>> = endpoints
            .iter()
            .map(|e| e.addr.to_string().into_bytes())
            .collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let balancer = if endpoints.is_empty() {
            None
        } else {
            Balancer::with_endpoint_keys(policy, &weights, &key_refs)
                .inspect_err(|e| tracing::error!(error = %e, "cannot build load balancer"))
                .ok()
        };
        EndpointSet {
            endpoints,
            balancer,
        }
    }

    /// The balancer (`None` when there is no endpoint).
    pub(crate) fn balancer(&self) -> Option<&Balancer> {
        self.balancer.as_ref()
    }

    /// Picks an endpoint; `hash` feeds ring hashing. `None` when there is no endpoint.
    pub fn pick(&self, hash: Option<u64>) -> Option<&Arc<Endpoint>> {
        let balancer = self.balancer.as_ref()?;
        let mut ctx = PickContext::new(self);
        ctx.hash = hash;
        balancer.pick(&ctx).and_then(|i| self.endpoints.get(i))
    }
}

/// HTTP client type used for every cluster.
pub type HttpClient = Client<CountingConnector, ProxyBody>;

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
    /// Pooled client (keeps connections across reloads while the cluster is unchanged).
    pub client: HttpClient,
    /// Its metrics.
    pub metrics: Arc<ClusterMetrics>,
    /// Circuit breakers, health checking, outlier detection.
    pub resilience: crate::resilience::ClusterResilience,
    /// Its TLS client side (for `/certs`).
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
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
        tls: Option<Arc<crate::tls::UpstreamTls>>,
    ) -> Cluster {
        let resilience_metrics = metrics.cluster_resilience(&config.name);
        let metrics = metrics.cluster(&config.name);
        let policy = policy_of(config);
        let addresses: Vec<(EndpointAddress, u32)> = config
            .endpoints
            .iter()
            .filter_map(|e| {
                EndpointAddress::parse(&e.address)
                    .ok()
                    .map(|a| (a, e.weight))
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.enforce_http(true);
        let connector = CountingConnector {
            inner: connector,
            opened: metrics.cx_total.clone(),
            tls: tls.clone(),
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_timeout);
        if config.protocol == UpstreamProtocol::Http2 {
            builder.http2_only(true);
        }
        let resilience = crate::resilience::ClusterResilience::start(
            config,
            &endpoints,
            resilience_metrics,
            tls.clone(),
        );
        Cluster {
            name: config.name.as_str().into(),
            config: config.clone(),
            policy: config.lb_policy,
            endpoints,
            client: builder.build(connector),
            metrics,
            resilience,
            tls,
            refresh,
        }
    }

    /// Opens a connection to `endpoint` for a TCP proxy: within the cluster's connect
    /// timeout, over the cluster's TLS client side when it has one (never plaintext to a TLS
    /// cluster).
    pub async fn connect(&self, endpoint: &Endpoint) -> std::io::Result<crate::tls::UpstreamIo> {
        let connect = async {
            let tcp = TcpStream::connect(endpoint.addr).await?;
            let _ = tcp.set_nodelay(true);
            crate::tls::UpstreamTls::wrap(self.tls.as_deref(), tcp).await
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

    /// The current endpoint set.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }
}

/// Resolves every address; endpoints whose address is unchanged keep their statistics.
async fn resolve_all(
    addresses: &[(EndpointAddress, u32)],
    previous: &[Arc<Endpoint>],
) -> Vec<Arc<Endpoint>> {
    let mut out: Vec<Arc<Endpoint>> = Vec::new();
    for (address, weight) in addresses {
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
            let reuse = previous
                .iter()
                .find(|e| e.addr == addr && e.weight == *weight);
            out.push(match reuse {
                Some(e) => e.clone(),
                None => Arc::new(Endpoint::new(addr, *weight)),
            });
        }
    }
    out
}

impl Endpoint {
    fn new(addr: SocketAddr, weight: u32) -> Endpoint {
        let authority = http::uri::Authority::try_from(addr.to_string().as_str())
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"));
        Endpoint {
            addr,
            authority,
            weight,
            active: AtomicU64::new(0),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            health: Default::default(),
        }
    }
}

/// `HttpConnector` that counts the connections it opens, and runs the TLS handshake when the
/// cluster has `tls`.
#[derive(Clone, Debug)]
pub struct CountingConnector {
    inner: HttpConnector,
    opened: Counter,
    tls: Option<Arc<crate::tls::UpstreamTls>>,
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = TokioIo<crate::tls::UpstreamIo>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let opened = self.opened.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let io: TcpStream = fut.await?.into_inner();
            let io = crate::tls::UpstreamTls::wrap(tls.as_deref(), io).await?;
            opened.inc();
            Ok(TokioIo::new(io))
        })
    }
}
