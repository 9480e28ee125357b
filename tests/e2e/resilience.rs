//! Traffic management against upstreams that fail on purpose: retries (with a killed endpoint
//! under load, body replay, budgets, per-try timeouts), circuit breakers, outlier ejection and
//! recovery, active health checks and panic mode, weighted splits under reload, fault injection,
//! mirroring and local rate limits. Every load loop is bounded in count and time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use weft_e2e::envoy::{http_bootstrap, static_cluster};
use weft_e2e::faulty::{Faulty, Mode};
use weft_e2e::upstream::{echo, gated};
use weft_e2e::{TestProxy, client, eventually, get, get_with, metric_value, send};

fn proxy_yaml(routes: &str, clusters: &str) -> String {
    format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
{routes}
clusters:
{clusters}
"#
    )
}

async fn post(url: &str, body: &'static str) -> weft_e2e::Reply {
    send(
        &client(),
        http::Request::post(url)
            .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap(),
    )
    .await
}

/// The next message of `rx` (the answer of a request task), 10 s at most (a failure guard).
async fn next_answer<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an answer within 10 s")
        .expect("a request task answered")
}

async fn clusters_text(p: &TestProxy) -> String {
    get(&format!("http://{}/clusters", p.admin())).await.text()
}

/// Sends `n` GETs from `workers` concurrent clients; returns (status → count).
async fn load(url: &str, n: usize, workers: usize) -> HashMap<u16, usize> {
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (url, done) = (url.to_owned(), done.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut counts: HashMap<u16, usize> = HashMap::new();
            while done.fetch_add(1, Ordering::Relaxed) < n {
                let req = http::Request::get(&url).body(Full::default()).unwrap();
                let status =
                    match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
                        Ok(Ok(r)) => {
                            let s = r.status().as_u16();
                            let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                            s
                        }
                        _ => 0,
                    };
                *counts.entry(status).or_default() += 1;
            }
            counts
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_endpoints_killed_under_load_fails_no_request_with_one_retry() {
    let ups = [
        Faulty::start("a").await,
        Faulty::start("b").await,
        Faulty::start("c").await,
    ];
    let p = TestProxy::start(&proxy_yaml(
        "          - route:\n              cluster: backends\n              retry_policy: { num_retries: 1, retry_on: \"connect-failure,reset,5xx\", per_try_timeout: 2s }",
        &format!(
            "  - name: backends\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}, {{ address: \"{}\" }}]",
            ups[0].addr, ups[1].addr, ups[2].addr
        ),
    ))
    .await;
    let url = p.url("main", "/");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = http::Request::get(&url).body(Full::default()).unwrap();
                match tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
                    Ok(Ok(r)) if r.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            ok.load(Ordering::Relaxed) >= 200
        })
        .await
    );
    ups[1].kill();
    let b_at_kill = ups[1].hits();
    let ok_at_kill = ok.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(20), || async {
            ok.load(Ordering::Relaxed) >= ok_at_kill + 600
        })
        .await
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let m = p.metrics().await;
    let retries = metric_value(&m, r#"weft_upstream_rq_retry_total{cluster="backends"}"#);
    println!(
        "killed-endpoint load: ok={} failed={} retries={retries}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request may fail");
    assert!(
        retries >= 1.0,
        "requests to the killed endpoint were retried"
    );
    assert!(
        ups[1].hits() <= b_at_kill + 4,
        "the killed endpoint served nothing more"
    );
    assert!(ups[0].hits() > 0 && ups[2].hits() > 0);
}

#[tokio::test]
async fn retries_replay_the_body_and_tell_the_upstream_the_attempt() {
    let up = Faulty::start("only").await;
    up.burst(2, 503);
    let p = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: one, retry_policy: { attempts: 2, retry_on: 5xx, retry_back_off: { base_interval: 1ms } } }",
        &format!("  - {{ name: one, endpoints: [{{ address: \"{}\" }}] }}", up.addr),
    ))
    .await;
    let r = post(&p.url("main", "/submit"), "payload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["attempt"], "3");
    assert_eq!(j["body"], "payload", "the third try carried the whole body");
    assert_eq!(up.hits(), 3);
    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, r#"weft_upstream_rq_retry_total{cluster="one"}"#),
        2.0
    );
    assert_eq!(
        metric_value(&m, r#"weft_upstream_rq_retry_success_total{cluster="one"}"#),
        1.0
    );
}

