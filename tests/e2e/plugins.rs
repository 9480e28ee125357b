//! proxy-wasm plugins in a running Weft: placement and order, callouts, body rewrites,
//! failure policies, CPU deadlines, hot swap under load, admin and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use weft_e2e::recording::{Recording, SeenHead, recording};
use weft_e2e::upstream::{echo, serve};
use weft_e2e::{TestProxy, client, get, get_with, metric_value, send};
use weft_test_artifacts as fx;

/// A `plugins:` entry: `name` loading `file`, then the `extra` lines (indented by 4).
pub(crate) fn plugin(name: &str, file: &str, extra: &str) -> String {
    format!("  - name: {name}\n    file: {file}\n{extra}")
}

/// A configuration (after the `top` lines) whose listener `main` has one route, to cluster `up`
/// at `up`, running the plugin `name` that `declared` (a [`plugin`] entry) defines.
pub(crate) fn one_plugin_route(top: &str, declared: &str, name: &str, up: SocketAddr) -> String {
    one_route(
        top,
        &format!("plugins:\n{declared}"),
        &format!("\n            plugins: [{{ name: {name} }}]"),
        up,
    )
}

/// [`one_plugin_route`]'s configuration with any `plugins` block and route lines (empty: none).
fn one_route(top: &str, plugins: &str, route_lines: &str, up: SocketAddr) -> String {
    format!(
        r#"{top}
{plugins}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - route: {{ cluster: up }}{route_lines}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#
    )
}

#[tokio::test]
async fn listener_and_route_plugins_run_in_phase_and_priority_order() {
    let up = echo("up").await;
    let p = TestProxy::start(&format!(
        r#"
plugins:
{}
{}
{}
{}
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: stats }}, {{ name: adder }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - name: plain
            match: {{ path: {{ prefix: /plain }} }}
            route: {{ cluster: up }}
            plugins: [{{ name: adder, disabled: true }}]
          - name: ordered
            match: {{ path: {{ prefix: /ordered }} }}
            route: {{ cluster: up }}
            plugins:
              - {{ name: authn-low }}
              - {{ name: authn-high }}
              - {{ name: adder, disabled: true }}
              - {{ name: adder, configuration: "route-override" }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        plugin("adder", fx::HEADER_ADDER, "    configuration: listener-level\n"),
        plugin("stats", fx::HOSTCALLS, "    phase: stats\n    configuration: {add_request_header: [x-order, stats]}\n"),
        plugin("authn-low", fx::HOSTCALLS, "    phase: authn\n    priority: 1\n    configuration: {add_request_header: [x-order, authn-low]}\n"),
        plugin("authn-high", fx::HOSTCALLS, "    phase: authn\n    priority: 10\n    configuration: {add_request_header: [x-order, authn-high]}\n"),
    ))
    .await;
    let r = get(&p.url("main", "/plain")).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["headers"]["x-order"], "stats");
    assert!(
        j["headers"].get("x-plugin-seen").is_none(),
        "adder disabled on this route"
    );

    let r = get(&p.url("main", "/ordered")).await;
    let j = r.json();
    // The echo joins repeated headers in order: the plugins' order.
    assert_eq!(
        j["headers"]["x-order"], "authn-high, authn-low, stats",
        "{j}"
    );
    assert_eq!(j["headers"]["x-plugin-seen"], "route-override");
    assert_eq!(r.header("x-plugin"), Some("route-override"));

    let admin = format!("http://{}", p.admin());
    let plugins = get(&format!("{admin}/plugins")).await.json();
    let chain = plugins["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["route"] == "ordered")
        .unwrap()
        .clone();
    let names: Vec<&str> = chain["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "authn-high",
            "authn-low",
            "stats",
            // A variant is named by its configuration's digest, never the configuration.
            format!(
                "adder[{}]",
                weft_extensions::variant_digest("\"route-override\"")
            )
            .as_str()
        ]
    );
    assert!(
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["version"]["state"] == "ok"),
        "{plugins}"
    );
    let m = p.metrics().await;
    assert!(
        metric_value(&m, r#"weft_plugin_streams_total{plugin="stats"}"#) >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_callout_authorizes_the_request() {
    let up = echo("up").await;
    let authz = serve(|req: http::Request<hyper::body::Incoming>| async move {
        let allow = req.headers().get("x-auth-user").is_none();
        let mut resp = http::Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = if allow {
            http::StatusCode::OK
        } else {
            http::StatusCode::FORBIDDEN
        };
        resp.headers_mut()
            .insert("x-auth-user", http::HeaderValue::from_static("alice"));
        resp
    })
    .await;
    let p = TestProxy::start(&format!(
        r#"
plugins:
{}
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: authz }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
  - {{ name: authz-service, endpoints: [{{ address: "{authz}" }}] }}
"#,
        plugin("authz", fx::HOSTCALLS, "    configuration: {callout: {cluster: authz-service, path: /check, timeout_ms: 2000}}\n"),
    ))
    .await;
    let r = get(&p.url("main", "/data")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["x-auth-user"],
        "alice",
        "header copied from the callout"
    );
}

