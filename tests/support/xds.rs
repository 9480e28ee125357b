//! A test control plane: an ADS server (state of the world and incremental) serving snapshots
//! the test sets, recording every discovery request (ACKs and NACKs) so tests can wait on them;
//! and builders for the Envoy resources the tests send. On a delta stream a resource's version is
//! a hash of its bytes: only what changed is sent, and what left the snapshot is removed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use futures_util::Stream;
use parking_lot::Mutex;
use prost::{Message, Name};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use hcm::HttpFilter;

/// Type URLs.
pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// EDS.
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// LDS.
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// RDS.
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// ECDS.
pub const ECDS: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// A versioned set of resources by type URL, each a (name, resource) list.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `version_info` of every response built from it.
    pub version: String,
    /// Resources by type URL.
    pub resources: BTreeMap<String, Vec<(String, Any)>>,
}

impl Snapshot {
    /// An empty snapshot at `version`.
    pub fn new(version: &str) -> Snapshot {
        Snapshot {
            version: version.into(),
            resources: BTreeMap::new(),
        }
    }

    /// Adds a resource.
    pub fn with<M: Name>(mut self, name: &str, resource: M) -> Snapshot {
        let any = envoy_types::pb::google::protobuf::Any {
            type_url: M::type_url(),
            value: resource.encode_to_vec(),
        };
        self.resources
            .entry(any.type_url.clone())
            .or_default()
            .push((name.into(), any));
        self
    }
}

struct Shared {
    snapshot: watch::Sender<Snapshot>,
    requests: Mutex<Vec<DiscoveryRequest>>,
    delta_requests: Mutex<Vec<DeltaDiscoveryRequest>>,
    delta_responses: Mutex<Vec<DeltaDiscoveryResponse>>,
    nonce: std::sync::atomic::AtomicU64,
    streams: CancellationToken,
}