#[tokio::test]
async fn exhausted_retries_are_flagged_and_budgets_and_per_try_timeouts_bound_them() {
    let bad = Faulty::start("bad").await;
    bad.set(Mode::Status(503));
    let stall = Faulty::start("stall").await;
    stall.set(Mode::Stall);
    let spent = Faulty::start("spent").await;
    spent.set(Mode::Status(503));
    let p = TestProxy::start(&proxy_yaml(
        "          - match: { path: { prefix: /bad } }\n            route: { cluster: bad, retry_policy: { num_retries: 2, retry_on: gateway-error, retry_back_off: { base_interval: 1ms } } }\n          - match: { path: { prefix: /stall } }\n            route: { cluster: stall, timeout: 1h, retry_policy: { num_retries: 1, retry_on: reset, per_try_timeout: 100ms } }\n          - route: { cluster: spent, retry_policy: { num_retries: 3, retry_on: 5xx } }",
        &format!(
            "  - {{ name: bad, endpoints: [{{ address: \"{}\" }}] }}\n  - {{ name: stall, endpoints: [{{ address: \"{}\" }}] }}\n  - {{ name: spent, retry_budget: {{ budget_percent: 0, min_retry_concurrency: 0 }}, endpoints: [{{ address: \"{}\" }}] }}",
            bad.addr, stall.addr, spent.addr
        ),
    ))
    .await;
    let r = get(&p.url("main", "/bad")).await;
    assert_eq!(r.status, 503);
    assert_eq!(bad.hits(), 3, "one try and two retries");
    // Per-try timeouts, not the route timeout, end it: with a route timeout of an hour, an
    // answer at all (`get` gives up after 10 s) means both tries were cut short, and the
    // second try (the retry) only happens when the first one timed out on its own.
    let r = get(&p.url("main", "/stall")).await;
    assert_eq!(r.status, 504);
    assert_eq!(stall.hits(), 2);
    let r = get(&p.url("main", "/other")).await;
    assert_eq!(r.status, 503);
    assert_eq!(spent.hits(), 1, "an empty budget allows no retry");
    let log = p.access_log_lines(3).await;
    let flags: Vec<&str> = log
        .iter()
        .map(|l| l["response_flags"].as_str().unwrap())
        .collect();
    assert_eq!(flags, ["URX", "UT,URX", "-"]);
    let attempts: Vec<u64> = log
        .iter()
        .map(|l| l["upstream_request_attempt_count"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [3, 2, 1]);
    let m = p.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"weft_upstream_rq_retry_overflow_total{cluster="spent",reason="budget"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_upstream_rq_retry_limit_exceeded_total{cluster="bad"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(&m, r#"weft_upstream_rq_timeout_total{cluster="stall"}"#),
        2.0,
        "both tries timed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_overflow_is_a_fast_503_uo_while_admitted_requests_keep_their_latency() {
    // The upstream holds every request until released: the overflow must be answered while
    // the admitted requests are provably still waiting for it.
    let gate = gated().await;
    let up = gate.addr;
    let p = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: guarded }",
        &format!(
            "  - {{ name: guarded, circuit_breakers: {{ max_requests: 2 }}, endpoints: [{{ address: \"{up}\" }}] }}"
        ),
    ))
    .await;
    let url = p.url("main", "/");
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..10 {
        let (url, done_tx) = (url.clone(), done_tx.clone());
        tokio::spawn(async move {
            let r = get(&url).await;
            let _ = done_tx.send((
                r.status.as_u16(),
                r.header("x-envoy-overloaded").is_some(),
                r.text(),
            ));
        });
    }
    drop(done_tx);
    // Eight answers come back while the upstream has answered nothing: the overflow did not
    // wait for the upstream.
    for _ in 0..8 {
        let (status, overloaded, _) = next_answer(&mut done).await;
        assert_eq!(
            status, 503,
            "only overflow can be answered before the upstream"
        );
        assert!(overloaded);
    }
    gate.wait_arrived(2).await;
    assert_eq!(
        gate.arrived(),
        2,
        "only the two admitted requests reached the upstream"
    );
    assert!(
        done.try_recv().is_err(),
        "the admitted requests are still waiting"
    );
    // The admitted requests end as soon as the upstream answers, with its answer.
    gate.open();
    for _ in 0..2 {
        let (status, _, body) = next_answer(&mut done).await;
        assert_eq!(status, 200);
        assert_eq!(body, "gated", "admitted requests got the upstream's answer");
    }
    assert!(done.recv().await.is_none(), "ten answers in all");
    let m = p.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"weft_circuit_breaker_overflow_total{cluster="guarded",reason="max_requests"}"#
        ),
        8.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_response_flags_total{listener="main",response_flag="UO"}"#
        ),
        8.0
    );
}

#[tokio::test]
async fn consecutive_5xx_eject_an_endpoint_which_comes_back_after_the_ejection_time() {
    let good = Faulty::start("good").await;
    let bad = Faulty::start("bad").await;
    bad.set(Mode::Status(500));
    let yaml = |breaker: u32| {
        proxy_yaml(
            "          - route: { cluster: pair }",
            &format!(
                "  - name: pair\n    circuit_breakers: {{ max_requests: {breaker} }}\n    outlier_detection: {{ consecutive_5xx: 3, interval: 100ms, base_ejection_time: 1s, max_ejection_percent: 50 }}\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}]",
                good.addr, bad.addr
            ),
        )
    };
    let p = TestProxy::start(&yaml(1000)).await;
    let url = p.url("main", "/");
    let mut failures = 0;
    for _ in 0..20 {
        if get(&url).await.status != 200 {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 3,
        "ejected after exactly consecutive_5xx failures"
    );
    assert_eq!(bad.hits(), 3);
    let text = clusters_text(&p).await;
    assert!(
        text.contains(&format!(
            "pair::{}::health_flags::/failed_outlier_check",
            bad.addr
        )),
        "{text}"
    );
    // A reload that changes the cluster's settings but not its endpoints keeps the ejection.
    p.write_config(&yaml(999));
    let r = send(
        &client(),
        http::Request::post(format!("http://{}/reload", p.admin()))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = clusters_text(&p).await;
    assert!(
        text.contains("pair::default_priority::max_requests::999"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pair::{}::health_flags::/failed_outlier_check",
            bad.addr
        )),
        "the ejection survived the reload: {text}"
    );
    bad.set(Mode::Ok);
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&url).await;
            bad.hits() > 3
        })
        .await,
        "the endpoint is used again after its ejection time"
    );
    let text = clusters_text(&p).await;
    assert!(
        text.contains(&format!("pair::{}::health_flags::healthy", bad.addr)),
        "{text}"
    );
    assert!(
        text.contains(&format!("pair::{}::ejections_total::1", bad.addr)),
        "{text}"
    );
    let m = p.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"weft_outlier_ejections_total{cluster="pair",reason="consecutive_5xx"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn active_health_checks_take_a_killed_endpoint_out_and_bring_it_back() {
    let ups = [
        Faulty::start("a").await,
        Faulty::start("b").await,
        Faulty::start("c").await,
    ];
    let eps = format!(
        "[{{ address: \"{}\" }}, {{ address: \"{}\" }}, {{ address: \"{}\" }}]",
        ups[0].addr, ups[1].addr, ups[2].addr
    );
    let p = TestProxy::start(&proxy_yaml(
        "          - match: { path: { prefix: /tcp } }\n            route: { cluster: tcp }\n          - route: { cluster: http }",
        &format!(
            "  - name: http\n    health_checks: [{{ http: {{ path: /healthz, expected_statuses: [\"200-299\"] }}, interval: 50ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 1 }}]\n    endpoints: {eps}\n  - name: tcp\n    health_checks: [{{ tcp: {{}}, interval: 50ms, timeout: 500ms, unhealthy_threshold: 2 }}]\n    endpoints: {eps}"
        ),
    ))
    .await;
    let b = ups[1].addr;
    ups[1].kill();
    assert!(
        eventually(Duration::from_secs(5), || async {
            let t = clusters_text(&p).await;
            t.contains(&format!("http::{b}::health_flags::/failed_active_hc"))
                && t.contains(&format!("tcp::{b}::health_flags::/failed_active_hc"))
        })
        .await,
        "{}",
        clusters_text(&p).await
    );
    for path in ["/", "/tcp"] {
        let counts = load(&p.url("main", path), 60, 2).await;
        assert_eq!(counts.get(&200), Some(&60), "{path}: {counts:?}");
    }
    ups[1].restart().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            !clusters_text(&p).await.contains("failed_active_hc")
        })
        .await
    );
    let before = ups[1].hits();
    let counts = load(&p.url("main", "/"), 30, 1).await;
    assert_eq!(counts.get(&200), Some(&30));
    assert!(
        ups[1].hits() >= before + 9,
        "the endpoint rejoined the balancer"
    );
    let m = p.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"weft_health_check_total{cluster="http",reason="failure"}"#
        ) >= 2.0
    );
    assert_eq!(
        metric_value(&m, r#"weft_membership_healthy{cluster="http"}"#),
        3.0
    );
}

