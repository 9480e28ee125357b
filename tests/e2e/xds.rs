//! Weft as an xDS client against a test control plane (tests/support/xds.rs): it starts with
//! only the bootstrap, takes a snapshot (clusters, endpoints, a listener, routes) and serves
//! it, ACKs each type with the version and nonce it got, NACKs a bad resource naming it while
//! the last good keeps serving, rides out a control-plane restart under load, and endpoint churn under load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as route;
use weft_e2e::xds::{
    CDS, ControlPlane, EDS, LDS, RDS, SDS, Snapshot, WasmCode, assignment, bootstrap, ca_secret,
    capture_listener, delta_bootstrap, downstream_tls, eds_cluster, header, http_listener,
    http_listener_with, network_wasm_filter, original_dst_cluster, prefix_route, route_config,
    sds_upstream_tls, static_cluster, string_value, struct_value, tcp_listener, tcp_proxy_filter,
    tls_secret, upstream_tls, wasm_filter,
};
use weft_e2e::{TestProxy, eventually, get, metric_value, upstream};

const WAIT: Duration = Duration::from_secs(30);

/// Upstreams `v1` and `v2`, and a snapshot routing `/v1` to v1 (with header changes),
/// `/only-v2` through a 0/100 weighted split, and `/` through a 50/50 split.
async fn snapshot(version: &str, v1: SocketAddr, v2: SocketAddr, tag: &str) -> Snapshot {
    let mut to_v1 = prefix_route("/v1", &[("v1", 1)]);
    to_v1.request_headers_to_add = vec![header("x-added", tag, false)];
    to_v1.response_headers_to_add = vec![header("x-resp", "weft-xds", true)];
    to_v1.request_headers_to_remove = vec!["x-drop".into()];
    let routes = route_config(
        "routes",
        vec![
            to_v1,
            prefix_route("/only-v2", &[("v1", 0), ("v2", 100)]),
            prefix_route("/", &[("v1", 50), ("v2", 50)]),
        ],
    );
    Snapshot::new(version)
        .with("v1", eds_cluster("v1"))
        .with("v2", eds_cluster("v2"))
        .with("v1", assignment("v1", &[(v1, 1)]))
        .with("v2", assignment("v2", &[(v2, 1)]))
        .with(
            "web",
            http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes"),
        )
        .with("routes", routes)
}

struct Running {
    tp: TestProxy,
    _client: weft_xds::XdsClient,
}

async fn start(cp: &ControlPlane) -> Running {
    start_for(cp, "web").await
}

/// Weft on `cp`'s bootstrap, once the xDS listener `listener` is live.
async fn start_for(cp: &ControlPlane, listener: &str) -> Running {
    let tp = TestProxy::start(&bootstrap(cp.addr)).await;
    assert!(
        tp.proxy.listener_addrs().is_empty(),
        "only the bootstrap at first"
    );
    let client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(
        eventually(WAIT, || async {
            tp.proxy.listener_addr(listener).is_some()
        })
        .await,
        "the xDS listener goes live: {:?}",
        tp.proxy.last_reload_error()
    );
    Running {
        tp,
        _client: client,
    }
}

/// A snapshot of `cluster` with `endpoints` behind listener `web` (`/` → the cluster).
fn web_to(
    cluster: envoy_types::pb::envoy::config::cluster::v3::Cluster,
    endpoints: &[(SocketAddr, u32)],
) -> Snapshot {
    let name = cluster.name.clone();
    Snapshot::new("1")
        .with(&name, assignment(&name, endpoints))
        .with(&name, cluster)
        .with(
            "web",
            http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes"),
        )
        .with(
            "routes",
            route_config("routes", vec![prefix_route("/", &[(name.as_str(), 1)])]),
        )
}

/// A control plane serving `snapshot`, with Weft (listener `web` live) and Envoy 1.40 on it.
async fn weft_and_envoy(
    envoy_bin: &std::path::Path,
    snapshot: Snapshot,
) -> (Running, weft_e2e::envoy::TestEnvoy, ControlPlane) {
    let cp = ControlPlane::start(snapshot).await;
    let w = start(&cp).await;
    let envoy = start_envoy(envoy_bin, &cp).await;
    (w, envoy, cp)
}

/// Envoy 1.40 on the same control plane (node `envoy-pod`).
async fn start_envoy(bin: &std::path::Path, cp: &ControlPlane) -> weft_e2e::envoy::TestEnvoy {
    weft_e2e::envoy::TestEnvoy::start_bootstrap(bin, &weft_e2e::xds::envoy_bootstrap(cp.addr)).await
}