/// A server-side TLS connection, as tonic's server takes it.
pub struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A running control plane.
pub struct ControlPlane {
    /// Its address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct Ads(Arc<Shared>);

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send + 'static>>;
type DeltaStream =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let shared = self.0.clone();
        tokio::spawn(async move {
            let mut snapshots = shared.snapshot.subscribe();
            // Per type: the names asked for, and the (version, names) last sent.
            let mut subs: HashMap<String, Vec<String>> = HashMap::new();
            let mut sent: HashMap<String, (String, Vec<String>)> = HashMap::new();
            loop {
                tokio::select! {
                    _ = shared.streams.cancelled() => {
                        let _ = tx.send(Err(tonic::Status::unavailable("control plane stopping"))).await;
                        return;
                    }
                    r = inbound.message() => {
                        let Ok(Some(r)) = r else { return };
                        shared.requests.lock().push(r.clone());
                        subs.insert(r.type_url.clone(), r.resource_names.clone());
                    }
                    c = snapshots.changed() => if c.is_err() { return },
                }
                let snapshot = snapshots.borrow_and_update().clone();
                for (type_url, names) in &subs {
                    let key = (snapshot.version.clone(), names.clone());
                    if sent.get(type_url) == Some(&key) {
                        continue;
                    }
                    let resources = snapshot
                        .resources
                        .get(type_url)
                        .into_iter()
                        .flatten()
                        .filter(|(n, _)| names.is_empty() || names.contains(n))
                        .map(|(_, any)| any.clone())
                        .collect();
                    let nonce = shared
                        .nonce
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                        .to_string();
                    let response = DiscoveryResponse {
                        version_info: snapshot.version.clone(),
                        resources,
                        type_url: type_url.clone(),
                        nonce,
                        ..DiscoveryResponse::default()
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                    sent.insert(type_url.clone(), key);
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<DeltaStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let shared = self.0.clone();
        tokio::spawn(async move {
            let mut snapshots = shared.snapshot.subscribe();
            let mut types: BTreeMap<String, DeltaState> = BTreeMap::new();
            loop {
                tokio::select! {
                    _ = shared.streams.cancelled() => {
                        let _ = tx.send(Err(tonic::Status::unavailable("control plane stopping"))).await;
                        return;
                    }
                    r = inbound.message() => {
                        let Ok(Some(r)) = r else { return };
                        shared.delta_requests.lock().push(r.clone());
                        types.entry(r.type_url.clone()).or_default().on_request(&r);
                    }
                    c = snapshots.changed() => if c.is_err() { return },
                }
                let snapshot = snapshots.borrow_and_update().clone();
                for (type_url, state) in &mut types {
                    let Some((resources, removed)) = state.diff(&snapshot, type_url) else {
                        continue;
                    };
                    let nonce = shared
                        .nonce
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                        .to_string();
                    let response = DeltaDiscoveryResponse {
                        system_version_info: snapshot.version.clone(),
                        resources,
                        type_url: type_url.clone(),
                        removed_resources: removed,
                        nonce,
                        ..DeltaDiscoveryResponse::default()
                    };
                    shared.delta_responses.lock().push(response.clone());
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// One type on one delta stream: what the proxy subscribed to and holds (name → version).
#[derive(Default)]
struct DeltaState {
    started: bool,
    wildcard: bool,
    names: std::collections::BTreeSet<String>,
    held: HashMap<String, String>,
}

impl DeltaState {
    fn on_request(&mut self, r: &DeltaDiscoveryRequest) {
        if !self.started {
            self.started = true;
            // The first request of a type with no names is a (legacy) wildcard subscription.
            self.wildcard = r.resource_names_subscribe.is_empty();
            self.held = r.initial_resource_versions.clone();
        }
        for n in &r.resource_names_subscribe {
            if n == "*" {
                self.wildcard = true;
            } else {
                self.names.insert(n.clone());
            }
        }
        for n in &r.resource_names_unsubscribe {
            if n == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(n);
                self.held.remove(n);
            }
        }
    }

    /// What to send (changed resources, removed names), if anything; the proxy then holds it.
    fn diff(
        &mut self,
        snapshot: &Snapshot,
        type_url: &str,
    ) -> Option<(Vec<DeltaResource>, Vec<String>)> {
        let wanted: HashMap<&String, (&Any, String)> = snapshot
            .resources
            .get(type_url)
            .into_iter()
            .flatten()
            .filter(|(n, _)| self.wildcard || self.names.contains(n))
            .map(|(n, any)| (n, (any, content_version(any))))
            .collect();
        let mut changed = Vec::new();
        for (name, (any, version)) in &wanted {
            if self.held.get(*name) != Some(version) {
                changed.push(DeltaResource {
                    name: (*name).clone(),
                    version: version.clone(),
                    resource: Some((*any).clone()),
                    ..Default::default()
                });
            }
        }
        changed.sort_by(|a, b| a.name.cmp(&b.name));
        let mut removed: Vec<String> = self
            .held
            .keys()
            .filter(|n| !wanted.contains_key(n))
            .cloned()
            .collect();
        removed.sort();
        if changed.is_empty() && removed.is_empty() {
            return None;
        }
        for n in &removed {
            self.held.remove(n);
        }
        for r in &changed {
            self.held.insert(r.name.clone(), r.version.clone());
        }
        Some((changed, removed))
    }
}

/// A resource's version on the delta stream: a hash of its bytes (unchanged content, unchanged
/// version, so it is not sent again).
fn content_version(any: &Any) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    format!("{:016x}", h.finish())
}

impl ControlPlane {
    /// Starts on an ephemeral port with `snapshot`.
    pub async fn start(snapshot: Snapshot) -> ControlPlane {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), snapshot).await
    }

    /// Starts on `addr` (a restart binds the same address again).
    pub async fn start_on(addr: SocketAddr, snapshot: Snapshot) -> ControlPlane {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(addr).expect("control plane binds");
        let listener = socket.listen(64).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            snapshot: watch::Sender::new(snapshot),
            requests: Mutex::new(Vec::new()),
            delta_requests: Mutex::new(Vec::new()),
            delta_responses: Mutex::new(Vec::new()),
            nonce: std::sync::atomic::AtomicU64::new(1),
            streams: CancellationToken::new(),
        });
        let stop = CancellationToken::new();
        let service = AggregatedDiscoveryServiceServer::new(Ads(shared.clone()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, until.cancelled_owned())
                .await;
        });
        ControlPlane {
            addr,
            shared,
            stop,
            task,
        }
    }

    /// Starts on an ephemeral port serving ADS over mTLS only: `server`'s certificate, clients
    /// verified against its bundle and required to present one of `allowed_clients` (SPIFFE
    /// IDs). Each handshake's outcome is sent on the returned channel (the client's SPIFFE ID,
    /// or why it failed).
    pub async fn start_tls(
        snapshot: Snapshot,
        server: &weft_tls::creds::CredentialFiles,
        allowed_clients: &[String],
    ) -> (
        ControlPlane,
        tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
    ) {
        use weft_tls::config::{MinVersion, ServerOptions};
        use weft_tls::verify::PeerRules;
        let creds = weft_tls::creds::Credentials::load(server.clone()).expect("server credentials");
        let config = weft_tls::config::server_config(
            creds,
            &ServerOptions {
                alpn: vec![b"h2".to_vec()],
                min_version: MinVersion::Tls12,
                rules: PeerRules {
                    trust_domain: None,
                    allowed: allowed_clients.to_vec(),
                },
                require_client_cert: true,
            },
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (handshakes, rx) = tokio::sync::mpsc::unbounded_channel();
        let (conns, incoming) = mpsc::channel::<Result<TlsConn, std::io::Error>>(16);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, conns, handshakes) =
                    (acceptor.clone(), conns.clone(), handshakes.clone());
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let id = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| weft_tls::peer::identity(c.as_ref()).ok())
                                .map(|p| p.uri_san)
                                .unwrap_or_default();
                            let _ = handshakes.send(Ok(id));
                            let _ = conns.send(Ok(TlsConn(tls))).await;
                        }
                        Err(e) => {
                            let _ = handshakes.send(Err(e.to_string()));
                        }
                    }
                });
            }
        });
        let shared = Arc::new(Shared {
            snapshot: watch::Sender::new(snapshot),
            requests: Mutex::new(Vec::new()),
            delta_requests: Mutex::new(Vec::new()),
            delta_responses: Mutex::new(Vec::new()),
            nonce: std::sync::atomic::AtomicU64::new(1),
            streams: CancellationToken::new(),
        });
        let stop = CancellationToken::new();
        let service = AggregatedDiscoveryServiceServer::new(Ads(shared.clone()));
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(incoming),
                    until.cancelled_owned(),
                )
                .await;
        });
        (
            ControlPlane {
                addr,
                shared,
                stop,
                task,
            },
            rx,
        )
    }

    /// Serves `snapshot` from now on (pushed to every connected proxy).
    pub fn set(&self, snapshot: Snapshot) {
        self.shared.snapshot.send_replace(snapshot);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<DiscoveryRequest> {
        self.shared.requests.lock().clone()
    }

    /// True once a request of `type_url` ACKed `version` (no error, that version).
    pub fn acked(&self, type_url: &str, version: &str) -> bool {
        self.requests().iter().any(|r| {
            r.type_url == type_url
                && r.version_info == version
                && r.error_detail.is_none()
                && !r.response_nonce.is_empty()
        })
    }

    /// Every incremental (delta) request received so far.
    pub fn delta_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.shared.delta_requests.lock().clone()
    }

    /// Every incremental (delta) response sent so far.
    pub fn delta_responses(&self) -> Vec<DeltaDiscoveryResponse> {
        self.shared.delta_responses.lock().clone()
    }

    /// True once a delta response of `type_url` at system version `version` was ACKed (a
    /// request carrying its nonce and no error).
    pub fn delta_acked(&self, type_url: &str, version: &str) -> bool {
        let nonces: Vec<String> = self
            .delta_responses()
            .into_iter()
            .filter(|r| r.type_url == type_url && r.system_version_info == version)
            .map(|r| r.nonce)
            .collect();
        self.delta_requests().iter().any(|r| {
            r.type_url == type_url && r.error_detail.is_none() && nonces.contains(&r.response_nonce)
        })
    }

    /// The first delta NACK of `type_url`, if any.
    pub fn delta_nack(&self, type_url: &str) -> Option<DeltaDiscoveryRequest> {
        self.delta_requests()
            .into_iter()
            .find(|r| r.type_url == type_url && r.error_detail.is_some())
    }

    /// Whether a NACK of `type_url` arrived, from a node whose id contains `node` (any node
    /// when `None`), with an error message containing every one of `needles`.
    pub fn nacked(&self, type_url: &str, node: Option<&str>, needles: &[&str]) -> bool {
        self.requests().iter().any(|r| {
            r.type_url == type_url
                && node.is_none_or(|id| r.node.as_ref().is_some_and(|n| n.id.contains(id)))
                && r.error_detail
                    .as_ref()
                    .is_some_and(|e| needles.iter().all(|s| e.message.contains(s)))
        })
    }

    /// The error message of the first NACK of `type_url`, if any.
    pub fn nack(&self, type_url: &str) -> Option<DiscoveryRequest> {
        self.requests()
            .into_iter()
            .find(|r| r.type_url == type_url && r.error_detail.is_some())
    }

    /// Stops serving: open streams end with UNAVAILABLE, the port is closed.
    pub async fn stop(self) -> SocketAddr {
        self.shared.streams.cancel();
        self.stop.cancel();
        let _ = self.task.await;
        self.addr
    }
}

