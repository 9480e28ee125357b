//! The configuration file's schema: what a user writes in YAML.
//!
//! Every struct rejects unknown fields, so a typo is an error that names the field instead of a
//! setting silently ignored. `docs/config.md` documents each field; keep the two in step.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::capture::{
    ClusterType, FilterChain, FilterChainMatch, OriginalDstOptions, OutboundTrafficPolicy, Sidecar,
    TransportProtocol,
};
pub use crate::matching::{HeaderMatch, PathMatch, QueryMatch};
pub use crate::observe::{
    Decorator, ListenerAccessLog, ListenerTracing, LogFormat, LogPreset, OtlpProtocol,
    TraceOperation, Tracing,
};
pub use crate::telemetry::{
    IstioMetric, IstioMetrics, MetricOverride, MetricSelector, Node, TagOperation, TagOverride,
    Telemetry, WorkloadMode,
};
pub use crate::tls::{
    Authorization, ClusterTls, ForwardClientCertDetails, Identity, ListenerTls, SourceRule,
    TlsMode, TlsVersion,
};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin server (`/ready`, `/metrics`, `/config_dump`, …).
    #[serde(default)]
    pub admin: Admin,
    /// Where the access log goes.
    #[serde(default)]
    pub access_log: AccessLog,
    /// Worker threads of the proxy's runtime; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    /// How the workers share the listeners (`runtime.accept`).
    #[serde(default, skip_serializing_if = "Runtime::is_default")]
    pub runtime: Runtime,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The sockets Weft accepts traffic on.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// The upstream services Weft forwards to.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// proxy-wasm plugins, attached to listeners and routes by name.
    #[serde(default)]
    pub plugins: Vec<Plugin>,
    /// The certificate agent: this sidecar's identity from a `weft ca serve` endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Native tracing: spans exported over OTLP (`docs/tracing.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// The overload manager: a process memory watermark above which Weft sheds load.
    #[serde(default)]
    pub overload: Overload,
    /// Istio's sidecar ports (15021 health, 15090 and 15020 metrics) and the capture preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Sidecar>,
    /// This workload's node metadata (Istio's), for the standard metrics' labels.
    #[serde(default)]
    pub node: Node,
    /// Istio's standard metrics: on by default, overrides as Istio's Telemetry API.
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Weft as an xDS client: the control plane and this node's identity (`xds.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<crate::xds::Xds>,
}

/// How the proxy's workers run (fixed at start: a reload that changes it is logged and
/// takes effect at the next restart).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// How accepted connections reach the workers.
    #[serde(default)]
    pub accept: AcceptMode,
}

impl Runtime {
    fn is_default(&self) -> bool {
        *self == Runtime::default()
    }
}

/// How accepted connections reach the workers. The default is `reuseport` on Linux (as
/// Envoy's listeners, which set `SO_REUSEPORT` by default there), `shared` elsewhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptMode {
    /// One socket per listener, accepted on one multi-threaded runtime whose workers steal
    /// each other's tasks (connections move between workers).
    #[cfg_attr(not(target_os = "linux"), default)]
    Shared,
    /// Every worker is a single-threaded runtime with its own `SO_REUSEPORT` socket per
    /// listener: the kernel spreads new connections over the workers, and a connection stays
    /// on the worker that accepted it (Linux only).
    #[cfg_attr(target_os = "linux", default)]
    Reuseport,
}

/// The overload manager (Envoy's idea, one memory watermark): while the process's resident
/// memory is above `max_rss_bytes`, listeners stop accepting, idle connections are closed and
/// new requests are answered 503 with response flag `OM`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Overload {
    /// The watermark in bytes of resident memory; 0 (the default) disables the manager.
    #[serde(default)]
    pub max_rss_bytes: u64,
    /// How often the resident memory is sampled.
    #[serde(
        default = "defaults::overload_refresh_interval",
        with = "humantime_serde"
    )]
    pub refresh_interval: Duration,
}

impl Default for Overload {
    fn default() -> Self {
        Overload {
            max_rss_bytes: 0,
            refresh_interval: defaults::overload_refresh_interval(),
        }
    }
}