#[tokio::test]
async fn serves_a_snapshot_and_acks_each_type_in_warming_order() {
    let (v1, v2) = (upstream::echo("v1").await, upstream::echo("v2").await);
    let cp = ControlPlane::start(snapshot("1", v1, v2, "one").await).await;
    let w = start(&cp).await;
    let url = |p: &str| w.tp.url("web", p);

    // Routing and header changes.
    let r = weft_e2e::get_with(&url("/v1/x"), &[("x-drop", "secret")]).await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["server"], "v1");
    assert_eq!(body["headers"]["x-added"], "one");
    assert!(body["headers"].get("x-drop").is_none(), "{body}");
    assert_eq!(r.header("x-resp"), Some("weft-xds"));
    // Weights: 0/100 always goes to v2; 50/50 reaches both.
    for _ in 0..20 {
        assert_eq!(get(&url("/only-v2")).await.json()["server"], "v2");
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        seen.insert(get(&url("/split")).await.json()["server"].to_string());
    }
    assert_eq!(seen.len(), 2, "both clusters of a 50/50 split: {seen:?}");

    // Every type was ACKed with the version served and a nonce the server sent.
    for t in [CDS, EDS, LDS, RDS] {
        assert!(
            eventually(WAIT, || async { cp.acked(t, "1") }).await,
            "{t} ACKed"
        );
    }
    let requests = cp.requests();
    let first = |t: &str| requests.iter().position(|r| r.type_url == t).unwrap();
    let eds_ack = requests
        .iter()
        .position(|r| r.type_url == EDS && r.version_info == "1")
        .unwrap();
    assert!(first(CDS) < first(EDS), "CDS before EDS");
    assert!(eds_ack < first(LDS), "LDS only once the clusters are warm");
    assert!(first(LDS) < first(RDS), "RDS after LDS");
    let node = requests[0].node.clone().unwrap();
    assert_eq!(
        node.id,
        "sidecar~127.0.0.1~test-pod.test-ns~test-ns.svc.cluster.local"
    );
    assert_eq!(node.cluster, "test-app.test-ns");
    assert_eq!(
        requests.iter().filter(|r| r.error_detail.is_some()).count(),
        0
    );

    // Visibility.
    let dump = get(&format!("http://{}/config_dump", w.tp.admin()))
        .await
        .json();
    let xds = &dump["dynamic"];
    assert_eq!(xds["connected"], true);
    let types = xds["resource_types"].as_array().unwrap();
    assert_eq!(types.len(), 4, "{xds}");
    assert!(
        types
            .iter()
            .all(|t| t["version_info"] == "1" && t["last_updated"].is_string())
    );
    let metrics = w.tp.metrics().await;
    assert_eq!(metric_value(&metrics, "weft_xds_connected "), 1.0);
    assert!(
        metric_value(
            &metrics,
            &format!("weft_xds_updates_total{{type_url=\"{RDS}\",result=\"accepted\"}} ")
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_bad_resource_is_nacked_and_the_last_good_keeps_serving() {
    let (v1, v2) = (upstream::echo("v1").await, upstream::echo("v2").await);
    let cp = ControlPlane::start(snapshot("1", v1, v2, "one").await).await;
    let w = start(&cp).await;
    assert!(eventually(WAIT, || async { cp.acked(RDS, "1") }).await);

    // Version 2 asks for request hedging, which Weft does not implement.
    let mut bad = snapshot("2", v1, v2, "two").await;
    let rds = bad.resources.get_mut(RDS).unwrap();
    let mut rc: route::RouteConfiguration =
        prost::Message::decode(rds[0].1.value.as_slice()).unwrap();
    if let Some(route::route::Action::Route(a)) = &mut rc.virtual_hosts[0].routes[0].action {
        a.hedge_policy = Some(route::HedgePolicy::default());
    }
    rds[0].1.value = prost::Message::encode_to_vec(&rc);
    cp.set(bad);
    assert!(eventually(WAIT, || async { cp.nack(RDS).is_some() }).await);
    let nack = cp.nack(RDS).unwrap();
    assert_eq!(
        nack.version_info, "1",
        "a NACK carries the last accepted version"
    );
    assert!(!nack.response_nonce.is_empty());
    let message = nack.error_detail.unwrap().message;
    assert!(
        message.contains(
            "route_configuration \"routes\".virtual_hosts[0].routes[0].route.hedge_policy"
        ) && message.contains("unimplemented"),
        "{message}"
    );
    // The other types of version 2 are fine; the routes of version 1 keep serving.
    let r = get(&w.tp.url("web", "/v1")).await;
    assert_eq!(r.json()["headers"]["x-added"], "one");

    // A resource that translates but fails Weft's validation is NACKed too.
    let mut invalid = snapshot("3", v1, v2, "three").await;
    let mut rc = route_config("routes", vec![prefix_route("/", &[("v1", 1)])]);
    rc.virtual_hosts[0].routes[0].request_headers_to_add = vec![header("bad header", "x", false)];
    invalid.resources.insert(RDS.into(), Vec::new());
    let invalid = invalid.with("routes", rc);
    cp.set(invalid);
    assert!(
        eventually(WAIT, || async {
            cp.nacked(RDS, None, &["listener \"web\"", "bad header"])
        })
        .await,
        "{:?}",
        cp.requests().last()
    );
    assert_eq!(
        get(&w.tp.url("web", "/v1")).await.json()["headers"]["x-added"],
        "one"
    );
    let metrics = w.tp.metrics().await;
    assert!(
        metric_value(
            &metrics,
            &format!("weft_xds_updates_total{{type_url=\"{RDS}\",result=\"rejected\"}} ")
        ) >= 2.0
    );

    // A good version after the bad ones is taken.
    cp.set(snapshot("4", v1, v2, "four").await);
    assert!(
        eventually(WAIT, || async {
            get(&w.tp.url("web", "/v1")).await.json()["headers"]["x-added"] == "four"
        })
        .await
    );
    assert!(cp.acked(RDS, "4") || eventually(WAIT, || async { cp.acked(RDS, "4") }).await);
}

#[tokio::test]
async fn a_control_plane_restart_under_load_fails_no_request() {
    let (v1, v2) = (upstream::echo("v1").await, upstream::echo("v2").await);
    let cp = ControlPlane::start(snapshot("1", v1, v2, "one").await).await;
    let w = start(&cp).await;
    let url = w.tp.url("web", "/v1");

    // A bounded load: at most 20,000 requests or 120 s, one at a time, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, sent, failed, url) = (stop.clone(), sent.clone(), failed.clone(), url.clone());
        tokio::spawn(async move {
            let client = weft_e2e::client();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) || tokio::time::Instant::now() > deadline {
                    break;
                }
                let req = http::Request::get(&url)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let ok = weft_e2e::send(&client, req).await.status == 200;
                sent.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let status = w._client.status().clone();
    assert!(eventually(WAIT, || async { sent.load(Ordering::SeqCst) > 20 }).await);

    // The control plane goes away: Weft notices and keeps serving.
    let addr = cp.stop().await;
    assert!(eventually(WAIT, || async { !status.is_connected() }).await);
    let before = sent.load(Ordering::SeqCst);
    assert!(eventually(WAIT, || async { sent.load(Ordering::SeqCst) > before + 20 }).await);

    // It comes back on the same address with a new version: Weft reconnects and takes it.
    let cp = ControlPlane::start_on(addr, snapshot("2", v1, v2, "two").await).await;
    assert!(
        eventually(WAIT, || async {
            get(&url).await.json()["headers"]["x-added"] == "two"
        })
        .await,
        "reconnected and took version 2"
    );
    assert!(eventually(WAIT, || async { cp.acked(RDS, "2") }).await);
    // On reconnection the versions held were sent.
    assert!(
        cp.requests()
            .iter()
            .any(|r| r.type_url == CDS && r.version_info == "1")
    );
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(sent > 40, "{sent}");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
}

/// The same snapshot served to Envoy 1.40 and to Weft: the same requests through both agree on
/// routing, weighted splits and header changes, and both ACK every type.
#[tokio::test]
async fn the_same_snapshot_behaves_the_same_in_envoy_and_weft() {
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let (v1, v2) = (upstream::echo("v1").await, upstream::echo("v2").await);
    let cp = ControlPlane::start(snapshot("1", v1, v2, "one").await).await;
    let w = start(&cp).await;
    let envoy = start_envoy(&envoy_bin, &cp).await;
    agree(&w.tp.url("web", ""), &envoy.url("")).await;
    // Both ACKed every type at version 1 (each with its own node id).
    for node in ["test-pod", "envoy-pod"] {
        for t in [CDS, EDS, LDS, RDS] {
            assert!(
                eventually(WAIT, || async {
                    cp.requests().iter().any(|r| {
                        r.type_url == t
                            && r.version_info == "1"
                            && r.error_detail.is_none()
                            && r.node.as_ref().is_some_and(|n| n.id.contains(node))
                    })
                })
                .await,
                "{node} ACKed {t}"
            );
        }
    }
}

/// The requests of the differential tests, through Weft (`weft`, a base URL) and Envoy: routing,
/// weighted splits and header changes agree.
async fn agree(weft: &str, envoy: &str) {
    for (name, base) in [("weft", weft), ("envoy", envoy)] {
        let r = weft_e2e::get_with(&format!("{base}/v1/x"), &[("x-drop", "secret")]).await;
        let body = r.json();
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(body["server"], "v1", "{name}");
        assert_eq!(body["headers"]["x-added"], "one", "{name}: {body}");
        assert!(body["headers"].get("x-drop").is_none(), "{name}: {body}");
        assert_eq!(r.header("x-resp"), Some("weft-xds"), "{name}");
    }
    for (name, base) in [("weft", weft), ("envoy", envoy)] {
        for _ in 0..20 {
            let r = get(&format!("{base}/only-v2")).await;
            assert_eq!(r.json()["server"], "v2", "{name}: 0/100 split");
        }
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100 {
            let server = get(&format!("{base}/split")).await.json()["server"].to_string();
            *counts.entry(server).or_insert(0) += 1;
        }
        assert_eq!(
            counts.len(),
            2,
            "{name}: a 50/50 split reaches both: {counts:?}"
        );
    }
}

/// Static and dynamic resources compose, and a file reload keeps the dynamic ones.
#[tokio::test]
async fn a_file_reload_keeps_the_xds_resources() {
    let (v1, v2) = (upstream::echo("v1").await, upstream::echo("v2").await);
    let file_up = upstream::echo("static").await;
    let cp = ControlPlane::start(snapshot("1", v1, v2, "one").await).await;
    let static_part = |path: &str| {
        format!(
            r#"listeners:
  - name: file
    address: 127.0.0.1:0
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes: [{{ match: {{ path: {{ prefix: "{path}" }} }}, route: {{ cluster: file-up }} }}]
"#
        )
    };
    let with_file = |path: &str| {
        format!(
            "{}  - name: file-up\n    endpoints: [{{ address: \"{file_up}\" }}]\n{}",
            bootstrap(cp.addr),
            static_part(path)
        )
    };
    let tp = TestProxy::start(&with_file("/")).await;
    let _client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(eventually(WAIT, || async { tp.proxy.listener_addr("web").is_some() }).await);
    assert_eq!(get(&tp.url("file", "/a")).await.json()["server"], "static");
    assert_eq!(get(&tp.url("web", "/v1")).await.json()["server"], "v1");

    // The file changes: its listener now only takes /b; the xDS listener stays.
    tp.write_config(&with_file("/b"));
    tp.proxy.reload().await.unwrap();
    assert_eq!(get(&tp.url("file", "/a")).await.status, 404);
    assert_eq!(get(&tp.url("web", "/v1")).await.json()["server"], "v1");
    let dump = get(&format!("http://{}/config_dump", tp.admin()))
        .await
        .json();
    let listeners: Vec<&str> = dump["config"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(listeners, ["file", "web"]);
}

/// Endpoint churn under load: for 60 s, ten times a second, the control plane adds an endpoint
/// to cluster `v1` or removes one (two stay throughout, two come and go), while four clients
/// send requests through it. Not one request fails, every update is ACKed, and the endpoints
/// that come and go take traffic while they are in.
#[tokio::test]
async fn endpoint_churn_under_load_fails_no_request() {
    churn(false, 600).await; // 10 a second for 60 s
}

/// The same churn over incremental (delta) ADS, where each update carries only the changed
/// assignment and is applied in place: 10 a second for 16 s (shorter, for the CI budget; the
/// state-of-the-world test above runs the full 60 s).
#[tokio::test]
async fn delta_endpoint_churn_under_load_fails_no_request() {
    churn(true, 160).await;
}

/// `updates` endpoint changes of cluster `v1`, one every 100 ms, under load from four clients
/// (`updates` a multiple of 4: the churned endpoints end out).
async fn churn(delta: bool, updates: u64) {
    assert_eq!(updates % 4, 0);
    let (v1, v2) = (upstream::echo("v1").await, upstream::echo("v2").await);
    let stable = upstream::echo("stable").await;
    let churn = [
        upstream::echo("churn-a").await,
        upstream::echo("churn-b").await,
    ];
    let at = |version: u64| {
        // Versions cycle through: none in, a in, a and b in, b in.
        let mut eps = vec![(v1, 1), (stable, 1)];
        match version % 4 {
            1 => eps.push((churn[0], 1)),
            2 => eps.extend([(churn[0], 1), (churn[1], 1)]),
            3 => eps.push((churn[1], 1)),
            _ => {}
        }
        Snapshot::new(&version.to_string())
            .with("v1", eds_cluster("v1"))
            .with("v2", eds_cluster("v2"))
            .with("v1", assignment("v1", &eps))
            .with("v2", assignment("v2", &[(v2, 1)]))
            .with(
                "web",
                http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes"),
            )
            .with(
                "routes",
                route_config("routes", vec![prefix_route("/", &[("v1", 1)])]),
            )
    };
    let cp = ControlPlane::start(at(0)).await;
    let tp = TestProxy::start(&if delta {
        delta_bootstrap(cp.addr)
    } else {
        bootstrap(cp.addr)
    })
    .await;
    let _client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(eventually(WAIT, || async { tp.proxy.listener_addr("web").is_some() }).await);
    let url = tp.url("web", "/churn");

    // Load: four clients, each at most 100,000 requests or 120 s, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let servers = Arc::new(parking_lot::Mutex::new(std::collections::HashMap::<
        String,
        u64,
    >::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed, url, servers) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            url.clone(),
            servers.clone(),
        );
        load.push(tokio::spawn(async move {
            let client = weft_e2e::client();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) || tokio::time::Instant::now() > deadline {
                    break;
                }
                let req = http::Request::get(&url)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let r = weft_e2e::send(&client, req).await;
                sent.fetch_add(1, Ordering::SeqCst);
                if r.status == 200 {
                    let server = r.json()["server"].as_str().unwrap_or("").to_owned();
                    *servers.lock().entry(server).or_default() += 1;
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    assert!(eventually(WAIT, || async { sent.load(Ordering::SeqCst) > 20 }).await);

    // The churn: a new assignment every 100 ms (the control plane's pace, not a wait).
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for version in 1..=updates {
        tick.tick().await;
        cp.set(at(version));
    }
    let last = updates.to_string();
    assert!(
        eventually(WAIT, || async {
            if delta {
                cp.delta_acked(EDS, &last)
            } else {
                cp.acked(EDS, &last)
            }
        })
        .await,
        "the last assignment ACKed"
    );
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    let servers = servers.lock().clone();
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    assert!(sent > 1_000, "{sent} requests");
    for s in ["v1", "stable", "churn-a", "churn-b"] {
        assert!(servers.get(s).is_some_and(|n| *n > 0), "{s}: {servers:?}");
    }
    assert!(!servers.contains_key("v2"), "{servers:?}");
    let nacks = if delta {
        cp.delta_requests()
            .iter()
            .filter(|r| r.error_detail.is_some())
            .count()
    } else {
        cp.requests()
            .iter()
            .filter(|r| r.error_detail.is_some())
            .count()
    };
    assert_eq!(nacks, 0, "no NACK");
    // updates % 4 == 0: the churned endpoints are out again and take nothing more.
    let mut after = std::collections::HashSet::new();
    for _ in 0..50 {
        after.insert(get(&url).await.json()["server"].to_string());
    }
    assert!(
        after
            .iter()
            .all(|s| s.contains("v1") || s.contains("stable")),
        "{after:?}"
    );
}

/// The routes of [`snapshot`] once cluster `v2` is gone: everything to v1.
fn without_v2(version: &str, v1: SocketAddr, tag: &str) -> Snapshot {
    let mut to_v1 = prefix_route("/", &[("v1", 1)]);
    to_v1.request_headers_to_add = vec![header("x-added", tag, false)];
    Snapshot::new(version)
        .with("v1", eds_cluster("v1"))
        .with("v1", assignment("v1", &[(v1, 1)]))
        .with(
            "web",
            http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes"),
        )
        .with("routes", route_config("routes", vec![to_v1]))
}

fn dynamic_clusters(dump: &serde_json::Value) -> Vec<String> {
    dump["config"]["clusters"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .filter(|n| n != "xds-grpc")
                .collect()
        })
        .unwrap_or_default()
}

/// Incremental ADS (`api_type: DELTA_GRPC`): wildcard CDS and LDS, EDS and RDS subscribed by
/// name in warming order; only what changed is sent and ACKed by nonce; a removed cluster is
/// dropped and its assignment unsubscribed; a bad resource is NACKed while the last good keeps
/// serving; on reconnection the versions held are sent and only what changed comes back.
#[tokio::test]
async fn delta_ads_subscribes_removes_nacks_and_resumes() {
    let (v1, v2) = (upstream::echo("v1").await, upstream::echo("v2").await);
    let cp = ControlPlane::start(snapshot("1", v1, v2, "one").await).await;
    let tp = TestProxy::start(&delta_bootstrap(cp.addr)).await;
    let client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(
        eventually(WAIT, || async { tp.proxy.listener_addr("web").is_some() }).await,
        "the xDS listener goes live: {:?}",
        tp.proxy.last_reload_error()
    );
    let url = |p: &str| tp.url("web", p);
    let r = get(&url("/v1")).await;
    assert_eq!(
        (
            r.json()["server"].as_str(),
            r.json()["headers"]["x-added"].as_str()
        ),
        (Some("v1"), Some("one"))
    );
    assert_eq!(get(&url("/only-v2")).await.json()["server"], "v2");
    for t in [CDS, EDS, LDS, RDS] {
        assert!(
            eventually(WAIT, || async { cp.delta_acked(t, "1") }).await,
            "{t} ACKed"
        );
    }
    assert!(cp.requests().is_empty(), "no state-of-the-world stream");
    let requests = cp.delta_requests();
    let first = |t: &str| {
        requests
            .iter()
            .position(|r| r.type_url == t)
            .unwrap_or_else(|| panic!("{t} requested"))
    };
    assert!(
        requests[first(CDS)].resource_names_subscribe.is_empty(),
        "CDS: wildcard"
    );
    assert!(
        requests[first(LDS)].resource_names_subscribe.is_empty(),
        "LDS: wildcard"
    );
    assert_eq!(requests[first(EDS)].resource_names_subscribe, ["v1", "v2"]);
    assert_eq!(requests[first(RDS)].resource_names_subscribe, ["routes"]);
    let responses = cp.delta_responses();
    let eds_nonce = &responses.iter().find(|r| r.type_url == EDS).unwrap().nonce;
    let eds_ack = requests
        .iter()
        .position(|r| r.type_url == EDS && r.response_nonce == *eds_nonce)
        .unwrap();
    assert!(first(CDS) < first(EDS) && eds_ack < first(LDS) && first(LDS) < first(RDS));
    assert_eq!(
        requests[0].node.as_ref().unwrap().cluster,
        "test-app.test-ns"
    );

    // Version 2 changes one route header: only the route configuration is sent.
    let before = cp.delta_responses().len();
    cp.set(snapshot("2", v1, v2, "two").await);
    assert!(
        eventually(WAIT, || async {
            get(&url("/v1")).await.json()["headers"]["x-added"] == "two"
        })
        .await
    );
    assert!(eventually(WAIT, || async { cp.delta_acked(RDS, "2") }).await);
    let sent: Vec<_> = cp.delta_responses()[before..]
        .iter()
        .map(|r| (r.type_url.clone(), r.resources.len()))
        .collect();
    assert_eq!(sent, [(RDS.to_owned(), 1)]);

    // Version 3 drops cluster v2: CDS removes it, Weft drops it and unsubscribes its endpoints.
    cp.set(without_v2("3", v1, "three"));
    assert!(eventually(WAIT, || async { cp.delta_acked(CDS, "3") }).await);
    assert!(
        cp.delta_responses()
            .iter()
            .any(|r| r.type_url == CDS && r.removed_resources == ["v2"])
    );
    assert!(
        eventually(WAIT, || async {
            cp.delta_requests()
                .iter()
                .any(|r| r.type_url == EDS && r.resource_names_unsubscribe == ["v2"])
        })
        .await,
        "EDS v2 unsubscribed"
    );
    assert!(
        eventually(WAIT, || async {
            let dump = get(&format!("http://{}/config_dump", tp.admin()))
                .await
                .json();
            dynamic_clusters(&dump) == ["v1"]
        })
        .await
    );
    assert!(
        eventually(WAIT, || async {
            get(&url("/only-v2")).await.json()["headers"]["x-added"] == "three"
        })
        .await
    );

    // Version 4 asks for request hedging: NACKed by nonce, naming the field; 3 keeps serving.
    let mut bad = without_v2("4", v1, "four");
    let rds = bad.resources.get_mut(RDS).unwrap();
    let mut rc: route::RouteConfiguration =
        prost::Message::decode(rds[0].1.value.as_slice()).unwrap();
    if let Some(route::route::Action::Route(a)) = &mut rc.virtual_hosts[0].routes[0].action {
        a.hedge_policy = Some(route::HedgePolicy::default());
    }
    rds[0].1.value = prost::Message::encode_to_vec(&rc);
    cp.set(bad);
    assert!(eventually(WAIT, || async { cp.delta_nack(RDS).is_some() }).await);
    let nack = cp.delta_nack(RDS).unwrap();
    let bad_nonce = &cp
        .delta_responses()
        .iter()
        .rfind(|r| r.type_url == RDS)
        .unwrap()
        .nonce
        .clone();
    assert_eq!(&nack.response_nonce, bad_nonce);
    let message = nack.error_detail.unwrap().message;
    assert!(
        message.contains("route_configuration \"routes\"")
            && message.contains("hedge_policy")
            && message.contains("unimplemented"),
        "{message}"
    );
    assert_eq!(get(&url("/v1")).await.json()["headers"]["x-added"], "three");
    let dump = get(&format!("http://{}/config_dump", tp.admin()))
        .await
        .json();
    let rds_status = dump["dynamic"]["resource_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type_url"] == RDS)
        .unwrap()
        .clone();
    assert_eq!(rds_status["version_info"], "3", "{rds_status}");
    assert!(
        rds_status["last_error"]
            .as_str()
            .unwrap()
            .contains("hedge_policy")
    );

    // The control plane restarts with version 5 (new route tag): Weft resumes with the
    // versions it holds, so only the route configuration comes back.
    let addr = cp.stop().await;
    assert!(eventually(WAIT, || async { !client.status().is_connected() }).await);
    let cp = ControlPlane::start_on(addr, without_v2("5", v1, "five")).await;
    assert!(
        eventually(WAIT, || async {
            get(&url("/v1")).await.json()["headers"]["x-added"] == "five"
        })
        .await
    );
    assert!(eventually(WAIT, || async { cp.delta_acked(RDS, "5") }).await);
    let requests = cp.delta_requests();
    let cds = requests.iter().find(|r| r.type_url == CDS).unwrap();
    let mut held: Vec<_> = cds.initial_resource_versions.keys().cloned().collect();
    held.sort();
    assert_eq!(held, ["v1"], "CDS resumes with what it holds");
    let rds = requests.iter().find(|r| r.type_url == RDS).unwrap();
    assert_eq!(rds.resource_names_subscribe, ["routes"]);
    assert!(rds.initial_resource_versions.contains_key("routes"));
    let sent: Vec<_> = cp
        .delta_responses()
        .iter()
        .map(|r| r.type_url.clone())
        .collect();
    assert_eq!(sent, [RDS.to_owned()], "only what changed while away");
    assert_eq!(
        get(&url("/only-v2")).await.json()["server"],
        "v1",
        "still no v2"
    );
}

/// The same snapshot over incremental ADS to Envoy 1.40 (`api_type: DELTA_GRPC`) and to Weft,
/// each from its own control plane: the same requests agree, and both ACK every type.
#[tokio::test]
async fn the_same_snapshot_over_delta_behaves_the_same_in_envoy_and_weft() {
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let (v1, v2) = (upstream::echo("v1").await, upstream::echo("v2").await);
    let for_weft = ControlPlane::start(snapshot("1", v1, v2, "one").await).await;
    let for_envoy = ControlPlane::start(snapshot("1", v1, v2, "one").await).await;
    let tp = TestProxy::start(&delta_bootstrap(for_weft.addr)).await;
    let _client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(eventually(WAIT, || async { tp.proxy.listener_addr("web").is_some() }).await);
    let envoy = weft_e2e::envoy::TestEnvoy::start_bootstrap(
        &envoy_bin,
        &weft_e2e::xds::envoy_delta_bootstrap(for_envoy.addr),
    )
    .await;
    agree(&tp.url("web", ""), &envoy.url("")).await;
    for (name, cp) in [("weft", &for_weft), ("envoy", &for_envoy)] {
        for t in [CDS, EDS, LDS, RDS] {
            assert!(
                eventually(WAIT, || async { cp.delta_acked(t, "1") }).await,
                "{name} ACKed {t}"
            );
        }
        assert!(cp.requests().is_empty(), "{name}: delta only");
        assert!(cp.delta_nack(RDS).is_none() && cp.delta_nack(CDS).is_none());
    }
    // Both subscribe to EDS and RDS by name.
    for (name, cp) in [("weft", &for_weft), ("envoy", &for_envoy)] {
        let requests = cp.delta_requests();
        let mut eds: Vec<String> = requests
            .iter()
            .filter(|r| r.type_url == EDS)
            .flat_map(|r| r.resource_names_subscribe.clone())
            .collect();
        eds.sort();
        eds.dedup();
        assert_eq!(eds, ["v1", "v2"], "{name}");
    }
}

/// header-rewrite's configuration: `/api/*` goes to `/v2/*` with the original path in a header
/// and `x-secret` removed; the response gets `x-api-version: <version>`.
fn rewrite_config(version: &str) -> serde_json::Value {
    serde_json::json!({
        "rules": [{
            "name": "api",
            "when": {"paths": ["/api/*"]},
            "request": {"set": {"x-original-path": "%{request.path}"}, "remove": ["x-secret"]},
            "response": {"set": {"x-api-version": version}},
            "path": {"replace_prefix": {"from": "/api/", "to": "/v2/"}}
        }]
    })
}

/// Cluster `up`, and listener `web` with `filters` (then the router) routing everything to it;
/// with `wasm_server`, a STATIC cluster `wasm-server` to fetch modules from.
fn wasm_snapshot(
    version: &str,
    up: SocketAddr,
    filters: Vec<weft_e2e::xds::HttpFilter>,
    wasm_server: Option<SocketAddr>,
) -> Snapshot {
    let mut s = Snapshot::new(version)
        .with("up", eds_cluster("up"))
        .with("up", assignment("up", &[(up, 1)]))
        .with(
            "web",
            http_listener_with("web", "127.0.0.1:0".parse().unwrap(), "routes", filters),
        )
        .with(
            "routes",
            route_config("routes", vec![prefix_route("/", &[("up", 1)])]),
        );
    if let Some(addr) = wasm_server {
        s = s.with("wasm-server", static_cluster("wasm-server", addr));
    }
    s
}

/// What the plugin did to one request through `base`: the API version the response got, or
/// `None` when the plugin did not run.
async fn rewritten(name: &str, base: &str) -> Option<String> {
    let r = weft_e2e::get_with(&format!("{base}/api/items"), &[("x-secret", "s")]).await;
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    let seen = r.json();
    let version = r.header("x-api-version").map(str::to_owned);
    if version.is_some() {
        assert_eq!(seen["path"], "/v2/items", "{name}: {seen}");
        assert_eq!(
            seen["headers"]["x-original-path"], "/api/items",
            "{name}: {seen}"
        );
        assert!(seen["headers"].get("x-secret").is_none(), "{name}: {seen}");
    } else {
        assert_eq!(seen["path"], "/api/items", "{name}: {seen}");
    }
    version
}

/// A server of `module` at `/plugin.wasm`, counting the fetches.
async fn wasm_server(module: Vec<u8>) -> (SocketAddr, Arc<AtomicU64>) {
    let fetches = Arc::new(AtomicU64::new(0));
    let counter = fetches.clone();
    let module = bytes::Bytes::from(module);
    let addr = upstream::serve(move |req: http::Request<hyper::body::Incoming>| {
        let (module, counter) = (module.clone(), counter.clone());
        async move {
            if req.uri().path() == "/plugin.wasm" {
                counter.fetch_add(1, Ordering::SeqCst);
                http::Response::new(http_body_util::Full::new(module))
            } else {
                let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                *r.status_mut() = http::StatusCode::NOT_FOUND;
                r
            }
        }
    })
    .await;
    (addr, fetches)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A Wasm plugin built from the workspace (plugins/header-rewrite), delivered over xDS as the
/// `envoy.filters.http.wasm` filter istiod renders, changes the requests and responses through
/// Weft and through Envoy 1.40 alike: first from a local file, then fetched over HTTP and
/// checked against its SHA-256 (configuration as a `StringValue`). A module whose digest does
/// not match is NACKed naming the field, and the last good plugin keeps running.
#[tokio::test]
async fn a_wasm_plugin_over_xds_changes_responses_in_weft_and_envoy() {
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let up = upstream::echo("up").await;
    let file = weft_e2e::plugins::shipped_plugin("header-rewrite");
    let module = std::fs::read(&file).unwrap();
    let (server, fetches) = wasm_server(module.clone()).await;
    let local = |version: &str| {
        wasm_filter(
            "hr",
            WasmCode::Local(file.clone()),
            string_value(&rewrite_config(version).to_string()),
            false,
        )
    };
    let remote = |version: &str, sha256: &str| {
        wasm_filter(
            "hr",
            WasmCode::Remote {
                uri: format!("http://{server}/plugin.wasm"),
                cluster: "wasm-server".into(),
                sha256: sha256.into(),
            },
            string_value(&rewrite_config(version).to_string()),
            false,
        )
    };
    // The module server's cluster is there from the start: an LDS update whose remote code
    // names a cluster whose endpoints have not arrived yet is NACKed, not held (see docs/xds.md).
    let cp = ControlPlane::start(wasm_snapshot("1", up, vec![local("1")], Some(server))).await;
    let cache = tempfile::tempdir().unwrap();
    let boot = bootstrap(cp.addr).replace(
        "  cluster: xds-grpc\n",
        &format!(
            "  cluster: xds-grpc\n  wasm_cache_dir: \"{}\"\n",
            cache.path().display()
        ),
    );
    let tp = TestProxy::start(&boot).await;
    let _client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(
        eventually(WAIT, || async { tp.proxy.listener_addr("web").is_some() }).await,
        "{:?}",
        tp.proxy.last_reload_error()
    );
    let envoy = start_envoy(&envoy_bin, &cp).await;
    let (weft_base, envoy_base) = (tp.url("web", ""), envoy.url(""));
    for (name, base) in [("weft", &weft_base), ("envoy", &envoy_base)] {
        assert_eq!(rewritten(name, base).await.as_deref(), Some("1"), "{name}");
    }

    // Version 2: the same module, fetched over HTTP and checked against its SHA-256.
    let sha = sha256_hex(&module);
    cp.set(wasm_snapshot(
        "2",
        up,
        vec![remote("2", &sha)],
        Some(server),
    ));
    for (name, base) in [("weft", &weft_base), ("envoy", &envoy_base)] {
        assert!(
            eventually(WAIT, || async {
                rewritten(name, base).await.as_deref() == Some("2")
            })
            .await,
            "{name} runs the fetched module: {:?} {:?} {:?}",
            tp.proxy.last_reload_error(),
            rewritten(name, base).await,
            cp.requests()
                .iter()
                .filter_map(|r| r.error_detail.as_ref().map(|e| e.message.clone()))
                .collect::<Vec<_>>()
        );
    }
    assert!(fetches.load(Ordering::SeqCst) >= 2, "both fetched it");
    assert!(cache.path().join(format!("{sha}.wasm")).is_file());
    assert!(eventually(WAIT, || async { cp.acked(LDS, "2") }).await);

    // Version 3 claims another digest: Weft NACKs it naming the field; version 2 keeps running.
    let wrong = "0".repeat(64);
    cp.set(wasm_snapshot(
        "3",
        up,
        vec![remote("3", &wrong)],
        Some(server),
    ));
    assert!(
        eventually(WAIT, || async {
            cp.nacked(
                LDS,
                Some("test-pod"),
                &["vm_config.code.remote.sha256", &sha],
            )
        })
        .await,
        "{:?}",
        cp.requests().last()
    );
    assert_eq!(rewritten("weft", &weft_base).await.as_deref(), Some("2"));
}

/// A plugin configuration given as a `Struct` (the form a `WasmPlugin`'s `pluginConfig` has)
/// reaches the plugin as its JSON; a listener that drops the filter drops the plugin.
#[tokio::test]
async fn a_struct_configuration_reaches_the_plugin_as_json_and_removal_drops_it() {
    let up = upstream::echo("up").await;
    let file = weft_e2e::plugins::shipped_plugin("header-rewrite");
    let filter = wasm_filter(
        "hr",
        WasmCode::Local(file),
        struct_value(&rewrite_config("struct")),
        true,
    );
    let cp = ControlPlane::start(wasm_snapshot("1", up, vec![filter], None)).await;
    let w = start(&cp).await;
    let base = w.tp.url("web", "");
    assert_eq!(rewritten("weft", &base).await.as_deref(), Some("struct"));
    let dump = get(&format!("http://{}/config_dump", w.tp.admin()))
        .await
        .json();
    let plugin = dump["config"]["plugins"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "hr"))
        .cloned()
        .unwrap_or_else(|| panic!("{dump}"));
    assert_eq!(plugin["failure_policy"], "fail_open", "{plugin}");
    assert_eq!(plugin["vm_id"], "hr", "{plugin}");

    cp.set(wasm_snapshot("2", up, Vec::new(), None));
    assert!(eventually(WAIT, || async { rewritten("weft", &base).await.is_none() }).await);
    let dump = get(&format!("http://{}/config_dump", w.tp.admin()))
        .await
        .json();
    assert!(
        dump["config"]["plugins"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{dump}"
    );
}

/// A Wasm filter whose configuration arrives by ECDS (`config_discovery` on the HTTP filter,
/// a `TypedExtensionConfig` over ADS): the listener warms until it arrives, the plugin then
/// runs, a new version of the extension configuration alone changes the plugin's behaviour
/// (the listener resource unchanged, its socket kept), and an unsupported type is NACKed
/// naming the resource, the last good plugin still running. In both ADS variants.
async fn wasm_over_ecds(delta: bool) {
    use weft_e2e::xds::{ECDS, ecds_filter, extension_config};
    let up = upstream::echo("up").await;
    let file = weft_e2e::plugins::shipped_plugin("header-rewrite");
    let ext = |version: &str| {
        extension_config(
            "hr-ext",
            wasm_filter(
                "hr",
                WasmCode::Local(file.clone()),
                string_value(&rewrite_config(version).to_string()),
                false,
            ),
        )
    };
    let snapshot = |version: &str, config: Option<&str>| {
        let s = wasm_snapshot(version, up, vec![ecds_filter("hr-ext")], None);
        match config {
            Some(c) => s.with("hr-ext", ext(c)),
            None => s,
        }
    };
    let acked = |cp: &ControlPlane, t: &str, v: &str| {
        if delta {
            cp.delta_acked(t, v)
        } else {
            cp.acked(t, v)
        }
    };
    // Version 1 lacks the extension configuration: the listener warms.
    let cp = ControlPlane::start(snapshot("1", None)).await;
    let yaml = if delta {
        delta_bootstrap(cp.addr)
    } else {
        bootstrap(cp.addr)
    };
    let tp = TestProxy::start(&yaml).await;
    let _client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(eventually(WAIT, || async { acked(&cp, LDS, "1") }).await);
    assert!(tp.proxy.listener_addr("web").is_none(), "warming");
    let subscribed = if delta {
        cp.delta_requests()
            .iter()
            .any(|r| r.type_url == ECDS && r.resource_names_subscribe == ["hr-ext"])
    } else {
        cp.requests()
            .iter()
            .any(|r| r.type_url == ECDS && r.resource_names == ["hr-ext"])
    };
    assert!(
        subscribed,
        "the extension configuration is subscribed by name"
    );

    cp.set(snapshot("2", Some("one")));
    assert!(
        eventually(WAIT, || async { tp.proxy.listener_addr("web").is_some() }).await,
        "{:?}",
        tp.proxy.last_reload_error()
    );
    let addr = tp.proxy.listener_addr("web");
    let base = tp.url("web", "");
    assert_eq!(rewritten("weft", &base).await.as_deref(), Some("one"));

    // Only the extension configuration changes.
    cp.set(snapshot("3", Some("two")));
    assert!(eventually(WAIT, || async { acked(&cp, ECDS, "3") }).await);
    assert_eq!(rewritten("weft", &base).await.as_deref(), Some("two"));
    assert_eq!(tp.proxy.listener_addr("web"), addr, "the same socket");

    // A TypedExtensionConfig of another type: NACKed by name, the plugin keeps running.
    let mut bad = ext("three");
    if let Some(c) = bad.typed_config.as_mut() {
        c.type_url = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault".into();
    }
    cp.set(wasm_snapshot("4", up, vec![ecds_filter("hr-ext")], None).with("hr-ext", bad));
    let nacked = |cp: &ControlPlane| {
        let message = if delta {
            cp.delta_nack(ECDS)
                .and_then(|n| n.error_detail.map(|e| e.message))
        } else {
            cp.nack(ECDS)
                .and_then(|n| n.error_detail.map(|e| e.message))
        };
        message.is_some_and(|m| {
            m.contains("typed_extension_config \"hr-ext\".typed_config: `type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault` is unimplemented over ECDS")
        })
    };
    assert!(eventually(WAIT, || async { nacked(&cp) }).await);
    assert_eq!(rewritten("weft", &base).await.as_deref(), Some("two"));
}

#[tokio::test]
async fn a_wasm_filter_over_ecds_updates_without_a_listener_change() {
    wasm_over_ecds(false).await;
}

#[tokio::test]
async fn a_wasm_filter_over_delta_ecds_updates_without_a_listener_change() {
    wasm_over_ecds(true).await;
}

/// A capture listener over LDS, as istiod renders `virtualInbound`: `use_original_dst` with the
/// original_dst / tls_inspector / http_inspector listener filters, chains matching on
/// destination port, prefix ranges, transport protocol, SNI and ALPN (one with RDS routes, one
/// a TCP proxy), and a default chain to an ORIGINAL_DST cluster. It becomes Weft's capture
/// listener with one `bind_to_port: false` listener per chain, live once the chain's routes
/// are; a connection that was not redirected is refused as a loop (`NR`). A listener reached
/// by address (`bind_to_port: false`) adds its chain, narrowed to its address, to the capture
/// listener.
#[tokio::test]
async fn a_capture_listener_over_lds_maps_its_filter_chains() {
    use envoy_types::pb::envoy::config::core::v3::CidrRange;
    use envoy_types::pb::envoy::config::listener::v3 as l;
    use envoy_types::pb::google::protobuf::UInt32Value;
    let app = upstream::echo("app").await;
    let http_chain = {
        let mut c = http_listener("x", "127.0.0.1:0".parse().unwrap(), "inbound-routes")
            .filter_chains
            .remove(0);
        c.name = "inbound_http".into();
        c.filter_chain_match = Some(l::FilterChainMatch {
            destination_port: Some(UInt32Value { value: 8080 }),
            transport_protocol: "raw_buffer".into(),
            application_protocols: vec!["http/1.1".into(), "h2c".into()],
            ..Default::default()
        });
        c
    };
    let tls_chain = l::FilterChain {
        name: "inbound_tls".into(),
        filter_chain_match: Some(l::FilterChainMatch {
            destination_port: Some(UInt32Value { value: 8443 }),
            prefix_ranges: vec![CidrRange {
                address_prefix: "10.1.2.3".into(),
                prefix_len: Some(UInt32Value { value: 8 }),
            }],
            transport_protocol: "tls".into(),
            server_names: vec!["app.example.com".into()],
            application_protocols: vec!["istio-peer-exchange".into()],
            ..Default::default()
        }),
        filters: vec![tcp_proxy_filter("app")],
        ..Default::default()
    };
    let capture = capture_listener(
        "virtualInbound",
        "127.0.0.1:0".parse().unwrap(),
        vec![http_chain, tls_chain],
        "InboundPassthroughCluster",
    );
    let snapshot = |version: &str, with_routes: bool| {
        let mut s = Snapshot::new(version)
            .with("app", eds_cluster("app"))
            .with("app", assignment("app", &[(app, 1)]))
            .with(
                "InboundPassthroughCluster",
                original_dst_cluster("InboundPassthroughCluster"),
            )
            .with("virtualInbound", capture.clone())
            // An ordinary listener beside it, so the test can tell when LDS went live.
            .with(
                "web",
                http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes"),
            )
            .with(
                "routes",
                route_config("routes", vec![prefix_route("/", &[("app", 1)])]),
            );
        if with_routes {
            s = s.with(
                "inbound-routes",
                route_config("inbound-routes", vec![prefix_route("/", &[("app", 1)])]),
            );
        }
        s
    };
    // Version 1 lacks the chain's route configuration: the capture listener warms.
    let cp = ControlPlane::start(snapshot("1", false)).await;
    let w = start(&cp).await;
    assert!(eventually(WAIT, || async { cp.acked(LDS, "1") }).await);
    assert!(w.tp.proxy.listener_addr("virtualInbound").is_none());
    let dump = get(&format!("http://{}/config_dump", w.tp.admin()))
        .await
        .json();
    assert!(
        dump["dynamic"]["warming"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "lds/virtualInbound"),
        "{}",
        dump["dynamic"]
    );

    // Version 2 has it: the capture listener and its chains go live.
    cp.set(snapshot("2", true));
    assert!(
        eventually(WAIT, || async {
            w.tp.proxy.listener_addr("virtualInbound").is_some()
        })
        .await,
        "{:?}",
        w.tp.proxy.last_reload_error()
    );
    let dump = get(&format!("http://{}/config_dump", w.tp.admin()))
        .await
        .json();
    let listeners = dump["config"]["listeners"].as_array().unwrap();
    let find = |n: &str| {
        listeners
            .iter()
            .find(|l| l["name"] == n)
            .unwrap_or_else(|| panic!("{n}: {listeners:?}"))
    };
    let vi = find("virtualInbound");
    assert_eq!(vi["original_dst"], true);
    assert_eq!(vi["passthrough_cluster"], "InboundPassthroughCluster");
    assert_eq!(vi["protocol_detection_timeout"], "100ms");
    let chains = vi["filter_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2);
    assert_eq!(chains[0]["listener"], "virtualInbound/inbound_http");
    assert_eq!(
        chains[0]["match"],
        serde_json::json!({"destination_port": 8080, "transport_protocol": "raw_buffer",
            "application_protocols": ["http/1.1", "h2c"]})
    );
    assert_eq!(
        chains[1]["match"],
        serde_json::json!({"destination_port": 8443, "prefix_ranges": ["10.0.0.0/8"],
            "transport_protocol": "tls", "server_names": ["app.example.com"],
            "application_protocols": ["istio-peer-exchange"]})
    );
    let http = find("virtualInbound/inbound_http");
    assert_eq!(http["bind_to_port"], false);
    assert_eq!(
        http["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
        "app"
    );
    let tls = find("virtualInbound/inbound_tls");
    assert_eq!(
        (tls["bind_to_port"].clone(), tls["tcp"]["cluster"].clone()),
        (false.into(), "app".into())
    );
    let clusters = dump["config"]["clusters"].as_array().unwrap();
    let passthrough = clusters
        .iter()
        .find(|c| c["name"] == "InboundPassthroughCluster")
        .unwrap();
    assert_eq!(passthrough["type"], "original_dst");

    // Not redirected: the original destination is the capture port itself, a loop: closed.
    let reply = weft_e2e::raw(
        w.tp.proxy.listener_addr("virtualInbound").unwrap(),
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert_eq!(reply, "", "closed without an answer");

    // A listener reached by address through another's use_original_dst: its chain joins the
    // capture listener, narrowed to its port and address; one without a port is NACKed.
    let mut by_address = http_listener("10.9.9.9_9080", "10.9.9.9:9080".parse().unwrap(), "routes");
    by_address.bind_to_port = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
    cp.set(snapshot("3", true).with("10.9.9.9_9080", by_address.clone()));
    assert!(eventually(WAIT, || async { cp.acked(LDS, "3") }).await);
    let dump = get(&format!("http://{}/config_dump", w.tp.admin()))
        .await
        .json();
    let listeners = dump["config"]["listeners"].as_array().unwrap();
    let vi = listeners
        .iter()
        .find(|l| l["name"] == "virtualInbound")
        .unwrap();
    let chains = vi["filter_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 3, "{vi}");
    assert_eq!(chains[2]["listener"], "10.9.9.9_9080/0");
    assert_eq!(
        chains[2]["match"],
        serde_json::json!({"destination_port": 9080, "prefix_ranges": ["10.9.9.9/32"]})
    );
    assert!(
        !listeners.iter().any(|l| l["name"] == "10.9.9.9_9080"),
        "not a listener of its own"
    );
    by_address.address = http_listener("x", "10.9.9.9:0".parse().unwrap(), "r").address;
    cp.set(snapshot("4", true).with("10.9.9.9_9080", by_address));
    assert!(
        eventually(WAIT, || async {
            cp.nacked(
                LDS,
                None,
                &[
                    "listener \"10.9.9.9_9080\".filter_chains[0]: a listener with \
                   bind_to_port: false needs a port in its address",
                ],
            )
        })
        .await,
        "{:?}",
        cp.nack(LDS)
    );
    assert!(w.tp.proxy.listener_addr("virtualInbound").is_some());
}

/// A CDS cluster with an `UpstreamTlsContext` (certificate files, trusted CA, the upstream's
/// SPIFFE ID as a URI SAN matcher) speaks mTLS to its upstream with that client certificate,
/// the same through Envoy 1.40 given the same snapshot; a DNS SAN matcher is NACKed naming the
/// field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cds_tls_transport_socket_speaks_mtls_with_spiffe_validation() {
    use weft_e2e::mesh::{Pki, leaf_sha256, tls_echo};
    let pki = Pki::new("cluster.local");
    let (server_id, client_id) = (pki.id("prod", "db"), pki.id("prod", "app"));
    let s = pki.issue("db", &server_id, Duration::from_secs(3600));
    let c = pki.issue("app", &client_id, Duration::from_secs(3600));
    let (upstream, mut handshakes) = tls_echo(&s, std::slice::from_ref(&client_id)).await;
    let cluster = |id: &str| {
        let mut db = static_cluster("db", upstream);
        db.transport_socket = Some(upstream_tls(&c, id, &[]));
        db
    };
    let snapshot = |version: &str, db| {
        Snapshot::new(version).with("db", db).with(
            "db-in",
            tcp_listener("db-in", "127.0.0.1:0".parse().unwrap(), "db"),
        )
    };
    let cp = ControlPlane::start(snapshot("1", cluster(&server_id))).await;
    let tp = TestProxy::start(&bootstrap(cp.addr)).await;
    let _client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(
        eventually(WAIT, || async { tp.proxy.listener_addr("db-in").is_some() }).await,
        "{:?}",
        tp.proxy.last_reload_error()
    );
    let envoy = match weft_e2e::envoy::require_envoy() {
        Some(bin) => Some(
            weft_e2e::envoy::TestEnvoy::start_bootstrap(
                &bin,
                &weft_e2e::xds::envoy_bootstrap(cp.addr),
            )
            .await,
        ),
        None => None,
    };
    let mut through = vec![("weft", tp.proxy.listener_addr("db-in").unwrap())];
    if let Some(e) = &envoy {
        through.push(("envoy", e.addr()));
    }
    for (name, addr) in through {
        let payload = format!("through {name} over mTLS\n");
        let echoed = weft_e2e::tcp_exchange(addr, payload.as_bytes(), payload.len()).await;
        assert_eq!(String::from_utf8_lossy(&echoed), payload, "{name}");
        let seen = tokio::time::timeout(Duration::from_secs(5), handshakes.recv())
            .await
            .expect("a handshake within 5 s")
            .expect("running")
            .unwrap_or_else(|e| panic!("{name}: no TLS to the upstream: {e}"));
        assert_eq!(seen.peer_id, client_id, "{name}");
        assert_eq!(seen.peer_cert_hash, leaf_sha256(&c), "{name}");
    }

    // A DNS SAN matcher: Weft verifies SPIFFE IDs only, so it is refused by name.
    let mut dns = cluster(&server_id);
    let mut ts = dns.transport_socket.take().unwrap();
    {
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
        let Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any,
            ),
        ) = &mut ts.config_type
        else {
            unreachable!()
        };
        let mut ctx: tls::UpstreamTlsContext =
            prost::Message::decode(any.value.as_slice()).unwrap();
        if let Some(tls::common_tls_context::ValidationContextType::ValidationContext(v)) = ctx
            .common_tls_context
            .as_mut()
            .and_then(|c| c.validation_context_type.as_mut())
        {
            v.match_typed_subject_alt_names[0].san_type =
                tls::subject_alt_name_matcher::SanType::Dns as i32;
        }
        any.value = prost::Message::encode_to_vec(&ctx);
    }
    dns.transport_socket = Some(ts);
    cp.set(snapshot("2", dns));
    assert!(
        eventually(WAIT, || async {
            cp.nacked(
                CDS,
                Some("test-pod"),
                &[
                    "cluster \"db\".transport_socket.typed_config.common_tls_context.\
                   validation_context.match_typed_subject_alt_names[0].san_type: \
                   only URI (SPIFFE ID) matching is implemented",
                ],
            )
        })
        .await,
        "{:?}",
        cp.nack(CDS)
    );
}

/// An LDS filter chain with a `DownstreamTlsContext` (certificate files, trusted CA, client
/// certificates required) serves mTLS: a client with a certificate of the trust domain gets
/// through, one without is refused; `require_client_certificate: false` is NACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lds_tls_transport_socket_serves_mtls() {
    use weft_e2e::mesh::{Pki, tls_get};
    let pki = Pki::new("cluster.local");
    let server = pki.issue("web", &pki.id("prod", "web"), Duration::from_secs(3600));
    let client = pki.issue("app", &pki.id("prod", "app"), Duration::from_secs(3600));
    let up = upstream::echo("up").await;
    let listener = |require: bool| {
        let mut l = http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes");
        let mut ts = downstream_tls(&server);
        if !require {
            use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
            let Some(
                envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                    any,
                ),
            ) = &mut ts.config_type
            else {
                unreachable!()
            };
            let mut ctx: tls::DownstreamTlsContext =
                prost::Message::decode(any.value.as_slice()).unwrap();
            ctx.require_client_certificate = None;
            any.value = prost::Message::encode_to_vec(&ctx);
        }
        l.filter_chains[0].transport_socket = Some(ts);
        l
    };
    let snapshot = |version: &str, require: bool| {
        Snapshot::new(version)
            .with("up", eds_cluster("up"))
            .with("up", assignment("up", &[(up, 1)]))
            .with("web", listener(require))
            .with(
                "routes",
                route_config("routes", vec![prefix_route("/", &[("up", 1)])]),
            )
    };
    let cp = ControlPlane::start(snapshot("1", true)).await;
    let w = start(&cp).await;
    let addr = w.tp.proxy.listener_addr("web").unwrap();
    let ok = tls_get(
        addr,
        Some(&client),
        &client.bundle,
        "cluster.local",
        false,
        "/x",
    )
    .await
    .unwrap_or_else(|e| panic!("mTLS request: {e}"));
    assert_eq!(ok.reply.status, 200);
    assert_eq!(ok.reply.json()["server"], "up");
    assert!(
        tls_get(addr, None, &client.bundle, "cluster.local", false, "/x")
            .await
            .is_err(),
        "no client certificate: refused"
    );
    cp.set(snapshot("2", false));
    assert!(
        eventually(WAIT, || async {
            cp.nacked(
                LDS,
                None,
                &[
                    "listener \"web\".filter_chains[0].transport_socket.typed_config.\
                   require_client_certificate: must be true",
                ],
            )
        })
        .await,
        "{:?}",
        cp.nack(LDS)
    );
}

/// SDS over ADS: a cluster whose certificate and trusted CA are SDS secrets (`default`,
/// `ROOTCA`, as istiod names them) warms until they arrive, then speaks mTLS with that
/// certificate; a new version of the certificate secret is taken by the cluster's credentials
/// with no restart and no configuration reload; a fresh Envoy 1.40 given the same snapshot
/// presents the rotated certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_secrets_over_ads_and_rotation_without_restart() {
    use weft_e2e::mesh::{Pki, leaf_sha256, tls_echo};
    let pki = Pki::new("cluster.local");
    let (server_id, client_id) = (pki.id("prod", "db"), pki.id("prod", "app"));
    let s = pki.issue("db", &server_id, Duration::from_secs(3600));
    let first = pki.issue("app", &client_id, Duration::from_secs(3600));
    let second = pki.issue("app2", &client_id, Duration::from_secs(7200));
    assert_ne!(leaf_sha256(&first), leaf_sha256(&second));
    let (upstream, mut handshakes) = tls_echo(&s, std::slice::from_ref(&client_id)).await;
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let snapshot = |version: &str, cert: &weft_tls::creds::CredentialFiles, secrets: bool| {
        let mut db = static_cluster("db", upstream);
        db.transport_socket = Some(sds_upstream_tls("default", "ROOTCA", &server_id));
        let mut snap = Snapshot::new(version).with("db", db).with(
            "db-in",
            tcp_listener("db-in", "127.0.0.1:0".parse().unwrap(), "db"),
        );
        if secrets {
            snap = snap
                .with(
                    "default",
                    tls_secret("default", &read(&cert.cert), &read(&cert.key)),
                )
                .with("ROOTCA", ca_secret("ROOTCA", &read(&cert.bundle)));
        }
        snap
    };
    // Version 1 has no secrets: the cluster warms, so no listener is requested yet.
    let cp = ControlPlane::start(snapshot("1", &first, false)).await;
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap(cp.addr).replace(
        "  cluster: xds-grpc\n",
        &format!(
            "  cluster: xds-grpc\n  secrets_dir: \"{}\"\n",
            dir.path().display()
        ),
    );
    let tp = TestProxy::start(&boot).await;
    let _client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(
        eventually(WAIT, || async {
            cp.requests()
                .iter()
                .any(|r| r.type_url == SDS && r.resource_names == ["ROOTCA", "default"])
        })
        .await,
        "SDS subscribed by name"
    );
    assert!(!cp.requests().iter().any(|r| r.type_url == LDS), "warming");

    cp.set(snapshot("2", &first, true));
    assert!(
        eventually(WAIT, || async { tp.proxy.listener_addr("db-in").is_some() }).await,
        "{:?}",
        tp.proxy.last_reload_error()
    );
    assert!(eventually(WAIT, || async { cp.acked(SDS, "2") }).await);
    let key = dir.path().join("default/key.pem");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions())
            & 0o777,
        0o600
    );
    let addr = tp.proxy.listener_addr("db-in").unwrap();
    let mut exchange = async |name: &str, addr| {
        let echoed = weft_e2e::tcp_exchange(addr, b"ping\n", 5).await;
        assert_eq!(echoed, b"ping\n", "{name}");
        tokio::time::timeout(Duration::from_secs(5), handshakes.recv())
            .await
            .expect("a handshake within 5 s")
            .expect("running")
            .unwrap_or_else(|e| panic!("{name}: no TLS to the upstream: {e}"))
    };
    let seen = exchange("weft", addr).await;
    assert_eq!(seen.peer_id, client_id);
    assert_eq!(seen.peer_cert_hash, leaf_sha256(&first));
    let generation = tp.proxy.generation().id;
    let before =
        get(&format!("http://{}/certs", tp.admin())).await.json()["certificates"][0].clone();
    assert_eq!(before["owner"], "cluster db");

    // Rotation: version 3 carries the second certificate; the next connection presents it.
    cp.set(snapshot("3", &second, true));
    assert!(eventually(WAIT, || async { cp.acked(SDS, "3") }).await);
    assert_eq!(
        std::fs::read(dir.path().join("default/cert.pem")).unwrap(),
        read(&second.cert),
        "the secret's files are rewritten"
    );
    let handshakes = tokio::sync::Mutex::new(handshakes);
    let connect = async |name: &str, addr| {
        let echoed = weft_e2e::tcp_exchange(addr, b"ping\n", 5).await;
        assert_eq!(echoed, b"ping\n", "{name}");
        tokio::time::timeout(Duration::from_secs(5), handshakes.lock().await.recv())
            .await
            .expect("a handshake within 5 s")
            .expect("running")
            .unwrap_or_else(|e| panic!("{name}: no TLS to the upstream: {e}"))
    };
    // Weft's certificate watcher takes the rewritten files: the cluster's credentials now hold
    // the second certificate (its 2 h lifetime), with no configuration reload. (The upstream
    // may still see the first certificate on connections that resume a TLS session.)
    let cluster_cert = async || {
        let certs = get(&format!("http://{}/certs", tp.admin())).await.json();
        certs["certificates"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["owner"] == "cluster db"))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        eventually(WAIT, || async {
            let c = cluster_cert().await;
            c["rotations"] == 1 && c["expiration_time"] != before["expiration_time"]
        })
        .await,
        "rotated: {}",
        cluster_cert().await
    );
    assert_eq!(cluster_cert().await["refused_rotations"], 0);
    assert_eq!(connect("weft", addr).await.peer_id, client_id);
    assert_eq!(
        tp.proxy.generation().id,
        generation,
        "no reload of the configuration"
    );

    // Envoy, given the same snapshot, presents the same certificate.
    if let Some(bin) = weft_e2e::envoy::require_envoy() {
        let envoy = weft_e2e::envoy::TestEnvoy::start_bootstrap(
            &bin,
            &weft_e2e::xds::envoy_bootstrap(cp.addr),
        )
        .await;
        let seen = connect("envoy", envoy.addr()).await;
        assert_eq!(seen.peer_cert_hash, leaf_sha256(&second), "envoy");
    }
}

