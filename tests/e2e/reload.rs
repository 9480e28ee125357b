//! Hot reload: under load with zero failed requests, file watching, refusal of a bad
//! configuration while the old one keeps serving, and sockets kept across generations.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, client, eventually, get, metric_value, send};

fn config(
    cluster: &str,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    extra_listener: bool,
) -> String {
    let extra = if extra_listener {
        "  - name: extra\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: any\n        domains: [\"*\"]\n        routes: [{ direct_response: { status: 200, body: extra } }]\n"
    } else {
        ""
    };
    format!(
        r#"
access_log: {{ path: "off" }}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: {cluster} }} }}]
{extra}clusters:
  - {{ name: v1, endpoints: [{{ address: "{a}" }}] }}
  - {{ name: v2, endpoints: [{{ address: "{b}" }}] }}
"#
    )
}

async fn post(url: &str) -> weft_e2e::Reply {
    send(
        &client(),
        http::Request::post(url).body(Default::default()).unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_continuous_load_fail_no_request() {
    let a = echo("v1").await;
    let b = echo("v2").await;
    let p = TestProxy::start(&config("v1", a, b, false)).await;
    let url = p.url("main", "/");
    let port_before = p.addr("main");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let seen_v2 = Arc::new(AtomicBool::new(false));
    // Responses from each cluster: a response from the cluster a reload switched to is a
    // request the new generation served.
    let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, seen_v2, served, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            seen_v2.clone(),
            served.clone(),
            url.clone(),
        );
        load.push(tokio::spawn(async move {
            let client = client();
            // Bounded: at most 5000 requests per worker, and it stops when told.
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = http::Request::get(&url).body(Default::default()).unwrap();
                match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                    Ok(Ok(r)) if r.status() == 200 => {
                        let body = http_body_util::BodyExt::collect(r.into_body())
                            .await
                            .unwrap()
                            .to_bytes();
                        if body.windows(4).any(|w| w == b"\"v2\"") {
                            seen_v2.store(true, Ordering::Relaxed);
                            served[1].fetch_add(1, Ordering::Relaxed);
                        } else {
                            served[0].fetch_add(1, Ordering::Relaxed);
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let admin = p.admin();
    for i in 0..20 {
        let target = if i % 2 == 0 { "v2" } else { "v1" };
        let from_target = &served[if i % 2 == 0 { 1 } else { 0 }];
        let before = from_target.load(Ordering::Relaxed);
        p.write_config(&config(target, a, b, i % 4 == 0));
        let r = post(&format!("http://{admin}/reload")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Keep the load on this generation until it has served some of it.
        assert!(
            eventually(Duration::from_secs(10), || async {
                from_target.load(Ordering::Relaxed) >= before + 5
            })
            .await,
            "generation {} served the load",
            i + 2
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request may fail during reloads"
    );
    assert!(
        seen_v2.load(Ordering::Relaxed),
        "the new generation served traffic"
    );
    assert_eq!(p.addr("main"), port_before, "the listener kept its socket");
    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, r#"weft_config_reload_total{result="success"}"#),
        20.0
    );
    assert_eq!(metric_value(&m, "weft_config_generation"), 21.0);
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let a = echo("v1").await;
    let b = echo("v2").await;
    let p = TestProxy::start(&config("v1", a, b, false)).await;
    let admin = p.admin();
    let broken = config("v1", a, b, false).replace("cluster: v1 }", "cluster: nope }");
    p.write_config(&broken);
    let r = post(&format!("http://{admin}/reload")).await;
    assert_eq!(r.status, 400);
    let err = r.json()["error"].as_str().unwrap().to_owned();
    assert!(err.contains("weft.yaml:"), "{err}");
    assert!(
        err.contains(
            "listeners[0].virtual_hosts[0].routes[0].route.cluster: unknown cluster `nope`"
        ),
        "{err}"
    );
    // Still served by generation 1.
    let r = get(&p.url("main", "/")).await;
    assert_eq!(r.json()["server"], "v1");
    let dump = get(&format!("http://{admin}/config_dump")).await.json();
    assert_eq!(dump["generation"], 1);
    assert!(
        dump["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("unknown cluster")
    );
    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, r#"weft_config_reload_total{result="failure"}"#),
        1.0
    );

    // YAML that does not parse is refused the same way.
    p.write_config("listeners: [ {");
    assert_eq!(post(&format!("http://{admin}/reload")).await.status, 400);
    assert_eq!(get(&p.url("main", "/")).await.json()["server"], "v1");
}

#[tokio::test]
async fn a_changed_file_is_picked_up_by_the_watcher() {
    let a = echo("v1").await;
    let b = echo("v2").await;
    let p = TestProxy::start_with(&config("v1", a, b, false), true).await;
    assert_eq!(get(&p.url("main", "/")).await.json()["server"], "v1");
    // An atomic rename, as editors and Kubernetes do.
    p.write_config(&config("v2", a, b, true));
    let url = p.url("main", "/");
    let switched = eventually(Duration::from_secs(10), || {
        let url = url.clone();
        async move { get(&url).await.json()["server"] == "v2" }
    })
    .await;
    assert!(switched, "the watcher reloaded the file");
    assert!(
        p.proxy.listener_addr("extra").is_some(),
        "a listener added by reload is bound"
    );
    let r = get(&p.url("extra", "/")).await;
    assert_eq!(r.text(), "extra");
}
