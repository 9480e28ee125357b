//! The hot-swap demo: Weft serves a steady load through the `hello` plugin while the plugin's
//! `.wasm` file is replaced, several times, by a new version (atomic rename, as a deployment
//! or a Kubernetes ConfigMap update does). Weft's file watcher compiles each new version, runs
//! it as a canary (`on_vm_start`, `on_configure`), and swaps it in; requests in flight finish
//! on the version they started with. The demo counts every request that did not come back
//! `200` with the plugin's header: the expected count is zero.
//!
//! Version 2 of the module is version 1 with an extra custom section (`weft-demo-version`):
//! a different module (new sha256, compiled and swapped like any new build) with the same
//! behaviour, so that any failure would come from the swap itself.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_proxy::{ConfigSource, Proxy, StartOptions};

/// How hard and how long to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Concurrent clients.
    pub clients: usize,
    /// How long the load runs.
    pub duration: Duration,
    /// Swaps during that time.
    pub swaps: usize,
    /// A bound on requests per client (the loop also stops at `duration`).
    pub max_requests_per_client: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            clients: 8,
            duration: Duration::from_secs(6),
            swaps: 5,
            max_requests_per_client: 200_000,
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Report {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed (transport error, non-200, or the plugin's header missing).
    pub failed: u64,
    /// Swaps Weft performed.
    pub swaps: u64,
    /// For each file replacement, how long until Weft served the new version.
    pub swap_times: Vec<Duration>,
    /// The first failure, for diagnosis.
    pub first_failure: Option<String>,
}

/// Why the demo could not run.
#[derive(Debug)]
pub enum DemoError {
    /// The hello plugin did not build.
    Build(weft_plugin_build::BuildError),
    /// A file could not be written.
    Io(PathBuf, std::io::Error),
    /// Weft did not start.
    Start(String),
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::Build(e) => write!(f, "building examples/hello: {e}"),
            DemoError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            DemoError::Start(e) => write!(f, "starting Weft: {e}"),
        }
    }
}

impl std::error::Error for DemoError {}

/// `module` plus a custom section: a distinct, equally valid module.
pub fn with_custom_section(module: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = module.to_vec();
    out.push(0); // custom section id
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| DemoError::Io(tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| DemoError::Io(path.to_owned(), e))
}

fn swaps(proxy: &Proxy) -> u64 {
    proxy
        .plugins()
        .handles()
        .iter()
        .filter(|h| h.name == "hello")
        .map(|h| h.swaps.load(Ordering::Relaxed))
        .sum()
}

/// Runs the demo.
pub async fn run(options: &DemoOptions) -> Result<Report, DemoError> {
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hello");
    let wasm = weft_plugin_build::build_crate(&hello).map_err(DemoError::Build)?;
    let v1 = std::fs::read(&wasm).map_err(|e| DemoError::Io(wasm.clone(), e))?;
    let v2 = with_custom_section(&v1, "weft-demo-version", b"2");

    let dir = tempfile::tempdir().map_err(|e| DemoError::Io(PathBuf::from("tempdir"), e))?;
    let plugin_path = dir.path().join("hello.wasm");
    write_atomically(&plugin_path, &v1)?;
    let echo = weft_echo::spawn_echo(SocketAddr::from(([127, 0, 0, 1], 0)), "upstream")
        .await
        .map_err(|e| DemoError::Start(format!("echo upstream: {e}")))?;
    let config_path = dir.path().join("weft.yaml");
    let config = format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
access_log: {{ path: "off" }}
plugins:
  - name: hello
    file: hello.wasm
    configuration: {{ greeting: "hi from the hot-swap demo" }}
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: hello }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: upstream }} }}]
clusters:
  - {{ name: upstream, endpoints: [{{ address: "{echo}" }}] }}
"#
    );
    std::fs::write(&config_path, config).map_err(|e| DemoError::Io(config_path.clone(), e))?;
    let proxy = Proxy::start(
        ConfigSource::File(config_path),
        StartOptions {
            watch: true,
            admin_address: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| DemoError::Start(e.to_string()))?;
    let addr = proxy
        .listener_addr("main")
        .ok_or_else(|| DemoError::Start("no listener `main`".into()))?;

    let requests = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(parking_lot::Mutex::new(None::<String>));
    let deadline = Instant::now() + options.duration;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut workers = Vec::new();
    for _ in 0..options.clients {
        let (client, requests, failed, first_failure) = (
            client.clone(),
            requests.clone(),
            failed.clone(),
            first_failure.clone(),
        );
        let uri: http::Uri = format!("http://{addr}/demo")
            .parse()
            .map_err(|e| DemoError::Start(format!("listener address {addr}: {e}")))?;
        let max = options.max_requests_per_client;
        workers.push(tokio::spawn(async move {
            let mut sent = 0;
            while Instant::now() < deadline && sent < max {
                sent += 1;
                requests.fetch_add(1, Ordering::Relaxed);
                let problem = match client.get(uri.clone()).await {
                    Err(e) => Some(format!("transport: {e}")),
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.into_body().collect().await {
                            Err(e) => Some(format!("body: {e}")),
                            Ok(body) => {
                                let body = body.to_bytes();
                                if status != http::StatusCode::OK {
                                    Some(format!(
                                        "status {status}: {}",
                                        String::from_utf8_lossy(&body)
                                    ))
                                } else if !body.windows(7).any(|w| w == b"x-hello") {
                                    Some("the upstream did not see x-hello".to_owned())
                                } else {
                                    None
                                }
                            }
                        }
                    }
                };
                if let Some(p) = problem {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_failure.lock().get_or_insert(p);
                }
            }
        }));
    }

    // Replace the file `swaps` times, spread over the run; wait for each swap to be served.
    let mut swap_times = Vec::new();
    let interval = options.duration / (options.swaps as u32 + 1);
    for i in 0..options.swaps {
        tokio::time::sleep(interval).await;
        let before = swaps(&proxy);
        let started = Instant::now();
        write_atomically(&plugin_path, if i % 2 == 0 { &v2 } else { &v1 })?;
        while swaps(&proxy) == before && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        swap_times.push(started.elapsed());
    }
    for w in workers {
        let _ = w.await;
    }
    let report = Report {
        requests: requests.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        swaps: swaps(&proxy),
        swap_times,
        first_failure: first_failure.lock().clone(),
    };
    proxy.shutdown();
    let _ = proxy.wait().await;
    Ok(report)
}
