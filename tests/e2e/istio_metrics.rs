//! Istio's standard metrics across two Weft sidecars: the client's outbound listener reports
//! `reporter="source"`, the server's inbound listener `reporter="destination"`, each with the
//! other's workload learnt from the metadata exchange and the caller's SPIFFE identity from
//! mTLS; the exchange headers never reach the application nor leave the mesh.

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_e2e::mesh::{Pki, tls_files_yaml};
use weft_e2e::upstream::{echo, tcp_echo};
use weft_e2e::{TestProxy, eventually, get, get_with};

const HOUR: Duration = Duration::from_secs(3600);

/// The server sidecar: an inbound mTLS listener in front of `app`, `/forbidden` answered 403
/// by a direct response.
pub(crate) fn server_yaml(app: SocketAddr, tls: &str) -> String {
    format!(
        r#"
node: {{ name: reviews-v1-0, namespace: prod, workload_name: reviews-v1, app: reviews, version: v1, cluster: c1 }}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    traffic_direction: inbound
    tls: {{ {tls} }}
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - {{ match: {{ path: {{ prefix: /forbidden }} }}, direct_response: {{ status: 403, body: "no" }} }}
          - {{ route: {{ cluster: app }} }}
clusters:
  - {{ name: app, endpoints: [{{ address: "{app}" }}] }}
"#
    )
}

/// The client sidecar: an outbound listener whose cluster reaches the server over mTLS.
pub(crate) fn client_yaml(server: SocketAddr, tls: &str) -> String {
    format!(
        r#"
node: {{ name: productpage-v1-0, namespace: prod, workload_name: productpage-v1, app: productpage, version: v1, cluster: c1 }}
listeners:
  - name: outbound
    address: 127.0.0.1:0
    traffic_direction: outbound
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: reviews }} }}]
clusters:
  - name: reviews
    endpoints: [{{ address: "{server}" }}]
    tls: {{ {tls} }}
    service: {{ host: reviews.prod.svc.cluster.local }}
"#
    )
}

/// Two sidecars with mTLS between them, the server in front of an echo app.
pub(crate) async fn two_sidecars() -> (TestProxy, TestProxy, String, String, Pki) {
    let pki = Pki::new("cluster.local");
    let server_id = pki.id("prod", "reviews");
    let client_id = pki.id("prod", "productpage");
    let s = pki.issue("server", &server_id, HOUR);
    let c = pki.issue("client", &client_id, HOUR);
    let app = echo("app").await;
    let server = TestProxy::start(&server_yaml(
        app,
        &format!("mode: strict, {}", tls_files_yaml(&s)),
    ))
    .await;
    let client = TestProxy::start(&client_yaml(
        server.addr("inbound"),
        &format!(
            "{}, match_identities: [\"{server_id}\"]",
            tls_files_yaml(&c)
        ),
    ))
    .await;
    (client, server, client_id, server_id, pki)
}