#[tokio::test]
async fn below_the_panic_threshold_traffic_spreads_over_all_endpoints() {
    let a = Faulty::start("a").await;
    let b = Faulty::start("b").await;
    a.set_healthy(false);
    b.set_healthy(false);
    let eps = format!(
        "[{{ address: \"{}\" }}, {{ address: \"{}\" }}]",
        a.addr, b.addr
    );
    let hc = "[{ http: { path: /healthz }, interval: 50ms, unhealthy_threshold: 1 }]";
    let p = TestProxy::start(&proxy_yaml(
        "          - match: { path: { prefix: /strict } }\n            route: { cluster: strict }\n          - route: { cluster: lenient }",
        &format!(
            "  - {{ name: lenient, health_checks: {hc}, endpoints: {eps} }}\n  - {{ name: strict, panic_threshold: 0, health_checks: {hc}, endpoints: {eps} }}"
        ),
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            clusters_text(&p).await.matches("/failed_active_hc").count() == 4
        })
        .await
    );
    let counts = load(&p.url("main", "/"), 20, 1).await;
    assert_eq!(counts.get(&200), Some(&20), "panic mode serves: {counts:?}");
    assert!(a.hits() > 0 && b.hits() > 0);
    let r = get(&p.url("main", "/strict")).await;
    assert_eq!(
        r.status, 503,
        "without a panic threshold nothing is available"
    );
    assert_eq!(r.text(), "no healthy upstream");
    let m = p.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"weft_upstream_lb_healthy_panic_total{cluster="lenient"}"#
        ) >= 20.0
    );
}