#[tokio::test]
async fn a_buffered_response_rewrite_gets_a_correct_content_length() {
    let up = serve(|_req| async move {
        http::Response::new(Full::new(Bytes::from_static(b"original body")))
    })
    .await;
    let p = TestProxy::start(&format!(
        r#"
plugins:
{}
{}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - match: {{ path: {{ prefix: /resp }} }}
            route: {{ cluster: up }}
            plugins: [{{ name: resp }}]
          - match: {{ path: {{ prefix: /req }} }}
            route: {{ cluster: sink }}
            plugins: [{{ name: req }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
  - {{ name: sink, endpoints: [{{ address: "{}" }}] }}
"#,
        plugin(
            "resp",
            fx::HOSTCALLS,
            "    configuration: {response_body: \"append: and more\"}\n"
        ),
        plugin(
            "req",
            fx::HOSTCALLS,
            "    configuration: {request_body: \"replace:REPLACED\"}\n"
        ),
        weft_e2e::upstream::sink().await.0,
    ))
    .await;
    let r = get(&p.url("main", "/resp")).await;
    assert_eq!(r.text(), "original body and more");
    assert_eq!(
        r.header("content-length"),
        Some("22"),
        "Content-Length matches the rewritten body"
    );

    let req = http::Request::post(p.url("main", "/req"))
        .body(Full::from("some request body"))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(
        r.text(),
        "8",
        "the upstream received the replaced body (8 bytes)"
    );
}

#[tokio::test]
async fn failure_policies_and_cpu_deadlines() {
    let up = echo("up").await;
    let p = TestProxy::start(&format!(
        r#"
plugins:
{}
{}
{}
{}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - {{ match: {{ path: {{ prefix: /closed }} }}, route: {{ cluster: up }}, plugins: [{{ name: trap-closed }}] }}
          - {{ match: {{ path: {{ prefix: /open }} }}, route: {{ cluster: up }}, plugins: [{{ name: trap-open }}] }}
          - {{ match: {{ path: {{ prefix: /loop }} }}, route: {{ cluster: up }}, plugins: [{{ name: loop }}] }}
          - {{ match: {{ path: {{ prefix: /not-loaded }} }}, route: {{ cluster: up }}, plugins: [{{ name: never-loads }}] }}
          - {{ route: {{ cluster: up }} }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        plugin("trap-closed", fx::TRAP, "    failure_policy: fail_closed\n"),
        plugin("trap-open", fx::TRAP, "    failure_policy: fail_open\n"),
        plugin("loop", fx::BUSY_LOOP, "    cpu_deadline: 20ms\n    reload_backoff: 0s\n    max_failures: 1000\n"),
        plugin("never-loads", fx::CONFIGURE_FAILS, "    failure_policy: fail_open\n"),
    ))
    .await;
    for _ in 0..3 {
        let r = get(&p.url("main", "/closed")).await;
        assert_eq!(r.status, 503, "fail_closed answers 503");
        let r = get(&p.url("main", "/open")).await;
        assert_eq!(r.status, 200, "fail_open skips the broken plugin");
    }
    // An infinite loop is cut at the deadline: the request fails, others are served meanwhile.
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let url = p.url("main", "/loop");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for _ in 0..10 {
        assert_eq!(get(&p.url("main", "/other")).await.status, 200);
    }
    for l in loops {
        assert_eq!(l.await.unwrap().status, 503);
    }
    // A plugin that failed to load at startup: the proxy serves by its policy (fail_open).
    assert_eq!(get(&p.url("main", "/not-loaded")).await.status, 200);
    let plugins = get(&format!("http://{}/plugins", p.admin())).await.json();
    let find = |name: &str| {
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(find("trap-closed")["version"]["state"], "broken");
    assert_eq!(find("never-loads")["version"]["state"], "failed");
    // The four loops run concurrently on the workers: each one that reached the guest was cut
    // at the deadline; one that had started on an instance another loop broke meanwhile got its
    // 503 without running (the instance is discarded, never reused).
    let deadlines = find("loop")["stats"]["deadlines"].as_u64().unwrap();
    assert!((1..=4).contains(&deadlines), "{deadlines}");
    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, r#"weft_plugin_deadlines_total{plugin="loop"}"#),
        deadlines as f64,
        "{m}"
    );
    assert!(
        metric_value(&m, r#"weft_plugin_skipped_total{plugin="trap-open"}"#) >= 2.0,
        "{m}"
    );
}

/// A copy of `wasm` with a custom section appended: same behaviour, different sha256.
fn variant(wasm: &[u8], tag: u8) -> Vec<u8> {
    let mut out = wasm.to_vec();
    let name = b"weft-test";
    let payload = [tag; 4];
    out.push(0);
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swapping_a_plugin_100_times_under_load_fails_no_request() {
    let up = echo("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("adder.wasm");
    let original = fx::bytes(fx::HEADER_ADDER);
    std::fs::write(&file, &original).unwrap();
    let p = TestProxy::start(&format!(
        r#"
access_log: {{ path: "off" }}
plugins:
{}
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: adder }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        plugin(
            "adder",
            &file.display().to_string(),
            "    configuration: swapped\n"
        ),
    ))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let url = p.url("main", "/");
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = http::Request::get(&url).body(Full::default()).unwrap();
                match tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
                    Ok(Ok(r))
                        if r.status() == 200
                            && r.headers().get("x-plugin").is_some_and(|v| v == "swapped") =>
                    {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let admin = format!("http://{}", p.admin());
    for i in 0..100u32 {
        std::fs::write(&file, variant(&original, (i % 2) as u8)).unwrap();
        let r = send(
            &client(),
            http::Request::post(format!("{admin}/plugins/adder/reload"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "swap {i}: {}", r.text());
    }
    // A broken version is refused; the last good one keeps serving.
    std::fs::write(&file, b"not wasm at all").unwrap();
    let r = send(
        &client(),
        http::Request::post(format!("{admin}/plugins/adder/reload"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("not a WebAssembly module"),
        "{}",
        r.text()
    );
    assert_eq!(get(&url).await.header("x-plugin"), Some("swapped"));
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
        "no request failed during 100 swaps"
    );
    let plugins = get(&format!("{admin}/plugins")).await.json();
    assert_eq!(plugins["plugins"][0]["swaps"], 100);
    assert_eq!(plugins["plugins"][0]["rejected_versions"], 1);
    assert!(
        plugins["plugins"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly module")
    );
}

#[tokio::test]
async fn a_plugin_file_change_is_swapped_in_by_the_watcher() {
    let up = echo("up").await;
    let (dir, file, declared) = header_adder_file();
    let p = TestProxy::start_with(&one_plugin_route("", &declared, "p", up), true).await;
    assert_eq!(
        get(&p.url("main", "/")).await.header("x-plugin"),
        Some("{}")
    );
    // Replace the module with a different plugin (hostcalls accepts `{}`). The watcher is
    // armed when the proxy has started: no waiting before the change.
    let hostcalls = fx::bytes(fx::HOSTCALLS);
    let want = sha256_hex(&hostcalls);
    let tmp = dir.path().join("p.wasm.tmp");
    std::fs::write(&tmp, &hostcalls).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let plugins_url = format!("http://{}/plugins", p.admin());
    let swapped = weft_e2e::eventually(Duration::from_secs(10), || {
        let (plugins_url, want) = (plugins_url.clone(), want.clone());
        async move {
            let v = get(&plugins_url).await.json();
            v["plugins"][0]["swaps"] == 1 && v["plugins"][0]["version"]["sha256"] == want.as_str()
        }
    })
    .await;
    assert_swapped_in(&p, swapped).await;
}

/// A temporary directory with `p.wasm`, the header-adding fixture, and the `plugins` entry `p`
/// that loads it (configuration `{}`).
fn header_adder_file() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.wasm");
    std::fs::write(&file, fx::bytes(fx::HEADER_ADDER)).unwrap();
    let declared = plugin(
        "p",
        &file.display().to_string(),
        "    configuration: '{}'\n",
    );
    (dir, file, declared)
}

/// The watcher swapped the header-adding plugin for the hostcalls one, which now serves.
async fn assert_swapped_in(p: &TestProxy, swapped: bool) {
    let plugins_url = format!("http://{}/plugins", p.admin());
    assert!(
        swapped,
        "the watcher swapped the plugin: {}",
        get(&plugins_url).await.text()
    );
    assert_eq!(
        get(&p.url("main", "/")).await.header("x-plugin"),
        None,
        "the new module serves"
    );
}

/// Without plugins no plugin watcher runs; the first generation with a plugin file starts it.
#[tokio::test]
async fn a_plugin_added_by_a_reload_is_watched() {
    let up = echo("up").await;
    let (dir, file, declared) = header_adder_file();
    let p = TestProxy::start_with(&one_route("", "", "", up), true).await;
    let url = p.url("main", "/");
    assert_eq!(get(&url).await.header("x-plugin"), None);
    // The configuration watcher loads the new file (the listener keeps its port).
    p.write_config(&one_plugin_route("", &declared, "p", up));
    let loaded = weft_e2e::eventually(Duration::from_secs(10), || {
        let url = url.clone();
        async move { get(&url).await.header("x-plugin") == Some("{}") }
    })
    .await;
    assert!(loaded, "the reload loaded the plugin");
    // The plugin watcher starts after the generation is published, so a change made at once
    // could come before it looks: write a new version (the hostcalls module with a custom
    // section numbered `round`, so each write differs) every 25th check (the checks come every
    // 20 ms; the watcher debounces for 200 ms) until one is swapped in.
    let plugins_url = format!("http://{}/plugins", p.admin());
    let tmp = dir.path().join("p.wasm.tmp");
    let mut checks = 0u32;
    let swapped = weft_e2e::eventually(Duration::from_secs(10), || {
        if checks.is_multiple_of(25) {
            let mut module = fx::bytes(fx::HOSTCALLS);
            module.extend_from_slice(&[0, 3, 1, b'r', (checks / 25 % 256) as u8]);
            std::fs::write(&tmp, &module).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
        }
        checks += 1;
        let plugins_url = plugins_url.clone();
        async move {
            let v = get(&plugins_url).await.json();
            v["plugins"][0]["swaps"].as_u64().unwrap_or(0) >= 1
        }
    })
    .await;
    assert_swapped_in(&p, swapped).await;
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A proxy with one TCP listener to `up` through the `tcp_rewrite` fixture (upper-cases what
/// goes up, prepends `tag` to what comes back).
async fn tcp_rewrite_proxy(up: SocketAddr, tag: &str) -> TestProxy {
    TestProxy::start(&format!(
        r#"
plugins:
{}
listeners:
  - name: tcp
    address: 127.0.0.1:0
    protocol: tcp
    tcp: {{ cluster: up }}
    plugins: [{{ name: rewrite }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        plugin(
            "rewrite",
            fx::TCP_REWRITE,
            &format!("    configuration: {tag:?}\n")
        ),
    ))
    .await
}
#[tokio::test]
async fn network_filters_rewrite_tcp_bytes_both_ways_and_can_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw TCP echo upstream.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let p = tcp_rewrite_proxy(up, "tag:").await;
    let mut s = tokio::net::TcpStream::connect(p.addr("tcp")).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &buf[..n],
        b"tag:HELLO",
        "upper-cased on the way up, tagged on the way back"
    );
    s.write_all(b"please QUIT").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the plugin closed the connection");
    assert!(
        rest.is_empty(),
        "nothing of the QUIT chunk came back: {rest:?}"
    );
    let plugins = get(&format!("http://{}/plugins", p.admin())).await.json();
    assert_eq!(plugins["plugins"][0]["stats"]["streams"], 1);
}

/// TCP data through a network plugin travels as the chunks the proxy read (`Bytes`, written
/// out as they are unless a plugin rewrites them): 4 MiB of upper-case text, which the
/// plugin's upper-casing leaves as it is, goes up and comes back (an echo upstream; the empty
/// tag prepends nothing) intact and in order. Bounded: one connection, 4 MiB, 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_through_a_network_plugin_arrive_intact_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 4 * 1024 * 1024;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((s, _)) = l.accept().await else {
            return;
        };
        let (mut r, mut w) = s.into_split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    let p = tcp_rewrite_proxy(up, "").await;
    let data: Vec<u8> = (0..SIZE as u32)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                [(i.wrapping_mul(2_654_435_761) >> 26) as usize % 36]
        })
        .collect();
    let s = tokio::net::TcpStream::connect(p.addr("tcp")).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(SIZE);
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
        .await
        .expect("the echo came back within 60 s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), SIZE);
    assert_eq!(sha256_hex(&back), sha256_hex(&data));
}

#[tokio::test]
async fn a_request_body_held_past_max_body_bytes_is_refused_with_413() {
    let (sink, received) = weft_e2e::upstream::sink().await;
    let p = TestProxy::start(&one_plugin_route(
        "",
        // Pauses in on_request_body until the end of the stream.
        &plugin(
            "hold",
            fx::HOSTCALLS,
            "    configuration: {request_body: \"buffer\"}\n    max_body_bytes: 65536\n",
        ),
        "hold",
        sink,
    ))
    .await;
    // Within the bound: held, then forwarded whole.
    let small = http::Request::post(p.url("main", "/"))
        .body(Full::from(vec![b'a'; 60_000]))
        .unwrap();
    let r = send(&client(), small).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "60000");
    // 2 MiB (the issue's case): past 64 KiB held, the request is answered 413 and the held
    // bytes are never forwarded.
    let big = http::Request::post(p.url("main", "/"))
        .body(Full::from(vec![b'b'; 2 * 1024 * 1024]))
        .unwrap();
    let r = send(&client(), big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(received.load(Ordering::Relaxed), 60_000);
}

/// The response side of `max_body_bytes`: a plugin that buffers the response body to its end,
/// under a 2 MiB upstream response, gets a 500 (Envoy's buffer overflow for a response) whose
/// head says so; the held bytes never reach the client. Within the bound the body passes whole.
#[tokio::test]
async fn a_response_body_held_past_max_body_bytes_is_a_500_before_any_byte() {
    let up = serve(|req: http::Request<hyper::body::Incoming>| async move {
        let size = if req.uri().path() == "/big" {
            2 * 1024 * 1024
        } else {
            60_000
        };
        http::Response::new(Full::from(vec![b'r'; size]))
    })
    .await;
    let p = TestProxy::start(&one_plugin_route(
        "",
        // Pauses in on_response_body until the end of the stream.
        &plugin(
            "hold",
            fx::HOSTCALLS,
            "    configuration: {response_body: \"buffer\"}\n    max_body_bytes: 65536\n",
        ),
        "hold",
        up,
    ))
    .await;
    let r = send(
        &client(),
        http::Request::get(p.url("main", "/small"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 60_000);
    let r = send(
        &client(),
        http::Request::get(p.url("main", "/big"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        !r.body.windows(16).any(|w| w == [b'r'; 16]),
        "none of the held upstream bytes reached the client"
    );
    assert!(r.text().contains("too large"), "{}", r.text());
}

/// Instance pools under concurrency, on a multi-thread runtime: concurrent requests share a
/// plugin's two instances (waiting for them asynchronously), and concurrent traps under the
/// `reload` policy replace instances one at a time, so the pool never holds more than its size
/// (`weft_plugin_instances_peak`); it refills in the background. Bounded: 48 requests per
/// route, 8 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_oversubscribe_the_instance_pool() {
    let up = echo("up").await;
    let p = TestProxy::start(&format!(
        r#"
plugins:
{}
{}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - {{ match: {{ path: {{ prefix: /trap }} }}, route: {{ cluster: up }}, plugins: [{{ name: trap }}] }}
          - {{ route: {{ cluster: up }}, plugins: [{{ name: adder }}] }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        plugin("adder", fx::HEADER_ADDER, "    configuration: v1\n    instances: 2\n"),
        plugin(
            "trap",
            fx::TRAP,
            "    instances: 2\n    reload_backoff: 0s\n    max_failures: 100000\n"
        ),
    ))
    .await;
    for (path, status) in [("/ok", 200), ("/trap", 503)] {
        let url = p.url("main", path);
        let sem = Arc::new(tokio::sync::Semaphore::new(8));
        let tasks: Vec<_> = (0..48)
            .map(|_| {
                let (url, sem) = (url.clone(), sem.clone());
                tokio::spawn(async move {
                    let _permit = sem.acquire().await;
                    get(&url).await.status
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), status, "{path}");
        }
    }
    let m = p.metrics().await;
    for name in ["adder", "trap"] {
        let peak = metric_value(
            &m,
            &format!(r#"weft_plugin_instances_peak{{plugin="{name}"}}"#),
        );
        assert!((1.0..=2.0).contains(&peak), "{name}: peak {peak}\n{m}");
    }
    assert!(metric_value(&m, r#"weft_plugin_instances_replaced_total{plugin="trap"}"#) >= 1.0);
    // Every /trap request got 503: from a trap, or while no instance was healthy (replacements
    // are in the background); each instance trapped at least once.
    assert!(metric_value(&m, r#"weft_plugin_traps_total{plugin="trap"}"#) >= 2.0);
    // The trapping plugin's pool refills in the background, to its size and no more.
    let refilled = weft_e2e::eventually(Duration::from_secs(10), || async {
        let m = p.metrics().await;
        metric_value(&m, r#"weft_plugin_healthy_instances{plugin="trap"}"#) == 2.0
    })
    .await;
    assert!(refilled, "{}", p.metrics().await);
    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, r#"weft_plugin_instances_peak{plugin="trap"}"#),
        2.0
    );
    assert_eq!(
        metric_value(&m, r#"weft_plugin_instances_peak{plugin="adder"}"#),
        2.0
    );
}

/// A plugin whose callback burns CPU (2 ms, `cpu_burner`) is recognised as slow after a timed
/// slow callback (a random one in 8 is timed); under `accept: shared` (two workers stealing
/// each other's tasks) its later callbacks run off the async worker with `block_in_place`
/// (the default `reuseport` workers use the blocking pool: the tests below), counted by
/// `weft_plugin_offloaded_calls_total`, and requests keep their plugin's effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugin_runs_off_the_async_worker() {
    let up = echo("up").await;
    let shared = "workers: 2\nruntime:\n  accept: shared";
    let p = TestProxy::start(&slow_and_fast(shared, up)).await;
    // One callback in 8 (at random) is timed while a plugin is fast: a bounded number of
    // requests until one of the slow ones was, and a later callback ran off the worker.
    let mut offloaded = 0.0;
    for _ in 0..64 {
        let r = get(&p.url("main", "/slow")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["x-burned-us"], "2000");
        let r = get(&p.url("main", "/fast")).await;
        assert_eq!(r.json()["headers"]["x-plugin-seen"], "fast");
        let m = p.metrics().await;
        offloaded = metric_value(&m, r#"weft_plugin_offloaded_calls_total{plugin="burn"}"#);
        if offloaded >= 1.0 {
            break;
        }
    }
    assert!(
        offloaded >= 1.0,
        "no callback of the slow plugin ran off the worker in 64 requests"
    );
}

/// The configuration of the slow-plugin tests (after the `top` lines): `/slow` runs `burn`
/// (`cpu_burner`, 2 ms per request unless `x-burn-us` says otherwise, a CPU budget long enough
/// for a long burn), every other path runs `adder` (`header_adder`, `x-plugin-seen: fast`).
fn slow_and_fast(top: &str, up: SocketAddr) -> String {
    format!(
        r#"{top}
plugins:
{}
{}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - match: {{ path: {{ prefix: /slow }} }}
            route: {{ cluster: up }}
            plugins: [{{ name: burn }}]
          - route: {{ cluster: up }}
            plugins: [{{ name: adder }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        plugin(
            "burn",
            fx::CPU_BURNER,
            "    configuration: \"2000\"\n    cpu_deadline: 10s\n    instances: 1\n"
        ),
        plugin("adder", fx::HEADER_ADDER, "    configuration: fast\n"),
    )
}

/// `weft_plugin_offloaded_calls_total` of the `burn` plugin.
async fn offloaded(p: &TestProxy) -> f64 {
    metric_value(
        &p.metrics().await,
        r#"weft_plugin_offloaded_calls_total{plugin="burn"}"#,
    )
}

/// Sends `/slow` requests (each burning `burn_us`) until a callback of the slow plugin ran off
/// the worker (a random one callback in 8 is timed while a plugin is fast: bounded at 64
/// requests), checking every request keeps both plugins' effects.
async fn until_offloaded(p: &TestProxy, burn_us: &str, fast_json: bool) {
    for _ in 0..64 {
        let r = get_with(&p.url("main", "/slow"), &[("x-burn-us", burn_us)]).await;
        assert_eq!(r.status, 200);
        if fast_json {
            assert_eq!(r.json()["headers"]["x-burned-us"], burn_us);
            let r = get(&p.url("main", "/fast")).await;
            assert_eq!(r.json()["headers"]["x-plugin-seen"], "fast");
        }
        if offloaded(p).await >= 1.0 {
            return;
        }
    }
    panic!("no callback of the slow plugin ran off the worker in 64 requests");
}

/// `runtime.accept: reuseport` with two workers (each a current-thread runtime, where
/// `block_in_place` is impossible): a slow plugin's callbacks are handed to the blocking pool
/// (`weft_plugin_offloaded_calls_total` rises) and the requests keep both plugins' effects; a
/// plugin without `instances` gets one instance per worker.
#[tokio::test]
async fn a_slow_plugin_runs_off_a_reuseport_worker() {
    let up = echo("up").await;
    let top = "workers: 2\nruntime:\n  accept: reuseport";
    let p = TestProxy::start(&slow_and_fast(top, up)).await;
    until_offloaded(&p, "2000", true).await;
    // Once slow, each request's callbacks keep going off the worker, effects intact.
    let before = offloaded(&p).await;
    for _ in 0..4 {
        let r = get(&p.url("main", "/slow")).await;
        assert_eq!(r.json()["headers"]["x-burned-us"], "2000");
    }
    assert!(offloaded(&p).await >= before + 4.0);
    // `instances` unset: one instance per worker runtime (plugins load on the single-threaded
    // control runtime, whose one thread is not the count).
    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, r#"weft_plugin_healthy_instances{plugin="adder"}"#),
        2.0,
        "{m}"
    );
}

/// While a slow callback runs off the worker, the same worker serves another connection: a
/// `/fast` request is answered, its plugin's effect intact, while the upstream has not yet
/// received the `/slow` request whose `on_request_headers` is still burning. The one worker
/// makes "the same worker" certain. "Still burning" is an event: the offloaded-calls counter
/// rose (it counts a callback as it starts) and the upstream has not seen `/slow`. A second
/// `/slow` request meanwhile wants the same (only) instance of the slow plugin: it waits for
/// the instance's gate without blocking the worker (had it blocked on the instance's lock,
/// `/fast` would only be served once the first burn ended and its request went upstream).
async fn the_worker_serves_fast_requests_during_a_slow_callback(p: &TestProxy, up: &Recording) {
    until_offloaded(p, "1000", false).await;
    // The warm-up requests' connections are closed first: the count of active connections
    // below is then the two `/slow` ones alone. (Their streams' end callbacks would not block
    // the worker either: one that finds the instance busy waits in a task of its own.)
    let settled = weft_e2e::eventually(Duration::from_secs(30), || async {
        let m = p.metrics().await;
        metric_value(&m, r#"weft_downstream_cx_active{listener="main"}"#) == 0.0
    })
    .await;
    assert!(settled, "the warm-up connections did not close");
    let base = offloaded(p).await;
    let seen = up.heads();
    // Three seconds of burn: long against one request on the fast route, whatever the load;
    // the test never waits for it except at the end.
    let slow_request = |burn: &'static str| {
        let url = p.url("main", "/slow");
        tokio::spawn(async move { get_with(&url, &[("x-burn-us", burn)]).await })
    };
    let slow = slow_request("3000000");
    let started = weft_e2e::eventually(Duration::from_secs(30), || async {
        offloaded(p).await > base
    })
    .await;
    assert!(started, "the slow callback never started off the worker");
    // The second one is accepted by the worker (its connection counted), which then reads it
    // and waits for the instance.
    let waiting = slow_request("1000");
    let accepted = weft_e2e::eventually(Duration::from_secs(30), || async {
        let m = p.metrics().await;
        metric_value(&m, r#"weft_downstream_cx_active{listener="main"}"#) >= 2.0
    })
    .await;
    assert!(accepted, "the second /slow connection was not accepted");
    let r = get(&p.url("main", "/fast")).await;
    assert_eq!(r.status, 200);
    let heads = up.heads_since(seen);
    assert!(
        heads.iter().all(|h| h.path != "/slow"),
        "the /slow request reached the upstream before /fast was answered: {heads:?}"
    );
    let fast = heads.iter().find(|h| h.path == "/fast");
    let header = |h: &SeenHead, name: &str| {
        h.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        fast.and_then(|h| header(h, "x-plugin-seen")).as_deref(),
        Some(&b"fast"[..]),
        "{heads:?}"
    );
    assert_eq!(slow.await.expect("slow request task").status, 200);
    assert_eq!(waiting.await.expect("waiting request task").status, 200);
    let heads = up.heads_since(seen);
    let mut burned: Vec<_> = heads
        .iter()
        .filter(|h| h.path == "/slow")
        .filter_map(|h| header(h, "x-burned-us"))
        .collect();
    burned.sort();
    assert_eq!(
        burned,
        [b"1000".to_vec(), b"3000000".to_vec()],
        "both slow requests keep the plugin's effect: {heads:?}"
    );
}

/// `runtime.accept: reuseport`, one worker.
#[tokio::test]
async fn a_reuseport_worker_serves_another_connection_while_a_slow_callback_runs() {
    let up = recording().await;
    let top = "workers: 1\nruntime:\n  accept: reuseport";
    let p = TestProxy::start(&slow_and_fast(top, up.addr)).await;
    the_worker_serves_fast_requests_during_a_slow_callback(&p, &up).await;
}

/// `workers: 1` with `runtime.accept: shared`: the proxy runs on one current-thread runtime
/// (this test's, shared with the test's own client and upstream), which keeps serving too.
#[tokio::test(flavor = "current_thread")]
async fn a_single_worker_serves_another_connection_while_a_slow_callback_runs() {
    let up = recording().await;
    let p = TestProxy::start(&slow_and_fast("workers: 1", up.addr)).await;
    the_worker_serves_fast_requests_during_a_slow_callback(&p, &up).await;
}

/// Body buffers are the embedding's `Bytes` chunks: an 8 MiB body streamed through a plugin
/// that does not touch it (it reads headers and sees every body chunk) reaches the upstream
/// intact, past the plugin's 1 MiB `max_body_bytes` (nothing is held), with the client's framing
/// (`Content-Length` kept; chunked stays chunked); an 8 MiB response comes back intact with its
/// `Content-Length`. Bounded: two uploads and one download, 60 s each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8_mib_streamed_body_through_a_plugin_arrives_intact_with_the_clients_framing() {
    use http_body_util::{BodyExt, StreamBody};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use sha2::{Digest, Sha256};

    const SIZE: usize = 8 * 1024 * 1024;
    const FRAME: usize = 64 * 1024;
    let data = Bytes::from(
        (0..SIZE as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect::<Vec<u8>>(),
    );
    let digest = format!("{:x}", Sha256::digest(&data));
    let served = data.clone();
    let up =
        weft_e2e::upstream::serve_incoming(move |req: http::Request<hyper::body::Incoming>| {
            let served = served.clone();
            async move {
                if req.uri().path() == "/down" {
                    return http::Response::new(Full::new(served));
                }
                let framing = format!(
                    "cl={} te={} x-seen={}",
                    header_text(req.headers(), "content-length"),
                    header_text(req.headers(), "transfer-encoding"),
                    header_text(req.headers(), "x-seen"),
                );
                let mut body = req.into_body();
                let (mut hash, mut n) = (Sha256::new(), 0usize);
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(d) = frame.data_ref() {
                        hash.update(d);
                        n += d.len();
                    }
                }
                let text = format!("{framing} len={n} sha={:x}", hash.finalize());
                http::Response::new(Full::new(Bytes::from(text)))
            }
        })
        .await;
    let p = TestProxy::start(&one_plugin_route(
        "access_log: { path: \"off\" }",
        &plugin(
            "seen",
            fx::HOSTCALLS,
            "    configuration: {add_request_header: [x-seen, yes]}\n    max_body_bytes: 1048576\n",
        ),
        "seen",
        up,
    ))
    .await;
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    for with_length in [true, false] {
        let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..SIZE)
            .step_by(FRAME)
            .map(|at| Ok(http_body::Frame::data(data.slice(at..at + FRAME))))
            .collect();
        let mut req = http::Request::post(p.url("main", "/up"));
        if with_length {
            req = req.header("content-length", SIZE.to_string());
        }
        let req = req
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(60), async {
            let resp = client.request(req).await.expect("upload sent");
            let status = resp.status();
            let text = resp.into_body().collect().await.expect("reply").to_bytes();
            (status, String::from_utf8_lossy(&text).into_owned())
        })
        .await
        .expect("upload finishes within 60 s");
        let framing = if with_length {
            format!("cl={SIZE} te=-")
        } else {
            "cl=- te=chunked".to_owned()
        };
        assert_eq!(resp.0, 200, "{}", resp.1);
        assert_eq!(
            resp.1,
            format!("{framing} x-seen=yes len={SIZE} sha={digest}"),
            "with_length: {with_length}"
        );
    }
    let r = tokio::time::timeout(Duration::from_secs(60), get(&p.url("main", "/down")))
        .await
        .expect("download finishes within 60 s");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(SIZE.to_string().as_str()));
    assert_eq!(r.body.len(), SIZE);
    assert_eq!(format!("{:x}", Sha256::digest(&r.body)), digest);
}

fn header_text(headers: &http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| "-".to_owned())
}
