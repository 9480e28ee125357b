//! The node identity sent in every discovery request, from `xds.node`.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node, node::UserAgentVersionType};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use weft_config::xds::XdsNode;

/// Envoy's `Node` for `config`; `env` is the process environment (`ISTIO_META_*` are read from it).
pub fn node(config: &XdsNode, env: impl Iterator<Item = (String, String)>) -> Node {
    let mut fields: HashMap<String, Value> = HashMap::new();
    if config.istio_meta_env {
        for (k, v) in env {
            if let Some(name) = k.strip_prefix("ISTIO_META_")
                && !name.is_empty()
            {
                fields.insert(name.to_owned(), string(v));
            }
        }
    }
    for (k, v) in &config.metadata {
        fields.insert(k.clone(), value(v));
    }
    Node {
        id: config.id.clone(),
        cluster: config.cluster.clone(),
        metadata: Some(Struct { fields }),
        locality: Some(Locality {
            region: config.locality.region.clone(),
            zone: config.locality.zone.clone(),
            sub_zone: config.locality.sub_zone.clone(),
        }),
        user_agent_name: "weft".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Node::default()
    }
}

fn string(s: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(s)),
    }
}

/// A JSON value as a protobuf `Value`.
pub(crate) fn value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(value).collect(),
        }),
        J::Object(map) => Kind::StructValue(Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_meta_env_becomes_metadata_and_the_file_wins() {
        let config: XdsNode = serde_json::from_value(serde_json::json!({
            "id": "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local",
            "cluster": "app.ns",
            "locality": { "region": "eu", "zone": "eu-1a" },
            "metadata": { "NAMESPACE": "ns", "LABELS": { "app": "reviews" } },
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let env = [
            ("ISTIO_META_CLUSTER_ID".to_owned(), "Kubernetes".to_owned()),
            ("ISTIO_META_NAMESPACE".to_owned(), "other".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let n = node(&config, env.into_iter());
        assert_eq!(n.id, "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local");
        assert_eq!(n.cluster, "app.ns");
        assert_eq!(n.locality.as_ref().map(|l| l.zone.as_str()), Some("eu-1a"));
        let fields = n.metadata.map(|m| m.fields).unwrap_or_default();
        assert_eq!(fields.get("CLUSTER_ID"), Some(&string("Kubernetes".into())));
        assert_eq!(fields.get("NAMESPACE"), Some(&string("ns".into())));
        assert!(!fields.contains_key("PATH") && fields.contains_key("LABELS"));
    }
}