fn split_yaml(v1: std::net::SocketAddr, v2: std::net::SocketAddr, w1: u32, w2: u32) -> String {
    proxy_yaml(
        &format!(
            "          - match: {{ headers: [{{ name: user-agent, regex: \".*Windows.*\" }}] }}\n            route: {{ cluster: v2 }}\n          - route: {{ weighted_clusters: [{{ name: v1, weight: {w1} }}, {{ name: v2, weight: {w2} }}] }}"
        ),
        &format!(
            "  - {{ name: v1, endpoints: [{{ address: \"{v1}\" }}] }}\n  - {{ name: v2, endpoints: [{{ address: \"{v2}\" }}] }}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_holds_over_10000_requests_and_reweights_under_load_without_failure() {
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    let p = TestProxy::start(&split_yaml(v1, v2, 90, 10)).await;
    let url = p.url("main", "/");
    // Content-based canary: Windows user agents go to v2.
    for _ in 0..5 {
        let r = get_with(&url, &[("user-agent", "Mozilla/5.0 (Windows NT 10.0)")]).await;
        assert_eq!(r.json()["server"], "v2");
    }
    let counts = load(&url, 10_000, 8).await;
    assert_eq!(counts.get(&200), Some(&10_000), "{counts:?}");
    let m = p.metrics().await;
    let to_v2 = metric_value(
        &m,
        r#"weft_upstream_rq_total{cluster="v2",code_class="2xx"}"#,
    ) - 5.0;
    println!("90/10 over 10000: v2 got {to_v2}");
    // Expected 1000; σ = 30; the bounds are five σ.
    assert!((850.0..=1150.0).contains(&to_v2), "v2 got {to_v2}");

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let background = {
        let (url, stop, answered) = (url.clone(), stop.clone(), answered.clone());
        tokio::spawn(async move {
            let c = client();
            let mut failed = 0;
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                let req = http::Request::get(&url).body(Full::default()).unwrap();
                match tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
                    Ok(Ok(r)) if r.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                    }
                    _ => failed += 1,
                }
                sent += 1;
                answered.fetch_add(1, Ordering::Relaxed);
            }
            (sent, failed)
        })
    };
    // The load runs on the old weights, across the reload, and on the new weights.
    let progressed = |from: usize| {
        let answered = answered.clone();
        async move {
            eventually(Duration::from_secs(10), || async {
                answered.load(Ordering::Relaxed) >= from + 50
            })
            .await
        }
    };
    assert!(progressed(0).await, "the load runs before the reload");
    p.write_config(&split_yaml(v1, v2, 50, 50));
    let r = send(
        &client(),
        http::Request::post(format!("http://{}/reload", p.admin()))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let at_reload = answered.load(Ordering::Relaxed);
    assert!(
        progressed(at_reload).await,
        "the load runs after the reload"
    );
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = background.await.unwrap();
    assert!(sent >= 100, "{sent}");
    assert_eq!(failed, 0, "no request failed across the re-weighting");
    let before = metric_value(
        &p.metrics().await,
        r#"weft_upstream_rq_total{cluster="v2",code_class="2xx"}"#,
    );
    let counts = load(&url, 2000, 4).await;
    assert_eq!(counts.get(&200), Some(&2000));
    let after = metric_value(
        &p.metrics().await,
        r#"weft_upstream_rq_total{cluster="v2",code_class="2xx"}"#,
    );
    let share = after - before;
    println!("50/50 over 2000 after reload: v2 got {share}");
    // Expected 1000; σ ≈ 22.4; five σ.
    assert!((888.0..=1112.0).contains(&share), "v2 got {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_percentages_hold_and_header_gated_delays_and_grpc_aborts_apply() {
    let p = TestProxy::start(&proxy_yaml(
        "          - match: { path: { prefix: /abort } }\n            fault: { abort: { http_status: 503, percentage: 30 } }\n            direct_response: { status: 200 }\n          - match: { path: { prefix: /delay } }\n            fault: { delay: { fixed_delay: 1ms, percentage: 50 } }\n            direct_response: { status: 200 }\n          - match: { path: { prefix: /gated } }\n            fault: { delay: { fixed_delay: 300ms }, headers: [{ name: x-chaos, exact: \"on\" }] }\n            direct_response: { status: 200 }\n          - match: { path: { prefix: /grpc } }\n            fault: { abort: { grpc_status: 14 } }\n            direct_response: { status: 200 }",
        "  - { name: unused, endpoints: [{ address: \"127.0.0.1:9\" }] }",
    ))
    .await;
    let counts = load(&p.url("main", "/abort"), 2000, 4).await;
    let aborted = counts.get(&503).copied().unwrap_or(0);
    println!("abort 30% of 2000: {aborted}");
    // Expected 600; σ ≈ 20.5; five σ.
    assert!((498..=702).contains(&aborted), "{counts:?}");
    assert_eq!(aborted + counts.get(&200).copied().unwrap_or(0), 2000);
    let counts = load(&p.url("main", "/delay"), 1000, 4).await;
    assert_eq!(counts.get(&200), Some(&1000));
    let m = p.metrics().await;
    let delayed = metric_value(
        &m,
        r#"weft_fault_injected_total{listener="main",route="any/1",kind="delay"}"#,
    );
    println!("delay 50% of 1000: {delayed}");
    // Expected 500; σ ≈ 15.8; five σ.
    assert!((421.0..=579.0).contains(&delayed), "{delayed}");
    // The header-gated delay: counted (and flagged `DI` in the access log, below) only for
    // the request that carries the header.
    let gated_delays = async || {
        metric_value(
            &p.metrics().await,
            r#"weft_fault_injected_total{listener="main",route="any/2",kind="delay"}"#,
        )
    };
    assert_eq!(get(&p.url("main", "/gated")).await.status, 200);
    assert_eq!(gated_delays().await, 0.0, "no header, no delay");
    assert_eq!(
        get_with(&p.url("main", "/gated"), &[("x-chaos", "on")])
            .await
            .status,
        200
    );
    assert_eq!(gated_delays().await, 1.0, "the header brings the delay");
    let r = get(&p.url("main", "/grpc")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("14"));
    let log = p.access_log_lines(3003).await;
    let flags: Vec<&str> = log[log.len() - 3..]
        .iter()
        .map(|l| l["response_flags"].as_str().unwrap())
        .collect();
    assert_eq!(flags, ["-", "DI", "FI"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_a_share_with_a_shadow_host_and_never_slow_the_primary() {
    let primary = echo("primary").await;
    let stalled = Faulty::start("stalled").await;
    stalled.set(Mode::Stall);
    let half = Faulty::start("half").await;
    let p = TestProxy::start(&proxy_yaml(
        "          - match: { path: { prefix: /stalled } }\n            route: { cluster: primary, timeout: 1h, request_mirror_policies: [{ cluster: stalled }] }\n          - route: { cluster: primary, request_mirror_policies: [{ cluster: half, percentage: 50 }] }",
        &format!(
            "  - {{ name: primary, endpoints: [{{ address: \"{primary}\" }}] }}\n  - {{ name: stalled, endpoints: [{{ address: \"{}\" }}] }}\n  - {{ name: half, endpoints: [{{ address: \"{}\" }}] }}",
            stalled.addr, half.addr
        ),
    ))
    .await;
    let c = client();
    // The shadow never answers and may take an hour (the route timeout) to be given up on, so
    // a primary answer that waited for it would never come (`send` gives up after 10 s).
    for _ in 0..20 {
        let r = send(
            &c,
            http::Request::get(p.url("main", "/stalled"))
                .header("host", "reviews")
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["server"], "primary");
    }
    assert!(eventually(Duration::from_secs(5), || async { stalled.hits() == 20 }).await);
    // Every shadow reached the stalled upstream and none has finished: all twenty primary
    // answers came back while their shadows were still waiting.
    let m = p.metrics().await;
    for reason in ["sent", "failed", "skipped"] {
        let series =
            format!(r#"weft_upstream_rq_mirror_total{{cluster="stalled",reason="{reason}"}}"#);
        assert!(m.contains(&series), "{m}");
        assert_eq!(metric_value(&m, &series), 0.0, "shadows {reason}");
    }
    assert!(
        stalled.hosts().iter().all(|h| h == "reviews-shadow"),
        "{:?}",
        stalled.hosts()
    );
    let counts = load(&p.url("main", "/"), 400, 4).await;
    assert_eq!(counts.get(&200), Some(&400));
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = p.metrics().await;
            let sent = metric_value(
                &m,
                r#"weft_upstream_rq_mirror_total{cluster="half",reason="sent"}"#,
            );
            sent == half.hits() as f64
        })
        .await
    );
    let mirrored = half.hits();
    println!("mirror 50% of 400: {mirrored}");
    // Expected 200; σ = 10; five σ.
    assert!((150..=250).contains(&mirrored), "{mirrored}");
}

#[tokio::test]
async fn local_rate_limits_answer_429_with_retry_after_per_route_and_per_listener() {
    let up = echo("up").await;
    let p = TestProxy::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - local_rate_limit: {{ max_tokens: 3, fill_interval: 1h }}
            route: {{ cluster: up }}
  - name: edge
    address: 127.0.0.1:0
    local_rate_limit: {{ max_tokens: 2, tokens_per_fill: 1, fill_interval: 30s }}
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ direct_response: {{ status: 204 }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(get(&p.url("main", "/")).await.status, 200);
    }
    let r = get(&p.url("main", "/")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("3600"));
    for _ in 0..2 {
        assert_eq!(get(&p.url("edge", "/")).await.status, 204);
    }
    let r = get(&p.url("edge", "/")).await;
    assert_eq!(r.status, 429);
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&secs));
    let m = p.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"weft_local_rate_limited_total{listener="main",route="any/0"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_local_rate_limited_total{listener="edge",route=""}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_response_flags_total{listener="main",response_flag="RL"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_slow_drip_body_is_not_cut_by_the_per_try_timeout_and_resets_are_retried() {
    let drip = Faulty::start("drip").await;
    drip.set(Mode::Drip {
        chunks: 5,
        every: Duration::from_millis(100),
    });
    let flaky = Faulty::start("flaky").await;
    flaky.set(Mode::Reset);
    let steady = Faulty::start("steady").await;
    let p = TestProxy::start(&proxy_yaml(
        "          - match: { path: { prefix: /drip } }\n            route: { cluster: drip, retry_policy: { num_retries: 1, retry_on: reset, per_try_timeout: 200ms } }\n          - route: { cluster: mixed, retry_policy: { num_retries: 1, retry_on: reset } }",
        &format!(
            "  - {{ name: drip, endpoints: [{{ address: \"{}\" }}] }}\n  - {{ name: mixed, endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}] }}",
            drip.addr, flaky.addr, steady.addr
        ),
    ))
    .await;
    let r = get(&p.url("main", "/drip")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "drip\n".repeat(5));
    assert_eq!(drip.hits(), 1, "a response that started is never retried");
    let counts = load(&p.url("main", "/"), 20, 1).await;
    assert_eq!(
        counts.get(&200),
        Some(&20),
        "resets go to the other endpoint: {counts:?}"
    );
    assert!(flaky.hits() >= 5, "the resetting endpoint was tried");
}

