//! Two "pods" in Linux network namespaces joined by a veth pair, each with its applications, a
//! real `weft` process running as the proxy user (uid/gid 1337) and the `weft iptables` rules:
//! the applications talk to each other by IP with no proxy settings, and everything goes
//! through both sidecars.
//!
//! ```text
//!  pod A (10.250.0.1)                                  pod B (10.250.0.2)
//!  app ─► OUTPUT ─► :15001 virtual_outbound ─mTLS─► PREROUTING ─► :15006 virtual_inbound ─► app
//! ```
//!
//! The applications are sockets of this test process, created by threads that entered the
//! pod's namespace (`setns`); they run as root, so they are captured. Needs root and
//! `ip`/`iptables`/`setpriv` (scripts/test.sh installs iptables and iproute2): a machine that
//! refuses network namespaces fails the test with the reason, it never passes silently.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail loudly on unexpected input"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, mpsc};

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const PROXY_UID: &str = "1337";
const TRUST: &str = "spiffe://cluster.local/ns/default/sa";

/// Runs `program args`, panicking with its output when it fails.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The two namespaces and the Weft processes; removed on drop, also when the test fails.
struct Pods {
    a: String,
    b: String,
    procs: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.a, &self.b] {
            // Deleting a namespace removes its end of the veth pair and its rules.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::thread::panicking() {
            for name in ["a", "b"] {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")));
                eprintln!("--- weft {name} log ---\n{}", log.unwrap_or_default());
            }
        }
    }
}

impl Pods {
    /// Creates the namespaces (unique names per run), the veth pair and loopback.
    fn create() -> Pods {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let (a, b) = (format!("weftA{id}"), format!("weftB{id}"));
        let made = Command::new("ip").args(["netns", "add", &a]).output();
        match made {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "network namespaces are refused here (`ip netns add` failed: {}); this test \
                 needs root and a kernel with network namespaces",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("cannot run `ip` ({e}): install iproute2 (scripts/test.sh does)"),
        }
        let dir = tempfile::Builder::new()
            .prefix("weft-netns")
            .tempdir()
            .unwrap();
        let pods = Pods {
            a,
            b,
            procs: Vec::new(),
            dir,
        };
        sh("ip", &["netns", "add", &pods.b]);
        let (va, vb) = (format!("wa{id}"), format!("wb{id}"));
        sh(
            "ip",
            &["link", "add", &va, "type", "veth", "peer", "name", &vb],
        );
        sh("ip", &["link", "set", &va, "netns", &pods.a]);
        sh("ip", &["link", "set", &vb, "netns", &pods.b]);
        for (ns, dev, ip) in [(&pods.a, &va, A_IP), (&pods.b, &vb, B_IP)] {
            let cidr = format!("{ip}/24");
            sh("ip", &["-n", ns, "addr", "add", &cidr, "dev", dev]);
            sh("ip", &["-n", ns, "link", "set", dev, "up"]);
            sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        pods
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `weft args` in namespace `ns` as root (iptables, ca).
    fn weft_root(&self, ns: Option<&str>, args: &[&str]) -> String {
        let bin = self.path("weft");
        let bin = bin.to_str().unwrap();
        match ns {
            Some(ns) => {
                let mut all = vec!["netns", "exec", ns, bin];
                all.extend(args);
                sh("ip", &all)
            }
            None => sh(bin, args),
        }
    }

    /// Starts `weft run -c CONFIG` in `ns` as the proxy user; its output goes to NAME.log.
    fn start_weft(&mut self, name: &str, ns: &str, config: &str) {
        let cfg = self.path(&format!("{name}.yaml"));
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "setpriv", "--reuid", PROXY_UID, "--regid",
            ])
            .args([PROXY_UID, "--clear-groups"])
            .arg(self.path("weft"))
            .args(["--log-level", "info,weft_transport=debug", "run", "-c"])
            .arg(&cfg)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push((name.to_owned(), child));
    }

    fn child(&mut self, name: &str) -> &mut Child {
        &mut self.procs.iter_mut().find(|(n, _)| n == name).unwrap().1
    }
}

/// Runs `f` on a thread that entered network namespace `ns`: sockets it creates live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap()
}

