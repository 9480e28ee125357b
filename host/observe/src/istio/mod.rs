//! Istio's standard metrics, natively: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes` (HTTP)
//! and `istio_tcp_{sent,received}_bytes_total`, `istio_tcp_connections_{opened,closed}_total`
//! (TCP), with Istio's labels, reporters, fallbacks (`unknown`, `latest`) and histogram
//! buckets. `docs/metrics.md` says where every label value comes from.
//!
//! Cost: a request computes its 25 label values as borrowed strings (no formatting: status
//! codes and gRPC statuses come from static tables), hashes them once (foldhash) and finds
//! the series of every family sharing that label shape in one map lookup under a read lock;
//! then it bumps atomics. A series is allocated only the first time its labels are seen.

pub mod exchange;
pub mod node;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use weft_config::schema::{
    IstioMetric, Node, TagOperation, Telemetry, TrafficDirection, WorkloadMode,
};
use weft_config::telemetry::ISTIO_LABELS;

pub use exchange::{PEER_METADATA, PEER_METADATA_ID, PeerCache};
pub use node::{LocalNode, Workload, spiffe_namespace};

/// Istio's value for a label it cannot fill.
pub const UNKNOWN: &str = "unknown";

/// Envoy's default histogram buckets, which Istio's standard histograms use (milliseconds
/// for the duration, bytes for the sizes).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Which side reports: `source` on outbound listeners, `destination` on inbound ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// The client's sidecar.
    Source,
    /// The server's sidecar.
    Destination,
}

impl Reporter {
    /// The reporter of a listener: Istio's stats filter reports `source` unless the listener
    /// is inbound.
    pub fn of(direction: TrafficDirection) -> Reporter {
        match direction {
            TrafficDirection::Inbound => Reporter::Destination,
            _ => Reporter::Source,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }

    fn index(self) -> usize {
        match self {
            Reporter::Source => 0,
            Reporter::Destination => 1,
        }
    }
}

/// The eight standard families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `istio_requests_total`.
    Requests,
    /// `istio_request_duration_milliseconds`.
    Duration,
    /// `istio_request_bytes`.
    RequestBytes,
    /// `istio_response_bytes`.
    ResponseBytes,
    /// `istio_tcp_connections_opened_total`.
    TcpOpened,
    /// `istio_tcp_connections_closed_total`.
    TcpClosed,
    /// `istio_tcp_sent_bytes_total`.
    TcpSent,
    /// `istio_tcp_received_bytes_total`.
    TcpReceived,
}

const FAMILIES: [Family; 8] = [
    Family::Requests,
    Family::Duration,
    Family::RequestBytes,
    Family::ResponseBytes,
    Family::TcpOpened,
    Family::TcpClosed,
    Family::TcpSent,
    Family::TcpReceived,
];

impl Family {
    /// The family's name in the OpenMetrics descriptor (counters get `_total` on samples).
    pub fn name(self) -> &'static str {
        match self {
            Family::Requests => "istio_requests",
            Family::Duration => "istio_request_duration_milliseconds",
            Family::RequestBytes => "istio_request_bytes",
            Family::ResponseBytes => "istio_response_bytes",
            Family::TcpOpened => "istio_tcp_connections_opened",
            Family::TcpClosed => "istio_tcp_connections_closed",
            Family::TcpSent => "istio_tcp_sent_bytes",
            Family::TcpReceived => "istio_tcp_received_bytes",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Family::Requests => "Requests, by Istio's standard labels",
            Family::Duration => "Request duration in milliseconds",
            Family::RequestBytes => "Request size in bytes (header section and body)",
            Family::ResponseBytes => "Response size in bytes (header section and body)",
            Family::TcpOpened => "TCP connections opened",
            Family::TcpClosed => "TCP connections closed",
            Family::TcpSent => "Bytes sent to the downstream on TCP connections",
            Family::TcpReceived => "Bytes received from the downstream on TCP connections",
        }
    }

    fn http(self) -> bool {
        matches!(
            self,
            Family::Requests | Family::Duration | Family::RequestBytes | Family::ResponseBytes
        )
    }

    fn histogram(self) -> bool {
        matches!(
            self,
            Family::Duration | Family::RequestBytes | Family::ResponseBytes
        )
    }

    fn selected_by(self, m: IstioMetric) -> bool {
        match m {
            IstioMetric::AllMetrics => true,
            IstioMetric::RequestCount => self == Family::Requests,
            IstioMetric::RequestDuration => self == Family::Duration,
            IstioMetric::RequestSize => self == Family::RequestBytes,
            IstioMetric::ResponseSize => self == Family::ResponseBytes,
            IstioMetric::TcpOpenedConnections => self == Family::TcpOpened,
            IstioMetric::TcpClosedConnections => self == Family::TcpClosed,
            IstioMetric::TcpSentBytes => self == Family::TcpSent,
            IstioMetric::TcpReceivedBytes => self == Family::TcpReceived,
        }
    }
}