/// mTLS to the control plane with SPIFFE validation: the `xds.cluster` has `tls` (certificate
/// files, the control plane's SPIFFE ID in `match_identities`); the control plane requires the
/// proxy's identity. Weft connects over mTLS and serves the snapshot; against a control plane
/// presenting another identity, it never connects (and nothing is served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_to_the_control_plane_with_spiffe_validation() {
    use weft_e2e::mesh::Pki;
    let pki = Pki::new("cluster.local");
    let istiod = pki.id("istio-system", "istiod");
    let proxy_id = pki.id("test-ns", "test-app");
    let server = pki.issue("istiod", &istiod, Duration::from_secs(3600));
    let imposter = pki.issue("imposter", &pki.id("evil", "cp"), Duration::from_secs(3600));
    let client = pki.issue("proxy", &proxy_id, Duration::from_secs(3600));
    let (v1, v2) = (upstream::echo("v1").await, upstream::echo("v2").await);
    let boot = |addr: SocketAddr| {
        bootstrap(addr).replace(
            &format!("    endpoints: [{{ address: \"{addr}\" }}]\n"),
            &format!(
                "    endpoints: [{{ address: \"{addr}\" }}]\n    tls: {{ cert_file: \"{}\", key_file: \"{}\", trust_bundle_file: \"{}\", match_identities: [\"{istiod}\"] }}\n",
                client.cert.display(),
                client.key.display(),
                client.bundle.display()
            ),
        )
    };
    let (cp, mut handshakes) = ControlPlane::start_tls(
        snapshot("1", v1, v2, "one").await,
        &server,
        std::slice::from_ref(&proxy_id),
    )
    .await;
    let tp = TestProxy::start(&boot(cp.addr)).await;
    let client_x = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(
        eventually(WAIT, || async { tp.proxy.listener_addr("web").is_some() }).await,
        "{:?}",
        tp.proxy.last_reload_error()
    );
    assert_eq!(
        get(&tp.url("web", "/v1")).await.json()["server"],
        "v1",
        "served over mTLS"
    );
    let seen = handshakes.recv().await.expect("a handshake");
    assert_eq!(seen, Ok(proxy_id.clone()), "the proxy's identity");
    assert!(client_x.status().is_connected());

    // A control plane with another identity: the handshake fails, nothing is taken.
    let (evil, mut evil_handshakes) = ControlPlane::start_tls(
        snapshot("1", v1, v2, "evil").await,
        &imposter,
        std::slice::from_ref(&proxy_id),
    )
    .await;
    let tp2 = TestProxy::start(&boot(evil.addr)).await;
    let client2 = weft_xds::start(&tp2.proxy).unwrap().expect("xds section");
    let first = tokio::time::timeout(WAIT, evil_handshakes.recv())
        .await
        .expect("a connection attempt")
        .expect("running");
    assert!(first.is_err(), "{first:?}");
    assert!(!client2.status().is_connected());
    assert!(
        evil.requests().is_empty(),
        "no discovery request reached it"
    );
    assert!(tp2.proxy.listener_addr("web").is_none());
}

