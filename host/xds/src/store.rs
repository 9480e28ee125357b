//! The accepted xDS resources, and their composition into Weft's dynamic resources.
//!
//! Warming, as Envoy: an EDS cluster is live only once its endpoints have arrived, and a
//! listener using RDS only once its route configuration has; until then the previous version of
//! the same resource (if any) keeps serving, and a new one is simply not there yet. A route to
//! a cluster that does not exist answers 503, as Envoy's `cluster_not_found_response_code`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use weft_config::DynamicResources;
use weft_config::schema::{Cluster, DirectResponseAction, Endpoint, Listener, Plugin, VirtualHost};

use crate::resources::Kind;
use crate::translate::{cluster, endpoint, listener, route, secret, wasm};

/// Accepted resources by type and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Store {
    pub clusters: BTreeMap<String, cluster::Translated>,
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
    pub listeners: BTreeMap<String, listener::Translated>,
    pub routes: BTreeMap<String, Vec<VirtualHost>>,
    pub secrets: BTreeMap<String, secret::SecretFiles>,
    /// ECDS: HTTP Wasm filter configurations by resource name.
    pub extensions: BTreeMap<String, wasm::WasmPlugin>,
    /// The last published form of each dynamic cluster and listener (served while warming).
    live_clusters: BTreeMap<String, Cluster>,
    live_listeners: BTreeMap<String, Listener>,
    live_plugins: BTreeMap<String, Plugin>,
    /// The encoded bytes of each resource held, by type and name: a resource received again
    /// byte for byte is neither decoded nor translated again, and a response that repeats
    /// what is held changes nothing (Envoy compares resource hashes the same way).
    sources: BTreeMap<Kind, BTreeMap<String, Arc<[u8]>>>,
}

/// What [`Store::compose`] produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Composed {
    pub resources: DynamicResources,
    /// `cds/NAME` or `lds/NAME` of resources waiting for their endpoints or routes.
    pub warming: Vec<String>,
    /// Wasm code to fetch (by SHA-256) for plugins whose `file` is `xds-remote:<sha256>`.
    pub remotes: BTreeMap<String, wasm::Remote>,
    /// The SDS secrets to write for TLS paths `xds-sds:<name>/<file>`.
    pub secrets: BTreeMap<String, secret::SecretFiles>,
}