/// Index of each standard label in [`ISTIO_LABELS`].
mod at {
    pub const REPORTER: usize = 0;
    pub const RESPONSE_CODE: usize = 21;
    pub const GRPC_RESPONSE_STATUS: usize = 22;
}

/// Where a label's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The standard label at this index.
    Std(usize),
    /// A fixed value (a tag override).
    Fixed(Arc<str>),
}

/// The labels a family reports for one reporter, after the overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    names: Vec<Arc<str>>,
    sources: Vec<Source>,
}

/// One series: the metrics of every family in the group, under one label set.
#[derive(Debug)]
struct Series {
    labels: Box<[Arc<str>]>,
    metrics: Vec<(Family, Metric)>,
}

#[derive(Debug)]
enum Metric {
    Counter(Counter),
    Histogram(Histogram),
}

/// Families that share a label shape, and their series.
#[derive(Debug)]
struct Group {
    families: Vec<Family>,
    shape: Shape,
    series: RwLock<SeriesMap>,
    /// The series the last report went to: a sidecar's reports mostly repeat one label set,
    /// and comparing with it is cheaper than hashing every label to look it up.
    last: arc_swap::ArcSwapOption<Series>,
}

/// Series by label values.
type SeriesMap = hashbrown::HashMap<Box<[Arc<str>]>, Arc<Series>>;

/// A borrowed label-value list that finds a stored one: `[&str]` and `[Arc<str>]` hash alike.
struct Probe<'a>(&'a [&'a str]);

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl hashbrown::Equivalent<Box<[Arc<str>]>> for Probe<'_> {
    fn equivalent(&self, key: &Box<[Arc<str>]>) -> bool {
        self.0.len() == key.len() && self.0.iter().zip(key.iter()).all(|(a, b)| *a == &**b)
    }
}

impl Group {
    fn record(&self, std: &[&str; 25], amounts: &Amounts) {
        let mut values: Vec<&str> = Vec::with_capacity(self.shape.sources.len());
        for s in &self.shape.sources {
            values.push(match s {
                Source::Std(i) => std[*i],
                Source::Fixed(v) => v,
            });
        }
        use hashbrown::Equivalent;
        let last = self.last.load();
        let looked_up;
        let series: &Series = match last.as_deref() {
            Some(s) if Probe(&values).equivalent(&s.labels) => s,
            _ => {
                let found = self.series.read().get(&Probe(&values)).cloned();
                looked_up = match found {
                    Some(s) => s,
                    None => self.create(&values),
                };
                self.last.store(Some(looked_up.clone()));
                &looked_up
            }
        };
        for (family, metric) in &series.metrics {
            let amount = amounts.get(*family);
            match metric {
                Metric::Counter(c) => {
                    c.inc_by(amount);
                }
                Metric::Histogram(h) => h.observe(amount as f64),
            }
        }
    }

    fn create(&self, values: &[&str]) -> Arc<Series> {
        let mut map = self.series.write();
        if let Some(s) = map.get(&Probe(values)) {
            return s.clone();
        }
        let labels: Box<[Arc<str>]> = values.iter().map(|v| Arc::from(*v)).collect();
        let series = Arc::new(Series {
            labels: labels.clone(),
            metrics: self
                .families
                .iter()
                .map(|f| {
                    let m = if f.histogram() {
                        Metric::Histogram(Histogram::new(BUCKETS))
                    } else {
                        Metric::Counter(Counter::default())
                    };
                    (*f, m)
                })
                .collect(),
        });
        map.insert(labels, series.clone());
        series
    }
}

