//! Graceful drain: in-flight requests finish, new connections are refused, readiness drops.

use std::time::Duration;

use weft_e2e::upstream::slow;
use weft_e2e::{TestProxy, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let up = slow(Duration::from_millis(600)).await;
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
    tokio::time::sleep(Duration::from_millis(150)).await;
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
    let drained = tokio::time::timeout(Duration::from_secs(10), p.proxy.wait())
        .await
        .expect("drain ends");
    assert!(drained, "drained before the deadline");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request finished");
    assert_eq!(r.text(), "slow");
    let refused = tokio::net::TcpStream::connect(p.addr("main")).await;
    assert!(refused.is_err(), "the listener is closed after the drain");
}