/// What a TCP round trip through `addr` gives back for `hello` (a bounded read of 9 bytes).
async fn tcp_round_trip(addr: SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 9 {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

/// A network Wasm filter (`envoy.filters.network.wasm`, as istiod renders a `WasmPlugin` of
/// `type: NETWORK`) before the TCP proxy runs on each connection in Weft and in Envoy 1.40
/// alike: the same fixture upper-cases what the client sends and tags what comes back. A
/// network filter Weft does not run is NACKed naming it, and the last good keeps serving.
#[tokio::test]
async fn a_network_wasm_filter_over_xds_rewrites_tcp_in_weft_and_envoy() {
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let up = upstream::tcp_echo("").await;
    let listener = |filter: envoy_types::pb::envoy::config::listener::v3::Filter| {
        let mut l = tcp_listener("tcp", "127.0.0.1:0".parse().unwrap(), "up");
        l.filter_chains[0].filters.insert(0, filter);
        l
    };
    let rewrite = network_wasm_filter(
        "rw",
        WasmCode::Local(weft_test_artifacts::TCP_REWRITE.into()),
        string_value("tag:"),
    );
    let snap = |version: &str, l| {
        Snapshot::new(version)
            .with("up", eds_cluster("up"))
            .with("up", assignment("up", &[(up, 1)]))
            .with("tcp", l)
    };
    let cp = ControlPlane::start(snap("1", listener(rewrite))).await;
    let Running { tp, _client } = start_for(&cp, "tcp").await;
    let envoy = start_envoy(&envoy_bin, &cp).await;
    let weft_addr = tp.proxy.listener_addr("tcp").unwrap();
    for (name, addr) in [("weft", weft_addr), ("envoy", envoy.addr())] {
        assert_eq!(
            String::from_utf8_lossy(&tcp_round_trip(addr).await),
            "tag:HELLO",
            "{name}"
        );
    }

    let rbac = envoy_types::pb::envoy::config::listener::v3::Filter {
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
                envoy_types::pb::google::protobuf::Any {
                    type_url: "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
                        .into(),
                    value: Vec::new(),
                },
            ),
        ),
    };
    cp.set(snap("2", listener(rbac)));
    assert!(
        eventually(WAIT, || async {
            cp.nacked(
                LDS,
                Some("test-pod"),
                &["filters[0]: network filter `envoy.filters.network.rbac`"],
            )
        })
        .await,
        "{:?}",
        cp.requests().last()
    );
    assert_eq!(
        String::from_utf8_lossy(&tcp_round_trip(weft_addr).await),
        "tag:HELLO"
    );
}