/// What one report adds to each family.
#[derive(Debug, Clone, Copy, Default)]
struct Amounts {
    requests: u64,
    duration_ms: u64,
    request_bytes: u64,
    response_bytes: u64,
    tcp_opened: u64,
    tcp_closed: u64,
    tcp_sent: u64,
    tcp_received: u64,
}

impl Amounts {
    fn get(&self, f: Family) -> u64 {
        match f {
            Family::Requests => self.requests,
            Family::Duration => self.duration_ms,
            Family::RequestBytes => self.request_bytes,
            Family::ResponseBytes => self.response_bytes,
            Family::TcpOpened => self.tcp_opened,
            Family::TcpClosed => self.tcp_closed,
            Family::TcpSent => self.tcp_sent,
            Family::TcpReceived => self.tcp_received,
        }
    }
}

/// The metadata-exchange headers this sidecar sends.
#[derive(Debug, Clone)]
pub struct ExchangeHeaders {
    /// `x-envoy-peer-metadata-id`.
    pub id: HeaderValue,
    /// `x-envoy-peer-metadata`.
    pub metadata: HeaderValue,
}

/// The local side's label values, `unknown`-filled once.
#[derive(Debug)]
struct LocalLabels {
    workload: Arc<str>,
    namespace: Arc<str>,
    app: Arc<str>,
    version: Arc<str>,
    canonical_service: Arc<str>,
    canonical_revision: Arc<str>,
    cluster: Arc<str>,
}

fn or_unknown(v: &Arc<str>) -> Arc<str> {
    if v.is_empty() {
        UNKNOWN.into()
    } else {
        v.clone()
    }
}

/// Istio metrics as configured for one generation: the local node, the label shapes after
/// the overrides, the series, and the peers seen. Carried over by the next generation when
/// `node:` and `telemetry:` are unchanged, so reloads keep every series.
#[derive(Debug)]
pub struct Reporting {
    node: LocalNode,
    local: LocalLabels,
    exchange: Option<ExchangeHeaders>,
    /// Peers decoded from exchange headers.
    pub peers: PeerCache,
    /// Groups by `reporter * 2 + tcp`.
    groups: [Vec<Group>; 4],
    config: (Node, Telemetry),
}

/// One finished HTTP request, as the stats filter sees it at its end.
#[derive(Debug, Clone, Copy)]
pub struct HttpReport<'a> {
    /// Which side reports.
    pub reporter: Reporter,
    /// The other side's workload, from the metadata exchange.
    pub peer: Option<&'a Workload>,
    /// The other side's SPIFFE identity (verified certificate URI SAN).
    pub peer_principal: Option<&'a str>,
    /// This side's SPIFFE identity on the connection.
    pub local_principal: Option<&'a str>,
    /// The request's `Host` (`:authority`).
    pub host: &'a str,
    /// The service of the cluster the request went to, when the cluster names one.
    pub service: Option<&'a weft_config::schema::ClusterService>,
    /// A gRPC request (`content-type: application/grpc…`).
    pub grpc: bool,
    /// The gRPC status (`grpc-status` of the response).
    pub grpc_status: Option<u16>,
    /// The downstream response status (0: none).
    pub code: u16,
    /// Envoy response flags (`-`: none).
    pub flags: &'a str,
    /// Milliseconds from the request's start to the response's end.
    pub duration_ms: u64,
    /// Request header section and body bytes.
    pub request_bytes: u64,
    /// Response header section and body bytes.
    pub response_bytes: u64,
}

/// A TCP connection: opened, then closed with its bytes.
#[derive(Debug, Clone, Copy)]
pub struct TcpReport<'a> {
    /// Which side reports.
    pub reporter: Reporter,
    /// The other side's SPIFFE identity.
    pub peer_principal: Option<&'a str>,
    /// This side's SPIFFE identity.
    pub local_principal: Option<&'a str>,
    /// Envoy response flags.
    pub flags: &'a str,
}

static STATUS_CODES: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..1000).map(|c: u16| c.to_string()).collect());

fn code_str(code: u16) -> &'static str {
    STATUS_CODES
        .get(usize::from(code))
        .map_or(UNKNOWN, String::as_str)
}