fn decode<M: Message + Default>(kind: Kind, i: usize, any: &Any) -> Result<M, String> {
    if any.type_url != kind.type_url() {
        return Err(format!(
            "resources[{i}]: type `{}` in a {} response",
            any.type_url,
            kind.type_url()
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("resources[{i}]: {e}"))
}

impl Store {
    /// The store with `resources` (one response of `kind`) applied, or why they are refused
    /// (naming the resource and the field). LDS and CDS replace the whole set; EDS and RDS
    /// replace the resources named.
    pub fn with(&self, kind: Kind, resources: &[Any]) -> Result<Store, String> {
        let mut next = self.clone();
        let held = self.held(kind);
        match kind {
            Kind::Cluster => next.clusters.clear(),
            Kind::Listener => next.listeners.clear(),
            Kind::Endpoint | Kind::Route | Kind::Secret | Kind::Extension => {}
        }
        let mut seen = HashSet::new();
        for (i, any) in resources.iter().enumerate() {
            let name = match held.get(any.value.as_slice()) {
                Some(name) if any.type_url == kind.type_url() => {
                    next.keep(self, kind, name);
                    (*name).to_owned()
                }
                _ => next.insert(kind, i, any)?,
            };
            if !seen.insert(name.clone()) {
                return Err(format!("duplicate resource name `{name}`"));
            }
            next.sources
                .entry(kind)
                .or_default()
                .insert(name, any.value.as_slice().into());
        }
        next.prune();
        next.check_plugins()?;
        Ok(next)
    }

    /// The held resources of `kind` by their encoded bytes.
    fn held(&self, kind: Kind) -> HashMap<&[u8], &str> {
        self.sources
            .get(&kind)
            .map(|m| m.iter().map(|(n, b)| (&**b, n.as_str())).collect())
            .unwrap_or_default()
    }

    /// True when a state-of-the-world response of `kind` carries exactly what is held (every
    /// resource byte for byte; for CDS and LDS also no more and no fewer): applying it would
    /// change nothing.
    pub fn unchanged(&self, kind: Kind, resources: &[Any]) -> bool {
        let held = self.held(kind);
        let whole = matches!(kind, Kind::Cluster | Kind::Listener);
        if whole && resources.len() != held.len() {
            return false;
        }
        let mut seen = HashSet::new();
        resources.iter().all(|any| {
            any.type_url == kind.type_url()
                && held
                    .get(any.value.as_slice())
                    .is_some_and(|name| seen.insert(*name))
        })
    }

    /// True when a delta response (`added`, `removed`) changes nothing held.
    pub fn unchanged_delta(&self, kind: Kind, added: &[(String, Any)], removed: &[String]) -> bool {
        let held = self.held(kind);
        removed.is_empty()
            && added.iter().all(|(name, any)| {
                any.type_url == kind.type_url()
                    && held
                        .get(any.value.as_slice())
                        .is_some_and(|n| name.is_empty() || *n == name)
            })
    }

    /// Copies held resource `name` of `kind` from `from` (where it was translated from the same
    /// bytes) into this store.
    fn keep(&mut self, from: &Store, kind: Kind, name: &str) {
        match kind {
            Kind::Cluster => {
                if let Some(c) = from.clusters.get(name) {
                    self.clusters.insert(name.to_owned(), c.clone());
                }
            }
            Kind::Listener => {
                self.remove_listener(name);
                if let Some(l) = from.listeners.get(name) {
                    for c in &l.chain_names {
                        if let Some(chain) = from.listeners.get(c) {
                            self.listeners.insert(c.clone(), chain.clone());
                        }
                    }
                    self.listeners.insert(name.to_owned(), l.clone());
                }
            }
            // Replaced by name: what is held is still there.
            Kind::Endpoint | Kind::Route | Kind::Secret | Kind::Extension => {}
        }
    }

    /// Forgets the bytes of resources no longer held.
    fn prune_sources(&mut self) {
        for (kind, m) in &mut self.sources {
            m.retain(|n, _| match kind {
                Kind::Cluster => self.clusters.contains_key(n),
                Kind::Secret => self.secrets.contains_key(n),
                Kind::Endpoint => self.endpoints.contains_key(n),
                Kind::Listener => self.listeners.contains_key(n),
                Kind::Route => self.routes.contains_key(n),
                Kind::Extension => self.extensions.contains_key(n),
            });
        }
    }

    /// Dynamic clusters whose endpoints differ in `next` (an EDS response applied to this
    /// store) and nothing else: each was live with its endpoints before and stays so (its
    /// assignment had arrived, its secrets are there), so the composition changes in those
    /// clusters' endpoint lists only. `None` when the response changes more (a cluster goes
    /// live: its routes change from 503 to routed).
    pub fn endpoint_changes(&self, next: &Store) -> Option<Vec<(String, Vec<Endpoint>)>> {
        if next.endpoints.len() != self.endpoints.len() {
            return None;
        }
        let mut changed = HashSet::new();
        for (name, eps) in &next.endpoints {
            match self.endpoints.get(name) {
                None => return None,
                Some(old) if old != eps => {
                    changed.insert(name.as_str());
                }
                Some(_) => {}
            }
        }
        let mut out = Vec::new();
        for t in next.clusters.values() {
            let Some(eds) = &t.eds_name else { continue };
            if !changed.contains(eds.as_str()) {
                continue;
            }
            if !t.secrets.iter().all(|n| next.secrets.contains_key(n))
                || !self.live_clusters.contains_key(&t.cluster.name)
            {
                return None;
            }
            out.push((t.cluster.name.clone(), next.endpoints.get(eds)?.clone()));
        }
        Some(out)
    }

    /// Records endpoint lists put in place without a new composition (see
    /// [`Store::endpoint_changes`]).
    pub fn patch_live_endpoints(&mut self, changes: &[(String, Vec<Endpoint>)]) {
        for (name, eps) in changes {
            if let Some(c) = self.live_clusters.get_mut(name) {
                c.endpoints = eps.clone();
            }
        }
    }

    /// The store with one incremental (delta) response applied: `added` (resource name,
    /// resource) added or replaced, `removed` names dropped. A removed assignment leaves its
    /// cluster with no endpoints (its requests answer 503, as Envoy's); a removed route
    /// configuration leaves its listener with no virtual hosts (404).
    pub fn with_delta(
        &self,
        kind: Kind,
        added: &[(String, Any)],
        removed: &[String],
    ) -> Result<Store, String> {
        let mut next = self.clone();
        let mut seen = HashSet::new();
        for name in removed {
            if let Some(m) = next.sources.get_mut(&kind) {
                m.remove(name);
            }
            match kind {
                Kind::Cluster => drop(next.clusters.remove(name)),
                Kind::Listener => next.remove_listener(name),
                Kind::Endpoint => drop(next.endpoints.insert(name.clone(), Vec::new())),
                Kind::Route => drop(next.routes.insert(name.clone(), Vec::new())),
                // A removed secret: whoever uses it waits (warming) until it is back.
                Kind::Secret => drop(next.secrets.remove(name)),
                // A removed extension configuration: its listeners warm until it is back.
                Kind::Extension => drop(next.extensions.remove(name)),
            }
        }
        let held = self.held(kind);
        for (i, (name, any)) in added.iter().enumerate() {
            let inner = match held.get(any.value.as_slice()) {
                Some(n) if any.type_url == kind.type_url() => {
                    next.keep(self, kind, n);
                    (*n).to_owned()
                }
                _ => next.insert(kind, i, any)?,
            };
            next.sources
                .entry(kind)
                .or_default()
                .insert(inner.clone(), any.value.as_slice().into());
            if !name.is_empty() && *name != inner {
                return Err(format!(
                    "resources[{i}]: named `{name}` but the resource inside is `{inner}`"
                ));
            }
            if !seen.insert(inner.clone()) {
                return Err(format!("duplicate resource name `{inner}`"));
            }
            if removed.contains(&inner) {
                return Err(format!("resource `{inner}` both added and removed"));
            }
        }
        next.prune();
        next.check_plugins()?;
        Ok(next)
    }

    /// Removes listener `name` and, for a capture listener, its chains' listeners.
    fn remove_listener(&mut self, name: &str) {
        if let Some(old) = self.listeners.remove(name) {
            for c in &old.chain_names {
                self.listeners.remove(c);
            }
        }
    }

    /// Listeners may share a Wasm plugin (by name) only with the same definition.
    fn check_plugins(&self) -> Result<(), String> {
        let mut seen: BTreeMap<&str, (&str, &Plugin)> = BTreeMap::new();
        for (lname, t) in &self.listeners {
            for p in &t.plugins {
                match seen.get(p.plugin.name.as_str()) {
                    Some((other, q)) if *q != &p.plugin => {
                        return Err(format!(
                            "listener \"{lname}\": Wasm plugin `{}` differs from the one of \
                             that name in listener \"{other}\" (one name, one definition)",
                            p.plugin.name
                        ));
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(&p.plugin.name, (lname, &p.plugin));
                    }
                }
            }
        }
        Ok(())
    }

    /// Translates one resource of `kind` into the store; returns its name.
    fn insert(&mut self, kind: Kind, i: usize, any: &Any) -> Result<String, String> {
        Ok(match kind {
            Kind::Secret => {
                let (name, files) = secret::translate(decode(kind, i, any)?)?;
                self.secrets.insert(name.clone(), files);
                name
            }
            Kind::Cluster => {
                let t = cluster::translate(decode(kind, i, any)?)?;
                let name = t.cluster.name.clone();
                self.clusters.insert(name.clone(), t);
                name
            }
            Kind::Endpoint => {
                let cla: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
                    decode(kind, i, any)?;
                let name = cla.cluster_name.clone();
                let e = endpoint::endpoints(&format!("cluster_load_assignment \"{name}\""), cla)?;
                self.endpoints.insert(name.clone(), e);
                name
            }
            Kind::Listener => {
                let mut t = crate::translate::lds::translate(decode(kind, i, any)?)?;
                let name = t.listener.name.clone();
                self.remove_listener(&name);
                for c in std::mem::take(&mut t.chains) {
                    t.chain_names.push(c.listener.name.clone());
                    self.listeners.insert(c.listener.name.clone(), c);
                }
                self.listeners.insert(name.clone(), t);
                name
            }
            Kind::Extension => {
                let tec: envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig =
                    decode(kind, i, any)?;
                let name = tec.name.clone();
                let path = format!("typed_extension_config \"{name}\"");
                if name.is_empty() {
                    return Err(format!("resources[{i}]: name must not be empty"));
                }
                let Some(config) = tec.typed_config else {
                    return Err(format!("{path}.typed_config: required"));
                };
                if config.type_url != wasm::HTTP_WASM {
                    return Err(format!(
                        "{path}.typed_config: `{}` is unimplemented over ECDS (only \
                         envoy.extensions.filters.http.wasm.v3.Wasm is)",
                        config.type_url
                    ));
                }
                let p = wasm::http_wasm(&path, &name, &config)?;
                self.extensions.insert(name.clone(), p);
                name
            }
            Kind::Route => {
                let rc: envoy_types::pb::envoy::config::route::v3::RouteConfiguration =
                    decode(kind, i, any)?;
                let name = rc.name.clone();
                let v = route::route_configuration(&format!("route_configuration \"{name}\""), rc)?;
                self.routes.insert(name.clone(), v);
                name
            }
        })
    }

    /// Drops endpoints and routes no cluster or listener refers to any more.
    fn prune(&mut self) {
        let eds = self.eds_names();
        self.endpoints.retain(|n, _| eds.contains(n));
        let rds = self.rds_names();
        self.routes.retain(|n, _| rds.contains(n));
        let sds = self.sds_names();
        self.secrets.retain(|n, _| sds.contains(n));
        let ecds = self.ecds_names();
        self.extensions.retain(|n, _| ecds.contains(n));
        self.prune_sources();
    }

    /// The assignments the clusters need (the EDS subscription).
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| c.eds_name.clone())
            .collect()
    }

    /// The secrets the clusters and listeners need (the SDS subscription).
    pub fn sds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .flat_map(|c| c.secrets.iter())
            .chain(self.listeners.values().flat_map(|l| l.secrets.iter()))
            .cloned()
            .collect()
    }

    /// The route configurations the listeners need (the RDS subscription).
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .filter_map(|l| l.rds.clone())
            .collect()
    }

    /// The extension configurations the listeners' HTTP filters discover (the ECDS
    /// subscription).
    pub fn ecds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.ecds.iter().map(|(_, n)| n.clone()))
            .collect()
    }

    /// True when every cluster has its endpoints (the point where Envoy subscribes to LDS).
    pub fn clusters_warm(&self) -> bool {
        self.eds_names()
            .iter()
            .all(|n| self.endpoints.contains_key(n))
            && self
                .clusters
                .values()
                .flat_map(|c| c.secrets.iter())
                .all(|n| self.secrets.contains_key(n))
    }

    /// Weft's dynamic resources for what is ready; `static_clusters` are the file's.
    pub fn compose(&self, static_clusters: &HashSet<String>) -> Composed {
        let mut out = Composed::default();
        let has_secrets = |names: &[String]| names.iter().all(|n| self.secrets.contains_key(n));
        for (name, t) in &self.clusters {
            let ready = match &t.eds_name {
                _ if !has_secrets(&t.secrets) => None,
                None => Some(t.cluster.clone()),
                Some(eds) => self.endpoints.get(eds).map(|e| {
                    let mut c = t.cluster.clone();
                    c.endpoints = e.clone();
                    c
                }),
            };
            if ready.is_some() {
                for n in &t.secrets {
                    if let Some(f) = self.secrets.get(n) {
                        out.secrets.insert(n.clone(), f.clone());
                    }
                }
            }
            match ready.or_else(|| self.live_clusters.get(name).cloned()) {
                Some(c) => out.resources.clusters.push(c),
                None => out.warming.push(format!("cds/{name}")),
            }
        }
        let known: HashSet<&str> = out
            .resources
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .chain(static_clusters.iter().map(String::as_str))
            .collect();
        let mut plugins: BTreeMap<String, Plugin> = BTreeMap::new();
        for (name, t) in &self.listeners {
            if t.by_address.is_some() {
                // Not a listener of its own: its chains join the capture listeners (below).
                continue;
            }
            let has_extensions = t.ecds.iter().all(|(_, n)| self.extensions.contains_key(n));
            let ready = match &t.rds {
                _ if !has_secrets(&t.secrets) || !has_extensions => None,
                None => Some(t.listener.clone()),
                Some(rds) => self.routes.get(rds).map(|v| {
                    let mut l = t.listener.clone();
                    l.virtual_hosts = v.clone();
                    l
                }),
            };
            let is_ready = ready.is_some();
            let Some(mut l) = ready.or_else(|| self.live_listeners.get(name).cloned()) else {
                out.warming.push(format!("lds/{name}"));
                continue;
            };
            if l.tcp
                .as_ref()
                .is_some_and(|t| !known.contains(t.cluster.as_str()))
            {
                out.warming.push(format!("lds/{name}"));
                continue;
            }
            for vh in &mut l.virtual_hosts {
                for r in &mut vh.routes {
                    let missing = r.route.as_ref().is_some_and(|a| {
                        a.cluster
                            .iter()
                            .chain(a.weighted_clusters.iter().map(|w| &w.name))
                            .chain(a.request_mirror_policies.iter().map(|m| &m.cluster))
                            .any(|c| !known.contains(c.as_str()))
                    });
                    if missing {
                        r.route = None;
                        r.direct_response = Some(DirectResponseAction {
                            status: 503,
                            body: None,
                        });
                    }
                }
            }
            if is_ready {
                for n in &t.secrets {
                    if let Some(f) = self.secrets.get(n) {
                        out.secrets.insert(n.clone(), f.clone());
                    }
                }
                // Discovered filters (ECDS) take their places among the inline ones.
                for (at, n) in &t.ecds {
                    if let Some(p) = self.extensions.get(n) {
                        let r = weft_config::schema::PluginRef {
                            name: p.plugin.name.clone(),
                            configuration: None,
                            disabled: false,
                        };
                        l.plugins.insert((*at).min(l.plugins.len()), r);
                    }
                }
                let discovered = t.ecds.iter().filter_map(|(_, n)| self.extensions.get(n));
                for p in t.plugins.iter().chain(discovered) {
                    plugins.insert(p.plugin.name.clone(), p.plugin.clone());
                    if let Some(r) = &p.remote {
                        out.remotes.insert(r.sha256.clone(), r.clone());
                    }
                }
            } else {
                for r in &l.plugins {
                    if let Some(p) = self.live_plugins.get(&r.name) {
                        plugins.entry(r.name.clone()).or_insert_with(|| p.clone());
                    }
                }
            }
            out.resources.listeners.push(l);
        }
        // Listeners with bind_to_port: false join the capture listeners with use_original_dst,
        // each once all its chains' listeners are live (until then it is warming).
        let live: HashSet<String> = out
            .resources
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .collect();
        let mut handoff = Vec::new();
        for (name, t) in &self.listeners {
            if let Some(chains) = &t.by_address {
                if chains.iter().all(|c| live.contains(&c.listener)) {
                    handoff.extend(chains.iter().cloned());
                } else {
                    out.warming.push(format!("lds/{name}"));
                }
            }
        }
        for l in &mut out.resources.listeners {
            if self.listeners.get(&l.name).is_some_and(|t| t.hands_off) {
                // Its own chains (`<name>/…`) only: a version served while warming carries
                // the hand-off chains it was published with.
                let own = format!("{}/", l.name);
                l.filter_chains.retain(|c| c.listener.starts_with(&own));
                l.filter_chains.extend(handoff.iter().cloned());
            }
        }
        // A capture listener goes live only with every chain's listener.
        let mut cold = Vec::new();
        out.resources.listeners.retain(|l| {
            let ready = l.filter_chains.iter().all(|c| live.contains(&c.listener));
            if !ready {
                cold.push(format!("lds/{}", l.name));
            }
            ready
        });
        out.warming.extend(cold);
        out.resources.plugins = plugins.into_values().collect();
        out
    }

    /// Records `published` as live (the fallback while a new version warms).
    pub fn mark_live(&mut self, published: &DynamicResources) {
        self.live_clusters = published
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.clone()))
            .collect();
        self.live_listeners = published
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.clone()))
            .collect();
        self.live_plugins = published
            .plugins
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3 as c;
    use envoy_types::pb::envoy::config::endpoint::v3 as e;
    use envoy_types::pb::envoy::config::route::v3 as r;
    use envoy_types::pb::google::protobuf::UInt32Value;
    use prost::Name;

    use super::*;

    fn any<M: Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    fn eds(name: &str) -> c::Cluster {
        c::Cluster {
            name: name.into(),
            cluster_discovery_type: Some(c::cluster::ClusterDiscoveryType::Type(
                c::cluster::DiscoveryType::Eds as i32,
            )),
            ..Default::default()
        }
    }

    fn cla(name: &str, port: u32) -> e::ClusterLoadAssignment {
        use envoy_types::pb::envoy::config::core::v3 as core;
        let address = core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        };
        e::ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![e::LocalityLbEndpoints {
                lb_endpoints: vec![
                    e::LbEndpoint {
                        host_identifier: Some(e::lb_endpoint::HostIdentifier::Endpoint(
                            e::Endpoint {
                                address: Some(address.clone()),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    },
                    // Unhealthy: takes no traffic.
                    e::LbEndpoint {
                        health_status: 2,
                        host_identifier: Some(e::lb_endpoint::HostIdentifier::Endpoint(
                            e::Endpoint {
                                address: Some(address),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn unsupported_cluster_fields_are_refused_by_name() {
        let mut maglev = eds("a");
        maglev.lb_policy = c::cluster::LbPolicy::Maglev as i32;
        let err = Store::default()
            .with(Kind::Cluster, &[any(&maglev)])
            .unwrap_err();
        assert_eq!(err, "cluster \"a\".lb_policy: MAGLEV is unimplemented");
        let mut outlier = eds("b");
        outlier.outlier_detection = Some(c::OutlierDetection {
            failure_percentage_threshold: Some(UInt32Value { value: 85 }),
            ..Default::default()
        });
        let err = Store::default()
            .with(Kind::Cluster, &[any(&outlier)])
            .unwrap_err();
        assert!(
            err.starts_with(
                "cluster \"b\".outlier_detection.failure_percentage_threshold: unimplemented"
            ),
            "{err}"
        );
        // Envoy's defaults: 5 consecutive 5xx enforced, gateway failures not enforced.
        outlier.outlier_detection = Some(c::OutlierDetection {
            consecutive_gateway_failure: Some(UInt32Value { value: 3 }),
            ..Default::default()
        });
        let s = Store::default()
            .with(Kind::Cluster, &[any(&outlier)])
            .unwrap_or_else(|e| panic!("{e}"));
        let od = s.clusters["b"].cluster.outlier_detection.clone();
        let od = od.unwrap_or_else(|| panic!("mapped"));
        assert_eq!((od.consecutive_5xx, od.consecutive_gateway_errors), (5, 0));
        let err = Store::default()
            .with(Kind::Cluster, &[any(&eds("d")), any(&eds("d"))])
            .unwrap_err();
        assert_eq!(err, "duplicate resource name `d`");
    }

    #[test]
    fn eds_clusters_warm_until_their_endpoints_arrive_and_unhealthy_ones_are_left_out() {
        let statics = HashSet::new();
        let s = Store::default()
            .with(Kind::Cluster, &[any(&eds("a"))])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.clusters_warm());
        let composed = s.compose(&statics);
        assert_eq!(composed.warming, vec!["cds/a".to_owned()]);
        assert!(composed.resources.clusters.is_empty());
        let s = s
            .with(Kind::Endpoint, &[any(&cla("a", 9000))])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.clusters_warm());
        let composed = s.compose(&statics);
        assert!(composed.warming.is_empty());
        assert_eq!(composed.resources.clusters[0].endpoints.len(), 1);
        assert_eq!(
            composed.resources.clusters[0].endpoints[0].address,
            "127.0.0.1:9000"
        );
    }

    #[test]
    fn a_delta_adds_replaces_and_removes_by_name() {
        let named = |n: &str, c: c::Cluster| (n.to_owned(), any(&c));
        let s = Store::default()
            .with_delta(
                Kind::Cluster,
                &[named("a", eds("a")), named("b", eds("b"))],
                &[],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let s = s
            .with_delta(Kind::Endpoint, &[("a".into(), any(&cla("a", 9000)))], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        // Removing b keeps a and its endpoints; b's assignment is no longer wanted.
        let s = s
            .with_delta(Kind::Cluster, &[], &["b".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.clusters.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(s.eds_names().into_iter().collect::<Vec<_>>(), ["a"]);
        // A removed assignment leaves its cluster live with no endpoints.
        let gone = s
            .with_delta(Kind::Endpoint, &[], &["a".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        let composed = gone.compose(&HashSet::new());
        assert!(composed.warming.is_empty());
        assert!(composed.resources.clusters[0].endpoints.is_empty());
        // The resource's name must be the one inside.
        let err = s
            .with_delta(Kind::Cluster, &[named("x", eds("y"))], &[])
            .unwrap_err();
        assert_eq!(
            err,
            "resources[0]: named `x` but the resource inside is `y`"
        );
        let err = s
            .with_delta(Kind::Cluster, &[named("a", eds("a"))], &["a".into()])
            .unwrap_err();
        assert_eq!(err, "resource `a` both added and removed");
    }

    #[test]
    fn resends_change_nothing_and_endpoint_changes_are_found_per_cluster() {
        let s = Store::default()
            .with(Kind::Cluster, &[any(&eds("a")), any(&eds("b"))])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.unchanged(Kind::Cluster, &[any(&eds("b")), any(&eds("a"))]));
        assert!(!s.unchanged(Kind::Cluster, &[any(&eds("a"))]), "b removed");
        let s = s
            .with(Kind::Endpoint, &[any(&cla("a", 9000))])
            .unwrap_or_else(|e| panic!("{e}"));
        // b's assignment arriving makes b go live: not an endpoint-only change.
        let next = s
            .with(Kind::Endpoint, &[any(&cla("b", 9001))])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.endpoint_changes(&next), None);
        let mut s = next;
        s.mark_live(&s.compose(&HashSet::new()).resources);
        assert!(s.unchanged(Kind::Endpoint, &[any(&cla("a", 9000))]));
        let next = s
            .with(
                Kind::Endpoint,
                &[any(&cla("a", 9000)), any(&cla("b", 9002))],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let changes = s
            .endpoint_changes(&next)
            .unwrap_or_else(|| panic!("in place"));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, "b");
        assert_eq!(changes[0].1[0].address, "127.0.0.1:9002");
        // An identical resend is kept without translation, and still composes the same.
        let again = s
            .with(Kind::Cluster, &[any(&eds("a")), any(&eds("b"))])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, s);
    }

    #[test]
    fn a_route_to_an_unknown_cluster_answers_503() {
        let rc = r::RouteConfiguration {
            name: "rc".into(),
            virtual_hosts: vec![r::VirtualHost {
                name: "vh".into(),
                domains: vec!["*".into()],
                routes: vec![r::Route {
                    r#match: Some(r::RouteMatch {
                        path_specifier: Some(r::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(r::route::Action::Route(r::RouteAction {
                        cluster_specifier: Some(r::route_action::ClusterSpecifier::Cluster(
                            "nowhere".into(),
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let vhosts = route::route_configuration("rc", rc).unwrap_or_else(|e| panic!("{e}"));
        let mut s = Store::default();
        let mut l: Listener = serde_json::from_value(serde_json::json!({
            "name": "l", "address": "127.0.0.1:0"
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        l.virtual_hosts = vhosts;
        s.listeners.insert(
            "l".into(),
            listener::Translated {
                listener: l,
                rds: None,
                plugins: Vec::new(),
                chains: Vec::new(),
                chain_names: Vec::new(),
                secrets: Vec::new(),
                by_address: None,
                hands_off: false,
                ecds: Vec::new(),
            },
        );
        let composed = s.compose(&HashSet::new());
        let route = &composed.resources.listeners[0].virtual_hosts[0].routes[0];
        assert!(route.route.is_none());
        assert_eq!(route.direct_response.as_ref().map(|d| d.status), Some(503));
    }
}