/// The bootstrap of a Weft that only knows its control plane at `addr`.
pub fn bootstrap(addr: SocketAddr) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
xds:
  cluster: xds-grpc
  reconnect_base: 50ms
  reconnect_max: 500ms
  node:
    id: sidecar~127.0.0.1~test-pod.test-ns~test-ns.svc.cluster.local
    cluster: test-app.test-ns
    metadata: {{ NAMESPACE: test-ns }}
clusters:
  - name: xds-grpc
    protocol: http2
    endpoints: [{{ address: "{addr}" }}]
"#
    )
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource::default(),
        )),
        ..Default::default()
    }
}

fn socket(addr: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// An EDS cluster named `name` (endpoints from ADS).
pub fn eds_cluster(name: &str) -> cluster::Cluster {
    cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The endpoints of cluster `name`: (address, weight).
pub fn assignment(name: &str, endpoints: &[(SocketAddr, u32)]) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|(a, w)| endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(socket(*a)),
                            ..Default::default()
                        },
                    )),
                    load_balancing_weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An HTTP listener `name` on `addr` whose routes come from RDS `route_config`.
pub fn http_listener(name: &str, addr: SocketAddr, route_config: &str) -> listener::Listener {
    let manager = hcm::HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: route_config.into(),
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(
                envoy_types::pb::google::protobuf::Any {
                    type_url: Router::type_url(),
                    value: Router::default().encode_to_vec(),
                },
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    listener::Listener {
        name: name.into(),
        address: Some(socket(addr)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(Any {
                    type_url: hcm::HttpConnectionManager::type_url(),
                    value: manager.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A header to add (`append`) or set.
pub fn header(name: &str, value: &str, append: bool) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: name.into(),
            value: value.into(),
            ..Default::default()
        }),
        append_action: if append {
            core::header_value_option::HeaderAppendAction::AppendIfExistsOrAdd as i32
        } else {
            core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        },
        ..Default::default()
    }
}

/// A route matching path prefix `prefix`, forwarding to `clusters` (one: plain; more: weighted).
pub fn prefix_route(prefix: &str, clusters: &[(&str, u32)]) -> route::Route {
    use route::route_action::ClusterSpecifier;
    let specifier = match clusters {
        [(one, _)] => ClusterSpecifier::Cluster((*one).into()),
        many => ClusterSpecifier::WeightedClusters(route::WeightedCluster {
            clusters: many
                .iter()
                .map(|(n, w)| route::weighted_cluster::ClusterWeight {
                    name: (*n).into(),
                    weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    route::Route {
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(specifier),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A route configuration `name` with one virtual host (`*`) holding `routes`.
pub fn route_config(name: &str, routes: Vec<route::Route>) -> route::RouteConfiguration {
    route::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![route::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// [`bootstrap`] with incremental ADS (`api_type: DELTA_GRPC`).
pub fn delta_bootstrap(addr: SocketAddr) -> String {
    bootstrap(addr).replace(
        "  cluster: xds-grpc\n",
        "  cluster: xds-grpc\n  api_type: DELTA_GRPC\n",
    )
}

/// [`envoy_bootstrap`] with incremental ADS (`api_type: DELTA_GRPC`).
pub fn envoy_delta_bootstrap(addr: SocketAddr) -> String {
    envoy_bootstrap(addr).replace("api_type: GRPC", "api_type: DELTA_GRPC")
}

/// Envoy's bootstrap for the same control plane and node as [`bootstrap`]: ADS for CDS and LDS
/// (EDS and RDS follow through `ads: {}` in the resources), admin on port 0.
pub fn envoy_bootstrap(addr: SocketAddr) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
node:
  id: sidecar~127.0.0.1~envoy-pod.test-ns~test-ns.svc.cluster.local
  cluster: test-app.test-ns
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds-grpc }} }}]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
    - name: xds-grpc
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: xds-grpc
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: "{ip}", port_value: {port} }}
"#,
        ip = addr.ip(),
        port = addr.port()
    )
}

/// Where a Wasm filter's code comes from.
pub enum WasmCode {
    /// A local file (absolute path).
    Local(String),
    /// Fetched over HTTP through `cluster`, checked against `sha256` (hex).
    Remote {
        /// `http://…`.
        uri: String,
        /// The cluster to fetch through.
        cluster: String,
        /// SHA-256 of the module, hex.
        sha256: String,
    },
}

/// A plugin configuration as Envoy's `Any`: a `StringValue`.
pub fn string_value(s: &str) -> Any {
    use envoy_types::pb::google::protobuf::StringValue;
    Any {
        type_url: StringValue::type_url(),
        value: StringValue { value: s.into() }.encode_to_vec(),
    }
}

/// A plugin configuration as Envoy's `Any`: a `Struct` built from a JSON object.
pub fn struct_value(v: &serde_json::Value) -> Any {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    fn value(v: &serde_json::Value) -> Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(a) => Kind::ListValue(ListValue {
                values: a.iter().map(value).collect(),
            }),
            serde_json::Value::Object(o) => Kind::StructValue(Struct {
                fields: o.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
            }),
        };
        Value { kind: Some(kind) }
    }
    let Some(Kind::StructValue(s)) = value(v).kind else {
        panic!("a JSON object");
    };
    Any {
        type_url: Struct::type_url(),
        value: s.encode_to_vec(),
    }
}

