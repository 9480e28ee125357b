//! xDS at scale, Weft vs Envoy 1.40 in the same run (bench/xds.sh runs it; figures go into
//! docs/performance.md). For each proxy and each ADS variant (state of the world, delta), a
//! fresh process is started against its own test control plane (tests/support/xds.rs) that
//! serves 1,000 EDS clusters × 10 endpoints, one listener and one route configuration of 1,000
//! routes (`/r<i>/` → cluster `c<i>`). Measured from the process start:
//!
//! - **first ACK**: the first request that ACKs a response;
//! - **serving**: every type ACKed and `GET /r999/` answered 200 by an upstream;
//! - **RSS** once serving (`/proc/<pid>/status` `VmRSS`);
//!
//! then one endpoint of one cluster changes (version 2): **apply** = until the EDS ACK of
//! version 2, **CPU** = the process's user + system time over that interval
//! (`/proc/<pid>/stat`). Not a test: it asserts nothing but that both proxies get there.
//!
//! Usage: `xds_scale <weft binary> <envoy binary> [rounds]`; prints a JSON line per run and a
//! Markdown table of medians.
#![forbid(unsafe_code)]
#![expect(
    clippy::expect_used,
    reason = "a benchmark harness: a setup step that fails stops the run, naming the step"
)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_e2e::xds::{
    CDS, ControlPlane, EDS, LDS, RDS, Snapshot, assignment, eds_cluster, http_listener,
    prefix_route, route_config,
};

const CLUSTERS: usize = 1_000;
const ENDPOINTS: usize = 10;
const LIMIT: Duration = Duration::from_secs(120);

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// The snapshot: `version`, endpoints from `upstreams`; version 2 moves cluster `c500`'s
/// first endpoint to the last upstream.
fn snapshot(version: &str, listen: SocketAddr, upstreams: &[SocketAddr]) -> Snapshot {
    let mut s = Snapshot::new(version);
    let mut routes = Vec::with_capacity(CLUSTERS);
    for i in 0..CLUSTERS {
        let name = format!("c{i}");
        let mut eps: Vec<(SocketAddr, u32)> =
            upstreams[..ENDPOINTS].iter().map(|a| (*a, 1)).collect();
        if version != "1" && i == 500 {
            eps[0] = (upstreams[ENDPOINTS], 1);
        }
        s = s
            .with(&name, eds_cluster(&name))
            .with(&name, assignment(&name, &eps));
        routes.push(prefix_route(&format!("/r{i}/"), &[(&name, 1)]));
    }
    s.with("web", http_listener("web", listen, "routes"))
        .with("routes", route_config("routes", routes))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is 3rd overall; utime 14th, stime 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(which: &str, bin: &str, cp: SocketAddr, delta: bool, dir: &std::path::Path) -> Proc {
    let mut cmd;
    if which == "weft" {
        let file = dir.join("weft.yaml");
        let mut boot = weft_e2e::xds::bootstrap(cp).replace(
            "admin: { address: \"127.0.0.1:0\" }",
            "admin: { address: \"127.0.0.1:0\" }\nworkers: 1",
        );
        if delta {
            boot = boot.replace(
                "  cluster: xds-grpc\n",
                "  cluster: xds-grpc\n  api_type: DELTA_GRPC\n",
            );
        }
        std::fs::write(&file, boot).expect("write");
        cmd = Command::new(bin);
        cmd.args(["run", "--log-level", "warn", "-c"]).arg(&file);
    } else {
        let file = dir.join("envoy.yaml");
        let boot = if delta {
            weft_e2e::xds::envoy_delta_bootstrap(cp)
        } else {
            weft_e2e::xds::envoy_bootstrap(cp)
        };
        std::fs::write(&file, boot).expect("write");
        cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&file)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .args(["--base-id", &std::process::id().to_string()]);
    }
    let log = std::fs::File::create(dir.join(format!("{which}.log"))).expect("log");
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}")),
    )
}

fn acked(cp: &ControlPlane, delta: bool, t: &str, version: &str) -> bool {
    if delta {
        cp.delta_acked(t, version)
    } else {
        cp.acked(t, version)
    }
}

fn any_ack(cp: &ControlPlane, delta: bool) -> bool {
    if delta {
        [CDS, EDS, LDS, RDS].iter().any(|t| cp.delta_acked(t, "1"))
    } else {
        cp.requests()
            .iter()
            .any(|r| !r.response_nonce.is_empty() && r.error_detail.is_none())
    }
}

