//! The accepted xDS resources, and their composition into Weft's dynamic resources.
//!
//! Warming, as Envoy: an EDS cluster is live only once its endpoints have arrived, and a
//! listener using RDS only once its route configuration has; until then the previous version of
//! the same resource (if any) keeps serving, and a new one is simply not there yet. A route to
//! a cluster that does not exist answers 503, as Envoy's `cluster_not_found_response_code`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use weft_config::DynamicResources;
use weft_config::schema::{Cluster, DirectResponseAction, Endpoint, Listener, VirtualHost};

use crate::resources::Kind;
use crate::translate::{cluster, endpoint, listener, route};

/// Accepted resources by type and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Store {
    pub clusters: BTreeMap<String, cluster::Translated>,
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
    pub listeners: BTreeMap<String, listener::Translated>,
    pub routes: BTreeMap<String, Vec<VirtualHost>>,
    /// The last published form of each dynamic cluster and listener (served while warming).
    live_clusters: BTreeMap<String, Cluster>,
    live_listeners: BTreeMap<String, Listener>,
}

/// What [`Store::compose`] produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Composed {
    pub resources: DynamicResources,
    /// `cds/NAME` or `lds/NAME` of resources waiting for their endpoints or routes.
    pub warming: Vec<String>,
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
        let mut seen = HashSet::new();
        let mut dup = |name: &str| {
            if seen.insert(name.to_owned()) {
                Ok(())
            } else {
                Err(format!("duplicate resource name `{name}`"))
            }
        };
        match kind {
            Kind::Cluster => {
                next.clusters.clear();
                for (i, any) in resources.iter().enumerate() {
                    let t = cluster::translate(decode(kind, i, any)?)?;
                    dup(&t.cluster.name)?;
                    next.clusters.insert(t.cluster.name.clone(), t);
                }
            }
            Kind::Endpoint => {
                for (i, any) in resources.iter().enumerate() {
                    let cla: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
                        decode(kind, i, any)?;
                    let name = cla.cluster_name.clone();
                    dup(&name)?;
                    let e =
                        endpoint::endpoints(&format!("cluster_load_assignment \"{name}\""), cla)?;
                    next.endpoints.insert(name, e);
                }
            }
            Kind::Listener => {
                next.listeners.clear();
                for (i, any) in resources.iter().enumerate() {
                    let t = listener::translate(decode(kind, i, any)?)?;
                    dup(&t.listener.name)?;
                    next.listeners.insert(t.listener.name.clone(), t);
                }
            }
            Kind::Route => {
                for (i, any) in resources.iter().enumerate() {
                    let rc: envoy_types::pb::envoy::config::route::v3::RouteConfiguration =
                        decode(kind, i, any)?;
                    let name = rc.name.clone();
                    dup(&name)?;
                    let v =
                        route::route_configuration(&format!("route_configuration \"{name}\""), rc)?;
                    next.routes.insert(name, v);
                }
            }
        }
        next.prune();
        Ok(next)
    }

    /// Drops endpoints and routes no cluster or listener refers to any more.
    fn prune(&mut self) {
        let eds = self.eds_names();
        self.endpoints.retain(|n, _| eds.contains(n));
        let rds = self.rds_names();
        self.routes.retain(|n, _| rds.contains(n));
    }

    /// The assignments the clusters need (the EDS subscription).
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| c.eds_name.clone())
            .collect()
    }

    /// The route configurations the listeners need (the RDS subscription).
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .filter_map(|l| l.rds.clone())
            .collect()
    }

    /// True when every cluster has its endpoints (the point where Envoy subscribes to LDS).
    pub fn clusters_warm(&self) -> bool {
        self.eds_names()
            .iter()
            .all(|n| self.endpoints.contains_key(n))
    }

    /// Weft's dynamic resources for what is ready; `static_clusters` are the file's.
    pub fn compose(&self, static_clusters: &HashSet<String>) -> Composed {
        let mut out = Composed::default();
        for (name, t) in &self.clusters {
            let ready = match &t.eds_name {
                None => Some(t.cluster.clone()),
                Some(eds) => self.endpoints.get(eds).map(|e| {
                    let mut c = t.cluster.clone();
                    c.endpoints = e.clone();
                    c
                }),
            };
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
        for (name, t) in &self.listeners {
            let ready = match &t.rds {
                None => Some(t.listener.clone()),
                Some(rds) => self.routes.get(rds).map(|v| {
                    let mut l = t.listener.clone();
                    l.virtual_hosts = v.clone();
                    l
                }),
            };
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
            out.resources.listeners.push(l);
        }
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
    }
}