/// A proxy-wasm plugin (a `.wasm` module built against the proxy-wasm ABI 0.2.x).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// Unique name; used to attach it, in metrics and in `/plugins`.
    pub name: String,
    /// Path of the `.wasm` file, relative to the configuration file. Watched: a new version is
    /// validated and swapped in without dropping a request.
    pub file: String,
    /// `plugin_root_id`.
    #[serde(default)]
    pub root_id: String,
    /// `plugin_vm_id` (shared data and queues are scoped by it); defaults to the name.
    #[serde(default)]
    pub vm_id: Option<String>,
    /// Plugin configuration (`on_configure`): a string is passed as is, anything else as JSON.
    #[serde(default)]
    pub configuration: Option<serde_json::Value>,
    /// VM configuration (`on_vm_start`), same encoding.
    #[serde(default)]
    pub vm_configuration: Option<serde_json::Value>,
    /// Environment variables the plugin sees through WASI (the host's are never exposed).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// `fail_closed`, `fail_open` or `reload` (default).
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Istio's WasmPlugin phase: `authn`, `authz`, `stats` or `unspecified` (default).
    #[serde(default)]
    pub phase: PluginPhase,
    /// Higher runs first within a phase.
    #[serde(default)]
    pub priority: i32,
    /// CPU time one callback may take.
    #[serde(default = "defaults::cpu_deadline", with = "humantime_serde")]
    pub cpu_deadline: Duration,
    /// Linear memory cap per instance, in bytes.
    #[serde(default = "defaults::plugin_memory")]
    pub max_memory_bytes: usize,
    /// Most body bytes buffered while the plugin pauses a stream.
    #[serde(default = "defaults::plugin_body")]
    pub max_body_bytes: usize,
    /// Most bytes one WASI `random_get` may ask for (more: `EINVAL`).
    #[serde(default = "defaults::plugin_random")]
    pub max_random_bytes: usize,
    /// Longest log line (`proxy_log`, stdout/stderr); longer ones are cut with a marker.
    #[serde(default = "defaults::plugin_log_line")]
    pub max_log_line_bytes: usize,
    /// Most bytes one WASI `fd_write` to stdout/stderr captures; the rest is dropped.
    #[serde(default = "defaults::plugin_fd_write")]
    pub max_fd_write_bytes: usize,
    /// Log lines per second (one-second burst); excess lines are dropped and counted.
    #[serde(default = "defaults::plugin_log_rate")]
    pub log_lines_per_second: u32,
    /// Largest shared-queue item (more: `BadArgument`).
    #[serde(default = "defaults::plugin_queue_item")]
    pub max_queue_item_bytes: usize,
    /// Most bytes queued in one shared queue (the oldest items are dropped).
    #[serde(default = "defaults::plugin_queue_bytes")]
    pub max_queue_bytes: usize,
    /// Most shared-data keys per `vm_id` (more: `BadArgument`).
    #[serde(default = "defaults::plugin_shared_keys")]
    pub max_shared_data_keys: usize,
    /// Most shared-data bytes (keys and values) per `vm_id` (more: `BadArgument`).
    #[serde(default = "defaults::plugin_shared_bytes")]
    pub max_shared_data_bytes: usize,
    /// Most HTTP and gRPC callouts of the plugin in flight at once (more: `InternalFailure`).
    #[serde(default = "defaults::plugin_callouts")]
    pub max_callouts_in_flight: usize,
    /// Instances in the plugin's pool; 0 (the default): one per worker thread.
    #[serde(default = "defaults::plugin_instances")]
    pub instances: usize,
    /// Log level of the plugin: `trace`, `debug`, `info`, `warn`, `error`, `critical`.
    #[serde(default = "defaults::plugin_log_level")]
    pub log_level: String,
    /// `reload` policy: first backoff after a failure (doubles per consecutive failure).
    #[serde(default = "defaults::plugin_backoff", with = "humantime_serde")]
    pub reload_backoff: Duration,
    /// `reload` policy: failures within `failure_window` that quarantine the plugin.
    #[serde(default = "defaults::plugin_max_failures")]
    pub max_failures: u32,
    /// `reload` policy: the failure-counting window.
    #[serde(default = "defaults::plugin_failure_window", with = "humantime_serde")]
    pub failure_window: Duration,
}