/// An HTTP filter `name` with `typed_config` of `type_url` and `value`.
fn http_filter(name: &str, type_url: &str, value: Vec<u8>) -> weft_e2e::xds::HttpFilter {
    weft_e2e::xds::HttpFilter {
        name: name.into(),
        config_type: Some(
            envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(
                envoy_types::pb::google::protobuf::Any {
                    type_url: type_url.into(),
                    value,
                },
            ),
        ),
        ..Default::default()
    }
}

/// istiod's sidecar HTTP filter chain: Envoy's fault, CORS and gRPC-stats filters (with the
/// configurations istiod gives them) and, with `istio`, its own metadata-exchange, ALPN and
/// stats filters (which only Istio's Envoy build knows).
fn istiod_filters(istio: bool) -> Vec<weft_e2e::xds::HttpFilter> {
    let mut filters = vec![
        http_filter(
            "envoy.filters.http.grpc_stats",
            "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            // emit_filter_state: true
            vec![0x08, 0x01],
        ),
        http_filter(
            "envoy.filters.http.fault",
            "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            Vec::new(),
        ),
        http_filter(
            "envoy.filters.http.cors",
            "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
            Vec::new(),
        ),
    ];
    if istio {
        // A TypedStruct (type_url 1, value 2: an empty Struct) of the peer-metadata filter.
        let mut typed = Vec::new();
        prost::encoding::string::encode(
            1,
            &"type.googleapis.com/io.istio.http.peer_metadata.Config".to_owned(),
            &mut typed,
        );
        prost::encoding::message::encode(
            2,
            &envoy_types::pb::google::protobuf::Struct::default(),
            &mut typed,
        );
        filters.insert(
            0,
            http_filter(
                "istio.metadata_exchange",
                "type.googleapis.com/udpa.type.v1.TypedStruct",
                typed,
            ),
        );
        filters.push(http_filter(
            "istio.alpn",
            "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
            Vec::new(),
        ));
        // disable_host_header_fallback: true, tcp_reporting_duration: 5 s.
        filters.push(http_filter(
            "istio.stats",
            "type.googleapis.com/stats.PluginConfig",
            vec![0x30, 0x01, 0x3a, 0x02, 0x08, 0x05],
        ));
    }
    filters
}

