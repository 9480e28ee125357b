//! The reload actor: concurrent reloads are applied one at a time, in order, and the newest
//! request wins; a listener that cannot be bound refuses the whole reload; a listener whose
//! protocol changes keeps its socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use weft_e2e::upstream::tcp_echo;
use weft_e2e::{TestProxy, client, get, metric_value, raw, send, tcp_exchange};

/// Version `v`: every request is answered by the proxy itself with body `v<v>` and header
/// `x-version: v<v>` (a response mixing two versions would be a torn generation).
fn versioned(v: u32) -> String {
    format!(
        r#"
access_log: {{ path: "off" }}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - direct_response: {{ status: 200, body: "v{v}" }}
            response_headers: {{ set: [{{ name: x-version, value: "v{v}" }}] }}
"#
    )
}

async fn post(url: &str) -> weft_e2e::Reply {
    send(
        &client(),
        http::Request::post(url).body(Full::default()).unwrap(),
    )
    .await
}

/// Sequential requests on one keep-alive connection until `stop`: each must be whole (body
/// and header of the same version) and versions may only go up. Returns the requests made.
fn watch_versions(
    url: String,
    stop: Arc<AtomicBool>,
    problems: Arc<parking_lot::Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let c = client();
        let mut last = 0u32;
        let mut n = 0;
        // Bounded: it stops when told, or after 50 000 requests.
        for _ in 0..50_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let req = http::Request::get(&url)
                .body(Full::<Bytes>::default())
                .unwrap();
            let outcome = match tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let header = resp
                        .headers()
                        .get("x-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                    match body {
                        Ok(body) if status == 200 && body == header.as_bytes() => {
                            let v: u32 = header[1..].parse().unwrap_or(0);
                            if v < last {
                                Err(format!("went back from v{last} to v{v}"))
                            } else {
                                last = v;
                                Ok(())
                            }
                        }
                        Ok(body) => Err(format!(
                            "torn or failed: {status} header {header:?} body {:?}",
                            String::from_utf8_lossy(&body)
                        )),
                        Err(e) => Err(format!("body: {e}")),
                    }
                }
                Ok(Err(e)) => Err(format!("request: {e}")),
                Err(_) => Err("timed out".to_owned()),
            };
            if let Err(e) = outcome {
                problems.lock().push(e);
            }
            n += 1;
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_run_in_submission_order_and_the_last_one_wins() {
    const N: u32 = 24;
    let p = TestProxy::start(&versioned(0)).await;
    let url = p.url("main", "/");
    let stop = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let watcher = watch_versions(url.clone(), stop.clone(), problems.clone());

    let configs: Vec<weft_config::Config> = (1..=N)
        .map(|v| weft_config::parse(&versioned(v), &format!("v{v}")).expect("valid"))
        .collect();
    // `join_all` polls the futures in order the first time, so the requests reach the actor
    // in this order while none of them has been answered yet.
    let results =
        futures_util::future::join_all(configs.into_iter().map(|c| p.proxy.apply(c))).await;
    let ids: Vec<u64> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("apply v{}: {e}", i + 1)))
        .collect();
    let expected: Vec<u64> = (2..=u64::from(N) + 1).collect();
    assert_eq!(ids, expected, "one generation each, consecutive, in order");

    // The live generation is the last one submitted.
    assert_eq!(p.proxy.generation().id, u64::from(N) + 1);
    let admin = format!("http://{}", p.admin());
    let dump = get(&format!("{admin}/config_dump")).await.json();
    assert_eq!(dump["generation"], u64::from(N) + 1);
    let body =
        &dump["config"]["listeners"][0]["virtual_hosts"][0]["routes"][0]["direct_response"]["body"];
    assert_eq!(body, &format!("v{N}"), "{dump}");
    let r = get(&url).await;
    assert_eq!(r.text(), format!("v{N}"));
    assert_eq!(r.header("x-version"), Some(format!("v{N}").as_str()));

    stop.store(true, Ordering::Relaxed);
    let served = watcher.await.unwrap();
    assert!(served > 0);
    let problems = problems.lock().clone();
    assert!(problems.is_empty(), "{problems:?}");
    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, r#"weft_config_reload_total{result="success"}"#),
        f64::from(N)
    );
    assert_eq!(
        metric_value(&m, "weft_config_generation"),
        f64::from(N) + 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_post_reloads_between_file_rewrites_end_on_the_last_file() {
    const N: u32 = 30;
    let p = TestProxy::start(&versioned(0)).await;
    let url = p.url("main", "/");
    let admin = format!("http://{}", p.admin());
    let stop = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let watcher = watch_versions(url.clone(), stop.clone(), problems.clone());

    // Rewrite the file, fire a reload without waiting for it, rewrite again, ...
    let mut reloads = Vec::new();
    for v in 1..=N {
        p.write_config(&versioned(v));
        let reload_url = format!("{admin}/reload");
        reloads.push(tokio::spawn(async move { post(&reload_url).await }));
    }
    let mut ids = Vec::new();
    for (i, r) in reloads.into_iter().enumerate() {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "reload {}: {}", i + 1, r.text());
        ids.push(r.json()["generation"].as_u64().expect("a generation id"));
    }
    // Reloads that queued up together share one generation; no generation is skipped.
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let last = *distinct.last().unwrap();
    assert_eq!(
        distinct,
        (2..=last).collect::<Vec<u64>>(),
        "consecutive generations: {ids:?}"
    );
    assert!(last <= u64::from(N) + 1, "{ids:?}");

    // The live generation is the newest and read the last file.
    assert_eq!(p.proxy.generation().id, last);
    let dump = get(&format!("{admin}/config_dump")).await.json();
    assert_eq!(dump["generation"], last);
    let body =
        &dump["config"]["listeners"][0]["virtual_hosts"][0]["routes"][0]["direct_response"]["body"];
    assert_eq!(body, &format!("v{N}"), "{dump}");
    assert!(dump["last_reload_error"].is_null(), "{dump}");
    let r = get(&url).await;
    assert_eq!(r.text(), format!("v{N}"));
    assert_eq!(r.header("x-version"), Some(format!("v{N}").as_str()));

    stop.store(true, Ordering::Relaxed);
    assert!(watcher.await.unwrap() > 0);
    let problems = problems.lock().clone();
    assert!(problems.is_empty(), "{problems:?}");
    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, r#"weft_config_reload_total{result="success"}"#),
        (last - 1) as f64,
        "one reload per generation"
    );
    assert_eq!(metric_value(&m, "weft_config_generation"), last as f64);
}

