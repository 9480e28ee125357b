//! Plugin faults under load: hundreds of hot swaps of a healthy route's plugin while other
//! routes' plugins trap, run into their CPU deadline and hit their memory cap, all at once.
//! The healthy route must not fail a single request, the faulty routes must answer (503) and
//! never hang, the process's resident memory must stay bounded, and no plugin may end with
//! more instances than its pool holds (`weft_plugin_healthy_instances`).
//!
//! Bounded: [`SWAPS`] swaps; every load loop stops when the swaps are done, at [`MAX_LOOPS`]
//! requests, or at the [`LIMIT`] failure guard, whichever comes first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, client, get, metric_value, rss_bytes, send};
use weft_test_artifacts as fx;

/// Hot swaps of the healthy route's plugin.
const SWAPS: u32 = 1000;
/// Requests per load task at most.
const MAX_LOOPS: usize = 200_000;
/// Failure guard for the whole soak (never what the test waits for).
const LIMIT: Duration = Duration::from_secs(120);
/// Instances in each plugin's pool.
const INSTANCES: u64 = 2;

/// A copy of `wasm` with a custom section appended: same behaviour, another sha256.
fn variant(wasm: &[u8], tag: u8) -> Vec<u8> {
    let mut out = wasm.to_vec();
    let name = b"weft-soak";
    out.push(0);
    out.push((1 + name.len() + 1) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(tag);
    out
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    /// Highest resident set size sampled during the run.
    rss_peak: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_swaps_traps_deadlines_and_memory_caps_under_load_fail_no_healthy_request() {
    let up = echo("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("adder.wasm");
    let original = fx::bytes(fx::HEADER_ADDER);
    std::fs::write(&file, &original).unwrap();
    let faulty = "    failure_policy: reload\n    reload_backoff: 0s\n    max_failures: 1000000\n";
    let p = TestProxy::start(&format!(
        r#"
access_log: {{ path: "off" }}
plugins:
  - name: adder
    file: {adder}
    configuration: healthy
    instances: {INSTANCES}
  - name: trap
    file: {trap}
    instances: {INSTANCES}
{faulty}  - name: loop
    file: {busy}
    cpu_deadline: 5ms
    instances: {INSTANCES}
{faulty}  - name: bomb
    file: {bomb}
    max_memory_bytes: 4194304
    instances: {INSTANCES}
{faulty}listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - {{ match: {{ path: {{ prefix: /trap }} }}, route: {{ cluster: up }}, plugins: [{{ name: trap }}] }}
          - {{ match: {{ path: {{ prefix: /loop }} }}, route: {{ cluster: up }}, plugins: [{{ name: loop }}] }}
          - {{ match: {{ path: {{ prefix: /bomb }} }}, route: {{ cluster: up }}, plugins: [{{ name: bomb }}] }}
          - {{ match: {{ path: {{ prefix: /plain }} }}, route: {{ cluster: up }} }}
          - {{ route: {{ cluster: up }}, plugins: [{{ name: adder }}] }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        adder = file.display(),
        trap = fx::TRAP,
        busy = fx::BUSY_LOOP,
        bomb = fx::MEMORY_BOMB,
    ))
    .await;
    let admin = format!("http://{}", p.admin());
    let started = tokio::time::Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // Warm up every route once, then take the baseline RSS.
    assert_eq!(
        get(&p.url("main", "/healthy")).await.header("x-plugin"),
        Some("healthy")
    );
    for path in ["/trap", "/loop", "/bomb"] {
        assert_eq!(get(&p.url("main", path)).await.status, 503, "{path}");
    }
    let rss_start = rss_bytes();

    // Healthy load: the swapped plugin's route and a route without plugins.
    let healthy = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for path in ["/healthy", "/healthy", "/plain"] {
        let (stop, tally, url) = (stop.clone(), healthy.clone(), p.url("main", path));
        let want_header = path == "/healthy";
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..MAX_LOOPS {
                if stop.load(Ordering::Relaxed) || started.elapsed() > LIMIT {
                    break;
                }
                let req = http::Request::get(&url).body(Full::default()).unwrap();
                let good = match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await
                {
                    Ok(Ok(r)) => {
                        r.status() == 200
                            && (!want_header
                                || r.headers().get("x-plugin").is_some_and(|v| v == "healthy"))
                    }
                    _ => false,
                };
                let counter = if good { &tally.ok } else { &tally.failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Faulty load: one client per broken plugin; each request must get its 503, promptly.
    let faults = Arc::new(Tally::default());
    for path in ["/trap", "/loop", "/bomb"] {
        let (stop, tally, url) = (stop.clone(), faults.clone(), p.url("main", path));
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..MAX_LOOPS {
                if stop.load(Ordering::Relaxed) || started.elapsed() > LIMIT {
                    break;
                }
                let req = http::Request::get(&url).body(Full::default()).unwrap();
                let answered = matches!(
                    tokio::time::timeout(Duration::from_secs(10), c.request(req)).await,
                    Ok(Ok(r)) if r.status() == 503
                );
                let counter = if answered { &tally.ok } else { &tally.failed };
                counter.fetch_add(1, Ordering::Relaxed);
                let rss = rss_bytes();
                tally.rss_peak.fetch_max(rss, Ordering::Relaxed);
            }
        }));
    }

    // The swaps, through the admin endpoint, one after the other.
    let reload = format!("{admin}/plugins/adder/reload");
    let mut swaps = 0;
    for i in 0..SWAPS {
        if started.elapsed() > LIMIT {
            break;
        }
        std::fs::write(&file, variant(&original, (i % 4) as u8)).unwrap();
        let r = send(
            &client(),
            http::Request::post(&reload).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "swap {i}: {}", r.text());
        swaps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let rss_end = rss_bytes();
    let rss_peak = faults.rss_peak.load(Ordering::Relaxed).max(rss_end);

    let (ok, failed) = (
        healthy.ok.load(Ordering::Relaxed),
        healthy.failed.load(Ordering::Relaxed),
    );
    let (fault_ok, fault_failed) = (
        faults.ok.load(Ordering::Relaxed),
        faults.failed.load(Ordering::Relaxed),
    );
    println!(
        "soak: {swaps} swaps in {:?}; healthy {ok} ok / {failed} failed; faulty routes {fault_ok} \
         answered 503 / {fault_failed} not; RSS {} MiB at start, {} MiB peak, {} MiB at end",
        started.elapsed(),
        rss_start >> 20,
        rss_peak >> 20,
        rss_end >> 20
    );
    assert_eq!(swaps, SWAPS, "every swap ran within the {LIMIT:?} guard");
    assert!(ok > 100, "the healthy load ran: {ok}");
    assert_eq!(failed, 0, "no healthy request failed");
    assert!(fault_ok > 3, "the faulty load ran: {fault_ok}");
    assert_eq!(fault_failed, 0, "every faulty request got its 503");
    // Bounded memory: instances are capped at 4 MiB and replaced, not accumulated.
    let growth = rss_peak.saturating_sub(rss_start);
    assert!(
        growth < 128 << 20,
        "RSS grew by {} MiB (start {} MiB, peak {} MiB)",
        growth >> 20,
        rss_start >> 20,
        rss_peak >> 20
    );

    // Every fault was hit and counted; every swap counted; no pool holds more than its size.
    let m = p.metrics().await;
    for (series, what) in [
        (r#"weft_plugin_traps_total{plugin="trap"}"#, "traps"),
        (
            r#"weft_plugin_deadlines_total{plugin="loop"}"#,
            "CPU deadlines",
        ),
        (r#"weft_plugin_oom_total{plugin="bomb"}"#, "memory caps"),
    ] {
        assert!(metric_value(&m, series) >= 1.0, "{what}: {series}\n{m}");
    }
    assert_eq!(
        metric_value(&m, r#"weft_plugin_swaps_total{plugin="adder"}"#),
        f64::from(SWAPS),
        "{m}"
    );
    for plugin in ["adder", "trap", "loop", "bomb"] {
        let live = metric_value(
            &m,
            &format!(r#"weft_plugin_healthy_instances{{plugin="{plugin}"}}"#),
        );
        assert!(
            live <= INSTANCES as f64,
            "{plugin}: {live} healthy instances in a pool of {INSTANCES}\n{m}"
        );
    }
    let plugins = get(&format!("{admin}/plugins")).await.json();
    let adder = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "adder")
        .unwrap()
        .clone();
    assert_eq!(adder["swaps"], SWAPS, "{adder}");
    assert_eq!(
        get(&p.url("main", "/healthy")).await.header("x-plugin"),
        Some("healthy")
    );
}