/// What happens when a plugin traps, runs past its deadline or out of memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// The request gets 503; once no instance is left, every request does until reloaded.
    FailClosed,
    /// The request (and later ones while broken) skip the plugin.
    FailOpen,
    /// 503 for the request; the instance is replaced with backoff; quarantined after too many.
    #[default]
    Reload,
}

/// Plugin ordering phase, as Istio's WasmPlugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginPhase {
    /// Authentication.
    Authn,
    /// Authorization.
    Authz,
    /// Telemetry.
    Stats,
    /// Last.
    #[default]
    Unspecified,
}

/// A plugin attached to a listener or route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// The plugin's name (from `plugins`).
    pub name: String,
    /// Replaces the plugin's `configuration` here (a separate root context gets it).
    #[serde(default)]
    pub configuration: Option<serde_json::Value>,
    /// On a route: do not run this listener-level plugin here.
    #[serde(default)]
    pub disabled: bool,
}

/// The admin server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin server; Envoy's and Istio's port by default.
    #[serde(default = "defaults::admin_address")]
    pub address: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: defaults::admin_address(),
        }
    }
}

/// The access log: one JSON object per request or TCP connection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, `stderr`, `off`, or a file path (appended to).
    #[serde(default = "defaults::access_log_path")]
    pub path: String,
    /// A named format: `json` (default), `envoy` or `istio` (their default text lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogPreset>,
    /// Envoy command operators, as Envoy's `text_format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format: Option<String>,
    /// Envoy command operators as JSON values, as Envoy's `json_format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            path: defaults::access_log_path(),
            format: None,
            text_format: None,
            json_format: None,
        }
    }
}

impl AccessLog {
    /// The format fields.
    pub fn log_format(&self) -> LogFormat {
        LogFormat {
            format: self.format,
            text_format: self.text_format.clone(),
            json_format: self.json_format.clone(),
        }
    }
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (h2c prior knowledge), routed by virtual hosts.
    Http,
    /// Opaque bytes proxied both ways to one cluster.
    Tcp,
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// `ip:port` to bind.
    pub address: SocketAddr,
    /// `http` (default) or `tcp`.
    #[serde(default = "defaults::protocol")]
    pub protocol: ListenerProtocol,
    /// HTTP settings; only for `protocol: http`.
    #[serde(default)]
    pub http: HttpSettings,
    /// Virtual hosts; only for `protocol: http`.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// TCP proxy settings; required for `protocol: tcp`.
    #[serde(default)]
    pub tcp: Option<TcpProxy>,
    /// Plugins run for every request of this listener (HTTP) or every connection (TCP).
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
    /// TLS / mTLS (HTTP listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// What happens to `x-forwarded-client-cert` (Envoy's names).
    #[serde(default)]
    pub forward_client_cert_details: ForwardClientCertDetails,
    /// A token bucket for every request of this listener (HTTP); 429 when empty.
    #[serde(default)]
    pub local_rate_limit: Option<crate::resilience::LocalRateLimit>,
    /// Tracing on this listener (when `tracing` is configured): operation, or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<ListenerTracing>,
    /// This listener's access-log format (or `disabled`), overriding `access_log`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<ListenerAccessLog>,
    /// Most connections open at once on this listener; more are closed as soon as they are
    /// accepted and counted (`weft_downstream_cx_overflow`). Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most bytes buffered for one downstream connection in each direction (Envoy's
    /// `per_connection_buffer_limit_bytes`); beyond it Weft stops reading from the sender.
    #[serde(default = "defaults::per_connection_buffer_limit_bytes")]
    pub per_connection_buffer_limit_bytes: usize,
    /// A capture listener: reads each connection's original destination (`SO_ORIGINAL_DST`,
    /// after an iptables REDIRECT) and hands it to the matching `filter_chains` entry (Envoy's
    /// `original_dst` listener filter).
    #[serde(default)]
    pub original_dst: bool,
    /// `false`: no socket is bound; the listener is reached through a capture listener's
    /// filter chain (Envoy's `bind_to_port`).
    #[serde(default = "defaults::yes")]
    pub bind_to_port: bool,
    /// Capture listener: filter chains, the most specific match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_chains: Vec<FilterChain>,
    /// Capture listener: a connection no chain matches goes to `passthrough_cluster`
    /// (`allow_any`) or is closed (`registry_only`).
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Capture listener: the cluster unmatched connections go to under `allow_any` (an
    /// `original_dst` cluster; a built-in `PassthroughCluster` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough_cluster: Option<String>,
    /// Capture listener: how long to wait for the first bytes when a chain matches on the
    /// protocol; then the connection is opaque TCP.
    #[serde(
        default = "crate::capture::defaults::protocol_detection_timeout",
        with = "humantime_serde"
    )]
    pub protocol_detection_timeout: Duration,
    /// Envoy's listener `traffic_direction`: `inbound` (Istio's `reporter="destination"`),
    /// `outbound` (`reporter="source"`) or `unspecified` (default: reported as `source`, as
    /// Istio's stats filter does, with no metadata exchange: a mesh edge).
    #[serde(default)]
    pub traffic_direction: TrafficDirection,
}

