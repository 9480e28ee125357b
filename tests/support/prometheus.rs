//! A real Prometheus (Debian's `prometheus` package; `scripts/test.sh` installs it) scraping
//! Weft admin servers, queried through its HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::get;

/// The Prometheus binary: `WEFT_PROMETHEUS`, else `prometheus` on `PATH`. Without one the test
/// fails with a clear message, unless `WEFT_SKIP_PROMETHEUS=1` (then `None`).
pub fn require_prometheus() -> Option<PathBuf> {
    let configured = std::env::var_os("WEFT_PROMETHEUS").map(PathBuf::from);
    let candidates = configured
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("prometheus"))
                .collect::<Vec<_>>()
        }));
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    if std::env::var("WEFT_SKIP_PROMETHEUS").is_ok_and(|v| v == "1") {
        println!("skipped: no prometheus");
        return None;
    }
    panic!(
        "prometheus not found: run scripts/test.sh (it installs Debian's `prometheus`), set \
         WEFT_PROMETHEUS, or WEFT_SKIP_PROMETHEUS=1 to skip"
    );
}

/// A Prometheus on an ephemeral port with its own storage, killed on drop.
pub struct TestPrometheus {
    child: Child,
    /// Its HTTP address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s` percent-encoded for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl TestPrometheus {
    /// Starts `binary` scraping `/stats/prometheus` of each `(job, admin address)` every second.
    pub async fn start(binary: &std::path::Path, targets: &[(&str, SocketAddr)]) -> TestPrometheus {
        let mut dir = tempfile::tempdir().expect("tempdir");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: /stats/prometheus\n    static_configs: [{{ targets: [\"{addr}\"] }}]\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        // Prometheus cannot report a port it picked itself: take a free one, retry on a race.
        let log_path = dir.path().join("prometheus.log");
        let mut log = String::new();
        for _ in 0..3 {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port");
            let log_file = std::fs::File::create(&log_path).expect("log");
            let child = Command::new(binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .expect("prometheus starts");
            let mut p = TestPrometheus { child, addr, dir };
            if p.wait_ready().await {
                return p;
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
            log = p.log();
            if !log.contains("address already in use") {
                break;
            }
            dir = std::mem::replace(&mut p.dir, tempfile::tempdir().expect("tempdir"));
        }
        panic!("prometheus did not become ready:\n{log}");
    }

    /// `/-/ready` answers 200 (30 s at most; false if the process exits first).
    async fn wait_ready(&mut self) -> bool {
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(self.addr),
            )
            .await
            {
                drop(r);
                let resp = get(&format!("http://{}/-/ready", self.addr)).await;
                if resp.status == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Prometheus's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits until every target reports `health: up` (bounded: 30 s), else panics with the
    /// targets and the log.
    pub async fn wait_targets_up(&self, n: usize) {
        let mut last = Value::Null;
        for _ in 0..300 {
            let r = get(&format!("http://{}/api/v1/targets", self.addr)).await;
            last = r.json();
            let active = last["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if active.len() == n && active.iter().all(|t| t["health"] == "up") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("targets not up: {last}\n{}", self.log());
    }

    /// The `data.result` of an instant query (panics when the query is refused).
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let r = get(&format!(
            "http://{}/api/v1/query?query={}",
            self.addr,
            encode(promql)
        ))
        .await;
        let j = r.json();
        assert_eq!(j["status"], "success", "{promql}: {j}");
        j["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `promql` until `check` accepts its result (bounded: 30 s); returns the last result.
    pub async fn query_until(
        &self,
        promql: &str,
        mut check: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut result = Vec::new();
        for _ in 0..300 {
            result = self.query(promql).await;
            if check(&result) {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{promql} never matched; last result: {}\n{}",
            Value::Array(result),
            self.log()
        );
    }
}

/// A sample's value as a number (`["<time>", "<value>"]`).
pub fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}