/// An `envoy.filters.http.wasm` HTTP filter named `name` (also the plugin's name), as istiod
/// renders one for a `WasmPlugin`: the V8 runtime, `code`, `configuration`, `fail_open`.
pub fn wasm_filter(
    name: &str,
    code: WasmCode,
    configuration: Any,
    fail_open: bool,
) -> hcm::HttpFilter {
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
    hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
            type_url: Wasm::type_url(),
            value: Wasm {
                config: Some(plugin_config(name, code, configuration, fail_open)),
            }
            .encode_to_vec(),
        })),
        ..Default::default()
    }
}

/// An `envoy.filters.network.wasm` network filter named `name` (also the plugin's name), as
/// istiod renders one for a `WasmPlugin` of `type: NETWORK`.
pub fn network_wasm_filter(name: &str, code: WasmCode, configuration: Any) -> listener::Filter {
    use envoy_types::pb::envoy::extensions::filters::network::wasm::v3::Wasm;
    listener::Filter {
        name: name.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(Any {
            type_url: Wasm::type_url(),
            value: Wasm {
                config: Some(plugin_config(name, code, configuration, false)),
            }
            .encode_to_vec(),
        })),
    }
}

/// The `PluginConfig` both Wasm filters carry.
fn plugin_config(
    name: &str,
    code: WasmCode,
    configuration: Any,
    fail_open: bool,
) -> envoy_types::pb::envoy::extensions::wasm::v3::PluginConfig {
    use envoy_types::pb::envoy::extensions::wasm::v3 as wasm;
    let source = match code {
        WasmCode::Local(file) => core::async_data_source::Specifier::Local(core::DataSource {
            specifier: Some(core::data_source::Specifier::Filename(file)),
            ..Default::default()
        }),
        WasmCode::Remote {
            uri,
            cluster,
            sha256,
        } => core::async_data_source::Specifier::Remote(core::RemoteDataSource {
            http_uri: Some(core::HttpUri {
                uri,
                timeout: Some(PbDuration {
                    seconds: 10,
                    nanos: 0,
                }),
                http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(cluster)),
            }),
            sha256,
            ..Default::default()
        }),
    };
    #[expect(deprecated, reason = "istiod renders fail_open")]
    wasm::PluginConfig {
        name: name.into(),
        root_id: String::new(),
        configuration: Some(configuration),
        fail_open,
        vm: Some(wasm::plugin_config::Vm::VmConfig(wasm::VmConfig {
            vm_id: name.into(),
            runtime: "envoy.wasm.runtime.v8".into(),
            code: Some(core::AsyncDataSource {
                specifier: Some(source),
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An HTTP filter `name` whose configuration comes by ECDS over ADS (`config_discovery`),
/// an `envoy.filters.http.wasm` configuration, as istiod renders a `WasmPlugin` with ECDS.
pub fn ecds_filter(name: &str) -> hcm::HttpFilter {
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
    hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::ConfigDiscovery(
            core::ExtensionConfigSource {
                config_source: Some(ads()),
                type_urls: vec![Wasm::type_url()],
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The ECDS resource `name` carrying `filter`'s typed configuration (e.g. a [`wasm_filter`]).
pub fn extension_config(name: &str, filter: hcm::HttpFilter) -> core::TypedExtensionConfig {
    let typed_config = match filter.config_type {
        Some(hcm::http_filter::ConfigType::TypedConfig(any)) => Some(any),
        _ => None,
    };
    core::TypedExtensionConfig {
        name: name.into(),
        typed_config,
    }
}

/// [`http_listener`] with `filters` before the router.
pub fn http_listener_with(
    name: &str,
    addr: SocketAddr,
    route_config: &str,
    filters: Vec<hcm::HttpFilter>,
) -> listener::Listener {
    let mut l = http_listener(name, addr, route_config);
    let Some(listener::filter::ConfigType::TypedConfig(any)) =
        &mut l.filter_chains[0].filters[0].config_type
    else {
        unreachable!("http_listener builds a typed HCM");
    };
    let mut manager = hcm::HttpConnectionManager::decode(any.value.as_slice()).expect("HCM");
    let router = manager.http_filters.pop().expect("router");
    manager.http_filters = filters;
    manager.http_filters.push(router);
    any.value = manager.encode_to_vec();
    l
}

/// A STATIC cluster `name` with one endpoint (e.g. the server Wasm modules are fetched from).
pub fn static_cluster(name: &str, addr: SocketAddr) -> cluster::Cluster {
    cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        load_assignment: Some(assignment(name, &[(addr, 1)])),
        ..Default::default()
    }
}

/// A TCP proxy network filter to `cluster`.
pub fn tcp_proxy_filter(cluster: &str) -> listener::Filter {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
    let proxy = tcp::TcpProxy {
        stat_prefix: cluster.into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    listener::Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(Any {
            type_url: tcp::TcpProxy::type_url(),
            value: proxy.encode_to_vec(),
        })),
    }
}

/// A capture listener as istiod renders `virtualInbound`: the original_dst, tls_inspector and
/// http_inspector listener filters, `chains`, and a default chain proxying to `passthrough`.
pub fn capture_listener(
    name: &str,
    addr: SocketAddr,
    chains: Vec<listener::FilterChain>,
    passthrough: &str,
) -> listener::Listener {
    let filter = |name: &str, type_url: &str| listener::ListenerFilter {
        name: name.into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(Any {
            type_url: type_url.into(),
            value: Vec::new(),
        })),
        ..Default::default()
    };
    listener::Listener {
        name: name.into(),
        address: Some(socket(addr)),
        use_original_dst: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        listener_filters: vec![
            filter(
                "envoy.filters.listener.original_dst",
                "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
            ),
            filter(
                "envoy.filters.listener.tls_inspector",
                "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
            ),
            filter(
                "envoy.filters.listener.http_inspector",
                "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
            ),
        ],
        listener_filters_timeout: Some(PbDuration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        continue_on_listener_filters_timeout: true,
        filter_chains: chains,
        default_filter_chain: Some(listener::FilterChain {
            name: "passthrough".into(),
            filters: vec![tcp_proxy_filter(passthrough)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An ORIGINAL_DST cluster (Istio's `InboundPassthroughCluster` / `PassthroughCluster`).
pub fn original_dst_cluster(name: &str) -> cluster::Cluster {
    cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A TCP proxy listener `name` on `addr` to `cluster`.
pub fn tcp_listener(name: &str, addr: SocketAddr, cluster: &str) -> listener::Listener {
    listener::Listener {
        name: name.into(),
        address: Some(socket(addr)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![tcp_proxy_filter(cluster)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An `envoy.transport_sockets.tls` transport socket (`UpstreamTlsContext`) presenting
/// `files`' certificate, trusting its bundle and requiring the upstream's SPIFFE ID to be
/// `upstream_id` (a URI SAN matcher, exact), offering `alpn`.
pub fn upstream_tls(
    files: &weft_tls::creds::CredentialFiles,
    upstream_id: &str,
    alpn: &[&str],
) -> core::TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use envoy_types::pb::envoy::r#type::matcher::v3 as m;
    let path = |p: &std::path::Path| {
        Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::Filename(
                p.to_string_lossy().into_owned(),
            )),
            ..Default::default()
        })
    };
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: path(&files.cert),
                private_key: path(&files.key),
                ..Default::default()
            }],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::ValidationContext(
                    tls::CertificateValidationContext {
                        trusted_ca: path(&files.bundle),
                        match_typed_subject_alt_names: vec![tls::SubjectAltNameMatcher {
                            san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
                            matcher: Some(m::StringMatcher {
                                match_pattern: Some(m::string_matcher::MatchPattern::Exact(
                                    upstream_id.into(),
                                )),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
            ),
            alpn_protocols: alpn.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
            type_url: tls::UpstreamTlsContext::type_url(),
            value: ctx.encode_to_vec(),
        })),
    }
}

/// An `envoy.transport_sockets.tls` transport socket for a listener (`DownstreamTlsContext`):
/// `files`' certificate, clients verified against its bundle, a client certificate required.
pub fn downstream_tls(files: &weft_tls::creds::CredentialFiles) -> core::TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    let path = |p: &std::path::Path| {
        Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::Filename(
                p.to_string_lossy().into_owned(),
            )),
            ..Default::default()
        })
    };
    let ctx = tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: path(&files.cert),
                private_key: path(&files.key),
                ..Default::default()
            }],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::ValidationContext(
                    tls::CertificateValidationContext {
                        trusted_ca: path(&files.bundle),
                        ..Default::default()
                    },
                ),
            ),
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }),
        require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue {
            value: true,
        }),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
            type_url: tls::DownstreamTlsContext::type_url(),
            value: ctx.encode_to_vec(),
        })),
    }
}