async fn poll<F: FnMut() -> bool>(
    p: &mut Proc,
    log: &std::path::Path,
    mut f: F,
    what: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        if let Ok(Some(status)) = p.0.try_wait() {
            panic!(
                "{what}: the proxy exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(start.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[derive(Debug)]
struct Run {
    proxy: &'static str,
    mode: &'static str,
    first_ack_ms: f64,
    serving_ms: f64,
    rss_mib: f64,
    apply_ms: f64,
    apply_cpu_ms: f64,
}

async fn one(
    proxy: &'static str,
    bin: &str,
    delta: bool,
    upstreams: &[SocketAddr],
    ticks: u64,
) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_port();
    let cp = ControlPlane::start(snapshot("1", listen, upstreams)).await;
    let started = Instant::now();
    let mut p = spawn(proxy, bin, cp.addr, delta, dir.path());
    let log = dir.path().join(format!("{proxy}.log"));
    let pid = p.0.id();
    poll(&mut p, &log, || any_ack(&cp, delta), "first ACK").await;
    let first_ack = started.elapsed();
    let client = weft_e2e::client();
    let url = format!("http://{listen}/r999/x");
    loop {
        let all = [CDS, EDS, LDS, RDS]
            .iter()
            .all(|t| acked(&cp, delta, t, "1"));
        if all {
            let req = http::Request::get(&url)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request");
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(2), client.request(req)).await
                && r.status() == 200
            {
                break;
            }
        }
        assert!(
            started.elapsed() < LIMIT,
            "{proxy}: not serving within {LIMIT:?}; see {}",
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let serving = started.elapsed();
    let rss = rss_kib(pid);
    // One endpoint changes.
    let before = cpu_ticks(pid);
    let t = Instant::now();
    cp.set(snapshot("2", listen, upstreams));
    poll(
        &mut p,
        &log,
        || acked(&cp, delta, EDS, "2"),
        "EDS version 2 ACK",
    )
    .await;
    let apply = t.elapsed();
    let cpu = cpu_ticks(pid).saturating_sub(before);
    drop(p);
    Run {
        proxy,
        mode: if delta { "delta" } else { "sotw" },
        first_ack_ms: first_ack.as_secs_f64() * 1e3,
        serving_ms: serving.as_secs_f64() * 1e3,
        rss_mib: rss as f64 / 1024.0,
        apply_ms: apply.as_secs_f64() * 1e3,
        apply_cpu_ms: cpu as f64 * 1e3 / ticks as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (weft, envoy) = match (args.get(1), args.get(2)) {
        (Some(w), Some(e)) => (w.clone(), e.clone()),
        _ => {
            eprintln!("usage: xds_scale <weft binary> <envoy binary> [rounds]");
            std::process::exit(2);
        }
    };
    let rounds: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut upstreams = Vec::new();
    for i in 0..=ENDPOINTS {
        upstreams.push(weft_e2e::upstream::echo(&format!("e{i}")).await);
    }
    let ticks = ticks_per_second();
    let mut runs = Vec::new();
    for round in 0..rounds {
        for delta in [false, true] {
            // Interleaved: Weft then Envoy, then the other way round in the next round.
            let order: [(&'static str, &str); 2] = if round % 2 == 0 {
                [("weft", &weft), ("envoy", &envoy)]
            } else {
                [("envoy", &envoy), ("weft", &weft)]
            };
            for (proxy, bin) in order {
                let r = one(proxy, bin, delta, &upstreams, ticks).await;
                println!(
                    "{{\"round\":{round},\"proxy\":\"{}\",\"mode\":\"{}\",\"first_ack_ms\":{:.1},\"serving_ms\":{:.1},\"rss_mib\":{:.1},\"apply_ms\":{:.1},\"apply_cpu_ms\":{:.1}}}",
                    r.proxy,
                    r.mode,
                    r.first_ack_ms,
                    r.serving_ms,
                    r.rss_mib,
                    r.apply_ms,
                    r.apply_cpu_ms
                );
                runs.push(r);
            }
        }
    }
    println!();
    println!(
        "| ADS | proxy | first ACK (ms) | serving (ms) | RSS serving (MiB) | 1 endpoint: apply (ms) | 1 endpoint: CPU (ms) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for mode in ["sotw", "delta"] {
        for proxy in ["weft", "envoy"] {
            let of = |f: fn(&Run) -> f64| {
                median(
                    runs.iter()
                        .filter(|r| r.mode == mode && r.proxy == proxy)
                        .map(f)
                        .collect(),
                )
            };
            println!(
                "| {mode} | {proxy} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
                of(|r| r.first_ack_ms),
                of(|r| r.serving_ms),
                of(|r| r.rss_mib),
                of(|r| r.apply_ms),
                of(|r| r.apply_cpu_ms)
            );
        }
    }
}