impl Listener {
    /// A listener with every setting at its default (no routes, no target).
    pub fn named(name: &str, address: SocketAddr) -> Listener {
        Listener {
            name: name.to_owned(),
            address,
            protocol: defaults::protocol(),
            http: HttpSettings::default(),
            virtual_hosts: Vec::new(),
            tcp: None,
            plugins: Vec::new(),
            tls: None,
            forward_client_cert_details: ForwardClientCertDetails::default(),
            local_rate_limit: None,
            max_connections: None,
            per_connection_buffer_limit_bytes: defaults::per_connection_buffer_limit_bytes(),
            original_dst: false,
            bind_to_port: true,
            filter_chains: Vec::new(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            passthrough_cluster: None,
            protocol_detection_timeout: crate::capture::defaults::protocol_detection_timeout(),
            traffic_direction: TrafficDirection::default(),
            tracing: None,
            access_log: None,
        }
    }
}

/// Envoy's `TrafficDirection` of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficDirection {
    /// Neither: an edge (gateway) listener.
    #[default]
    Unspecified,
    /// Traffic into this workload.
    Inbound,
    /// Traffic from this workload to others.
    Outbound,
}

/// Limits and timeouts of the downstream HTTP side of a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest request header section (request line and headers), in bytes; larger gets 431.
    #[serde(default = "defaults::max_request_headers_bytes")]
    pub max_request_headers_bytes: usize,
    /// Most request header lines; more gets 431.
    #[serde(default = "defaults::max_request_headers")]
    pub max_request_headers: usize,
    /// Time allowed from the first byte of a request head to its end; slower gets 408.
    #[serde(default = "defaults::request_header_timeout", with = "humantime_serde")]
    pub request_header_timeout: Duration,
    /// A downstream connection with no request in flight for this long is closed.
    #[serde(
        default = "defaults::downstream_idle_timeout",
        with = "humantime_serde"
    )]
    pub idle_timeout: Duration,
    /// Add `x-request-id` when the request has none.
    #[serde(default = "defaults::yes")]
    pub generate_request_id: bool,
    /// A request with no bytes moving either way for this long is ended: 408 while the
    /// request is incomplete, else 504 with flag `SI` (Envoy's `stream_idle_timeout`).
    /// Zero disables it.
    #[serde(default = "defaults::stream_idle_timeout", with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// Time allowed for the whole request (headers and body) to arrive; slower gets 408
    /// (Envoy's `request_timeout`). Zero (the default) disables it.
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Append the downstream peer's address to `x-forwarded-for` (Envoy's
    /// `use_remote_address`); `false` leaves the header as the client sent it (Istio's
    /// sidecars).
    #[serde(default = "defaults::yes")]
    pub use_remote_address: bool,
    /// Remove `.` and `..` segments (also `%2e`-encoded) from the path before routing, as RFC
    /// 3986 §5.2.4 and Envoy's `normalize_path`; a path that climbs above the root gets 400.
    #[serde(default)]
    pub normalize_path: bool,
    /// Merge runs of `/` in the path into one before routing (Envoy's `merge_slashes`).
    #[serde(default)]
    pub merge_slashes: bool,
    /// What happens to the response's `server` header (Envoy's
    /// `server_header_transformation`).
    #[serde(default)]
    pub server_header_transformation: ServerHeaderTransformation,
    /// The `server` value written by `overwrite` / `append_if_absent` (Envoy's
    /// `server_name`, default `envoy`).
    #[serde(default = "defaults::server_name")]
    pub server_name: String,
}