/// A route to `up` with istiod's rendering of a VirtualService `fault` (an `HTTPFault` in the
/// route's `typed_per_filter_config`).
fn faulted_route(prefix: &str, abort: u32, delay_ms: Option<u32>) -> route::Route {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    use prost::Message;
    let all = Some(FractionalPercent {
        numerator: 100,
        denominator: 0,
    });
    let config = fault::HttpFault {
        abort: Some(fault::FaultAbort {
            percentage: all,
            error_type: Some(fault::fault_abort::ErrorType::HttpStatus(abort)),
            ..Default::default()
        }),
        delay: delay_ms.map(|ms| common::FaultDelay {
            percentage: all,
            fault_delay_secifier: Some(common::fault_delay::FaultDelaySecifier::FixedDelay(
                envoy_types::pb::google::protobuf::Duration {
                    seconds: 0,
                    nanos: ms as i32 * 1_000_000,
                },
            )),
        }),
        ..Default::default()
    };
    let mut r = prefix_route(prefix, &[("up", 1)]);
    r.typed_per_filter_config.insert(
        "envoy.filters.http.fault".into(),
        envoy_types::pb::google::protobuf::Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault".into(),
            value: config.encode_to_vec(),
        },
    );
    r
}

/// The HTTP filters istiod puts in every sidecar listener are accepted (Weft implements them
/// natively), and a VirtualService fault rendered into a route's `typed_per_filter_config`
/// aborts requests the same way in Weft and in Envoy 1.40; Istio's own filters (metadata
/// exchange, ALPN, stats: only Istio's Envoy build has them) are accepted by Weft too.
#[tokio::test]
async fn istiod_http_filters_and_route_faults_behave_the_same_in_envoy_and_weft() {
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let up = upstream::echo("up").await;
    let snap = |version: &str, istio: bool| {
        Snapshot::new(version)
            .with("up", eds_cluster("up"))
            .with("up", assignment("up", &[(up, 1)]))
            .with(
                "web",
                http_listener_with(
                    "web",
                    "127.0.0.1:0".parse().unwrap(),
                    "routes",
                    istiod_filters(istio),
                ),
            )
            .with(
                "routes",
                route_config(
                    "routes",
                    vec![
                        faulted_route("/abort", 418, None),
                        faulted_route("/late-abort", 503, Some(1)),
                        prefix_route("/", &[("up", 1)]),
                    ],
                ),
            )
    };
    let cp = ControlPlane::start(snap("1", false)).await;
    let w = start(&cp).await;
    let envoy = start_envoy(&envoy_bin, &cp).await;
    let weft_base = w.tp.url("web", "");
    for (name, base) in [("weft", weft_base.as_str()), ("envoy", &envoy.url(""))] {
        assert_eq!(get(&format!("{base}/abort/x")).await.status, 418, "{name}");
        assert_eq!(
            get(&format!("{base}/late-abort")).await.status,
            503,
            "{name}"
        );
        let r = get(&format!("{base}/ok")).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.json()["server"], "up", "{name}");
    }

    // Version 2 adds Istio's own filters: Weft ACKs it and keeps serving the same way.
    cp.set(snap("2", true));
    assert!(
        eventually(WAIT, || async {
            cp.requests().iter().any(|r| {
                r.type_url == LDS
                    && r.version_info == "2"
                    && r.error_detail.is_none()
                    && r.node.as_ref().is_some_and(|n| n.id.contains("test-pod"))
            })
        })
        .await,
        "{:?}",
        cp.requests()
            .iter()
            .filter_map(|r| r.error_detail.as_ref().map(|e| e.message.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(get(&format!("{weft_base}/abort")).await.status, 418);
    assert_eq!(get(&format!("{weft_base}/ok")).await.status, 200);
}

/// RDS route actions Weft maps from Envoy's form — a `regex_rewrite` with an RE2 group
/// reference, a `hash_policy` on a header over a `RING_HASH` cluster, a mirror policy — behave
/// the same in Weft and in Envoy 1.40 on the same snapshot.
#[tokio::test]
async fn rds_regex_rewrite_hash_policy_and_mirror_agree_in_envoy_and_weft() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let up = upstream::echo("up").await;
    let (a, b) = (upstream::echo("a").await, upstream::echo("b").await);
    let shadow = weft_e2e::recording::recording().await;
    let with_action = |prefix: &str, cluster: &str, f: &dyn Fn(&mut route::RouteAction)| {
        let mut r = prefix_route(prefix, &[(cluster, 1)]);
        if let Some(route::route::Action::Route(a)) = r.action.as_mut() {
            f(a);
        }
        r
    };
    let rewrite = with_action("/re/", "up", &|a| {
        a.regex_rewrite = Some(RegexMatchAndSubstitute {
            pattern: Some(RegexMatcher {
                regex: "^/re/([0-9]+)$".into(),
                ..Default::default()
            }),
            substitution: "/num/\\1".into(),
        });
    });
    let hashed = with_action("/hash", "pair", &|a| {
        a.hash_policy = vec![route::route_action::HashPolicy {
            policy_specifier: Some(route::route_action::hash_policy::PolicySpecifier::Header(
                route::route_action::hash_policy::Header {
                    header_name: "x-user".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }];
    });
    let mirrored = with_action("/mirror", "up", &|a| {
        a.request_mirror_policies = vec![route::route_action::RequestMirrorPolicy {
            cluster: "shadow".into(),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: 100,
                    denominator: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }];
    });
    let mut pair = eds_cluster("pair");
    pair.lb_policy = LbPolicy::RingHash as i32;
    let snap = Snapshot::new("1")
        .with("up", eds_cluster("up"))
        .with("up", assignment("up", &[(up, 1)]))
        .with("pair", pair)
        .with("pair", assignment("pair", &[(a, 1), (b, 1)]))
        .with("shadow", eds_cluster("shadow"))
        .with("shadow", assignment("shadow", &[(shadow.addr, 1)]))
        .with(
            "web",
            http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes"),
        )
        .with(
            "routes",
            route_config(
                "routes",
                vec![rewrite, hashed, mirrored, prefix_route("/", &[("up", 1)])],
            ),
        );
    let (w, envoy, _cp) = weft_and_envoy(&envoy_bin, snap).await;
    for (name, base) in [("weft", w.tp.url("web", "")), ("envoy", envoy.url(""))] {
        let r = get(&format!("{base}/re/42")).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.json()["path"], "/num/42", "{name}: {}", r.text());

        // One user always lands on the same endpoint; several users reach both.
        let mut servers = std::collections::BTreeSet::new();
        for user in 0..16 {
            let first =
                weft_e2e::get_with(&format!("{base}/hash"), &[("x-user", &user.to_string())])
                    .await
                    .json()["server"]
                    .to_string();
            for _ in 0..3 {
                let again =
                    weft_e2e::get_with(&format!("{base}/hash"), &[("x-user", &user.to_string())])
                        .await
                        .json()["server"]
                        .to_string();
                assert_eq!(again, first, "{name}: user {user} moved");
            }
            servers.insert(first);
        }
        assert_eq!(servers.len(), 2, "{name}: {servers:?}");

        let before = shadow.heads();
        let r = get(&format!("{base}/mirror/x")).await;
        assert_eq!(r.json()["server"], "up", "{name}");
        assert!(
            eventually(WAIT, || async { shadow.heads() > before }).await,
            "{name}: the shadow got a copy"
        );
        let seen = shadow.heads_since(before);
        assert_eq!(seen[0].path, "/mirror/x", "{name}");
        let host = seen[0]
            .headers
            .iter()
            .find(|(n, _)| n == "host")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        assert!(host.contains("-shadow"), "{name}: {host}");
    }
}

/// CDS fields istiod renders for a DestinationRule and an HTTP/2 service — an active HTTP
/// health check and `typed_extension_protocol_options` with an explicit HTTP/2 — behave the
/// same in Weft and in Envoy 1.40: the endpoint failing its check takes no traffic, and the
/// upstream is spoken to over h2c.
#[tokio::test]
async fn cds_health_checks_and_http2_protocol_options_agree_in_envoy_and_weft() {
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    use prost::Message;
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let node = |name: &'static str, healthy: bool| {
        upstream::serve(
            move |req: http::Request<hyper::body::Incoming>| async move {
                let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                    format!("{name} {:?}", req.version()),
                )));
                if req.uri().path() == "/healthz" && !healthy {
                    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                r
            },
        )
    };
    let (good, bad) = (node("good", true).await, node("bad", false).await);
    let ms = |n: i32| PbDuration {
        seconds: 0,
        nanos: n * 1_000_000,
    };
    let mut cluster = eds_cluster("hc");
    cluster.health_checks = vec![core::HealthCheck {
        timeout: Some(ms(500)),
        interval: Some(ms(100)),
        unhealthy_threshold: Some(UInt32Value { value: 1 }),
        healthy_threshold: Some(UInt32Value { value: 1 }),
        health_checker: Some(core::health_check::HealthChecker::HttpHealthCheck(
            core::health_check::HttpHealthCheck {
                path: "/healthz".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }];
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    core::Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    cluster.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        envoy_types::pb::google::protobuf::Any {
            type_url: "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
                .into(),
            value: options.encode_to_vec(),
        },
    );
    let (w, envoy, _cp) = weft_and_envoy(&envoy_bin, web_to(cluster, &[(good, 1), (bad, 1)])).await;
    for (name, base) in [("weft", w.tp.url("web", "")), ("envoy", envoy.url(""))] {
        let all_good = || async {
            for _ in 0..10 {
                if get(&format!("{base}/x")).await.text() != "good HTTP/2.0" {
                    return false;
                }
            }
            true
        };
        assert!(
            eventually(WAIT, all_good).await,
            "{name}: {}",
            get(&format!("{base}/x")).await.text()
        );
    }
}

/// istiod's default route retry policy (`connect-failure,refused-stream,unavailable,cancelled,
/// retriable-status-codes` on 503, two retries, the `previous_hosts` predicate) and a route
/// timeout behave the same in Weft and in Envoy 1.40: a first attempt answered 503 is retried
/// once and the client sees 200; an upstream that does not answer in time gives 504.
#[tokio::test]
async fn istiod_retry_policy_and_route_timeouts_agree_in_envoy_and_weft() {
    use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    // Every odd-numbered attempt (the first of each request, requests being sequential)
    // answers 503.
    let attempts = Arc::new(AtomicU64::new(0));
    let counter = attempts.clone();
    let flaky = upstream::serve(move |_req: http::Request<hyper::body::Incoming>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                format!("attempt {n}"),
            )));
            if n.is_multiple_of(2) {
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await;
    let held = upstream::gated().await;
    let mut retried = prefix_route("/retry", &[("flaky", 1)]);
    let mut timed = prefix_route("/held", &[("held", 1)]);
    if let Some(route::route::Action::Route(a)) = retried.action.as_mut() {
        a.retry_policy = Some(route::RetryPolicy {
            retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                .into(),
            num_retries: Some(UInt32Value { value: 2 }),
            retriable_status_codes: vec![503],
            retry_host_predicate: vec![route::retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    Any {
                        type_url: "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate".into(),
                        value: Vec::new(),
                    },
                )),
            }],
            host_selection_retry_max_attempts: 5,
            ..Default::default()
        });
    }
    if let Some(route::route::Action::Route(a)) = timed.action.as_mut() {
        a.timeout = Some(PbDuration {
            seconds: 0,
            nanos: 200_000_000,
        });
    }
    let snap = Snapshot::new("1")
        .with("flaky", eds_cluster("flaky"))
        .with("flaky", assignment("flaky", &[(flaky, 1)]))
        .with("held", eds_cluster("held"))
        .with("held", assignment("held", &[(held.addr, 1)]))
        .with(
            "web",
            http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes"),
        )
        .with("routes", route_config("routes", vec![retried, timed]));
    let (w, envoy, _cp) = weft_and_envoy(&envoy_bin, snap).await;
    for (name, base) in [("weft", w.tp.url("web", "")), ("envoy", envoy.url(""))] {
        let before = attempts.load(Ordering::SeqCst);
        for _ in 0..5 {
            let r = get(&format!("{base}/retry")).await;
            assert_eq!(r.status, 200, "{name}: {}", r.text());
        }
        assert_eq!(
            attempts.load(Ordering::SeqCst) - before,
            10,
            "{name}: two attempts per request"
        );
        let r = get(&format!("{base}/held")).await;
        assert_eq!(r.status, 504, "{name}: {}", r.text());
    }
}