/// The `istio_requests_total` line holding every `labels` fragment, and its value.
fn requests(metrics: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .find(|l| labels.iter().all(|f| l.contains(f)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sidecars_report_with_each_others_workload_and_identity() {
    let (client, server, client_id, server_id, _pki) = two_sidecars().await;

    for _ in 0..3 {
        let r = get(&client.url("outbound", "/reviews/1")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Removed before leaving the mesh, and before reaching the application.
        assert!(!r.headers.contains_key("x-envoy-peer-metadata"));
        assert!(!r.headers.contains_key("x-envoy-peer-metadata-id"));
        let seen = r.json();
        assert!(seen["headers"]["x-envoy-peer-metadata"].is_null(), "{seen}");
        assert!(seen["headers"]["x-envoy-peer-metadata-id"].is_null());
    }
    let r = get(&client.url("outbound", "/forbidden")).await;
    assert_eq!(r.status, 403);
    assert!(!r.headers.contains_key("x-envoy-peer-metadata"));

    // The source side reads the principals off its upstream mTLS connection.
    let source_principal = format!("source_principal=\"{client_id}\"");
    let destination_principal = format!("destination_principal=\"{server_id}\"");
    let source = [
        "reporter=\"source\"",
        &source_principal,
        &destination_principal,
        "source_workload=\"productpage-v1\"",
        "source_workload_namespace=\"prod\"",
        "source_app=\"productpage\"",
        "source_canonical_service=\"productpage\"",
        "destination_workload=\"reviews-v1\"",
        "destination_workload_namespace=\"prod\"",
        "destination_app=\"reviews\"",
        "destination_version=\"v1\"",
        "destination_canonical_service=\"reviews\"",
        "destination_canonical_revision=\"v1\"",
        "destination_cluster=\"c1\"",
        // The cluster's service (Istio's cluster metadata), not the request's Host.
        "destination_service=\"reviews.prod.svc.cluster.local\"",
        "destination_service_name=\"reviews\"",
        "destination_service_namespace=\"prod\"",
        "request_protocol=\"http\"",
        "connection_security_policy=\"unknown\"",
    ];
    let ok = |m: &str, code: &str, extra: &[&str]| {
        let code = format!("response_code=\"{code}\"");
        let mut all: Vec<&str> = extra.to_vec();
        all.push(&code);
        requests(m, &all)
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = client.metrics().await;
            ok(&m, "200", &source) == Some(3.0) && ok(&m, "403", &source) == Some(1.0)
        })
        .await,
        "{}",
        client.metrics().await
    );

    let destination = [
        "reporter=\"destination\"",
        "source_workload=\"productpage-v1\"",
        "source_workload_namespace=\"prod\"",
        &source_principal,
        "source_app=\"productpage\"",
        "source_version=\"v1\"",
        "source_cluster=\"c1\"",
        "destination_workload=\"reviews-v1\"",
        &destination_principal,
        "destination_service_namespace=\"prod\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_flags=\"-\"",
    ];
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = server.metrics().await;
            ok(&m, "200", &destination) == Some(3.0) && ok(&m, "403", &destination) == Some(1.0)
        })
        .await,
        "{}",
        server.metrics().await
    );
    // The histograms count the same requests.
    let m = server.metrics().await;
    let count: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("istio_request_duration_milliseconds_count{")
                && l.contains("reporter=\"destination\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(count, 4.0, "{m}");
    assert!(m.contains("istio_response_bytes_bucket{le=\"3600000.0\",reporter=\"destination\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_headers_from_a_client_are_read_answered_and_never_forwarded() {
    let app = echo("app").await;
    let server = TestProxy::start(&format!(
        r#"
node: {{ workload_name: ratings-v1, namespace: prod }}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    traffic_direction: inbound
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: app }} }}]
clusters:
  - {{ name: app, endpoints: [{{ address: "{app}" }}] }}
"#
    ))
    .await;
    // What an Envoy-based Istio sidecar sends: base64 of a protobuf Struct (built here by hand:
    // WORKLOAD_NAME = "details-v1", NAMESPACE = "prod", LABELS = {app: "details"}).
    let value = weft_observe::istio::exchange::encode(&weft_observe::istio::Workload {
        workload: "details-v1".into(),
        namespace: "prod".into(),
        app: "details".into(),
        ..Default::default()
    });
    let r = get_with(
        &server.url("inbound", "/"),
        &[
            ("x-envoy-peer-metadata", &value),
            (
                "x-envoy-peer-metadata-id",
                "sidecar~10.0.0.1~details.prod~prod.svc.cluster.local",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"]["x-envoy-peer-metadata"].is_null());
    // Answered with the server's own metadata, which decodes to its node.
    let answer = r.headers["x-envoy-peer-metadata"].as_bytes();
    let w = weft_observe::istio::exchange::decode(answer).expect("decodes");
    assert_eq!(&*w.workload, "ratings-v1");
    assert_eq!(&*w.namespace, "prod");
    assert_eq!(
        r.headers["x-envoy-peer-metadata-id"],
        "sidecar~127.0.0.1~.prod~prod.svc.cluster.local"
    );
    // A request without exchange headers gets none back (as Istio's filter).
    let plain = get(&server.url("inbound", "/")).await;
    assert!(!plain.headers.contains_key("x-envoy-peer-metadata"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = server.metrics().await;
            requests(
                &m,
                &[
                    "source_workload=\"details-v1\"",
                    "source_app=\"details\"",
                    "destination_workload=\"ratings-v1\"",
                    "connection_security_policy=\"none\"",
                ],
            ) == Some(1.0)
                && requests(&m, &["source_workload=\"unknown\""]) == Some(1.0)
        })
        .await,
        "{}",
        server.metrics().await
    );
}

/// A sidecar for the `db-v1` workload whose inbound TCP listener fronts a TCP echo
/// (`>` + what it receives); `extra` is more top-level configuration.
async fn db_sidecar(extra: &str) -> TestProxy {
    let up = tcp_echo(">").await;
    TestProxy::start(&format!(
        r#"
node: {{ workload_name: db-v1, namespace: data }}
{extra}
listeners:
  - name: db
    address: 127.0.0.1:0
    protocol: tcp
    traffic_direction: inbound
    tcp: {{ cluster: db }}
clusters:
  - {{ name: db, endpoints: [{{ address: "{up}" }}] }}
"#
    ))
    .await
}

/// The value of the `db-v1` destination series of a TCP `family`.
fn db_series(m: &str, family: &str) -> Option<f64> {
    m.lines()
        .find(|l| {
            l.starts_with(&format!("{family}{{"))
                && l.contains("reporter=\"destination\"")
                && l.contains("destination_workload=\"db-v1\"")
                && l.contains("request_protocol=\"tcp\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_and_bytes_are_reported() {
    let p = db_sidecar("").await;
    let mut s = tokio::net::TcpStream::connect(p.addr("db")).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b">hello");
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = p.metrics().await;
            db_series(&m, "istio_tcp_connections_opened_total") == Some(1.0)
                && db_series(&m, "istio_tcp_connections_closed_total") == Some(1.0)
                && db_series(&m, "istio_tcp_received_bytes_total") == Some(5.0)
                && db_series(&m, "istio_tcp_sent_bytes_total") == Some(6.0)
        })
        .await,
        "{}",
        p.metrics().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_means_no_istio_families_and_no_exchange() {
    let app = echo("app").await;
    let p = TestProxy::start(&format!(
        r#"
telemetry: {{ metrics: {{ enabled: false }} }}
listeners:
  - name: out
    address: 127.0.0.1:0
    traffic_direction: outbound
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: app }} }}]
clusters:
  - {{ name: app, endpoints: [{{ address: "{app}" }}] }}