#[tokio::test]
async fn a_chunked_body_of_unknown_length_is_buffered_and_replayed() {
    let up = Faulty::start("only").await;
    up.burst(1, 502);
    let p = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: one, retry_policy: { num_retries: 1, retry_on: gateway-error, per_request_buffer_limit_bytes: 16 } }",
        &format!("  - {{ name: one, endpoints: [{{ address: \"{}\" }}] }}", up.addr),
    ))
    .await;
    let addr = p.addr("main");
    let reply = weft_e2e::raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\npay\r\n4\r\nload\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""attempt":"2""#), "{reply}");
    assert!(reply.contains(r#""body":"payload""#), "{reply}");
    // Over the limit: streamed once, not retried.
    up.burst(1, 502);
    let reply = weft_e2e::raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n0123456789abcdefg\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn health_checks_stop_with_their_generation_and_state_survives_an_unchanged_reload() {
    let up = Faulty::start("checked").await;
    up.set_healthy(false);
    let with_check = |interval: &str| {
        proxy_yaml(
            "          - route: { cluster: checked }",
            &format!(
                "  - {{ name: checked, panic_threshold: 0, health_checks: [{{ http: {{ path: /healthz }}, interval: {interval}, unhealthy_threshold: 1 }}], endpoints: [{{ address: \"{}\" }}] }}",
                up.addr
            ),
        )
    };
    let p = TestProxy::start(&with_check("20ms")).await;
    let reload = || async {
        send(
            &client(),
            http::Request::post(format!("http://{}/reload", p.admin()))
                .body(Full::default())
                .unwrap(),
        )
        .await
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&p.url("main", "/")).await.status == 503
        })
        .await,
        "the failing endpoint left the balancer"
    );
    // Only the listener changes: the cluster, its checker and its state carry over.
    p.write_config(&with_check("20ms").replace("name: any", "name: renamed"));
    assert_eq!(reload().await.status, 200);
    assert_eq!(
        get(&p.url("main", "/")).await.status,
        503,
        "still out after the reload"
    );
    // The cluster goes away: its checker stops. A witness cluster, checked at the same
    // interval, measures the time in the proxy's own check rounds instead of sleeping.
    let witness = Faulty::start("witness").await;
    p.write_config(&proxy_yaml(
        "          - direct_response: { status: 204 }",
        &format!(
            "  - {{ name: other, health_checks: [{{ http: {{ path: /healthz }}, interval: 20ms, unhealthy_threshold: 1 }}], endpoints: [{{ address: \"{}\" }}] }}",
            witness.addr
        ),
    ));
    assert_eq!(reload().await.status, 200);
    assert_eq!(get(&p.url("main", "/")).await.status, 204);
    let witness_rounds = |n: u64| {
        let witness = &witness;
        async move {
            let from = witness.health_hits();
            assert!(
                eventually(Duration::from_secs(10), || async {
                    witness.health_hits() >= from + n
                })
                .await,
                "the witness was checked {n} more times"
            );
        }
    };
    // Settle: a check the old checker had in flight lands.
    witness_rounds(5).await;
    let after_removal = up.health_hits();
    // Fifteen rounds of 20 ms: a checker still running would have checked about as often.
    witness_rounds(15).await;
    assert!(
        up.health_hits() <= after_removal + 1,
        "no checks after the cluster was dropped: {} then {} (witness: {})",
        after_removal,
        up.health_hits(),
        witness.health_hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_a_low_success_rate_is_ejected_by_success_rate() {
    let ups = [
        Faulty::start("a").await,
        Faulty::start("b").await,
        Faulty::start("c").await,
        Faulty::start("d").await,
        Faulty::start("e").await,
    ];
    ups[4].set(Mode::Status(500));
    let eps: Vec<String> = ups
        .iter()
        .map(|u| format!("{{ address: \"{}\" }}", u.addr))
        .collect();
    let p = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: five }",
        &format!(
            "  - name: five\n    outlier_detection: {{ consecutive_5xx: 0, interval: 300ms, base_ejection_time: 30s, max_ejection_percent: 20, success_rate_minimum_hosts: 5, success_rate_request_volume: 10 }}\n    endpoints: [{}]",
            eps.join(", ")
        ),
    ))
    .await;
    let url = p.url("main", "/");
    let flagged = format!("five::{}::health_flags::/failed_outlier_check", ups[4].addr);
    assert!(
        eventually(Duration::from_secs(10), || async {
            load(&url, 50, 2).await;
            clusters_text(&p).await.contains(&flagged)
        })
        .await,
        "{}",
        clusters_text(&p).await
    );
    let text = clusters_text(&p).await;
    assert_eq!(text.matches("/failed_outlier_check").count(), 1, "{text}");
    let counts = load(&url, 40, 2).await;
    assert_eq!(counts.get(&200), Some(&40), "{counts:?}");
    let m = p.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"weft_outlier_ejections_total{cluster="five",reason="success_rate"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_outlier_ejections_total{cluster="five",reason="consecutive_5xx"}"#
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_connections_wait_in_a_bounded_pending_queue() {
    // The upstream answers one request per release: the queue is observed, not timed.
    let gate = gated().await;
    let up = gate.addr;
    let p = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: narrow }",
        &format!(
            "  - {{ name: narrow, circuit_breakers: {{ max_connections: 1, max_pending_requests: 1 }}, endpoints: [{{ address: \"{up}\" }}] }}"
        ),
    ))
    .await;
    let url = p.url("main", "/");
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..4 {
        let (url, done_tx) = (url.clone(), done_tx.clone());
        tokio::spawn(async move {
            let _ = done_tx.send(get(&url).await.status.as_u16());
        });
    }
    drop(done_tx);
    // One request holds the only connection, one waits in the queue, and the two beyond the
    // queue are refused at once: answered while the upstream has answered nothing.
    for _ in 0..2 {
        assert_eq!(next_answer(&mut done).await, 503);
    }
    gate.wait_arrived(1).await;
    assert_eq!(gate.arrived(), 1, "one request on the connection");
    let text = clusters_text(&p).await;
    assert!(
        text.contains("narrow::default_priority::rq_pending::1"),
        "one request queued: {text}"
    );
    assert!(done.try_recv().is_err(), "the other two are still waiting");
    // The queued request waits its turn: it reaches the upstream only after the first one
    // was answered.
    gate.release(1);
    assert_eq!(next_answer(&mut done).await, 200);
    gate.wait_arrived(2).await;
    gate.release(1);
    assert_eq!(
        next_answer(&mut done).await,
        200,
        "the queued request is served"
    );
    assert!(done.recv().await.is_none(), "four answers in all");
    let m = p.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"weft_circuit_breaker_overflow_total{cluster="narrow",reason="max_pending_requests"}"#
        ),
        2.0
    );
    let text = clusters_text(&p).await;
    assert!(
        text.contains("narrow::default_priority::max_connections::1"),
        "{text}"
    );
    assert!(
        text.contains("narrow::default_priority::rq_pending::0"),
        "{text}"
    );
}