/// Envoy's `server_header_transformation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerHeaderTransformation {
    /// Leave the upstream's `server` as it is, absent or not (Weft's default).
    #[default]
    PassThrough,
    /// Replace it with `server_name` (Envoy's default).
    Overwrite,
    /// Add `server_name` when the response has none.
    AppendIfAbsent,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_request_headers_bytes: defaults::max_request_headers_bytes(),
            max_request_headers: defaults::max_request_headers(),
            request_header_timeout: defaults::request_header_timeout(),
            idle_timeout: defaults::downstream_idle_timeout(),
            generate_request_id: true,
            stream_idle_timeout: defaults::stream_idle_timeout(),
            request_timeout: Duration::ZERO,
            use_remote_address: true,
            normalize_path: false,
            merge_slashes: false,
            server_header_transformation: ServerHeaderTransformation::PassThrough,
            server_name: defaults::server_name(),
        }
    }
}

/// A TCP listener's target.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxy {
    /// The cluster connections are proxied to.
    pub cluster: String,
    /// A connection with no bytes either way for this long is closed.
    #[serde(default = "defaults::tcp_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

/// A set of domains sharing a route table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Unique name within the listener.
    pub name: String,
    /// Host names served: exact (`api.example.com`), suffix wildcard (`*.example.com`) or `*`.
    /// A port in the request's Host is ignored when matching.
    pub domains: Vec<String>,
    /// Routes, tried in order; the first that matches wins.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One route: a match and what to do with the requests it matches.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name used in metrics and logs; defaults to `<virtual host>/<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Which requests this route takes; an empty match takes every request.
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    /// Forward to a cluster. Exactly one of `route`, `redirect`, `direct_response`.
    #[serde(default)]
    pub route: Option<ForwardAction>,
    /// Answer with a redirect.
    #[serde(default)]
    pub redirect: Option<RedirectAction>,
    /// Answer directly, without an upstream.
    #[serde(default)]
    pub direct_response: Option<DirectResponseAction>,
    /// Changes to the request's headers before it goes upstream.
    #[serde(default)]
    pub request_headers: HeaderMutations,
    /// Changes to the response's headers before it goes downstream.
    #[serde(default)]
    pub response_headers: HeaderMutations,
    /// Plugins run for this route, besides the listener's (or `disabled: true` to drop one).
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
    /// Delays and aborts injected into a share of this route's requests.
    #[serde(default)]
    pub fault: Option<crate::resilience::Fault>,
    /// A token bucket for this route; 429 when empty.
    #[serde(default)]
    pub local_rate_limit: Option<crate::resilience::LocalRateLimit>,
    /// The span name of this route's requests, as Envoy's route `decorator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decorator: Option<Decorator>,
}

/// The conditions a request must meet; all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Path condition (the query string is not part of the path).
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query: Vec<QueryMatch>,
    /// Methods accepted (any when empty).
    #[serde(default)]
    pub methods: Vec<String>,
}

/// Forward the request upstream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAction {
    /// The cluster. Exactly one of `cluster` and `weighted_clusters`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Split traffic across clusters by weight.
    #[serde(default)]
    pub weighted_clusters: Vec<WeightedCluster>,
    /// Time allowed for the upstream response headers, counted from the moment the
    /// downstream request is complete (its whole body received), as Envoy counts it; slower
    /// gets 504 `UT`. Zero disables it.
    #[serde(default = "defaults::route_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// This route's stream idle timeout, replacing the listener's `http.stream_idle_timeout`
    /// (Envoy's route `idle_timeout`). Zero disables it.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Upgrades this route lets through (Envoy's `upgrade_configs`). `websocket` is allowed
    /// unless listed with `enabled: false`; any other type only when listed. A request with
    /// any other `Upgrade` is answered 403 (`h2c` upgrades are served as plain HTTP/1.1).
    #[serde(default)]
    pub upgrade_configs: Vec<UpgradeConfig>,
    /// Replace the matched path prefix with this (only with a `prefix` path match).
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    /// Rewrite the path with a regular expression.
    #[serde(default)]
    pub regex_rewrite: Option<RegexRewrite>,
    /// Replace the Host header (`:authority` on HTTP/2) with this.
    #[serde(default)]
    pub host_rewrite: Option<String>,
    /// How a `ring_hash` cluster hashes requests; the first policy that yields a key wins.
    #[serde(default)]
    pub hash_policy: Vec<HashPolicy>,
    /// When and how often failed requests are tried again.
    #[serde(default)]
    pub retry_policy: Option<crate::resilience::RetryPolicy>,
    /// Shadow clusters that get a copy of a share of the requests.
    #[serde(default)]
    pub request_mirror_policies: Vec<crate::resilience::MirrorPolicy>,
}

