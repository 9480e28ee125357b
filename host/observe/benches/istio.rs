//! The per-request cost of Istio's standard metrics in the host: what the completion of one
//! request adds when `telemetry.metrics` is on (label values, one series lookup, a counter and
//! three histograms), and what reading a peer's `x-envoy-peer-metadata` costs once its value
//! has been seen (the cache hit every request from a known peer takes). `bench/istio.sh`
//! measures the same cost end to end (CPU per request, on vs off, in one run).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_config::schema::{Node, Telemetry};
use weft_observe::istio::exchange::encode;
use weft_observe::istio::{HttpReport, LocalNode, Reporter, Reporting, Workload};

fn node() -> Node {
    Node {
        name: Some("productpage-v1-7d9c".into()),
        namespace: Some("bookinfo".into()),
        workload_name: Some("productpage-v1".into()),
        app: Some("productpage".into()),
        version: Some("v1".into()),
        cluster: Some("Kubernetes".into()),
        ..Node::default()
    }
}

fn peer() -> Workload {
    Workload {
        instance: "reviews-v2-5b6f".into(),
        namespace: "bookinfo".into(),
        workload: "reviews-v2".into(),
        cluster: "Kubernetes".into(),
        canonical_service: "reviews".into(),
        canonical_revision: "v2".into(),
        app: "reviews".into(),
        version: "v2".into(),
    }
}

fn bench(c: &mut Criterion) {
    let n = node();
    let reporting = Reporting::with_node(
        LocalNode::resolve(&n, &BTreeMap::new()),
        &n,
        &Telemetry::default(),
    );
    let peer = peer();
    let report = |reporter, code| HttpReport {
        service: None,
        reporter,
        peer: Some(&peer),
        peer_principal: Some("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"),
        local_principal: Some("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"),
        host: "reviews.bookinfo.svc.cluster.local:9080",
        grpc: false,
        grpc_status: None,
        code,
        flags: "-",
        duration_ms: 3,
        request_bytes: 420,
        response_bytes: 1800,
    };
    c.bench_function("istio/record_http source (existing series)", |b| {
        let r = report(Reporter::Source, 200);
        b.iter(|| reporting.record_http(black_box(&r)));
    });
    c.bench_function("istio/record_http destination (existing series)", |b| {
        let r = report(Reporter::Destination, 200);
        b.iter(|| reporting.record_http(black_box(&r)));
    });
    let header = encode(&peer);
    reporting.peers.get(header.as_bytes());
    c.bench_function("istio/peer metadata (cache hit)", |b| {
        b.iter(|| reporting.peers.get(black_box(header.as_bytes())));
    });
    c.bench_function("istio/peer metadata decode (miss)", |b| {
        b.iter(|| weft_observe::istio::exchange::decode(black_box(header.as_bytes())));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
