//! An HTTP listener's share of a generation: its route table, the chain that runs before
//! routing, and each route's chain and metric handles — compiled from configuration once.

use std::sync::Arc;

use weft_config::Config;
use weft_config::schema;
use weft_extensions::{PluginContext, PluginError, PluginHandle};
use weft_observe::Metrics;
use weft_observe::metrics::{ListenerMetrics, RouteMetrics};
use weft_routing::{Action, RouteTable};
use weft_upstream::Cluster;
use weft_upstream::clock::now_ms;

use crate::chain::{Chain, Step};
use crate::forward::ForwardPhase;
use crate::forward::mirror::Mirror;
use crate::forward::retry::RetryConfig;
use crate::phases::direct::DirectResponse;
use crate::phases::fault::{FaultConfig, FaultPhase};
use crate::phases::header_mutation::{RequestHeaders, ResponseHeaders};
use crate::phases::peer_authz::PeerAuthz;
use crate::phases::rate_limit::{RateLimitPhase, TokenBucket, carry_over};
use crate::phases::redirect::Redirect;
use crate::phases::wasm::WasmPhase;
use crate::settings::ListenerSettings;

/// Why an HTTP listener could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A route table or matcher failed to build.
    #[error(transparent)]
    Routing(#[from] weft_routing::RoutingError),
    /// A reference that validation should have caught.
    #[error("{0}")]
    Invalid(String),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// Where a connection finds the listener configuration of the live generation; the
/// transport's listener slot implements it. Each request reads it once, at its start.
pub trait ListenerSource: Send + Sync + 'static {
    /// The listener's name.
    fn name(&self) -> &Arc<str>;
    /// The listener's HTTP configuration now (`None`: the listener is no longer HTTP).
    fn http(&self) -> Option<Arc<HttpListener>>;
    /// The listener's metrics now.
    fn metrics(&self) -> Arc<ListenerMetrics>;
}

/// An HTTP listener's routes, chains and the clusters they reach.
#[derive(Debug)]
pub struct HttpListener {
    /// Name, configuration, clusters, metric handles.
    pub settings: ListenerSettings,
    /// Route table.
    pub routes: RouteTable,
    /// Phases that run before routing (listener rate limit, peer authorization).
    pub chain: Chain,
    /// Per-route state, indexed by route id.
    pub route_state: Vec<RouteState>,
    /// The listener-wide token bucket (carried over by the next generation).
    pub rate_limit: Option<Arc<TokenBucket>>,
}

/// A route's compiled state.
#[derive(Debug)]
pub struct RouteState {
    /// Route name.
    pub name: Arc<str>,
    /// Metric handles.
    pub metrics: Arc<RouteMetrics>,
    /// The phases after routing, ending in the terminal one.
    pub chain: Chain,
    /// The effective proxy-wasm chain (also inside `chain`; listed for plugin bookkeeping).
    pub plugins: Vec<Arc<PluginHandle>>,
    /// The route's token bucket (carried over by the next generation).
    pub rate_limit: Option<Arc<TokenBucket>>,
    /// The span name of its requests (Envoy's route `decorator`).
    pub decorator: Option<Arc<str>>,
}

/// What building a listener needs besides its configuration.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    /// Generation id.
    pub generation: u64,
    /// The whole configuration (plugin definitions).
    pub config: &'a Config,
    /// The generation's clusters.
    pub clusters: &'a Arc<Vec<Arc<Cluster>>>,
    /// Metric families.
    pub metrics: &'a Metrics,
    /// Plugin loading.
    pub plugins: PluginContext<'a>,
    /// This listener in the previous generation (token buckets carry over).
    pub previous: Option<&'a HttpListener>,
}