/// One upgrade type a route allows (or, with `enabled: false`, refuses).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    /// The `Upgrade` token, compared case-insensitively (`websocket`, `CONNECT-UDP`, ...).
    pub upgrade_type: String,
    /// Whether it is allowed.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
}

/// One cluster of a weighted split.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    /// The cluster.
    pub name: String,
    /// Its share relative to the others' weights (0 takes no traffic).
    pub weight: u32,
}

/// A regular-expression path rewrite.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// Pattern, applied to every match in the path.
    pub pattern: String,
    /// Replacement; `$1`/`${name}` refer to capture groups.
    pub substitution: String,
}

/// Where a ring-hash key comes from: exactly one of `header`, `cookie`, `source_ip`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    /// Hash this request header's value.
    #[serde(default)]
    pub header: Option<String>,
    /// Hash this cookie's value.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Hash the downstream source IP.
    #[serde(default)]
    pub source_ip: bool,
}

/// Answer with a redirect; unset parts keep the request's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectAction {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// New host.
    #[serde(default)]
    pub host: Option<String>,
    /// New port.
    #[serde(default)]
    pub port: Option<u16>,
    /// New path (the query string is kept unless `strip_query`).
    #[serde(default)]
    pub path: Option<String>,
    /// Replace the matched prefix.
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    /// Drop the query string.
    #[serde(default)]
    pub strip_query: bool,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default = "defaults::redirect_code")]
    pub response_code: u16,
}

/// Answer directly.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseAction {
    /// Status code, 200–599.
    pub status: u16,
    /// Body text (empty when unset).
    #[serde(default)]
    pub body: Option<String>,
}

/// Header changes: `remove` first, then `set` (replace), then `add` (append).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutations {
    /// Headers appended (existing values kept).
    #[serde(default)]
    pub add: Vec<HeaderValueOption>,
    /// Headers replaced (existing values dropped).
    #[serde(default)]
    pub set: Vec<HeaderValueOption>,
    /// Header names removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// Load-balancing policy of a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Weighted round robin (smooth).
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on active requests.
    LeastRequest,
    /// Consistent hashing on the route's `hash_policy`.
    RingHash,
}

/// The protocol spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// The downstream request's protocol: HTTP/1.1 for HTTP/1.x requests, HTTP/2 for HTTP/2
    /// ones, each over its own pool (Envoy's `use_downstream_protocol_config`, Istio's
    /// clusters for ports whose protocol is sniffed). Health checks use HTTP/1.1.
    Downstream,
}