#[tokio::test]
async fn a_retry_leaves_the_endpoint_that_failed_even_when_the_hash_pins_it() {
    let flaky = Faulty::start("flaky").await;
    flaky.set(Mode::Reset);
    let steady = Faulty::start("steady").await;
    let p = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: ring, hash_policy: [{ header: x-user }], retry_policy: { num_retries: 1, retry_on: reset } }",
        &format!(
            "  - {{ name: ring, lb_policy: ring_hash, endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}] }}",
            flaky.addr, steady.addr
        ),
    ))
    .await;
    let url = p.url("main", "/");
    for i in 0..40 {
        let user = format!("user-{i}");
        let r = get_with(&url, &[("x-user", &user)]).await;
        assert_eq!(r.status, 200, "{user}: {}", r.text());
        assert_eq!(r.json()["server"], "steady");
    }
    assert!(
        flaky.hits() >= 5,
        "some keys hash to the failing endpoint ({}), and their retries went elsewhere",
        flaky.hits()
    );
}

#[tokio::test]
async fn an_http2_cluster_is_health_checked_over_http2() {
    let (up, checks) = weft_e2e::faulty::h2_only().await;
    let p = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: grpcish }",
        &format!(
            "  - {{ name: grpcish, protocol: http2, panic_threshold: 0, health_checks: [{{ http: {{ path: /healthz }}, interval: 30ms, unhealthy_threshold: 1 }}], endpoints: [{{ address: \"{up}\" }}] }}"
        ),
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            checks.load(Ordering::Relaxed) >= 5
        })
        .await
    );
    let text = clusters_text(&p).await;
    assert!(
        text.contains(&format!("grpcish::{up}::health_flags::healthy")),
        "{text}"
    );
    let r = get(&p.url("main", "/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "h2");
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_bucket_and_refills_a_changed_one() {
    let yaml = |tokens: u32, body: &str| {
        proxy_yaml(
            &format!(
                "          - name: limited\n            local_rate_limit: {{ max_tokens: {tokens}, fill_interval: 1h }}\n            direct_response: {{ status: 200, body: {body} }}"
            ),
            "  - { name: unused, endpoints: [{ address: \"127.0.0.1:9\" }] }",
        )
    };
    let p = TestProxy::start(&yaml(2, "one")).await;
    let url = p.url("main", "/");
    let reload = || async {
        send(
            &client(),
            http::Request::post(format!("http://{}/reload", p.admin()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .status
    };
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(get(&url).await.status, 429);
    // Same limit, other changes: the spent bucket carries over.
    p.write_config(&yaml(2, "two"));
    assert_eq!(reload().await, 200);
    let r = get(&url).await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (429, "local_rate_limited".to_owned())
    );
    // A new limit starts full.
    p.write_config(&yaml(3, "three"));
    assert_eq!(reload().await, 200);
    let r = get(&url).await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "three".to_owned()));
}

/// Envoy 1.40 and Weft with the same retry policy and outlier detection in front of two
/// identical misbehaving upstreams: the same statuses, the same `x-envoy-attempt-count` seen
/// upstream, the same number of tries, and the same `/clusters` health flags after ejection.
#[tokio::test]
async fn retries_and_ejection_agree_with_envoy() {
    let Some(binary) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let (via_envoy, via_weft) = (Faulty::start("e").await, Faulty::start("w").await);
    let envoy = weft_e2e::envoy::TestEnvoy::start_bootstrap(
        &binary,
        &http_bootstrap(
            r#"                      include_request_attempt_count: true
                      routes:
                        - match: { prefix: "/" }
                          route:
                            cluster: up
                            retry_policy: { retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 0.001s } }
"#,
            "",
            &static_cluster(
                "up",
                via_envoy.addr,
                "      outlier_detection: { consecutive_5xx: 3, interval: 0.1s, base_ejection_time: 30s, max_ejection_percent: 100 }\n",
            ),
        ),
    )
    .await;
    let weft = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: up, retry_policy: { num_retries: 2, retry_on: 5xx, retry_back_off: { base_interval: 1ms } } }",
        &format!(
            "  - name: up\n    outlier_detection: {{ consecutive_5xx: 3, interval: 100ms, base_ejection_time: 30s, max_ejection_percent: 100 }}\n    endpoints: [{{ address: \"{}\" }}]",
            via_weft.addr
        ),
    ))
    .await;
    // A burst of two 503s: the third try succeeds, and says it is the third.
    via_envoy.burst(2, 503);
    via_weft.burst(2, 503);
    let e = get(&envoy.url("/")).await;
    let w = get(&weft.url("main", "/")).await;
    assert_eq!(
        (e.status, w.status),
        (http::StatusCode::OK, http::StatusCode::OK)
    );
    assert_eq!(e.json()["attempt"], "3");
    assert_eq!(w.json()["attempt"], e.json()["attempt"]);
    assert_eq!((via_envoy.hits(), via_weft.hits()), (3, 3));
    // Always 503: three tries, all fail, the endpoint is ejected (consecutive_5xx: 3).
    via_envoy.set(Mode::Status(503));
    via_weft.set(Mode::Status(503));
    let e = get(&envoy.url("/")).await;
    let w = get(&weft.url("main", "/")).await;
    assert_eq!(e.status, w.status);
    assert_eq!((via_envoy.hits(), via_weft.hits()), (6, 6));
    let flags = |text: String, addr: std::net::SocketAddr| {
        text.lines()
            .find(|l| l.starts_with(&format!("up::{addr}::health_flags::")))
            .map(str::to_owned)
    };
    let envoy_flags = flags(
        get(&format!("http://{}/clusters", envoy.admin()))
            .await
            .text(),
        via_envoy.addr,
    );
    let weft_flags = flags(clusters_text(&weft).await, via_weft.addr);
    let value = |l: Option<String>| l.map(|l| l.rsplit("::").next().unwrap_or("").to_owned());
    let (envoy_flags, weft_flags) = (value(envoy_flags), value(weft_flags));
    assert_eq!(weft_flags.as_deref(), Some("/failed_outlier_check"));
    assert_eq!(envoy_flags, weft_flags);
    // With its only endpoint ejected the cluster is in panic mode: both still try it.
    let e = get(&envoy.url("/")).await;
    let w = get(&weft.url("main", "/")).await;
    assert_eq!(e.status, w.status);
    assert!(via_envoy.hits() > 6 && via_weft.hits() > 6);
}

