//! Graceful drain: in-flight requests finish, new connections are refused, readiness drops.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use weft_e2e::upstream::gated;
use weft_e2e::{TestProxy, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let gate = gated().await;
    let up = gate.addr;
    let p = TestProxy::start(&format!(
        r#"
drain_timeout: 5s
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#
    ))
    .await;
    let url = p.url("main", "/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    // In flight: the upstream holds it until the gate opens.
    gate.wait_arrived(1).await;
    let admin = p.admin();
    let quit = weft_e2e::send(
        &weft_e2e::client(),
        http::Request::post(format!("http://{admin}/quitquitquit"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(quit.status, 200);
    assert!(!p.proxy.is_ready());
    // Draining starts and cannot end while the request is held upstream.
    let drain = p.proxy.wait();
    tokio::pin!(drain);
    let first = std::future::poll_fn(|cx| Poll::Ready(drain.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the drain waits for the in-flight request"
    );
    assert!(
        !in_flight.is_finished(),
        "the request is still held upstream"
    );
    // The upstream answers only now, while draining.
    gate.open();
    let drained = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("drain ends");
    assert!(drained, "drained before the deadline");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request finished");
    assert_eq!(r.text(), "gated");
    let refused = tokio::net::TcpStream::connect(p.addr("main")).await;
    assert!(refused.is_err(), "the listener is closed after the drain");
}
