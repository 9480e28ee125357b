//! HTTP/2 conformance: the `httpwg` test suite (`httpwg-cli`, the h2spec successor) run against
//! a Weft h2c listener in front of an echo upstream. Every test must pass except the known
//! failures listed here (and, with their reasons, in docs/h2-conformance.md); a known failure
//! that starts passing is reported so the list can shrink.
//!
//! The binary comes from `WEFT_HTTPWG`, else `$HOME/.cache/weft-tools/bin/httpwg`
//! (`scripts/h2-conformance.sh` installs it there; `scripts/test.sh` calls it).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use weft_e2e::TestProxy;
use weft_e2e::upstream::echo;

/// Tests of the suite that Weft fails, each with the reason in docs/h2-conformance.md.
const KNOWN_FAILURES: &[&str] = &[
    // A truncated HPACK block gets h2's PROTOCOL_ERROR instead of COMPRESSION_ERROR.
    "RFC 9113 :: 4. http frames :: invalid header block fragment",
    // h2 drops pseudo-header fields of a trailer section before hyper sees them.
    "RFC 9113 :: 8. expressing http semantics in http2 :: sends headers frame with pseudo header in trailer",
];

/// The minimum pass count (of the suite's 107 tests): 87 before the frame guard and the
/// request checks, 105 with them.
const MIN_PASSED: usize = 105;

fn httpwg_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WEFT_HTTPWG").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/weft-tools/bin/httpwg");
    p.is_file().then_some(p)
}

/// The suite's outcome: names of the passed and the failed tests.
struct Outcome {
    passed: BTreeSet<String>,
    failed: BTreeSet<String>,
}

fn parse(stderr: &str) -> Outcome {
    let mut passed = BTreeSet::new();
    let mut failed = BTreeSet::new();
    for line in stderr.lines() {
        if let Some(name) = line.split("Test passed: ").nth(1) {
            passed.insert(name.trim().to_owned());
        } else if let Some(name) = line.split("Test failed: ").nth(1) {
            failed.insert(name.trim().to_owned());
        }
    }
    Outcome { passed, failed }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpwg_suite_passes_against_the_h2c_listener() {
    let Some(bin) = httpwg_binary() else {
        if std::env::var("WEFT_SKIP_HTTPWG").is_ok_and(|v| v == "1") {
            println!("skipped: no httpwg");
            return;
        }
        panic!(
            "httpwg not found (WEFT_HTTPWG or ~/.cache/weft-tools/bin/httpwg): run \
             scripts/h2-conformance.sh (scripts/test.sh does), or set WEFT_SKIP_HTTPWG=1"
        );
    };
    let up = echo("up").await;
    let p = TestProxy::start(&format!(
        r#"
access_log: {{ path: "off" }}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#
    ))
    .await;
    let addr = p.addr("main");
    // One test at a time, each waiting up to 1 s for an expected frame: a loaded CI machine
    // must not turn a slow answer into a failure.
    let child = std::process::Command::new(&bin)
        .args(["-a", &addr.to_string(), "--frame-timeout", "1000"])
        .args(["--connect-timeout", "2000"])
        .env("SEQUENTIAL", "1")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("httpwg starts");
    let pid = child.id();
    let run = tokio::task::spawn_blocking(move || child.wait_with_output());
    let Ok(out) = tokio::time::timeout(Duration::from_secs(300), run).await else {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
        panic!("the suite did not finish within 300 s");
    };
    let out = out.expect("joined").expect("httpwg output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let outcome = parse(&stderr);
    let total = outcome.passed.len() + outcome.failed.len();
    println!(
        "httpwg: passed {} of {total}; failed: {:#?}",
        outcome.passed.len(),
        outcome.failed
    );
    assert!(total >= 100, "the suite ran: {stderr}");
    let known: BTreeSet<String> = KNOWN_FAILURES.iter().map(|s| (*s).to_owned()).collect();
    let unexpected: Vec<&String> = outcome.failed.difference(&known).collect();
    assert!(
        unexpected.is_empty(),
        "tests that are not known failures failed: {unexpected:#?}\n{stderr}"
    );
    let fixed: Vec<&String> = known.difference(&outcome.failed).collect();
    if !fixed.is_empty() {
        println!("known failures that now pass (remove them from KNOWN_FAILURES): {fixed:#?}");
    }
    // Everything that ran passed but the known failures. A case the runner reports neither way
    // (seen once on a loaded machine: 106 of 107 reported) is not counted against Weft, but the
    // floor still holds within one.
    assert!(
        outcome.passed.len() + known.len() >= total && outcome.passed.len() + 1 >= MIN_PASSED,
        "passed {} of {total}, want at least {MIN_PASSED}",
        outcome.passed.len()
    );
}