/// Envoy 1.40 and Weft with the same circuit breakers in front of upstreams that hold every
/// request until released: four concurrent requests over a warm connection give the same
/// statuses, the same `x-envoy-overloaded` header and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breakers_agree_with_envoy() {
    let Some(binary) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let gates = [gated().await, gated().await, gated().await, gated().await];
    let ups = [gates[0].addr, gates[1].addr, gates[2].addr, gates[3].addr];
    let cluster = |name: &str, breakers: &str, a: std::net::SocketAddr| {
        static_cluster(
            name,
            a,
            &format!("      circuit_breakers: {{ thresholds: [{breakers}] }}\n"),
        )
    };
    let envoy = weft_e2e::envoy::TestEnvoy::start_bootstrap(
        &binary,
        &http_bootstrap(
            r#"                      routes:
                        - match: { prefix: "/pending" }
                          route: { cluster: narrow }
                        - match: { prefix: "/" }
                          route: { cluster: guarded }
"#,
            "",
            &format!(
                "{}{}",
                cluster("guarded", "{ max_requests: 1 }", ups[0]),
                cluster(
                    "narrow",
                    "{ max_connections: 1, max_pending_requests: 1 }",
                    ups[1]
                ),
            ),
        ),
    )
    .await;
    let weft = TestProxy::start(&proxy_yaml(
        "          - match: { path: { prefix: /pending } }\n            route: { cluster: narrow }\n          - route: { cluster: guarded }",
        &format!(
            "  - {{ name: guarded, circuit_breakers: {{ max_requests: 1 }}, endpoints: [{{ address: \"{}\" }}] }}\n  - {{ name: narrow, circuit_breakers: {{ max_connections: 1, max_pending_requests: 1 }}, endpoints: [{{ address: \"{}\" }}] }}",
            ups[2], ups[3]
        ),
    ))
    .await;
    /// Four concurrent requests to `url`, whose upstream `gate` holds them: once each one is
    /// decided — answered (overflow), at the upstream, or queued (`queued` reads the proxy's
    /// pending count) — the gate opens and every answer is collected.
    async fn burst<F, Fut>(
        url: String,
        gate: &weft_e2e::upstream::Gate,
        queued: F,
    ) -> Vec<(u16, Option<String>, String)>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = usize>,
    {
        let before = gate.arrived();
        let answered = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (url, answered) = (url.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                let r = get(&url).await;
                answered.fetch_add(1, Ordering::Relaxed);
                (
                    r.status.as_u16(),
                    r.header("x-envoy-overloaded").map(str::to_owned),
                    r.text(),
                )
            }));
        }
        let decided = eventually(Duration::from_secs(10), || async {
            answered.load(Ordering::Relaxed) + (gate.arrived() - before) + queued().await == 4
        })
        .await;
        assert!(
            decided,
            "{url}: all four requests were admitted, queued or refused"
        );
        gate.open();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out.sort();
        out
    }
    let envoy_admin = envoy.admin();
    let envoy_pending = |cluster: &'static str| async move {
        let stats = get(&format!(
            "http://{envoy_admin}/stats?filter=cluster.{cluster}.upstream_rq_pending_active"
        ))
        .await
        .text();
        stats
            .rsplit(": ")
            .next()
            .and_then(|n| n.trim().parse().ok())
            .expect("Envoy's pending gauge")
    };
    let weft_admin = weft.admin();
    let weft_pending = |cluster: &'static str| async move {
        let v = get(&format!("http://{weft_admin}/clusters?format=json"))
            .await
            .json();
        v["clusters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == cluster))
            .and_then(|c| c["circuit_breakers"]["rq_pending"].as_u64())
            .map(|n| n as usize)
            .expect("Weft's pending count")
    };
    for (path, cluster, envoy_gate, weft_gate) in [
        ("/", "guarded", &gates[0], &gates[2]),
        ("/pending", "narrow", &gates[1], &gates[3]),
    ] {
        // Warm: a connection is open. (Cold, Envoy counts the first request as pending while
        // its connection is being set up, so it admits one fewer than Weft.)
        envoy_gate.release(1);
        assert_eq!(get(&envoy.url(path)).await.status, 200);
        weft_gate.release(1);
        assert_eq!(get(&weft.url("main", path)).await.status, 200);
        let e = burst(envoy.url(path), envoy_gate, || envoy_pending(cluster)).await;
        let w = burst(weft.url("main", path), weft_gate, || weft_pending(cluster)).await;
        println!("{path}: envoy {e:?}\n{path}: weft {w:?}");
        assert_eq!(e, w, "{path}");
        assert!(e.iter().any(|(s, ..)| *s == 503), "{path}: some overflowed");
    }
}

/// Envoy 1.40 and Weft with the same fault injection (HTTP and gRPC aborts) and local rate
/// limit: the same statuses, bodies and `grpc-status`. (Weft adds `Retry-After` to its 429s;
/// Envoy's local rate limit does not.)
#[tokio::test]
async fn faults_and_local_rate_limits_agree_with_envoy() {
    let Some(binary) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let up = echo("up").await;
    let envoy = weft_e2e::envoy::TestEnvoy::start_bootstrap(
        &binary,
        &http_bootstrap(
            r#"                      routes:
                        - match: { prefix: "/abort" }
                          route: { cluster: up }
                          typed_per_filter_config:
                            envoy.filters.http.fault:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                              abort: { http_status: 418, percentage: { numerator: 100 } }
                        - match: { prefix: "/grpc" }
                          route: { cluster: up }
                          typed_per_filter_config:
                            envoy.filters.http.fault:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                              abort: { grpc_status: 14, percentage: { numerator: 100 } }
                        - match: { prefix: "/limited" }
                          route: { cluster: up }
                          typed_per_filter_config:
                            envoy.filters.http.local_ratelimit:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                              stat_prefix: rl
                              token_bucket: { max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s }
                              filter_enabled: { runtime_key: rl_enabled, default_value: { numerator: 100 } }
                              filter_enforced: { runtime_key: rl_enforced, default_value: { numerator: 100 } }
"#,
            r#"                  - name: envoy.filters.http.fault
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault }
                  - name: envoy.filters.http.local_ratelimit
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, stat_prefix: rl }
"#,
            &static_cluster("up", up, ""),
        ),
    )
    .await;
    let weft = TestProxy::start(&proxy_yaml(
        "          - match: { path: { prefix: /abort } }\n            fault: { abort: { http_status: 418 } }\n            route: { cluster: up }\n          - match: { path: { prefix: /grpc } }\n            fault: { abort: { grpc_status: 14 } }\n            route: { cluster: up }\n          - match: { path: { prefix: /limited } }\n            local_rate_limit: { max_tokens: 2, fill_interval: 3600s }\n            route: { cluster: up }",
        &format!("  - {{ name: up, endpoints: [{{ address: \"{up}\" }}] }}"),
    ))
    .await;
    let grpc = [("content-type", "application/grpc")];
    for (path, headers, n) in [
        ("/abort", &[][..], 1),
        ("/grpc", &grpc[..], 1),
        ("/limited", &[][..], 3),
    ] {
        for i in 0..n {
            let e = get_with(&envoy.url(path), headers).await;
            let w = get_with(&weft.url("main", path), headers).await;
            println!(
                "{path} #{i}: envoy {} {:?} / weft {} {:?}",
                e.status,
                e.text(),
                w.status,
                w.text()
            );
            assert_eq!(e.status, w.status, "{path} #{i}");
            assert_eq!(
                e.header("grpc-status"),
                w.header("grpc-status"),
                "{path} #{i}"
            );
            if path == "/grpc" {
                assert_eq!(w.header("grpc-status"), Some("14"));
            }
            if e.status != 200 {
                assert_eq!(e.text(), w.text(), "{path} #{i}");
            }
        }
    }
}

