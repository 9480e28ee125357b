//! Istio's HTTP metadata exchange: `x-envoy-peer-metadata` carries the sender's workload as
//! a `google.protobuf.Struct` (fields `NAME`, `NAMESPACE`, `WORKLOAD_NAME`, `CLUSTER_ID` and a
//! `LABELS` struct with the canonical name and revision, `app` and `version`), serialized
//! deterministically and base64-encoded (standard alphabet, padded; read with or without
//! padding); `x-envoy-peer-metadata-id` carries its node id. This is the encoding of Istio's
//! `peer_metadata` filter (and the classic `metadata_exchange` Wasm filter before it), so
//! Weft and Envoy-based Istio sidecars read each other's headers.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::HeaderName;
use parking_lot::Mutex;
use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Value};

use super::node::{
    APP_LABEL, CANONICAL_NAME_LABEL, CANONICAL_REVISION_LABEL, VERSION_LABEL, Workload,
};

/// The peer's workload metadata.
pub static PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
/// The peer's node id.
pub static PEER_METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// Longest header value decoded (a real one is a few hundred bytes).
pub const MAX_ENCODED_LEN: usize = 8 * 1024;

const ENCODE: GeneralPurpose = base64::engine::general_purpose::STANDARD;
const DECODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    }
}

/// The header value announcing `w`.
pub fn encode(w: &Workload) -> String {
    let mut fields = BTreeMap::new();
    for (k, v) in [
        ("NAME", &w.instance),
        ("NAMESPACE", &w.namespace),
        ("WORKLOAD_NAME", &w.workload),
        ("CLUSTER_ID", &w.cluster),
    ] {
        if !v.is_empty() {
            fields.insert(k.to_owned(), string(v));
        }
    }
    let mut labels = BTreeMap::new();
    for (k, v) in [
        (CANONICAL_NAME_LABEL, &w.canonical_service),
        (CANONICAL_REVISION_LABEL, &w.canonical_revision),
        (APP_LABEL, &w.app),
        (VERSION_LABEL, &w.version),
    ] {
        if !v.is_empty() {
            labels.insert(k.to_owned(), string(v));
        }
    }
    fields.insert(
        "LABELS".to_owned(),
        Value {
            kind: Some(Kind::StructValue(Struct { fields: labels })),
        },
    );
    // prost writes map entries in key order: the deterministic serialization Istio uses.
    ENCODE.encode(Struct { fields }.encode_to_vec())
}

/// The workload a header value announces (`None`: not base64 of a `Struct`, or too long).
pub fn decode(value: &[u8]) -> Option<Workload> {
    if value.len() > MAX_ENCODED_LEN {
        return None;
    }
    let bytes = DECODE.decode(value).ok()?;
    let s = Struct::decode(bytes.as_slice()).ok()?;
    let text = |s: &Struct, k: &str| -> Arc<str> {
        match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => v.as_str().into(),
            _ => "".into(),
        }
    };
    let labels = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(l)) => l.clone(),
        _ => Struct::default(),
    };
    Some(Workload {
        instance: text(&s, "NAME"),
        namespace: text(&s, "NAMESPACE"),
        workload: text(&s, "WORKLOAD_NAME"),
        cluster: text(&s, "CLUSTER_ID"),
        canonical_service: text(&labels, CANONICAL_NAME_LABEL),
        canonical_revision: text(&labels, CANONICAL_REVISION_LABEL),
        app: text(&labels, APP_LABEL),
        version: text(&labels, VERSION_LABEL),
    })
}

/// Decoded peers by header value, so a busy peer is decoded once and its labels are shared
/// (`Arc`) by every request from it. Bounded: when full, it starts over.
#[derive(Debug, Default)]
pub struct PeerCache {
    peers: Mutex<hashbrown::HashMap<Box<[u8]>, Arc<Workload>>>,
}

/// Most peers remembered.
pub const PEER_CACHE_CAPACITY: usize = 1024;

impl PeerCache {
    /// The peer announced by `value`.
    pub fn get(&self, value: &[u8]) -> Option<Arc<Workload>> {
        if let Some(w) = self.peers.lock().get(value) {
            return Some(w.clone());
        }
        let w = Arc::new(decode(value)?);
        let mut peers = self.peers.lock();
        if peers.len() >= PEER_CACHE_CAPACITY {
            peers.clear();
        }
        peers.insert(value.into(), w.clone());
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviews() -> Workload {
        Workload {
            instance: "reviews-v1-6b9f".into(),
            namespace: "bookinfo".into(),
            workload: "reviews-v1".into(),
            cluster: "Kubernetes".into(),
            canonical_service: "reviews".into(),
            canonical_revision: "v1".into(),
            app: "reviews".into(),
            version: "v1".into(),
        }
    }

    #[test]
    fn round_trips() {
        let w = reviews();
        let v = encode(&w);
        assert_eq!(decode(v.as_bytes()), Some(w.clone()));
        assert_eq!(
            decode(v.trim_end_matches('=').as_bytes()),
            Some(w),
            "padding optional"
        );
    }

    /// The bytes are a protobuf `Struct` as Istio writes one: field 1 map entries in key order,
    /// each `{1: key, 2: Value{3: string | 5: Struct}}`.
    #[test]
    fn wire_format_is_a_deterministic_struct() {
        let w = Workload {
            namespace: "ns".into(),
            app: "a".into(),
            ..Workload::default()
        };
        let bytes = DECODE.decode(encode(&w)).expect("base64");
        let expected: Vec<u8> = [
            // LABELS: { app: "a" }
            &[0x0a, 0x18, 0x0a, 0x06][..],
            b"LABELS",
            &[0x12, 0x0e, 0x2a, 0x0c, 0x0a, 0x0a, 0x0a, 0x03],
            b"app",
            &[0x12, 0x03, 0x1a, 0x01],
            b"a",
            // NAMESPACE: "ns"
            &[0x0a, 0x11, 0x0a, 0x09],
            b"NAMESPACE",
            &[0x12, 0x04, 0x1a, 0x02],
            b"ns",
        ]
        .concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn garbage_is_no_peer() {
        assert_eq!(decode(b"not base64!"), None);
        assert_eq!(decode(&vec![b'A'; MAX_ENCODED_LEN + 4]), None);
        // Valid base64 of bytes that are not a Struct (a field with a truncated length).
        assert_eq!(decode(ENCODE.encode([0x0a, 0x7f]).as_bytes()), None);
    }

    #[test]
    fn cache_is_bounded() {
        let cache = PeerCache::default();
        for i in 0..PEER_CACHE_CAPACITY + 10 {
            let w = Workload {
                workload: format!("w{i}").into(),
                ..Workload::default()
            };
            assert!(cache.get(encode(&w).as_bytes()).is_some());
        }
        assert!(cache.peers.lock().len() <= PEER_CACHE_CAPACITY);
    }
}
