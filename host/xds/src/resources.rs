//! Resource types: their type URLs and the order Envoy subscribes to them.

/// The type URLs Weft knows.
pub mod type_url {
    /// CDS.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// LDS.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// ECDS (extension configurations: Wasm HTTP filters).
    pub const EXTENSION: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
    /// SDS.
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    /// The HTTP connection manager network filter.
    pub const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    /// The TCP proxy network filter.
    pub const TCP_PROXY: &str =
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
    /// The router HTTP filter.
    pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
}

/// A resource type Weft subscribes to, in Envoy's order: clusters, then their secrets and
/// endpoints, then listeners, then their routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// CDS.
    Cluster,
    /// SDS (secrets the clusters' and listeners' TLS refer to).
    Secret,
    /// EDS.
    Endpoint,
    /// LDS.
    Listener,
    /// RDS.
    Route,
    /// ECDS (the HTTP filters' configurations the listeners discover).
    Extension,
}

impl Kind {
    /// All of them, in subscription order.
    pub const ALL: [Kind; 6] = [
        Kind::Cluster,
        Kind::Secret,
        Kind::Endpoint,
        Kind::Listener,
        Kind::Route,
        Kind::Extension,
    ];

    /// The type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => type_url::CLUSTER,
            Kind::Secret => type_url::SECRET,
            Kind::Endpoint => type_url::ENDPOINT,
            Kind::Listener => type_url::LISTENER,
            Kind::Route => type_url::ROUTE,
            Kind::Extension => type_url::EXTENSION,
        }
    }

    /// The kind of a type URL.
    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// True when a response carries the whole set (LDS, CDS): what is missing is removed.
    pub fn is_state_of_the_world(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    /// Short name (`cds`, …).
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Secret => "sds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
            Kind::Extension => "ecds",
        }
    }
}
