//! Sidecar deployment without namespaces: Istio's sidecar ports (15021 readiness, 15090 and
//! 15020 metrics) on real listeners, a capture listener refusing a connection addressed to
//! itself, and an `original_dst` cluster. The capture path itself (iptables, SO_ORIGINAL_DST)
//! is proven in network namespaces by host/weft/tests/netns.rs.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use weft_e2e::upstream::{echo, serve};
use weft_e2e::{TestProxy, get, get_with, metric_value};

async fn sidecar_proxy(extra: &str, app_metrics: Option<std::net::SocketAddr>) -> TestProxy {
    let url = app_metrics
        .map(|a| format!("  app_metrics_url: http://{a}/metrics\n"))
        .unwrap_or_default();
    TestProxy::start(&format!(
        r#"
sidecar:
  health_address: 127.0.0.1:0
  prometheus_address: 127.0.0.1:0
  merged_metrics_address: 127.0.0.1:0
{url}{extra}"#
    ))
    .await
}

#[tokio::test]
async fn health_and_prometheus_ports_serve_only_their_paths() {
    let app = serve(|_| async {
        Response::new(Full::new(Bytes::from_static(
            b"# TYPE app_orders counter\napp_orders_total 7\n# EOF\n",
        )))
    })
    .await;
    let p = sidecar_proxy("", Some(app)).await;
    let health = p.proxy.sidecar_addr("health").unwrap();
    let prom = p.proxy.sidecar_addr("prometheus").unwrap();
    let merged = p.proxy.sidecar_addr("merged").unwrap();

    let r = get(&format!("http://{health}/healthz/ready")).await;
    assert_eq!(r.status, 200);
    let m = get(&format!("http://{prom}/stats/prometheus")).await;
    assert_eq!(m.status, 200);
    assert!(
        m.text().contains("weft_config_generation 1"),
        "{}",
        m.text()
    );
    // The admin's endpoints are not on the sidecar ports.
    assert_eq!(get(&format!("http://{prom}/config_dump")).await.status, 404);
    assert_eq!(
        get(&format!("http://{health}/stats/prometheus"))
            .await
            .status,
        404
    );

    // 15020: the application's metrics, then the proxy's, and no `# EOF` in the middle.
    let both = get(&format!("http://{merged}/stats/prometheus"))
        .await
        .text();
    assert_eq!(metric_value(&both, "app_orders_total"), 7.0, "{both}");
    assert_eq!(metric_value(&both, "weft_config_generation"), 1.0, "{both}");
    assert!(both.find("app_orders_total") < both.find("weft_config_generation"));
    assert!(!both.contains("# EOF"), "{both}");

    // Draining: not ready any more.
    p.proxy.shutdown();
    assert_eq!(
        get(&format!("http://{health}/healthz/ready")).await.status,
        503
    );
}

#[tokio::test]
async fn readiness_waits_for_a_required_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"not wasm").unwrap();
    let up = echo("up").await;
    let p = sidecar_proxy(
        &format!(
            r#"plugins:
  - name: guard
    file: {}
    failure_policy: fail_closed
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: guard }}]
    virtual_hosts: [{{ name: any, domains: ["*"], routes: [{{ route: {{ cluster: up }} }}] }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
            broken.display()
        ),
        None,
    )
    .await;
    let health = p.proxy.sidecar_addr("health").unwrap();
    let r = get(&format!("http://{health}/healthz/ready")).await;
    assert_eq!(r.status, 503);
    assert!(
        r.text().contains("plugin guard is not loaded"),
        "{}",
        r.text()
    );
    // The admin's liveness view is unchanged: the process runs.
    assert_eq!(
        get(&format!("http://{}/ready", p.admin())).await.status,
        200
    );
}

#[tokio::test]
async fn a_capture_listener_refuses_a_connection_addressed_to_itself() {
    let p = sidecar_proxy(
        r#"listeners:
  - name: virtual_outbound
    address: 127.0.0.1:0
    original_dst: true
"#,
        None,
    )
    .await;
    // Not redirected: its original destination is the capture port itself, a loop.
    let reply = weft_e2e::raw(
        p.addr("virtual_outbound"),
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert_eq!(reply, "", "closed without an answer");
    let m = p.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"weft_response_flags_total{listener="virtual_outbound",response_flag="NR"}"#
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn an_original_dst_cluster_goes_where_the_header_says() {
    let up = echo("original").await;
    let p = TestProxy::start(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts: [{ name: any, domains: ["*"], routes: [{ route: { cluster: passthrough } }] }]
clusters:
  - name: passthrough
    type: original_dst
    original_dst: { use_http_header: true }
"#,
    )
    .await;
    let url = p.url("main", "/x");
    let r = get_with(&url, &[("x-envoy-original-dst-host", &up.to_string())]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Not captured and no header: no destination.
    let r = get(&url).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no healthy upstream");
}