#[tokio::test]
async fn retries_avoid_every_endpoint_already_tried() {
    let bad1 = Faulty::start("bad1").await;
    let bad2 = Faulty::start("bad2").await;
    bad1.set(Mode::Reset);
    bad2.set(Mode::Reset);
    let good = Faulty::start("good").await;
    let p = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: ring, hash_policy: [{ header: x-user }], retry_policy: { num_retries: 2, retry_on: reset, retry_back_off: { base_interval: 1ms } } }",
        &format!(
            "  - {{ name: ring, lb_policy: ring_hash, endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}, {{ address: \"{}\" }}] }}",
            bad1.addr, bad2.addr, good.addr
        ),
    ))
    .await;
    let url = p.url("main", "/");
    for i in 0..40 {
        let user = format!("user-{i}");
        let r = get_with(&url, &[("x-user", &user)]).await;
        assert_eq!(r.status, 200, "{user}: {}", r.text());
        assert_eq!(r.json()["server"], "good");
    }
    assert!(bad1.hits() > 0 && bad2.hits() > 0);
    assert!(
        bad1.hits() + bad2.hits() <= 80,
        "no endpoint is tried twice for one request"
    );
}

#[tokio::test]
async fn grpc_statuses_named_in_retry_on_are_retried() {
    let up = Faulty::start("grpc").await;
    let p = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: one, retry_policy: { num_retries: 1, retry_on: \"unavailable,cancelled\", retry_back_off: { base_interval: 1ms } } }",
        &format!("  - {{ name: one, endpoints: [{{ address: \"{}\" }}] }}", up.addr),
    ))
    .await;
    let grpc = [("content-type", "application/grpc")];
    up.grpc_burst(1, 14);
    let r = get_with(&p.url("main", "/svc/Method"), &grpc).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), None, "the retry succeeded");
    assert_eq!(r.json()["attempt"], "2");
    // `internal` (13) is not named: passed through as is.
    up.grpc_burst(1, 13);
    let r = get_with(&p.url("main", "/svc/Method"), &grpc).await;
    assert_eq!(r.header("grpc-status"), Some("13"));
    assert_eq!(up.hits(), 3);
}

/// Envoy 1.40 and Weft with the same active HTTP health check: the same `/clusters` health
/// flags when the endpoint fails its check and after it passes again. (Envoy checks a cluster
/// without traffic only every `no_traffic_interval`, 60 s by default; Weft always uses
/// `interval`.)
#[tokio::test]
async fn health_check_flags_agree_with_envoy() {
    let Some(binary) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let (via_envoy, via_weft) = (Faulty::start("e").await, Faulty::start("w").await);
    let envoy = weft_e2e::envoy::TestEnvoy::start_bootstrap(
        &binary,
        &http_bootstrap(
            r#"                      routes: [{ match: { prefix: "/" }, route: { cluster: up } }]
"#,
            "",
            &static_cluster(
                "up",
                via_envoy.addr,
                r#"      health_checks:
        - timeout: 1s
          interval: 0.05s
          no_traffic_interval: 0.05s
          unhealthy_threshold: 2
          healthy_threshold: 1
          http_health_check: { path: /healthz }
"#,
            ),
        ),
    )
    .await;
    let weft = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: up }",
        &format!(
            "  - name: up\n    health_checks: [{{ http: {{ path: /healthz }}, interval: 50ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 1 }}]\n    endpoints: [{{ address: \"{}\" }}]",
            via_weft.addr
        ),
    ))
    .await;
    let flag = |text: String, addr: std::net::SocketAddr| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("up::{addr}::health_flags::"))
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    };
    let envoy_flag = || async {
        flag(
            get(&format!("http://{}/clusters", envoy.admin()))
                .await
                .text(),
            via_envoy.addr,
        )
    };
    let weft_flag = || async { flag(clusters_text(&weft).await, via_weft.addr) };
    for (healthy, expected) in [
        (true, "healthy"),
        (false, "/failed_active_hc"),
        (true, "healthy"),
    ] {
        via_envoy.set_healthy(healthy);
        via_weft.set_healthy(healthy);
        assert!(
            eventually(Duration::from_secs(5), || async {
                envoy_flag().await == expected && weft_flag().await == expected
            })
            .await,
            "expected {expected}: envoy {:?}, weft {:?}",
            envoy_flag().await,
            weft_flag().await
        );
    }
}

#[tokio::test]
async fn connect_failures_eject_by_consecutive_local_origin_failures() {
    let good = Faulty::start("good").await;
    let dead = weft_e2e::upstream::closed_port().await;
    let p = TestProxy::start(&proxy_yaml(
        "          - route: { cluster: pair, retry_policy: { num_retries: 1, retry_on: connect-failure, retry_back_off: { base_interval: 1ms } } }",
        &format!(
            "  - name: pair\n    outlier_detection: {{ consecutive_5xx: 0, consecutive_local_origin_failures: 2, base_ejection_time: 30s, max_ejection_percent: 50 }}\n    endpoints: [{{ address: \"{}\" }}, {{ address: \"{dead}\" }}]",
            good.addr
        ),
    ))
    .await;
    let counts = load(&p.url("main", "/"), 20, 1).await;
    assert_eq!(
        counts.get(&200),
        Some(&20),
        "retries hid the dead endpoint: {counts:?}"
    );
    let text = clusters_text(&p).await;
    assert!(
        text.contains(&format!(
            "pair::{dead}::health_flags::/failed_outlier_check"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("pair::{dead}::cx_connect_fail::2")),
        "{text}"
    );
    let m = p.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"weft_outlier_ejections_total{cluster="pair",reason="consecutive_local_origin_failures"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_upstream_rq_retry_success_total{cluster="pair"}"#
        ),
        2.0
    );
}
