use std::collections::BTreeMap;

use prometheus_client::registry::Registry;
use weft_config::schema::{MetricOverride, MetricSelector, TagOverride};

use super::*;

fn node() -> Node {
    Node {
        name: Some("productpage-v1-1".into()),
        namespace: Some("bookinfo".into()),
        workload_name: Some("productpage-v1".into()),
        app: Some("productpage".into()),
        version: Some("v1".into()),
        cluster: Some("c1".into()),
        ..Node::default()
    }
}

fn reporting(telemetry: &Telemetry) -> Arc<Reporting> {
    let n = node();
    Arc::new(Reporting::with_node(
        LocalNode::resolve(&n, &BTreeMap::new()),
        &n,
        telemetry,
    ))
}

fn exposition(r: &Arc<Reporting>) -> String {
    let families = Arc::new(IstioFamilies::default());
    families.publish(r.clone());
    let mut registry = Registry::default();
    registry.register_collector(Box::new(IstioCollector(families)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
    out
}

fn reviews() -> Workload {
    Workload {
        workload: "reviews-v2".into(),
        namespace: "bookinfo".into(),
        app: "reviews".into(),
        version: "v2".into(),
        canonical_service: "reviews".into(),
        canonical_revision: "v2".into(),
        cluster: "c1".into(),
        ..Workload::default()
    }
}

fn report<'a>(reporter: Reporter, peer: Option<&'a Workload>, code: u16) -> HttpReport<'a> {
    HttpReport {
        service: None,
        reporter,
        peer,
        peer_principal: None,
        local_principal: None,
        host: "reviews:9080",
        grpc: false,
        grpc_status: None,
        code,
        flags: "-",
        duration_ms: 7,
        request_bytes: 100,
        response_bytes: 2000,
    }
}

#[test]
fn a_source_report_has_every_standard_label_in_istios_order() {
    let r = reporting(&Telemetry::default());
    let peer = reviews();
    r.record_http(&report(Reporter::Source, Some(&peer), 200));
    r.record_http(&report(Reporter::Source, Some(&peer), 200));
    let text = exposition(&r);
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .expect("a requests sample");
    assert_eq!(
        line,
        "istio_requests_total{reporter=\"source\",source_workload=\"productpage-v1\",\
         source_workload_namespace=\"bookinfo\",source_principal=\"unknown\",\
         source_app=\"productpage\",source_version=\"v1\",source_canonical_service=\"productpage\",\
         source_canonical_revision=\"v1\",source_cluster=\"c1\",destination_workload=\"reviews-v2\",\
         destination_workload_namespace=\"bookinfo\",destination_principal=\"unknown\",\
         destination_app=\"reviews\",destination_version=\"v2\",destination_service=\"reviews:9080\",\
         destination_service_name=\"reviews:9080\",destination_service_namespace=\"bookinfo\",\
         destination_canonical_service=\"reviews\",destination_canonical_revision=\"v2\",\
         destination_cluster=\"c1\",request_protocol=\"http\",response_code=\"200\",\
         grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\"} 2"
    );
    assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"));
    assert!(
        text.lines().any(
            |l| l.starts_with("istio_request_duration_milliseconds_bucket{")
                && l.contains("{le=\"10.0\",")
                && l.ends_with(" 2")
        ),
        "7 ms lands in le=10: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_response_bytes_sum{") && l.ends_with(" 4000.0"))
    );
}

#[test]
fn a_destination_report_without_a_peer_says_unknown_and_uses_spiffe_identities() {
    let r = reporting(&Telemetry::default());
    let mut rep = report(Reporter::Destination, None, 403);
    rep.peer_principal = Some("spiffe://cluster.local/ns/frontend/sa/web");
    rep.local_principal = Some("spiffe://cluster.local/ns/bookinfo/sa/productpage");
    r.record_http(&rep);
    let text = exposition(&r);
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .expect("a requests sample");
    for expected in [
        "reporter=\"destination\"",
        "source_workload=\"unknown\"",
        "source_workload_namespace=\"frontend\"",
        "source_principal=\"spiffe://cluster.local/ns/frontend/sa/web\"",
        "source_canonical_revision=\"latest\"",
        "destination_workload=\"productpage-v1\"",
        "destination_principal=\"spiffe://cluster.local/ns/bookinfo/sa/productpage\"",
        "response_code=\"403\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(line.contains(expected), "{expected} in {line}");
    }
}

#[test]
fn overrides_remove_and_upsert_labels_and_disable_families() {
    let mut t = Telemetry::default();
    let mut tags = BTreeMap::new();
    tags.insert(
        "request_protocol".to_owned(),
        TagOverride {
            operation: TagOperation::Remove,
            value: None,
        },
    );
    tags.insert(
        "mesh".to_owned(),
        TagOverride {
            operation: TagOperation::Upsert,
            value: Some("'blue'".into()),
        },
    );
    t.metrics.overrides = vec![
        MetricOverride {
            matcher: MetricSelector {
                metric: IstioMetric::RequestCount,
                mode: WorkloadMode::ClientAndServer,
            },
            disabled: false,
            tag_overrides: tags,
        },
        MetricOverride {
            matcher: MetricSelector {
                metric: IstioMetric::RequestSize,
                mode: WorkloadMode::Client,
            },
            disabled: true,
            tag_overrides: BTreeMap::new(),
        },
    ];
    let r = reporting(&t);
    r.record_http(&report(Reporter::Source, None, 200));
    let text = exposition(&r);
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .expect("a requests sample");
    assert!(!line.contains("request_protocol="), "{line}");
    assert!(line.contains("mesh=\"blue\"}"), "{line}");
    let duration = text
        .lines()
        .find(|l| l.starts_with("istio_request_duration_milliseconds_count{"))
        .expect("duration");
    assert!(
        duration.contains("request_protocol=\"http\""),
        "other families keep it"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("istio_request_bytes_")),
        "disabled for the client: {text}"
    );
}

#[test]
fn disabled_reports_nothing() {
    let mut t = Telemetry::default();
    t.metrics.enabled = false;
    let r = reporting(&t);
    r.record_http(&report(Reporter::Source, None, 200));
    assert!(!exposition(&r).contains("istio_"));
}

#[test]
fn tcp_families_have_no_response_code() {
    let r = reporting(&Telemetry::default());
    let rep = TcpReport {
        reporter: Reporter::Destination,
        peer_principal: None,
        local_principal: None,
        flags: "-",
    };
    r.record_tcp(&rep, true, false, 0, 0);
    r.record_tcp(&rep, false, true, 10, 20);
    let text = exposition(&r);
    let opened = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .expect("opened");
    assert!(opened.ends_with(" 1"));
    assert!(!opened.contains("response_code"));
    assert!(opened.contains("request_protocol=\"tcp\""));
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_tcp_sent_bytes_total{") && l.ends_with(" 10"))
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_tcp_received_bytes_total{") && l.ends_with(" 20"))
    );
}