/// An HTTP connection manager as istiod renders a sidecar's (`use_remote_address: false`,
/// `normalize_path: true`, `path_with_escaped_slashes_action: KEEP_UNCHANGED`, a websocket
/// upgrade, `stream_idle_timeout: 0s`, the UUID request ID extension, a `server_name`,
/// `forward_client_cert_details: APPEND_FORWARD` with `set_current_client_cert_details`, a
/// file access log in Istio's format) behaves the same in Weft and in Envoy 1.40: the path is
/// normalized before routing, `x-forwarded-for` is left as the client sent it, and the
/// response's `server` is the configured name.
#[tokio::test]
async fn an_istiod_connection_manager_behaves_the_same_in_envoy_and_weft() {
    use envoy_types::pb::envoy::config::accesslog::v3 as accesslog;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration};
    use prost::{Message, Name};
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let up = upstream::echo("up").await;
    let mut l = http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes");
    let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
        &mut l.filter_chains[0].filters[0].config_type
    else {
        unreachable!("http_listener builds a typed HCM");
    };
    let mut manager = hcm::HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    manager.use_remote_address = Some(BoolValue { value: false });
    manager.normalize_path = Some(BoolValue { value: true });
    manager.path_with_escaped_slashes_action =
        hcm::http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged as i32;
    manager.upgrade_configs = vec![hcm::http_connection_manager::UpgradeConfig {
        upgrade_type: "websocket".into(),
        ..Default::default()
    }];
    manager.stream_idle_timeout = Some(PbDuration {
        seconds: 0,
        nanos: 0,
    });
    manager.request_id_extension = Some(hcm::RequestIdExtension {
        typed_config: Some(Any {
            type_url: "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"
                .into(),
            value: Vec::new(),
        }),
    });
    manager.server_name = "istio-envoy".into();
    manager.forward_client_cert_details =
        hcm::http_connection_manager::ForwardClientCertDetails::AppendForward as i32;
    manager.set_current_client_cert_details =
        Some(hcm::http_connection_manager::SetCurrentClientCertDetails {
            subject: Some(BoolValue { value: true }),
            dns: true,
            uri: true,
            ..Default::default()
        });
    let log = file::FileAccessLog {
        path: "/dev/stdout".into(),
        access_log_format: Some(file::file_access_log::AccessLogFormat::LogFormat(
            envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString {
                format: Some(
                    envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format::TextFormatSource(
                        envoy_types::pb::envoy::config::core::v3::DataSource {
                            specifier: Some(
                                envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                                    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE%\n".into(),
                                ),
                            ),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            },
        )),
    };
    manager.access_log = vec![accesslog::AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(accesslog::access_log::ConfigType::TypedConfig(Any {
            type_url: file::FileAccessLog::type_url(),
            value: log.encode_to_vec(),
        })),
        ..Default::default()
    }];
    any.value = manager.encode_to_vec();
    let snap = Snapshot::new("1")
        .with("up", eds_cluster("up"))
        .with("up", assignment("up", &[(up, 1)]))
        .with("web", l)
        .with(
            "routes",
            route_config(
                "routes",
                vec![
                    prefix_route("/b/", &[("up", 1)]),
                    route::Route {
                        r#match: Some(route::RouteMatch {
                            path_specifier: Some(route::route_match::PathSpecifier::Prefix(
                                "/".into(),
                            )),
                            ..Default::default()
                        }),
                        action: Some(route::route::Action::DirectResponse(
                            route::DirectResponseAction {
                                status: 404,
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    },
                ],
            ),
        );
    let (w, envoy, _cp) = weft_and_envoy(&envoy_bin, snap).await;
    for (name, base) in [("weft", w.tp.url("web", "")), ("envoy", envoy.url(""))] {
        // `/a/../b/x` is `/b/x` before routing: the `/b/` route takes it.
        let r = weft_e2e::get_with(
            &format!("{base}/a/%2e%2E/b/x?q=1"),
            &[("x-forwarded-for", "192.0.2.7")],
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let seen = r.json();
        assert_eq!(seen["path"], "/b/x?q=1", "{name}: {seen}");
        assert_eq!(
            seen["headers"]["x-forwarded-for"], "192.0.2.7",
            "{name}: {seen}"
        );
        assert_eq!(r.header("server"), Some("istio-envoy"), "{name}");
        let r = get(&format!("{base}/nowhere")).await;
        assert_eq!(r.status, 404, "{name}");
        assert_eq!(
            r.header("server"),
            Some("istio-envoy"),
            "{name}: a local reply too"
        );
    }
}

/// One cluster `c` whose endpoints are `eps`, behind listener `web` (`/` → `c`).
fn one_cluster(version: &str, eps: &[SocketAddr], connect_timeout_s: i64) -> Snapshot {
    let mut c = eds_cluster("c");
    c.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: connect_timeout_s,
        nanos: 0,
    });
    let eps: Vec<(SocketAddr, u32)> = eps.iter().map(|a| (*a, 1)).collect();
    Snapshot::new(version)
        .with("c", c)
        .with("c", assignment("c", &eps))
        .with(
            "web",
            http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes"),
        )
        .with(
            "routes",
            route_config("routes", vec![prefix_route("/", &[("c", 1)])]),
        )
}

fn live_cluster(tp: &TestProxy, name: &str) -> Arc<weft_upstream::Cluster> {
    tp.proxy
        .generation()
        .clusters
        .iter()
        .find(|c| &*c.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("cluster {name} is live"))
}

/// An EDS update swaps the cluster's endpoint set in place: same generation, same cluster
/// (pools and statistics kept), the new endpoints take the traffic and `/config_dump` shows
/// them; a resend of identical resources changes nothing; a CDS change rebuilds that cluster
/// (a new generation) keeping the endpoints the EDS update put in place; a file reload
/// afterwards reuses the cluster. In both ADS variants.
async fn endpoint_update_in_place(delta: bool) {
    let (a, b) = (upstream::echo("a").await, upstream::echo("b").await);
    let cp = ControlPlane::start(one_cluster("1", &[a], 1)).await;
    let yaml = if delta {
        delta_bootstrap(cp.addr)
    } else {
        bootstrap(cp.addr)
    };
    let tp = TestProxy::start(&yaml).await;
    let _client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    let acked = |t: &str, v: &str| {
        if delta {
            cp.delta_acked(t, v)
        } else {
            cp.acked(t, v)
        }
    };
    assert!(eventually(WAIT, || async { tp.proxy.listener_addr("web").is_some() }).await);
    assert_eq!(get(&tp.url("web", "/x")).await.json()["server"], "a");
    let generation = tp.proxy.generation().id;
    let before = live_cluster(&tp, "c");

    // Version 2: the endpoint moves from a to b.
    cp.set(one_cluster("2", &[b], 1));
    assert!(
        eventually(WAIT, || async { acked(EDS, "2") }).await,
        "EDS 2 ACKed"
    );
    assert_eq!(get(&tp.url("web", "/x")).await.json()["server"], "b");
    assert_eq!(tp.proxy.generation().id, generation, "no new generation");
    assert!(
        Arc::ptr_eq(&before, &live_cluster(&tp, "c")),
        "the same cluster, its endpoint set swapped"
    );
    let dump = get(&format!("http://{}/config_dump", tp.admin()))
        .await
        .json();
    let c = dump["config"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "c")
        .cloned()
        .unwrap();
    assert_eq!(c["endpoints"][0]["address"], b.to_string(), "{c}");
    assert_eq!(c["endpoints"].as_array().unwrap().len(), 1, "{c}");

    // Version 3 carries the same resources: ACKed, nothing rebuilt. (The delta control plane
    // versions resources by their bytes, so it sends nothing at all.)
    if !delta {
        cp.set(one_cluster("3", &[b], 1));
        assert!(eventually(WAIT, || async { acked(EDS, "3") && acked(CDS, "3") }).await);
        assert_eq!(tp.proxy.generation().id, generation);
    }

    // Version 4 changes the cluster's settings: a new generation and a new cluster, which
    // keeps the endpoints of the EDS update.
    cp.set(one_cluster("4", &[b], 2));
    assert!(eventually(WAIT, || async { acked(CDS, "4") }).await);
    assert!(tp.proxy.generation().id > generation);
    let rebuilt = live_cluster(&tp, "c");
    assert!(!Arc::ptr_eq(&before, &rebuilt));
    assert_eq!(
        rebuilt.endpoints().endpoints[0].addr,
        b,
        "the endpoints put in place survive the rebuild"
    );
    assert_eq!(get(&tp.url("web", "/x")).await.json()["server"], "b");

    // An in-place update, then a file reload: the cluster is reused, with its new endpoints.
    cp.set(one_cluster("5", &[a, b], 2));
    assert!(eventually(WAIT, || async { acked(EDS, "5") }).await);
    let after_eds = live_cluster(&tp, "c");
    assert!(Arc::ptr_eq(&rebuilt, &after_eds));
    tp.proxy.reload().await.unwrap();
    let reloaded = live_cluster(&tp, "c");
    assert!(
        Arc::ptr_eq(&after_eds, &reloaded),
        "a reload reuses a cluster whose endpoints were replaced in place"
    );
    assert_eq!(reloaded.endpoints().endpoints.len(), 2);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(get(&tp.url("web", "/x")).await.json()["server"].to_string());
    }
    assert_eq!(seen.len(), 2, "both endpoints take traffic: {seen:?}");
    let nacks = if delta {
        cp.delta_requests()
            .iter()
            .filter(|r| r.error_detail.is_some())
            .count()
    } else {
        cp.requests()
            .iter()
            .filter(|r| r.error_detail.is_some())
            .count()
    };
    assert_eq!(nacks, 0);
}