/// An upstream service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique name.
    pub name: String,
    /// `static` (default: the endpoints listed) or `original_dst` (the connection's original
    /// destination; no endpoints).
    #[serde(default, rename = "type")]
    pub kind: ClusterType,
    /// Options of an `original_dst` cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_dst: Option<OriginalDstOptions>,
    /// Bind upstream connections to this source address (Envoy's `upstream_bind_config`):
    /// `127.0.0.6` lets an inbound sidecar deliver to its own pod IP without being captured
    /// again (the `-o lo -s 127.0.0.6` rule of `weft iptables`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<std::net::IpAddr>,
    /// Its endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// How requests are spread across endpoints.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Least-request sampling: how many endpoints to compare (default 2).
    #[serde(default = "defaults::choice_count")]
    pub choice_count: u32,
    /// Ring-hash: minimum ring size (default 1024).
    #[serde(default = "defaults::minimum_ring_size")]
    pub minimum_ring_size: usize,
    /// Deadline for a TCP connect to an endpoint.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Pooled upstream connections idle this long are closed.
    #[serde(default = "defaults::upstream_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most bytes buffered for one upstream connection in each direction (Envoy's
    /// `per_connection_buffer_limit_bytes`); beyond it Weft stops reading from the upstream.
    #[serde(default = "defaults::per_connection_buffer_limit_bytes")]
    pub per_connection_buffer_limit_bytes: usize,
    /// `http1` (default) or `http2`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How often DNS names among the endpoints are resolved again.
    #[serde(default = "defaults::dns_refresh_rate", with = "humantime_serde")]
    pub dns_refresh_rate: Duration,
    /// TLS / mTLS to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// Limits on requests and retries in flight; overflow gets 503 `UO`.
    #[serde(default)]
    pub circuit_breakers: Option<crate::resilience::CircuitBreakers>,
    /// Passive health checking (ejection of failing endpoints).
    #[serde(default)]
    pub outlier_detection: Option<crate::resilience::OutlierDetection>,
    /// Active health checks (at most one).
    #[serde(default)]
    pub health_checks: Vec<crate::resilience::HealthCheck>,
    /// Retries in flight as a share of requests in flight (replaces `max_retries`).
    #[serde(default)]
    pub retry_budget: Option<crate::resilience::RetryBudget>,
    /// When fewer than this percentage of endpoints are available, balance over all (0 off).
    #[serde(default = "crate::resilience::defaults::panic_threshold")]
    pub panic_threshold: f64,
    /// The service this cluster reaches (Istio's cluster metadata `istio.services`): the
    /// `destination_service*` labels of Istio's metrics for requests sent to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ClusterService>,
}

/// A cluster's service, as Istio's cluster metadata names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterService {
    /// The service's host, e.g. `reviews.prod.svc.cluster.local` (`destination_service`).
    pub host: String,
    /// Its short name (`destination_service_name`; default: the host's first label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its namespace (`destination_service_namespace`; default: the host's second label when
    /// the host is a Kubernetes service name `<name>.<namespace>.svc…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl ClusterService {
    /// The short name.
    pub fn name(&self) -> &str {
        match &self.name {
            Some(n) => n,
            None => self.host.split('.').next().unwrap_or(&self.host),
        }
    }

    /// The namespace, when known.
    pub fn namespace(&self) -> Option<&str> {
        if let Some(ns) = &self.namespace {
            return Some(ns);
        }
        let mut labels = self.host.split('.');
        let (_, ns, svc) = (labels.next(), labels.next(), labels.next());
        ns.filter(|_| svc == Some("svc"))
    }
}

impl Cluster {
    /// A static cluster with no endpoint and every setting at its default.
    pub fn named(name: &str) -> Cluster {
        Cluster {
            name: name.to_owned(),
            kind: ClusterType::Static,
            original_dst: None,
            source_address: None,
            endpoints: Vec::new(),
            lb_policy: LbPolicy::default(),
            choice_count: defaults::choice_count(),
            minimum_ring_size: defaults::minimum_ring_size(),
            connect_timeout: defaults::connect_timeout(),
            idle_timeout: defaults::upstream_idle_timeout(),
            protocol: UpstreamProtocol::default(),
            dns_refresh_rate: defaults::dns_refresh_rate(),
            tls: None,
            circuit_breakers: None,
            outlier_detection: None,
            health_checks: Vec::new(),
            retry_budget: None,
            panic_threshold: crate::resilience::defaults::panic_threshold(),
            per_connection_buffer_limit_bytes: defaults::per_connection_buffer_limit_bytes(),
            service: None,
        }
    }
}

