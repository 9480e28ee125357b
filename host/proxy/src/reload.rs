//! The reload actor: the one path by which configuration changes.
//!
//! Every source — the file watcher, SIGHUP, `POST /reload`, plugin file changes, the plugin
//! admin endpoint, and [`crate::Proxy::apply`] (later xDS) — sends a [`Command`] to one task,
//! which handles them one at a time, in the order they were sent. So two reloads never
//! interleave, and the newest request is always the one whose result ends up live: a request
//! sent after another is applied after it. Reload requests that queue up while one is being
//! built are coalesced: the source is read once more and every waiter gets that result.
//!
//! Applying a generation ([`publish`]): new and moved listeners are bound first (a failure
//! refuses the whole generation, and the old listeners keep serving); then every kept listener
//! is pointed at the new generation, the generation is published, listeners that were removed
//! or moved stop accepting, and the new ones start. A listener whose protocol changes on the
//! same address keeps its socket: new connections follow the new protocol at once.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc;
use weft_config::Config;
use weft_extensions::PluginContext;
use weft_observe::metrics::ResultLabels;

use crate::commands::{Command, ReloadError};
use crate::generation::Generation;
use crate::source::ProxyError;
use crate::state::State;

/// Starts the actor; it stops when the proxy shuts down.
pub(crate) fn spawn_actor(state: Arc<State>, mut inbox: mpsc::Receiver<Command>) {
    tokio::spawn(async move {
        let mut queued: VecDeque<Command> = VecDeque::new();
        loop {
            let next = match queued.pop_front() {
                Some(c) => c,
                None => tokio::select! {
                    c = inbox.recv() => match c {
                        Some(c) => c,
                        None => return,
                    },
                    _ = state.shutdown.cancelled() => return,
                },
            };
            match next {
                Command::Reload { reply } => {
                    // Coalesce the reloads already waiting right behind this one.
                    let mut waiters = vec![reply];
                    while let Ok(c) = inbox.try_recv() {
                        match c {
                            Command::Reload { reply } if queued.is_empty() => waiters.push(reply),
                            other => queued.push_back(other),
                        }
                    }
                    let result = reload_from_source(&state).await;
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
                Command::Apply { config, reply } => {
                    let dynamic = (**state.dynamic.lock()).clone();
                    let result = apply_composed(&state, *config, dynamic).await;
                    record(&state, &result);
                    let _ = reply.send(result);
                }
                Command::Dynamic { resources, reply } => {
                    let file = state.file_config.lock().clone();
                    let result = apply_composed(&state, (*file).clone(), *resources).await;
                    record(&state, &result);
                    let _ = reply.send(result);
                }
                Command::Endpoints { changes, reply } => {
                    let result = apply_endpoints(&state, changes).await;
                    if result.is_err() {
                        record(&state, &result);
                    }
                    let _ = reply.send(result);
                }
                Command::Plugin { name, reply } => {
                    let result = state.plugins.reload(&name).await.map_err(Arc::new);
                    let _ = reply.send(result);
                }
            }
        }
    });
}

async fn reload_from_source(state: &State) -> Result<u64, ReloadError> {
    let result = match state.source.load() {
        Ok(config) => {
            let dynamic = (**state.dynamic.lock()).clone();
            apply_composed(state, config, dynamic).await
        }
        Err(e) => Err(ReloadError(Arc::new(ProxyError::Config(e)))),
    };
    record(state, &result);
    result
}

/// Counts and logs a reload's result and keeps its error for admin.
fn record(state: &State, result: &Result<u64, ReloadError>) {
    let label = if result.is_ok() { "success" } else { "failure" };
    state
        .metrics()
        .config_reload
        .get_or_create(&ResultLabels {
            result: label.into(),
        })
        .inc();
    match result {
        Ok(id) => {
            tracing::info!(generation = id, "configuration reloaded");
            *state.last_error.lock() = None;
        }
        Err(e) => {
            tracing::error!("configuration rejected, the previous one keeps serving: {e}");
            *state.last_error.lock() = Some(e.to_string());
        }
    }
}

/// Composes the file's configuration with the dynamic resources, then compiles and publishes
/// it; on success both halves are kept as the last good ones.
async fn apply_composed(
    state: &State,
    file: Config,
    dynamic: weft_config::DynamicResources,
) -> Result<u64, ReloadError> {
    let config = if dynamic.is_empty() {
        file.clone()
    } else {
        weft_config::compose(&file, &dynamic, "xds")
            .map_err(|e| ReloadError(Arc::new(ProxyError::Config(e))))?
    };
    let id = apply(state, config).await?;
    *state.file_config.lock() = Arc::new(file);
    *state.dynamic.lock() = Arc::new(dynamic);
    Ok(id)
}

/// Replaces dynamic clusters' endpoint lists in place (xDS EDS). The new lists are checked;
/// then, if every cluster named is live and can swap its endpoints in place, the sets are
/// swapped and the live generation is republished with the same compiled listeners and
/// clusters and a configuration showing the new lists. Otherwise (a cluster that resolves DNS
/// names, or one not in the live generation) the dynamic resources with the new lists are
/// applied as a whole, like any dynamic update. Nothing changes on error.
async fn apply_endpoints(
    state: &State,
    changes: Vec<(String, Vec<weft_config::schema::Endpoint>)>,
) -> Result<u64, ReloadError> {
    let invalid = |e| ReloadError(Arc::new(ProxyError::Config(e)));
    let mut dynamic = (**state.dynamic.lock()).clone();
    let index: std::collections::HashMap<String, usize> = dynamic
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    for (name, endpoints) in &changes {
        let Some(&i) = index.get(name) else {
            return Err(invalid(weft_config::ConfigError::Invalid {
                file: "xds".into(),
                problems: vec![weft_config::Problem {
                    path: format!("cluster \"{name}\""),
                    location: None,
                    message: "endpoint update for a cluster that is not live".into(),
                }],
            }));
        };
        let cluster = &mut dynamic.clusters[i];
        cluster.endpoints = endpoints.clone();
        weft_config::check_endpoints(cluster, "xds").map_err(invalid)?;
    }
    let generation = state.generation.load_full();
    let live: std::collections::HashMap<&str, &Arc<weft_upstream::Cluster>> =
        generation.clusters.iter().map(|c| (&*c.name, c)).collect();
    let in_place = changes.iter().all(|(name, endpoints)| {
        live.get(name.as_str()).is_some_and(|c| {
            !c.is_original_dst()
                && endpoints.iter().all(|e| {
                    matches!(
                        weft_config::EndpointAddress::parse(&e.address),
                        Ok(weft_config::EndpointAddress::Ip(_))
                    )
                })
                && c.config
                    .endpoints
                    .iter()
                    .chain(c.applied_endpoints().iter())
                    .all(|e| {
                        matches!(
                            weft_config::EndpointAddress::parse(&e.address),
                            Ok(weft_config::EndpointAddress::Ip(_))
                        )
                    })
        })
    });
    if !in_place {
        let file = state.file_config.lock().clone();
        let result = apply_composed(state, (*file).clone(), dynamic).await;
        record(state, &result);
        return result;
    }
    let mut config = (*generation.config).clone();
    let positions: std::collections::HashMap<String, usize> = config
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    for (name, endpoints) in &changes {
        if let Some(&i) = positions.get(name) {
            config.clusters[i].endpoints = endpoints.clone();
        }
        if let Some(c) = live.get(name.as_str()) {
            // Checked above: an IP-only cluster without DNS refresh, so this cannot refuse.
            let swapped = c.set_endpoints(endpoints);
            debug_assert!(swapped, "cluster {name}: in-place endpoint update refused");
        }
    }
    let id = generation.id;
    state
        .generation
        .store(Arc::new(generation.with_config(config)));
    *state.dynamic.lock() = Arc::new(dynamic);
    tracing::debug!(
        generation = id,
        clusters = changes.len(),
        "endpoints updated in place"
    );
    Ok(id)
}

/// Compiles `config` into the next generation and publishes it.
async fn apply(state: &State, config: Config) -> Result<u64, ReloadError> {
    let inner = state;
    let previous = inner.generation.load_full();
    crate::spans::warn_on_fixed_changes(previous.config.tracing.as_ref(), config.tracing.as_ref());
    if (previous.config.workers, &previous.config.runtime) != (config.workers, &config.runtime) {
        tracing::warn!("workers and runtime.accept apply at the next restart");
    }
    let id = previous.id + 1;
    let label = inner.source.label();
    let base_dir = inner.source.base_dir();
    let ctx = PluginContext {
        registry: &inner.plugins,
        base_dir: &base_dir,
        strict: true,
    };
    let generation = Generation::build(
        id,
        label.clone(),
        config,
        Some(&previous),
        &inner.shared.metrics,
        ctx,
    )
    .await
    .map_err(|error| {
        ReloadError(Arc::new(ProxyError::Build {
            source_label: label,
            error,
        }))
    })?;
    publish(state, Arc::new(generation))
        .await
        .map_err(|e| ReloadError(Arc::new(e)))?;
    Ok(id)
}

/// Binds what is new, then switches every listener to `generation` and publishes it.
pub(crate) async fn publish(state: &State, generation: Arc<Generation>) -> Result<(), ProxyError> {
    let inner = state;
    // 1. Bind new and moved listeners before touching anything live; a failure leaves
    //    everything as it was.
    let mut fresh = Vec::new();
    {
        let slots = inner.slots.lock().clone();
        for (name, lgen) in &generation.listeners {
            if !lgen.config().bind_to_port {
                continue;
            }
            let keep = slots
                .get(name)
                .is_some_and(|s| s.configured_addr == lgen.config().address);
            if keep {
                continue;
            }
            match weft_transport::bind(lgen.clone(), &inner.acceptors).await {
                Ok(bound) => fresh.push(bound),
                Err(error) => {
                    return Err(ProxyError::Bind {
                        what: format!("listener {name}"),
                        address: lgen.config().address,
                        error,
                    });
                }
            }
        }
    }
    // 2. Publish.
    let id = generation.id;
    let mut slots = inner.slots.lock();
    for (name, lgen) in &generation.listeners {
        if let Some(slot) = slots.get(name)
            && slot.configured_addr == lgen.config().address
        {
            slot.publish(lgen.clone());
        }
    }
    inner.plugins.set_clusters(generation.clusters.clone());
    inner.plugins.retain(&generation.plugin_handles());
    inner.generation.store(generation.clone());
    inner
        .shared
        .http
        .overload
        .configure(&generation.config.overload);
    inner.shared.metrics.config_generation.set(id as i64);
    inner.published.send_replace(id);
    // 3. Stop what was removed or moved; start what is new.
    let stale: Vec<String> = slots
        .iter()
        .filter(|(n, s)| {
            generation
                .listeners
                .get(*n)
                .is_none_or(|l| !l.config().bind_to_port || l.config().address != s.configured_addr)
        })
        .map(|(n, _)| n.clone())
        .collect();
    for name in stale {
        if let Some(slot) = slots.remove(&name) {
            slot.stop();
            tracing::info!(listener = %name, "listener closed");
        }
    }
    for bound in fresh {
        let slot = &bound.slot;
        tracing::info!(listener = %slot.name, address = %slot.local_addr, "listening");
        slots.insert(slot.name.to_string(), slot.clone());
        weft_transport::serve(
            bound,
            inner.shared.clone(),
            inner.tracker.clone(),
            inner.shutdown.clone(),
        );
    }
    Ok(())
}