impl HttpListener {
    /// Compiles listener `l` (at field path `path`); `tls` says whether it terminates TLS.
    pub async fn build(
        path: &str,
        l: &schema::Listener,
        tls: bool,
        ctx: BuildContext<'_>,
    ) -> Result<HttpListener, BuildError> {
        let metrics = ctx.metrics;
        let routes = RouteTable::build(path, l, &ctx.config.clusters)?;
        let route_configs: Vec<(String, &schema::Route)> = l
            .virtual_hosts
            .iter()
            .enumerate()
            .flat_map(|(v, vh)| {
                vh.routes
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| (format!("{path}.virtual_hosts[{v}].routes[{i}]"), r))
            })
            .collect();
        let mut route_state = Vec::with_capacity(routes.route_count());
        for (r, (rpath, rc)) in routes.routes().zip(route_configs) {
            let plugins = ctx
                .plugins
                .chain(ctx.config, &l.plugins, &rc.plugins)
                .await?;
            let previous_bucket = ctx.previous.and_then(|p| {
                p.route_state
                    .iter()
                    .find(|s| s.name == r.name)
                    .and_then(|s| s.rate_limit.clone())
            });
            let rate_limit = rc
                .local_rate_limit
                .as_ref()
                .map(|rl| carry_over(previous_bucket.as_ref(), rl, now_ms()));
            let resilience = metrics.route_resilience(&l.name, &r.name);
            let mut steps = Vec::new();
            if let Some(b) = &rate_limit {
                steps.push(Step::RateLimit(RateLimitPhase::route(
                    b.clone(),
                    resilience.rate_limited.clone(),
                )));
            }
            if !r.request_headers.is_empty() {
                steps.push(Step::RequestHeaders(RequestHeaders(
                    r.request_headers.clone(),
                )));
            }
            if !plugins.is_empty() {
                steps.push(Step::Wasm(WasmPhase::new(plugins.clone())));
            }
            if !r.response_headers.is_empty() {
                steps.push(Step::ResponseHeaders(ResponseHeaders(
                    r.response_headers.clone(),
                )));
            }
            if let Some(f) = &rc.fault {
                let fault = FaultConfig::new(&format!("{rpath}.fault"), f)?;
                steps.push(Step::Fault(FaultPhase::new(
                    fault,
                    resilience.delays.clone(),
                    resilience.aborts.clone(),
                )));
            }
            steps.push(match &r.action {
                Action::Direct { .. } => Step::Direct(DirectResponse),
                Action::Redirect(_) => Step::Redirect(Redirect),
                Action::Forward(_) => Step::Forward(forward_phase(&rpath, rc, ctx.clusters)?),
            });
            route_state.push(RouteState {
                name: r.name.clone(),
                metrics: metrics.route(&l.name, &r.name),
                chain: Chain::new(steps),
                plugins,
                rate_limit,
                decorator: rc.decorator.as_ref().map(|d| d.operation.as_str().into()),
            });
        }

        let rate_limit = l.local_rate_limit.as_ref().map(|rl| {
            carry_over(
                ctx.previous.and_then(|p| p.rate_limit.as_ref()),
                rl,
                now_ms(),
            )
        });
        let mut steps = Vec::new();
        if let Some(b) = &rate_limit {
            let m = metrics.route_resilience(&l.name, "");
            steps.push(Step::RateLimit(RateLimitPhase::listener(
                b.clone(),
                m.rate_limited.clone(),
            )));
        }
        if let Some(t) = l
            .tls
            .as_ref()
            .filter(|t| t.mode != schema::TlsMode::Disable)
        {
            let rules = crate::security::authorization(t);
            if !rules.is_empty() {
                steps.push(Step::PeerAuthz(PeerAuthz::new(
                    rules,
                    metrics.tls.denied_counter(&l.name),
                )));
            }
        }
        Ok(HttpListener {
            settings: ListenerSettings {
                name: l.name.as_str().into(),
                generation: ctx.generation,
                config: l.clone(),
                tls,
                clusters: ctx.clusters.clone(),
                metrics: metrics.listener(&l.name),
                trace: crate::trace::TraceSettings::build(
                    ctx.config.tracing.as_ref(),
                    ctx.config.node.id.as_deref(),
                    l,
                ),
                access_log: crate::access::ListenerLog::build(l),
                istio: ctx.config.telemetry.metrics.enabled.then(|| {
                    metrics
                        .istio
                        .reporting(&ctx.config.node, &ctx.config.telemetry)
                }),
            },
            routes,
            chain: Chain::new(steps),
            route_state,
            rate_limit,
        })
    }

    /// Every plugin handle a route of this listener uses.
    pub fn plugin_handles(&self) -> impl Iterator<Item = &Arc<PluginHandle>> {
        self.route_state.iter().flat_map(|r| r.plugins.iter())
    }

    /// The chains as admin lists them, one entry per route: every phase a request of that
    /// route goes through, in order (`router` marks where routing happens), and its plugins.
    pub fn describe(&self) -> Vec<serde_json::Value> {
        let before = self.chain.names();
        self.route_state
            .iter()
            .map(|r| {
                let mut phases = before.clone();
                phases.push("router".to_owned());
                phases.extend(r.chain.names());
                serde_json::json!({
                    "listener": &*self.settings.name,
                    "route": &*r.name,
                    "phases": phases,
                    "plugins": r.plugins.iter().map(|h| h.label()).collect::<Vec<_>>(),
                })
            })
            .collect()
    }
}

/// The route's forward phase: its retry policy and mirrors.
fn forward_phase(
    path: &str,
    r: &schema::Route,
    clusters: &[Arc<Cluster>],
) -> Result<ForwardPhase, BuildError> {
    let forward = r.route.as_ref();
    let mut mirrors = Vec::new();
    for (i, m) in forward
        .map_or(&[][..], |f| &f.request_mirror_policies)
        .iter()
        .enumerate()
    {
        let cluster = clusters
            .iter()
            .find(|c| *c.name == *m.cluster)
            .cloned()
            .ok_or_else(|| {
                BuildError::Invalid(format!(
                    "{path}.route.request_mirror_policies[{i}].cluster: unknown cluster `{}`",
                    m.cluster
                ))
            })?;
        mirrors.push(Mirror {
            cluster,
            percentage: m.effective_percentage(),
        });
    }
    Ok(ForwardPhase {
        retry: forward
            .and_then(|f| f.retry_policy.as_ref())
            .map(RetryConfig::new),
        mirrors,
    })
}