impl Reporting {
    /// How often an open TCP connection reports its bytes so far.
    pub fn tcp_reporting_interval(&self) -> std::time::Duration {
        self.config.1.metrics.tcp_reporting_interval
    }

    /// Builds the shapes for `telemetry`, with `node` resolved against the environment.
    pub fn new(node: &Node, telemetry: &Telemetry) -> Reporting {
        let local_node = LocalNode::from_env(node);
        Reporting::with_node(local_node, node, telemetry)
    }

    /// As [`Reporting::new`] with an already-resolved local node.
    pub fn with_node(local_node: LocalNode, node: &Node, telemetry: &Telemetry) -> Reporting {
        let w = &local_node.workload;
        let local = LocalLabels {
            workload: or_unknown(&w.workload),
            namespace: or_unknown(&w.namespace),
            app: or_unknown(&w.app),
            version: or_unknown(&w.version),
            canonical_service: or_unknown(&w.canonical_service),
            canonical_revision: if w.canonical_revision.is_empty() {
                "latest".into()
            } else {
                w.canonical_revision.clone()
            },
            cluster: or_unknown(&w.cluster),
        };
        let exchange = telemetry
            .metrics
            .metadata_exchange
            .then(|| {
                Some(ExchangeHeaders {
                    id: HeaderValue::from_str(&local_node.id).ok()?,
                    metadata: HeaderValue::from_str(&exchange::encode(w)).ok()?,
                })
            })
            .flatten();
        let groups = [
            groups(telemetry, Reporter::Source, false),
            groups(telemetry, Reporter::Source, true),
            groups(telemetry, Reporter::Destination, false),
            groups(telemetry, Reporter::Destination, true),
        ];
        Reporting {
            node: local_node,
            local,
            exchange,
            peers: PeerCache::default(),
            groups,
            config: (node.clone(), telemetry.clone()),
        }
    }

    /// This sidecar.
    pub fn node(&self) -> &LocalNode {
        &self.node
    }

    /// The exchange headers to send (`None`: the exchange is off).
    pub fn exchange(&self) -> Option<&ExchangeHeaders> {
        self.exchange.as_ref()
    }

    /// Records a finished request.
    pub fn record_http(&self, r: &HttpReport<'_>) {
        let groups = &self.groups[r.reporter.index() * 2];
        if groups.is_empty() {
            return;
        }
        let mut std = self.std_labels(r.reporter, r.peer, r.peer_principal, r.local_principal);
        let host = (!r.host.is_empty()).then_some(r.host);
        let (service, service_name) = match r.reporter {
            Reporter::Destination => (
                host.unwrap_or(&self.local.canonical_service),
                host.unwrap_or(&self.local.canonical_service),
            ),
            Reporter::Source => (host.unwrap_or(UNKNOWN), host.unwrap_or(UNKNOWN)),
        };
        std[14] = service;
        std[15] = service_name;
        if let Some(svc) = r.service {
            std[14] = &svc.host;
            std[15] = svc.name();
            if let Some(ns) = svc.namespace() {
                std[16] = ns;
            }
        }
        std[20] = if r.grpc { "grpc" } else { "http" };
        std[at::RESPONSE_CODE] = code_str(r.code);
        std[at::GRPC_RESPONSE_STATUS] = match (r.grpc, r.grpc_status) {
            (true, Some(s)) => code_str(s),
            _ => "",
        };
        std[23] = r.flags;
        let amounts = Amounts {
            requests: 1,
            duration_ms: r.duration_ms,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            ..Amounts::default()
        };
        for g in groups {
            g.record(&std, &amounts);
        }
    }

    /// Records a TCP connection: `opened` when it is established, then `closed` with the bytes
    /// moved (both on a connection that failed before it was established).
    pub fn record_tcp(
        &self,
        r: &TcpReport<'_>,
        opened: bool,
        closed: bool,
        sent: u64,
        received: u64,
    ) {
        let groups = &self.groups[r.reporter.index() * 2 + 1];
        if groups.is_empty() {
            return;
        }
        let mut std = self.std_labels(r.reporter, None, r.peer_principal, r.local_principal);
        std[14] = match r.reporter {
            Reporter::Destination => &self.local.canonical_service,
            Reporter::Source => UNKNOWN,
        };
        std[15] = std[14];
        std[20] = "tcp";
        std[23] = r.flags;
        let amounts = Amounts {
            tcp_opened: u64::from(opened),
            tcp_closed: u64::from(closed),
            tcp_sent: sent,
            tcp_received: received,
            ..Amounts::default()
        };
        for g in groups {
            g.record(&std, &amounts);
        }
    }