"#
    ))
    .await;
    let r = get(&p.url("out", "/")).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"]["x-envoy-peer-metadata"].is_null());
    let m = p.metrics().await;
    assert!(!m.contains("istio_"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_the_exposition_sends_headers_only() {
    let p = TestProxy::start("listeners: []\n").await;
    let url = format!("http://{}/stats/prometheus", p.admin());
    let head = weft_e2e::send(
        &weft_e2e::client(),
        Request::head(&url)
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let length: usize = head.headers["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 0);
}

/// A gRPC server normally sends `grpc-status` in the trailers after the response message (only
/// a "trailers-only" error puts it in the headers): `grpc_response_status` must come from
/// there, as Istio's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_is_read_from_the_response_trailers() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    // An h2c upstream answering every call with one message, then `grpc-status: 7`.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("7"));
                    trailers.insert(
                        "grpc-message",
                        http::HeaderValue::from_static("permission denied"),
                    );
                    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    let p = TestProxy::start(&format!(
        r#"
node: {{ workload_name: ratings-v1, namespace: prod }}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    traffic_direction: inbound
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: grpc }} }}]
clusters:
  - {{ name: grpc, protocol: http2, endpoints: [{{ address: "{up}" }}] }}
"#
    ))
    .await;
    let client = weft_e2e::h2_client();
    let req = Request::post(p.url("inbound", "/ratings.Ratings/Get"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = client.request(req).await.expect("request sent");
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.expect("body read");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"7"[..]),
        "the client gets the upstream's trailers"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            requests(
                &p.metrics().await,
                &[
                    "reporter=\"destination\"",
                    "request_protocol=\"grpc\"",
                    "response_code=\"200\"",
                    "grpc_response_status=\"7\"",
                ],
            ) == Some(1.0)
        })
        .await,
        "{}",
        p.metrics().await
    );
}

/// A long-lived TCP connection shows its bytes while it is still open (Istio reports every
/// `tcp_reporting_duration`), and the close adds only what moved since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tcp_connections_report_their_bytes_periodically() {
    let p = db_sidecar("telemetry: { metrics: { tcp_reporting_interval: 50ms } }").await;
    let mut s = tokio::net::TcpStream::connect(p.addr("db")).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b">hello");
    // Still open: the bytes are reported, the connection is not closed.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = p.metrics().await;
            db_series(&m, "istio_tcp_received_bytes_total") == Some(5.0)
                && db_series(&m, "istio_tcp_sent_bytes_total") == Some(6.0)
        })
        .await,
        "{}",
        p.metrics().await
    );
    let m = p.metrics().await;
    assert_eq!(
        db_series(&m, "istio_tcp_connections_opened_total"),
        Some(1.0)
    );
    assert_ne!(
        db_series(&m, "istio_tcp_connections_closed_total"),
        Some(1.0),
        "{m}"
    );
    s.write_all(b"again").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = p.metrics().await;
            db_series(&m, "istio_tcp_connections_closed_total") == Some(1.0)
                && db_series(&m, "istio_tcp_received_bytes_total") == Some(10.0)
                && db_series(&m, "istio_tcp_sent_bytes_total") == Some(12.0)
        })
        .await,
        "{}",
        p.metrics().await
    );
}
