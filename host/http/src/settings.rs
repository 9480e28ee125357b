//! What the request path needs to know about its listener, apart from its routes and chains:
//! name, configuration, TLS, the generation's clusters and the listener's metric handles.

use std::sync::Arc;

use weft_config::schema;
use weft_observe::metrics::ListenerMetrics;
use weft_upstream::Cluster;

/// A listener's settings in one generation.
#[derive(Debug)]
pub struct ListenerSettings {
    /// Listener name.
    pub name: Arc<str>,
    /// The generation this belongs to.
    pub generation: u64,
    /// Its configuration.
    pub config: schema::Listener,
    /// Whether connections arrive over TLS.
    pub tls: bool,
    /// The generation's clusters (route targets index into this).
    pub clusters: Arc<Vec<Arc<Cluster>>>,
    /// Metric handles.
    pub metrics: Arc<ListenerMetrics>,
    /// The access-log format of its requests.
    pub access_log: crate::access::ListenerLog,
    /// Tracing (`None`: no spans, trace headers pass through).
    pub trace: Option<Arc<crate::trace::TraceSettings>>,
    /// Istio's standard metrics and metadata exchange (`None`: turned off).
    pub istio: Option<Arc<weft_observe::istio::Reporting>>,
}