/// SDS type URL.
pub const SDS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// An SDS secret `name` holding a TLS certificate (`cert`, `key`: PEM, inline).
pub fn tls_secret(
    name: &str,
    cert: &[u8],
    key: &[u8],
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    let inline = |b: &[u8]| {
        Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineBytes(b.to_vec())),
            ..Default::default()
        })
    };
    tls::Secret {
        name: name.into(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: inline(cert),
            private_key: inline(key),
            ..Default::default()
        })),
    }
}

/// An SDS secret `name` holding a validation context (the trusted CA `bundle`, PEM, inline).
pub fn ca_secret(
    name: &str,
    bundle: &[u8],
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    tls::Secret {
        name: name.into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::InlineBytes(bundle.to_vec())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

/// An `UpstreamTlsContext` transport socket whose certificate is SDS secret `cert` and whose
/// trusted CA is SDS secret `ca` (both over ADS), as istiod renders it (`default` / `ROOTCA`,
/// a combined validation context with the upstream's SPIFFE ID).
pub fn sds_upstream_tls(cert: &str, ca: &str, upstream_id: &str) -> core::TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use envoy_types::pb::envoy::r#type::matcher::v3 as m;
    let sds = |name: &str| tls::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ads()),
    };
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(cert)],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            match_typed_subject_alt_names: vec![tls::SubjectAltNameMatcher {
                                san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
                                matcher: Some(m::StringMatcher {
                                    match_pattern: Some(m::string_matcher::MatchPattern::Exact(
                                        upstream_id.into(),
                                    )),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(ca)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
            type_url: tls::UpstreamTlsContext::type_url(),
            value: ctx.encode_to_vec(),
        })),
    }
}