fn listen_in(ns: &str, port: u16) -> tokio::net::TcpListener {
    let l = in_netns(ns, move || {
        std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).unwrap()
    });
    l.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(l).unwrap()
}

/// A connection opened by an application of pod `ns` (root: captured).
fn connect_in(ns: &str, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let s = in_netns(ns, move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
    })?;
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

/// GET `path` over a fresh connection from pod `ns` to `to`: status, headers, body.
async fn get(
    ns: &str,
    to: SocketAddr,
    path: &str,
) -> Result<(u16, http::HeaderMap, String), String> {
    let stream = connect_in(ns, to).map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", to.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// Waits (bounded) until `GET /healthz/ready` on pod `ns`'s 15021 answers 200.
async fn wait_ready(ns: &str, pods: &mut Pods, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = SocketAddr::from((Ipv4Addr::LOCALHOST, 15021));
    loop {
        if let Ok((200, _, _)) = get(ns, health, "/healthz/ready").await {
            return;
        }
        if let Ok(Some(status)) = pods.child(name).try_wait() {
            panic!("weft {name} exited during start-up: {status}");
        }
        assert!(Instant::now() < deadline, "weft {name} never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of the samples of `family` whose labels contain every one of `labels`.
fn metric(exposition: &str, family: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn prometheus(ns: &str) -> String {
    let (status, _, body) = get(
        ns,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 15090)),
        "/stats/prometheus",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    body
}

/// Pod B's HTTP application: answers with the request's headers as JSON; `/slow` waits for
/// `release` (after telling `arrived`).
fn serve_app(
    listener: tokio::net::TcpListener,
    arrived: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (arrived, release) = (arrived.clone(), release.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let (arrived, release) = (arrived.clone(), release.clone());
                    async move {
                        if req.uri().path() == "/slow" {
                            let _ = arrived.send(());
                            release.notified().await;
                        }
                        let headers: serde_json::Map<String, serde_json::Value> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().into()))
                            .collect();
                        let body = serde_json::Value::Object(headers).to_string();
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Pod B's opaque TCP application: echoes bytes back.
fn serve_echo(listener: tokio::net::TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

fn config_a(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
admin: {{ address: "127.0.0.1:15000" }}
access_log: {{ path: stdout }}
drain_timeout: 20s
sidecar:
  capture: true
  outbound_traffic_policy: registry_only
  outbound:
    - match: {{ destination_port: 8080, prefix_ranges: ["{B_IP}/32"] }}
      listener: out-b-http
    - match: {{ destination_port: 8081, prefix_ranges: ["{B_IP}/32"] }}
      listener: out-b-plain
    - match: {{ destination_port: 9000 }}
      listener: out-b-tcp
    - match: {{ destination_port: 9001 }}
      listener: out-b-tcp
listeners:
  - name: out-b-http
    address: "{B_IP}:8080"
    bind_to_port: false
    virtual_hosts: [{{ name: b, domains: ["*"], routes: [{{ route: {{ cluster: b-mtls }} }}] }}]
  - name: out-b-plain
    address: "{B_IP}:8081"
    bind_to_port: false
    virtual_hosts: [{{ name: b, domains: ["*"], routes: [{{ route: {{ cluster: b-plain }} }}] }}]
  - name: out-b-tcp
    address: "{B_IP}:9000"
    bind_to_port: false
    protocol: tcp
    tcp: {{ cluster: b-tcp }}
clusters:
  - name: b-mtls
    endpoints: [{{ address: "{B_IP}:8080" }}]
    tls:
      cert_file: {d}/a/cert.pem
      key_file: {d}/a/key.pem
      trust_bundle_file: {d}/a/bundle.pem
      match_identities: ["{TRUST}/b"]
  - name: b-plain
    endpoints: [{{ address: "{B_IP}:8080" }}]
  - name: b-tcp
    type: original_dst
"#
    )
}

fn config_b(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
admin: {{ address: "127.0.0.1:15000" }}
access_log: {{ path: stdout }}
sidecar:
  capture: true
  inbound:
    - match: {{ destination_port: 8080 }}
      listener: in-http
    - match: {{ destination_port: 9001 }}
      listener: in-tcp-pod-ip
plugins:
  - name: header-rewrite
    file: builtin:header-rewrite
    configuration:
      rules:
        - name: mark
          request: {{ set: {{ x-weft-inbound: "pod-b" }} }}
listeners:
  - name: in-http
    address: "0.0.0.0:8080"
    bind_to_port: false
    tls:
      mode: permissive
      cert_file: {d}/b/cert.pem
      key_file: {d}/b/key.pem
      trust_bundle_file: {d}/b/bundle.pem
    forward_client_cert_details: sanitize_set
    plugins: [{{ name: header-rewrite }}]
    virtual_hosts:
      - name: app
        domains: ["*"]
        routes: [{{ route: {{ cluster: InboundPassthroughCluster }} }}]
  - name: in-tcp-pod-ip
    address: "0.0.0.0:9001"
    bind_to_port: false
    protocol: tcp
    tcp: {{ cluster: pod-ip }}
clusters:
  # Delivery to the pod's own IP from 127.0.0.6, which the capture rules leave alone.
  - name: pod-ip
    type: original_dst
    source_address: 127.0.0.6
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_captured_pods_talk_mtls_through_both_sidecars() {
    let mut pods = Pods::create();
    let (a, b) = (pods.a.clone(), pods.b.clone());

    // The binary and certificates where the proxy user can read them.
    let bin = pods.path("weft");
    std::fs::copy(env!("CARGO_BIN_EXE_weft"), &bin).unwrap();
    let ca = pods.path("ca");
    pods.weft_root(None, &["ca", "init", "--dir", ca.to_str().unwrap()]);
    for pod in ["a", "b"] {
        let out = pods.path(pod);
        let id = format!("{TRUST}/{pod}");
        let (ca, out) = (ca.to_str().unwrap(), out.to_str().unwrap());
        pods.weft_root(
            None,
            &[
                "ca",
                "issue",
                "--ca-dir",
                ca,
                "--spiffe-id",
                &id,
                "--out-dir",
                out,
            ],
        );
    }
    sh("chmod", &["-R", "a+rX", pods.dir.path().to_str().unwrap()]);

    // Capture in both pods; a second run changes nothing.
    for ns in [&a, &b] {
        pods.weft_root(Some(ns), &["iptables"]);
        let before = sh("ip", &["netns", "exec", ns, "iptables-save", "-t", "nat"]);
        pods.weft_root(Some(ns), &["iptables"]);
        let after = sh("ip", &["netns", "exec", ns, "iptables-save", "-t", "nat"]);
        let rules = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            rules(&before),
            rules(&after),
            "a second `weft iptables` changed the rules"
        );
        assert!(rules(&after).contains("-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
        let v6 = sh("ip", &["netns", "exec", ns, "ip6tables-save", "-t", "nat"]);
        assert!(
            v6.contains("-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"),
            "{v6}"
        );
    }

    // Pod B's applications, on every address (the sidecar delivers to 127.0.0.1).
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    serve_app(listen_in(&b, 8080), arrived_tx, release.clone());
    serve_echo(listen_in(&b, 9000));
    serve_echo(listen_in(&b, 9001));
    let unknown = listen_in(&b, 7000);

    let dir = pods.dir.path().to_owned();
    pods.start_weft("b", &b, &config_b(&dir));
    pods.start_weft("a", &a, &config_a(&dir));
    wait_ready(&b, &mut pods, "b").await;
    wait_ready(&a, &mut pods, "a").await;
    let mut app_connections = 0;

    // 1. HTTP over mTLS: A's app → A outbound capture → mTLS → B inbound capture → B's app.
    let to_b = SocketAddr::from((B_IP, 8080));
    let (status, _, body) = get(&a, to_b, "/hello").await.unwrap();
    app_connections += 1;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let xfcc = seen["x-forwarded-client-cert"].as_str().unwrap_or_default();
    assert!(
        xfcc.contains(&format!("URI={TRUST}/a")),
        "A's identity in XFCC: {seen}"
    );
    assert!(
        xfcc.contains(&format!("By={TRUST}/b")),
        "B's identity in XFCC: {seen}"
    );
    assert_eq!(
        seen["x-weft-inbound"], "pod-b",
        "B's inbound plugin ran: {seen}"
    );

    // 2. Permissive: plaintext to the same inbound port (A's plain cluster) is accepted too.
    let (status, _, body) = get(&a, SocketAddr::from((B_IP, 8081)), "/plain")
        .await
        .unwrap();
    app_connections += 1;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        seen.get("x-forwarded-client-cert").is_none(),
        "plaintext has no XFCC: {seen}"
    );
    assert_eq!(seen["x-weft-inbound"], "pod-b", "{seen}");

    // 3. Opaque TCP through both sidecars (A: TCP chain to an original_dst cluster; B, port
    //    9000: no chain, so the inbound passthrough to 127.0.0.1; port 9001: a chain delivering
    //    to B's own IP from 127.0.0.6, not captured again).
    for port in [9000, 9001] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = connect_in(&a, SocketAddr::from((B_IP, port))).unwrap();
        app_connections += 1;
        let payload = b"\x00\x01opaque bytes\xff";
        s.write_all(payload).await.unwrap();
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, payload);
    }

    // 4. registry_only: a destination no chain knows is closed by A (BlackHoleCluster) and
    //    never reaches B.
    {
        use tokio::io::AsyncReadExt;
        let mut s = connect_in(&a, SocketAddr::from((B_IP, 7000))).unwrap();
        app_connections += 1;
        let mut buf = [0u8; 1];
        let n = s.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the black hole closes the connection");
        let unknown = unknown.into_std().unwrap();
        assert!(
            matches!(unknown.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "nothing reached B's port 7000"
        );
    }

    // Both proxies counted; A's own upstream connections were not captured again (A's capture
    // listener saw exactly the application's connections).
    let ma = prometheus(&a).await;
    let mb = prometheus(&b).await;
    assert_eq!(
        metric(
            &ma,
            "weft_downstream_cx_total",
            &["listener=\"virtual_outbound\""]
        ),
        app_connections as f64,
        "{ma}"
    );
    assert!(
        metric(&ma, "weft_upstream_rq_total", &["cluster=\"b-mtls\""]) >= 1.0,
        "{ma}"
    );
    assert_eq!(
        metric(
            &ma,
            "weft_response_flags_total",
            &["listener=\"virtual_outbound\"", "\"UH\""]
        ),
        1.0,
        "the black hole is counted: {ma}"
    );
    assert!(
        metric(&mb, "weft_downstream_rq_total", &["listener=\"in-http\""]) >= 2.0,
        "{mb}"
    );
    assert!(
        metric(
            &mb,
            "weft_downstream_cx_total",
            &["listener=\"virtual_inbound\""]
        ) >= 3.0,
        "{mb}"
    );

    // 5. Shutdown drains: a request in flight when A's Weft is told to stop completes; new
    //    connections from the application fail only after that (nothing listens on 15001).
    let slow = tokio::spawn({
        let a = a.clone();
        async move { get(&a, to_b, "/slow").await }
    });
    tokio::time::timeout(Duration::from_secs(30), arrived.recv())
        .await
        .expect("the slow request reached B's app")
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(pods.child("a").id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // Wait (bounded) for A's Weft to stop accepting: the app's new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    while connect_in(&a, to_b).is_ok() {
        assert!(
            Instant::now() < deadline,
            "A's Weft kept accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !slow.is_finished(),
        "the in-flight request is still being served"
    );
    release.notify_one();
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(30), slow)
        .await
        .expect("the in-flight request finished")
        .unwrap()
        .unwrap();
    assert_eq!(
        status, 200,
        "the in-flight request completed during the drain"
    );
    let exit = pods.child("a").wait().unwrap();
    assert!(exit.success(), "A's Weft drained and exited 0: {exit}");

    // Cleanup removes the rules; running it twice is fine.
    for _ in 0..2 {
        pods.weft_root(Some(&b), &["iptables", "--cleanup"]);
    }
    let left = sh("ip", &["netns", "exec", &b, "iptables-save", "-t", "nat"]);
    assert!(!left.contains("WEFT_"), "{left}");
}