    /// The workload and security labels, as Istio's stats filter fills them per reporter.
    fn std_labels<'a>(
        &'a self,
        reporter: Reporter,
        peer: Option<&'a Workload>,
        peer_principal: Option<&'a str>,
        local_principal: Option<&'a str>,
    ) -> [&'a str; 25] {
        let l = &self.local;
        let p = |f: fn(&Workload) -> &Arc<str>| -> &'a str {
            peer.map(f).filter(|v| !v.is_empty()).map_or(UNKNOWN, |v| v)
        };
        let peer_namespace = peer_principal
            .and_then(spiffe_namespace)
            .unwrap_or_else(|| p(|w| &w.namespace));
        let peer_revision = peer
            .map(|w| &w.canonical_revision)
            .filter(|v| !v.is_empty())
            .map_or("latest", |v| v);
        let mut s = [UNKNOWN; 25];
        s[at::REPORTER] = reporter.label();
        match reporter {
            Reporter::Destination => {
                s[1] = p(|w| &w.workload);
                s[2] = peer_namespace;
                s[3] = peer_principal.unwrap_or(UNKNOWN);
                s[4] = p(|w| &w.app);
                s[5] = p(|w| &w.version);
                s[6] = p(|w| &w.canonical_service);
                s[7] = peer_revision;
                s[8] = p(|w| &w.cluster);
                s[9] = &l.workload;
                s[10] = &l.namespace;
                s[11] = local_principal.unwrap_or(UNKNOWN);
                s[12] = &l.app;
                s[13] = &l.version;
                s[16] = &l.namespace;
                s[17] = &l.canonical_service;
                s[18] = &l.canonical_revision;
                s[19] = &l.cluster;
                s[24] = if peer_principal.is_some() && local_principal.is_some() {
                    "mutual_tls"
                } else {
                    "none"
                };
            }
            Reporter::Source => {
                s[1] = &l.workload;
                s[2] = &l.namespace;
                s[3] = local_principal.unwrap_or(UNKNOWN);
                s[4] = &l.app;
                s[5] = &l.version;
                s[6] = &l.canonical_service;
                s[7] = &l.canonical_revision;
                s[8] = &l.cluster;
                s[9] = p(|w| &w.workload);
                s[10] = peer_namespace;
                s[11] = peer_principal.unwrap_or(UNKNOWN);
                s[12] = p(|w| &w.app);
                s[13] = p(|w| &w.version);
                s[16] = peer_namespace;
                s[17] = p(|w| &w.canonical_service);
                s[18] = peer_revision;
                s[19] = p(|w| &w.cluster);
                // Istio: the client side cannot know the server's policy.
                s[24] = UNKNOWN;
            }
        }
        s
    }

    fn encode_family(&self, family: Family, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        // Described only once it has a series (as Envoy shows a stat once it exists).
        let present = self.groups.iter().enumerate().any(|(i, groups)| {
            family.http() == (i % 2 == 0)
                && groups
                    .iter()
                    .any(|g| g.families.contains(&family) && !g.series.read().is_empty())
        });
        if !present {
            return Ok(());
        }
        let metric_type = if family.histogram() {
            MetricType::Histogram
        } else {
            MetricType::Counter
        };
        let mut metric_encoder =
            encoder.encode_descriptor(family.name(), family.help(), None, metric_type)?;
        for (i, groups) in self.groups.iter().enumerate() {
            if family.http() != (i % 2 == 0) {
                continue;
            }
            for g in groups.iter().filter(|g| g.families.contains(&family)) {
                let names = &g.shape.names;
                let series: Vec<Arc<Series>> = g.series.read().values().cloned().collect();
                for s in series {
                    let labels: Vec<(&str, &str)> = names
                        .iter()
                        .zip(s.labels.iter())
                        .map(|(n, v)| (&**n, &**v))
                        .collect();
                    for (f, m) in &s.metrics {
                        if *f != family {
                            continue;
                        }
                        let e = metric_encoder.encode_family(&labels)?;
                        match m {
                            Metric::Counter(c) => c.encode(e)?,
                            Metric::Histogram(h) => h.encode(e)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The label shape of `family` for `reporter` after every matching override (`None`: the
/// family is disabled for that reporter).
fn shape(telemetry: &Telemetry, family: Family, reporter: Reporter) -> Option<Shape> {
    let mut labels: Vec<(Arc<str>, Source)> = ISTIO_LABELS
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            family.http() || (*i != at::RESPONSE_CODE && *i != at::GRPC_RESPONSE_STATUS)
        })
        .map(|(i, n)| (Arc::from(*n), Source::Std(i)))
        .collect();
    let mut disabled = false;
    for o in &telemetry.metrics.overrides {
        let mode_matches = match o.matcher.mode {
            WorkloadMode::ClientAndServer => true,
            WorkloadMode::Client => reporter == Reporter::Source,
            WorkloadMode::Server => reporter == Reporter::Destination,
        };
        if !mode_matches || !family.selected_by(o.matcher.metric) {
            continue;
        }
        disabled |= o.disabled;
        for (name, tag) in &o.tag_overrides {
            let pos = labels.iter().position(|(n, _)| **n == **name);
            match (tag.operation, pos) {
                (TagOperation::Remove, Some(p)) => {
                    labels.remove(p);
                }
                (TagOperation::Remove, None) => {}
                (TagOperation::Upsert, _) => {
                    let value = literal(tag.value.as_deref().unwrap_or(""));
                    match pos {
                        Some(p) => labels[p].1 = Source::Fixed(value),
                        None => labels.push((name.as_str().into(), Source::Fixed(value))),
                    }
                }
            }
        }
    }
    if !telemetry.metrics.enabled || disabled {
        return None;
    }
    let (names, sources) = labels.into_iter().unzip();
    Some(Shape { names, sources })
}

/// A tag override's value: a quoted CEL string literal is unquoted; anything else is taken
/// as it is.
fn literal(v: &str) -> Arc<str> {
    let unquoted = ['\'', '"'].iter().find_map(|q| {
        v.strip_prefix(*q)
            .and_then(|r| r.strip_suffix(*q))
            .filter(|_| v.len() >= 2)
    });
    unquoted.unwrap_or(v).into()
}

/// The groups of HTTP (`tcp` false) or TCP families for `reporter`: families with the same
/// shape share series.
fn groups(telemetry: &Telemetry, reporter: Reporter, tcp: bool) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for family in FAMILIES.into_iter().filter(|f| f.http() != tcp) {
        let Some(shape) = shape(telemetry, family, reporter) else {
            continue;
        };
        match out.iter_mut().find(|g| g.shape == shape) {
            Some(g) => g.families.push(family),
            None => out.push(Group {
                families: vec![family],
                shape,
                series: RwLock::new(SeriesMap::new()),
                last: arc_swap::ArcSwapOption::empty(),
            }),
        }
    }
    out
}

/// The process-wide Istio families: the live generation's [`Reporting`], encoded at scrape.
#[derive(Debug, Default)]
pub struct IstioFamilies {
    current: ArcSwapOption<Reporting>,
}

impl IstioFamilies {
    /// The reporting for `node` and `telemetry`: the live one when they are unchanged (its
    /// series carry over), else a new one, which becomes the one scraped.
    pub fn reporting(&self, node: &Node, telemetry: &Telemetry) -> Arc<Reporting> {
        if let Some(r) = self.current.load_full()
            && r.config.0 == *node
            && r.config.1 == *telemetry
        {
            return r;
        }
        let r = Arc::new(Reporting::new(node, telemetry));
        self.current.store(Some(r.clone()));
        r
    }

    /// Makes `r` the reporting scraped (tests and benchmarks build their own).
    pub fn publish(&self, r: Arc<Reporting>) {
        self.current.store(Some(r));
    }
}

/// Encodes the Istio families at every scrape.
#[derive(Debug)]
pub struct IstioCollector(pub Arc<IstioFamilies>);

impl Collector for IstioCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(r) = self.0.current.load_full() else {
            return Ok(());
        };
        for family in FAMILIES {
            r.encode_family(family, &mut encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