/// One endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port`, `[ipv6]:port` or `dns-name:port`.
    pub address: String,
    /// Relative weight, at least 1.
    #[serde(default = "defaults::weight")]
    pub weight: u32,
    /// Priority level (0, the default, is the highest): traffic goes to the highest level
    /// while it is healthy enough and spills to the next as its endpoints fail, as Envoy's
    /// priority levels (Istio's locality failover).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
    /// Labels the cluster's `tls.endpoint_match` is checked against (Envoy's
    /// `envoy.transport_socket_match` endpoint metadata, e.g. Istio's `tlsMode: istio`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Default values, one function each so serde and the docs agree.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use super::ListenerProtocol;

    /// `127.0.0.1:15000`, Envoy's admin port.
    pub fn admin_address() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 15000))
    }
    /// `stdout`.
    pub fn access_log_path() -> String {
        "stdout".to_owned()
    }
    /// 15 s.
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(15)
    }
    /// `http`.
    pub fn protocol() -> ListenerProtocol {
        ListenerProtocol::Http
    }
    /// 60 KiB, Envoy's default.
    pub fn max_request_headers_bytes() -> usize {
        60 * 1024
    }
    /// 100, Envoy's default.
    pub fn max_request_headers() -> usize {
        100
    }
    /// 10 s.
    pub fn request_header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    /// 1 h, Envoy's default idle timeout.
    pub fn downstream_idle_timeout() -> Duration {
        Duration::from_secs(3600)
    }
    /// 1 h.
    pub fn tcp_idle_timeout() -> Duration {
        Duration::from_secs(3600)
    }
    /// 5 min, Envoy's default `stream_idle_timeout`.
    pub fn stream_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    /// 1 MiB, Envoy's default `per_connection_buffer_limit_bytes`.
    pub fn per_connection_buffer_limit_bytes() -> usize {
        1024 * 1024
    }
    /// 1 s, Envoy's overload manager `refresh_interval`.
    pub fn overload_refresh_interval() -> Duration {
        Duration::from_secs(1)
    }
    /// 15 s, Envoy's default route timeout.
    pub fn route_timeout() -> Duration {
        Duration::from_secs(15)
    }
    /// 301.
    pub fn redirect_code() -> u16 {
        301
    }
    /// 2.
    pub fn choice_count() -> u32 {
        2
    }
    /// 1024.
    pub fn minimum_ring_size() -> usize {
        1024
    }
    /// 5 s.
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    /// 60 s.
    pub fn upstream_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    /// 5 s, Envoy's default.
    pub fn dns_refresh_rate() -> Duration {
        Duration::from_secs(5)
    }
    /// 1.
    pub fn weight() -> u32 {
        1
    }
    /// true.
    /// `envoy`, Envoy's `server_name`.
    pub fn server_name() -> String {
        "envoy".to_owned()
    }

    pub fn yes() -> bool {
        true
    }
    /// 10 ms.
    pub fn cpu_deadline() -> Duration {
        Duration::from_millis(10)
    }
    /// 64 MiB.
    pub fn plugin_memory() -> usize {
        64 * 1024 * 1024
    }
    /// 1 MiB.
    pub fn plugin_body() -> usize {
        1024 * 1024
    }
    /// 64 KiB.
    pub fn plugin_random() -> usize {
        64 * 1024
    }
    /// 4 KiB.
    pub fn plugin_log_line() -> usize {
        4096
    }
    /// 64 KiB.
    pub fn plugin_fd_write() -> usize {
        64 * 1024
    }
    /// 100 lines per second.
    pub fn plugin_log_rate() -> u32 {
        100
    }
    /// 64 KiB.
    pub fn plugin_queue_item() -> usize {
        64 * 1024
    }
    /// 4 MiB.
    pub fn plugin_queue_bytes() -> usize {
        4 * 1024 * 1024
    }
    /// 4096.
    pub fn plugin_shared_keys() -> usize {
        4096
    }
    /// 1024.
    pub fn plugin_callouts() -> usize {
        1024
    }
    /// 16 MiB.
    pub fn plugin_shared_bytes() -> usize {
        16 * 1024 * 1024
    }
    /// 0: one instance per worker thread.
    pub fn plugin_instances() -> usize {
        0
    }
    /// `info`.
    pub fn plugin_log_level() -> String {
        "info".to_owned()
    }
    /// 100 ms.
    pub fn plugin_backoff() -> Duration {
        Duration::from_millis(100)
    }
    /// 5.
    pub fn plugin_max_failures() -> u32 {
        5
    }
    /// 60 s.
    pub fn plugin_failure_window() -> Duration {
        Duration::from_secs(60)
    }
}