#[tokio::test]
async fn an_endpoint_update_swaps_the_endpoint_set_in_place() {
    endpoint_update_in_place(false).await;
}

#[tokio::test]
async fn a_delta_endpoint_update_swaps_the_endpoint_set_in_place() {
    endpoint_update_in_place(true).await;
}

/// Deletes the test's network namespace, also when the test fails.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn sh(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): scripts/test.sh installs iproute2 and iptables")
        });
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Istio's outbound shape over LDS: `virtualOutbound` (15001, `use_original_dst`, no chains of
/// its own) and per-port listeners with `bind_to_port: false` — a wildcard `0.0.0.0_8080` and
/// an exact `10.99.0.2_8080` — each with its own RDS routes. In a network namespace of its own
/// whose iptables rule redirects connections to 10.99.0.0/24 port 8080 to 15001, a connection
/// to 10.99.0.1:8080 reaches the wildcard listener's chain and one to 10.99.0.2:8080 the exact
/// one's (Envoy's order: the exact address first), through `SO_ORIGINAL_DST`. Needs root,
/// `ip` and `iptables`; a machine without network namespaces fails the test with the reason.
#[test]
fn captured_connections_reach_the_bind_to_port_false_listener_of_their_original_destination() {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let ns = format!(
        "weftxds{}{}",
        std::process::id() % 100_000,
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    sh("ip", &["netns", "add", &ns]);
    let _guard = Netns(ns.clone());
    sh("ip", &["-n", &ns, "link", "set", "lo", "up"]);
    for ip in ["10.99.0.1/32", "10.99.0.2/32"] {
        sh("ip", &["-n", &ns, "addr", "add", ip, "dev", "lo"]);
    }
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "10.99.0.0/24",
            "--dport",
            "8080",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ],
    );
    let path = format!("/run/netns/{ns}");
    // Every socket of the test (control plane, upstreams, Weft, clients) is made by threads
    // of a runtime started inside the namespace.
    let outcome = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(by_address_in_netns());
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn by_address_in_netns() {
    let (wild, exact) = (upstream::echo("wild").await, upstream::echo("exact").await);
    let by_address = |name: &str, addr: &str, routes: &str| {
        let mut l = http_listener(name, addr.parse().unwrap(), routes);
        l.bind_to_port = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
        l
    };
    let mut outbound = capture_listener(
        "virtualOutbound",
        "0.0.0.0:15001".parse().unwrap(),
        Vec::new(),
        "PassthroughCluster",
    );
    // istiod's virtualOutbound: use_original_dst only.
    outbound.listener_filters.clear();
    outbound.listener_filters_timeout = None;
    let snapshot = Snapshot::new("1")
        .with("wild", eds_cluster("wild"))
        .with("wild", assignment("wild", &[(wild, 1)]))
        .with("exact", eds_cluster("exact"))
        .with("exact", assignment("exact", &[(exact, 1)]))
        .with(
            "PassthroughCluster",
            original_dst_cluster("PassthroughCluster"),
        )
        .with("virtualOutbound", outbound)
        .with(
            "0.0.0.0_8080",
            by_address("0.0.0.0_8080", "0.0.0.0:8080", "wild-routes"),
        )
        .with(
            "10.99.0.2_8080",
            by_address("10.99.0.2_8080", "10.99.0.2:8080", "exact-routes"),
        )
        .with(
            "wild-routes",
            route_config("wild-routes", vec![prefix_route("/", &[("wild", 1)])]),
        )
        .with(
            "exact-routes",
            route_config("exact-routes", vec![prefix_route("/", &[("exact", 1)])]),
        );
    let cp = ControlPlane::start(snapshot).await;
    let tp = TestProxy::start(&bootstrap(cp.addr)).await;
    let _client = weft_xds::start(&tp.proxy).unwrap().expect("xds section");
    assert!(
        eventually(WAIT, || async {
            tp.proxy.listener_addr("virtualOutbound").is_some()
        })
        .await,
        "{:?} {:?}",
        tp.proxy.last_reload_error(),
        cp.nack(LDS)
    );
    assert!(
        tp.proxy.listener_addr("0.0.0.0_8080").is_none(),
        "binds nothing"
    );
    let wild_reply = get("http://10.99.0.1:8080/x").await;
    assert_eq!(wild_reply.status, 200, "{:?}", wild_reply.body);
    assert_eq!(wild_reply.json()["server"], "wild");
    let exact_reply = get("http://10.99.0.2:8080/x").await;
    assert_eq!(exact_reply.json()["server"], "exact");
}

/// EDS priorities, as istiod renders locality failover (the local zone at priority 0, the
/// others below): in Weft as in Envoy 1.40, the healthy priority-0 endpoint takes every
/// request; once its health check fails, the traffic fails over to priority 1.
#[tokio::test]
async fn eds_priorities_fail_over_the_same_in_envoy_and_weft() {
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let failing = Arc::new(AtomicBool::new(false));
    let node = |name: &'static str, failing: Option<Arc<AtomicBool>>| {
        upstream::serve(move |req: http::Request<hyper::body::Incoming>| {
            let down = failing.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
            async move {
                let mut r =
                    http::Response::new(http_body_util::Full::new(bytes::Bytes::from(name)));
                if req.uri().path() == "/healthz" && down {
                    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                r
            }
        })
    };
    let (near, far) = (
        node("near", Some(failing.clone())).await,
        node("far", None).await,
    );
    let mut cluster = eds_cluster("zoned");
    cluster.health_checks = vec![core::HealthCheck {
        timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        interval: Some(PbDuration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        // Envoy checks a cluster that has not had traffic yet only this often (default 60 s).
        no_traffic_interval: Some(PbDuration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        unhealthy_threshold: Some(UInt32Value { value: 1 }),
        healthy_threshold: Some(UInt32Value { value: 1 }),
        health_checker: Some(core::health_check::HealthChecker::HttpHealthCheck(
            core::health_check::HttpHealthCheck {
                path: "/healthz".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }];
    // As istiod renders locality failover: locality-weighted balancing, weighted localities.
    cluster.common_lb_config = Some(
        envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig {
            locality_config_specifier: Some(
                envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    Default::default(),
                ),
            ),
            ..Default::default()
        },
    );
    let mut cla = assignment("zoned", &[(near, 1)]);
    cla.endpoints[0].load_balancing_weight = Some(UInt32Value { value: 1 });
    let mut far_locality = assignment("zoned", &[(far, 1)]).endpoints.remove(0);
    far_locality.priority = 1;
    far_locality.load_balancing_weight = Some(UInt32Value { value: 1 });
    cla.endpoints.push(far_locality);
    let snap = Snapshot::new("1")
        .with("zoned", cluster)
        .with("zoned", cla)
        .with(
            "web",
            http_listener("web", "127.0.0.1:0".parse().unwrap(), "routes"),
        )
        .with(
            "routes",
            route_config("routes", vec![prefix_route("/", &[("zoned", 1)])]),
        );
    let (w, envoy, _cp) = weft_and_envoy(&envoy_bin, snap).await;
    let bases = [("weft", w.tp.url("web", "")), ("envoy", envoy.url(""))];
    let all_to = |base: String, want: &'static str| async move {
        for _ in 0..20 {
            if get(&format!("{base}/x")).await.text() != want {
                return false;
            }
        }
        true
    };
    for (name, base) in &bases {
        assert!(
            eventually(WAIT, || all_to(base.clone(), "near")).await,
            "{name}: priority 0 takes everything while healthy"
        );
    }
    failing.store(true, Ordering::SeqCst);
    for (name, base) in &bases {
        assert!(
            eventually(WAIT, || all_to(base.clone(), "far")).await,
            "{name}: fails over to priority 1"
        );
    }
}

/// istiod's auto mTLS: a cluster's `transport_socket_matches` (TLS for endpoints labelled
/// `tlsMode: istio`, plaintext for the rest) over EDS endpoints with and without that label.
/// Through Weft as through Envoy 1.40, the labelled endpoint is reached over mTLS (its
/// handshake seen) and the other in plaintext, on the same cluster.
#[tokio::test]
async fn auto_mtls_transport_socket_matches_agree_in_envoy_and_weft() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
    use weft_e2e::mesh::{Pki, tls_echo};
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let pki = Pki::new("cluster.local");
    let (server_id, client_id) = (pki.id("prod", "db"), pki.id("prod", "app"));
    let s = pki.issue("db", &server_id, Duration::from_secs(3600));
    let c = pki.issue("app", &client_id, Duration::from_secs(3600));
    let (meshed, mut handshakes) = tls_echo(&s, std::slice::from_ref(&client_id)).await;
    let legacy = upstream::tcp_echo("plain:").await;
    let tls_mode = |mode: &str| Struct {
        fields: [(
            "tlsMode".to_owned(),
            Value {
                kind: Some(Kind::StringValue(mode.into())),
            },
        )]
        .into(),
    };
    let mut cluster = eds_cluster("db");
    cluster.transport_socket_matches = vec![
        TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(tls_mode("istio")),
            transport_socket: Some(upstream_tls(&c, &server_id, &[])),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(core::TransportSocket {
                name: "envoy.transport_sockets.raw_buffer".into(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                            .into(),
                    value: Vec::new(),
                })),
            }),
        },
    ];
    let mut cla = assignment("db", &[(meshed, 1), (legacy, 1)]);
    cla.endpoints[0].lb_endpoints[0].metadata = Some(core::Metadata {
        filter_metadata: [("envoy.transport_socket_match".to_owned(), tls_mode("istio"))].into(),
        ..Default::default()
    });
    let snap = Snapshot::new("1").with("db", cluster).with("db", cla).with(
        "db-in",
        tcp_listener("db-in", "127.0.0.1:0".parse().unwrap(), "db"),
    );
    let cp = ControlPlane::start(snap).await;
    let Running { tp, _client } = start_for(&cp, "db-in").await;
    let envoy = start_envoy(&envoy_bin, &cp).await;
    for (name, addr) in [
        ("weft", tp.proxy.listener_addr("db-in").unwrap()),
        ("envoy", envoy.addr()),
    ] {
        let (mut over_tls, mut plain) = (0, 0);
        for i in 0..4 {
            let payload = format!("{name} {i}\n");
            let echoed = weft_e2e::tcp_exchange(addr, payload.as_bytes(), payload.len()).await;
            let echoed = String::from_utf8_lossy(&echoed).into_owned();
            if echoed == payload {
                over_tls += 1;
                let seen = tokio::time::timeout(Duration::from_secs(5), handshakes.recv())
                    .await
                    .expect("a handshake within 5 s")
                    .expect("running")
                    .unwrap_or_else(|e| panic!("{name}: no TLS to the meshed endpoint: {e}"));
                assert_eq!(seen.peer_id, client_id, "{name}");
            } else {
                assert!(echoed.starts_with("plain:"), "{name}: {echoed:?}");
                plain += 1;
            }
        }
        assert!(
            over_tls > 0 && plain > 0,
            "{name}: {over_tls} over TLS, {plain} plain"
        );
    }
}

/// A cluster with `use_downstream_protocol_config` (how istiod renders a port whose protocol
/// is sniffed): in Weft as in Envoy 1.40, an HTTP/1.1 request goes upstream as HTTP/1.1 and an
/// HTTP/2 one as HTTP/2, on the same cluster.
#[tokio::test]
async fn use_downstream_protocol_agrees_in_envoy_and_weft() {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        UpstreamProtocolOptions, UseDownstreamHttpConfig,
    };
    use http_body_util::BodyExt;
    use prost::Message;
    let Some(envoy_bin) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let up = upstream::serve(|req: http::Request<hyper::body::Incoming>| async move {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(format!(
            "{:?}",
            req.version()
        ))))
    })
    .await;
    let mut cluster = eds_cluster("sniffed");
    cluster.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        envoy_types::pb::google::protobuf::Any {
            type_url: "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
                .into(),
            value: HttpProtocolOptions {
                upstream_protocol_options: Some(
                    UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                        http_protocol_options: Some(Default::default()),
                        http2_protocol_options: Some(Default::default()),
                        ..Default::default()
                    }),
                ),
                ..Default::default()
            }
            .encode_to_vec(),
        },
    );
    let (w, envoy, _cp) = weft_and_envoy(&envoy_bin, web_to(cluster, &[(up, 1)])).await;
    for (name, base) in [("weft", w.tp.url("web", "")), ("envoy", envoy.url(""))] {
        assert_eq!(
            get(&format!("{base}/h1")).await.text(),
            "HTTP/1.1",
            "{name}"
        );
        let h2 = weft_e2e::h2_client();
        let r = h2
            .get(format!("{base}/h2").parse().unwrap())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(String::from_utf8_lossy(&body), "HTTP/2.0", "{name}");
    }
}