fn two_listeners(body: &str, extra: Option<std::net::SocketAddr>) -> String {
    let extra = extra.map_or_else(String::new, |addr| {
        format!(
            "  - name: extra\n    address: \"{addr}\"\n    virtual_hosts: [{{ name: any, domains: [\"*\"], routes: [{{ direct_response: {{ status: 200, body: extra }} }}] }}]\n"
        )
    });
    format!(
        r#"
access_log: {{ path: "off" }}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts: [{{ name: any, domains: ["*"], routes: [{{ direct_response: {{ status: 200, body: {body} }} }}] }}]
{extra}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_refuses_the_reload_and_the_old_one_keeps_serving() {
    let p = TestProxy::start(&two_listeners("first", None)).await;
    let admin = format!("http://{}", p.admin());
    let main = p.addr("main");
    // Somebody else holds the port the new listener wants.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();

    // A new listener on the taken port, and a changed route on the kept one.
    p.write_config(&two_listeners("second", Some(taken)));
    let r = post(&format!("{admin}/reload")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let err = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        err.contains("listener extra") && err.contains(&taken.to_string()),
        "the error names the listener and its address: {err}"
    );
    assert_eq!(r.json()["generation"], 1);
    // Nothing of the refused generation is live: the old route, no new listener.
    assert_eq!(p.addr("main"), main);
    assert_eq!(get(&p.url("main", "/")).await.text(), "first");
    assert!(p.proxy.listener_addr("extra").is_none());
    let dump = get(&format!("{admin}/config_dump")).await.json();
    assert_eq!(dump["generation"], 1);
    assert!(
        dump["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("listener extra")),
        "{dump}"
    );

    // Moving the existing listener onto the taken port is refused the same way, and it keeps
    // serving on its old socket.
    p.write_config(&two_listeners("third", None).replace("127.0.0.1:0", &format!("\"{taken}\"")));
    let r = post(&format!("{admin}/reload")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let err = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        err.contains("listener main") && err.contains(&taken.to_string()),
        "{err}"
    );
    assert_eq!(p.addr("main"), main);
    assert_eq!(get(&p.url("main", "/")).await.text(), "first");

    // Once the port is free, the same configuration is accepted.
    drop(squatter);
    p.write_config(&two_listeners("second", Some(taken)));
    let r = post(&format!("{admin}/reload")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["generation"],
        2,
        "refused reloads use no generation"
    );
    assert_eq!(get(&p.url("main", "/")).await.text(), "second");
    assert_eq!(p.addr("extra"), taken);
    assert_eq!(get(&p.url("extra", "/")).await.text(), "extra");
    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, r#"weft_config_reload_total{result="failure"}"#),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_switching_between_http_and_tcp_keeps_its_socket() {
    let backend = tcp_echo("echo:").await;
    let http = |body: &str| {
        format!(
            r#"
access_log: {{ path: "off" }}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts: [{{ name: any, domains: ["*"], routes: [{{ direct_response: {{ status: 200, body: {body} }} }}] }}]
clusters:
  - {{ name: backend, endpoints: [{{ address: "{backend}" }}] }}
"#
        )
    };
    let tcp = format!(
        r#"
access_log: {{ path: "off" }}
listeners:
  - name: main
    address: 127.0.0.1:0
    protocol: tcp
    tcp: {{ cluster: backend }}
clusters:
  - {{ name: backend, endpoints: [{{ address: "{backend}" }}] }}
"#
    );
    let p = TestProxy::start(&http("http-one")).await;
    let admin = format!("http://{}", p.admin());
    let addr = p.addr("main");
    assert_eq!(get(&p.url("main", "/")).await.text(), "http-one");

    p.write_config(&tcp);
    let r = post(&format!("{admin}/reload")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(p.addr("main"), addr, "same socket");
    // New connections are proxied as bytes: even an HTTP request comes back echoed.
    let echoed = tcp_exchange(addr, b"ping", 9).await;
    assert_eq!(String::from_utf8_lossy(&echoed), "echo:ping");
    let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let echoed = tcp_exchange(addr, request, 5 + request.len()).await;
    assert_eq!(
        String::from_utf8_lossy(&echoed),
        format!("echo:{}", String::from_utf8_lossy(request))
    );
    let chains = get(&format!("{admin}/chains")).await.json();
    assert_eq!(chains[0]["phases"][0], "weft.tcp_proxy", "{chains}");

    // And back: HTTP again on the same socket.
    p.write_config(&http("http-two"));
    let r = post(&format!("{admin}/reload")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(p.addr("main"), addr);
    let answer = raw(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("http-two"),
        "{answer}"
    );
    assert_eq!(get(&p.url("main", "/")).await.text(), "http-two");
}
