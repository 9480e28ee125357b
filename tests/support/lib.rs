//! Helpers for Weft's end-to-end tests: a proxy started from a YAML text on ephemeral ports,
//! upstreams with controllable behaviour, an HTTP client, and raw TCP probes.
#![forbid(unsafe_code)]
#![expect(
    clippy::expect_used,
    reason = "test support: a setup step that fails fails the test that asked for it, naming the step"
)]

pub mod envoy;
pub mod faulty;
pub mod mesh;
pub mod plugins;
pub mod prometheus;
pub mod recording;
pub mod upstream;
pub mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_proxy::{ConfigSource, Proxy, StartOptions};

/// A running Weft with its configuration in a temporary directory.
pub struct TestProxy {
    /// The proxy handle.
    pub proxy: Proxy,
    /// The configuration file.
    pub config_path: PathBuf,
    /// The access-log file.
    pub access_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestProxy {
    /// Starts Weft on `yaml` (listeners should use port 0). `access_log` is filled in.
    pub async fn start(yaml: &str) -> TestProxy {
        Self::start_with(yaml, false).await
    }

    /// Like [`TestProxy::start`], optionally watching the file for changes.
    pub async fn start_with(yaml: &str, watch: bool) -> TestProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("weft.yaml");
        let access_log = dir.path().join("access.log");
        std::fs::write(&config_path, with_access_log(yaml, &access_log)).expect("write config");
        let proxy = Proxy::start(
            ConfigSource::File(config_path.clone()),
            StartOptions {
                watch,
                admin_address: Some("127.0.0.1:0".parse().expect("addr")),
                ..Default::default()
            },
        )
        .await
        .expect("proxy starts");
        TestProxy {
            proxy,
            config_path,
            access_log,
            _dir: dir,
        }
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.proxy.listener_addr(name).expect("listener is bound")
    }

    /// `http://addr-of-listener`.
    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(name))
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.proxy.admin_addr().expect("admin is bound")
    }

    /// Writes a new configuration file (the access log path is kept).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, with_access_log(yaml, &self.access_log)).expect("write");
        std::fs::rename(&tmp, &self.config_path).expect("rename");
    }

    /// Access-log lines parsed as JSON, waiting until at least `n` are there (5 s at most).
    pub async fn access_log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if lines.len() >= n || tokio::time::Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/metrics` text, as OpenMetrics (what Prometheus asks for).
    pub async fn metrics(&self) -> String {
        let r = get_with(
            &format!("http://{}/metrics", self.admin()),
            &[("accept", "application/openmetrics-text;version=1.0.0")],
        )
        .await;
        String::from_utf8_lossy(&r.body).into_owned()
    }

    /// The `/stats/prometheus` text with no `Accept`: Prometheus text format 0.0.4.
    pub async fn metrics_text(&self) -> String {
        let r = get(&format!("http://{}/stats/prometheus", self.admin())).await;
        String::from_utf8_lossy(&r.body).into_owned()
    }
}

fn with_access_log(yaml: &str, path: &std::path::Path) -> String {
    if yaml.contains("access_log:") {
        yaml.to_owned()
    } else {
        format!("access_log:\n  path: {}\n{yaml}", path.display())
    }
}

/// The value of the metric line starting with `series` (exact labels), or 0.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (the echo upstream's description of the request).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 client with connection pooling.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `req` with `client` and reads the whole response (10 s at most).
pub async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Reply {
    let fut = async {
        let resp = client.request(req).await.expect("request sent");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body read").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("response within 10 s")
}

/// `GET url` on a fresh client.
pub async fn get(url: &str) -> Reply {
    get_with(url, &[]).await
}

/// `GET url` with extra headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client(), b.body(Full::default()).expect("request")).await
}

/// Writes `bytes` to `addr` and reads until the peer closes (5 s at most).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Connects to `addr`, writes `bytes` and reads until `want` bytes arrived, the peer closed, or
/// 5 s passed; returns what was read.
pub async fn tcp_exchange(addr: SocketAddr, bytes: &[u8], want: usize) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while out.len() < want {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    out
}

/// Waits on a condition: polls `check` (every 20 ms) until it is true, and returns true; or
/// returns false once `within` has passed without it. Use it, asserting the result, wherever a
/// test must wait for something the proxy does on its own (a counter in `/metrics`, a state
/// in `/clusters`, `/plugins` or `/certs`, a count kept by a test upstream):
///
/// ```no_run
/// # async fn demo(p: &weft_e2e::TestProxy) {
/// use std::time::Duration;
/// let swapped = weft_e2e::eventually(Duration::from_secs(10), || async {
///     let m = p.metrics().await;
///     weft_e2e::metric_value(&m, "weft_config_generation") >= 2.0
/// })
/// .await;
/// assert!(swapped, "the new generation is live");
/// # }
/// ```
///
/// `within` is a failure guard: make it generous (seconds), as it is never what the test
/// waits for. Never sleep a fixed time instead, and never assert on elapsed time.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    // `within` is a bound on waiting, never an assertion on speed: a loaded CI machine (two cores,
    // parallel test binaries, file-watch debouncing) can take several times longer than a quiet one,
    // so the bound is at least 30 s. A passing check returns as soon as it holds.
    let deadline = tokio::time::Instant::now() + within.max(Duration::from_secs(30));
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
