//! `runtime.accept: reuseport`: every worker a single-threaded runtime with its own
//! `SO_REUSEPORT` socket per listener. Connections are spread over the workers and served;
//! a hot reload adds, keeps, moves and removes listeners on every worker's socket; a graceful
//! drain waits for a request in flight on a worker and then closes every socket.

use std::future::Future;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use weft_e2e::upstream::{echo, gated};
use weft_e2e::{TestProxy, get, metric_value};

fn config(up: SocketAddr, listeners: &str) -> String {
    format!(
        r#"
workers: 2
runtime:
  accept: reuseport
drain_timeout: 5s
listeners:
{listeners}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#
    )
}

fn listener(name: &str, address: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {address}
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
"#
    )
}

/// Requests, each on a new connection, until both workers have accepted at least one more
/// connection than `before` (at most 200); every one must be answered by the upstream.
async fn spread(p: &TestProxy, listener: &str, before: [f64; 2]) -> [f64; 2] {
    let mut now = before;
    for i in 0..200 {
        let r = get(&p.url(listener, &format!("/n{i}"))).await;
        assert_eq!(r.status, 200, "request {i} on {listener}");
        assert_eq!(r.json()["server"], "up", "request {i} reached the upstream");
        if i % 8 == 7 {
            let m = p.metrics().await;
            now = [0, 1].map(|w| {
                metric_value(
                    &m,
                    &format!("weft_worker_downstream_cx_total{{worker=\"{w}\"}}"),
                )
            });
            if now[0] > before[0] && now[1] > before[1] {
                return now;
            }
        }
    }
    panic!("200 connections did not reach both workers: {before:?} -> {now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuseport_workers_share_connections_and_follow_reloads() {
    let up = echo("up").await;
    let p = TestProxy::start(&config(
        up,
        &(listener("main", "127.0.0.1:0") + &listener("gone", "127.0.0.1:0")),
    ))
    .await;
    let main = p.addr("main");
    let gone = p.addr("gone");
    let counts = spread(&p, "main", [0.0, 0.0]).await;

    // Reload: `main` stays on its port (same sockets), `gone` is removed, `extra` is new.
    let yaml = config(
        up,
        &(listener("main", &main.to_string()) + &listener("extra", "127.0.0.1:0")),
    );
    p.write_config(&yaml);
    p.proxy.reload().await.expect("reload applies");
    assert_eq!(p.addr("main"), main, "the kept listener keeps its port");
    assert!(
        p.proxy.listener_addr("gone").is_none(),
        "the removed listener has no slot"
    );
    let closed = weft_e2e::eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(gone).await.is_err()
    })
    .await;
    assert!(
        closed,
        "every worker's socket of the removed listener closed"
    );
    let counts = spread(&p, "main", counts).await;
    spread(&p, "extra", counts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuseport_drain_waits_for_a_request_on_a_worker() {
    let gate = gated().await;
    let p = TestProxy::start(&config(gate.addr, &listener("main", "127.0.0.1:0"))).await;
    let url = p.url("main", "/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    gate.wait_arrived(1).await;
    p.proxy.shutdown();
    assert!(!p.proxy.is_ready());
    let drain = p.proxy.wait();
    tokio::pin!(drain);
    let first = std::future::poll_fn(|cx| Poll::Ready(drain.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the drain waits for the in-flight request"
    );
    gate.open();
    let drained = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("drain ends");
    assert!(drained, "drained before the deadline");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request finished");
    assert_eq!(r.text(), "gated");
    // Every worker's socket is closed: no connection is accepted (or queued) any more.
    for _ in 0..8 {
        let refused = tokio::net::TcpStream::connect(p.addr("main")).await;
        assert!(refused.is_err(), "the listener is closed after the drain");
    }
}

#[tokio::test]
async fn an_unknown_accept_mode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.yaml");
    std::fs::write(&path, "runtime:\n  accept: per-core\n").unwrap();
    let err = weft_proxy::Proxy::start(
        weft_proxy::ConfigSource::File(path),
        weft_proxy::StartOptions::default(),
    )
    .await
    .expect_err("an unknown accept mode is refused");
    let text = err.to_string();
    assert!(
        text.contains("per-core") && text.contains("runtime"),
        "the error names the bad value: {text}"
    );
}

/// Plugin instance affinity: with two `reuseport` workers and two instances of a plugin, each
/// worker thread runs its own (home) instance, so no callback ever waits for an instance the
/// other worker is using (`weft_plugin_instance_waits_total` stays 0) while both workers serve
/// concurrent requests through the plugin. Bounded: the spread (≤ 200 requests), then 4 rounds
/// of 16 concurrent requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuseport_workers_each_run_their_own_plugin_instance() {
    let up = echo("up").await;
    let yaml = crate::plugins::one_plugin_route(
        "workers: 2\nruntime:\n  accept: reuseport",
        &crate::plugins::plugin(
            "adder",
            weft_test_artifacts::HEADER_ADDER,
            "    configuration: affine\n    instances: 2\n",
        ),
        "adder",
        up,
    );
    let p = TestProxy::start(&yaml).await;
    spread(&p, "main", [0.0, 0.0]).await;
    let url = p.url("main", "/concurrent");
    for _ in 0..4 {
        let replies = futures_util::future::join_all((0..16).map(|_| get(&url))).await;
        for r in replies {
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["headers"]["x-plugin-seen"], "affine");
        }
    }
    let m = p.metrics().await;
    assert!(
        metric_value(&m, r#"weft_plugin_streams_total{plugin="adder"}"#) >= 66.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, r#"weft_plugin_instance_waits_total{plugin="adder"}"#),
        0.0,
        "{m}"
    );
}
