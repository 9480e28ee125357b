//! The `weft` command line: validate, version, and a real process drained by SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

#[test]
fn version_prints_the_crate_version() {
    let out = weft().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("weft {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn validate_accepts_every_example_config() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    // Configs directly in examples/ and one level down (examples/all-plugins/weft.yaml is
    // also the embedded demo).
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            paths.push(path);
        }
    }
    for path in paths {
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = weft().args(["validate", "-c"]).arg(&path).output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "examples/ has configs");
}

#[test]
fn validate_load_plugins_refuses_a_plugin_that_does_not_load() {
    // The demo's shipped plugins all load.
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/all-plugins/weft.yaml");
    let out = weft()
        .args(["validate", "--load-plugins", "-c"])
        .arg(&demo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("plugins loaded"));
    // A file that is not WebAssembly: valid configuration, but the plugin does not load.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"not wasm").unwrap();
    let path = dir.path().join("weft.yaml");
    std::fs::write(
        &path,
        "plugins:\n  - name: broken\n    file: broken.wasm\nlisteners:\n  - name: l\n    address: 127.0.0.1:1\n    plugins: [{ name: broken }]\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - direct_response: { status: 200 }\nclusters: []\n",
    )
    .unwrap();
    let plain = weft().args(["validate", "-c"]).arg(&path).output().unwrap();
    assert!(
        plain.status.success(),
        "without --load-plugins the configuration is valid: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let out = weft()
        .args(["validate", "--load-plugins", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken") && err.contains("not a WebAssembly module"),
        "{err}"
    );
}

#[test]
fn validate_prints_every_error_with_file_line_column_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - name: l\n    address: 127.0.0.1:1\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n          - route: { cluster: missing }\n          - match: { path: { regex: \"(\" } }\n            direct_response: { status: 200 }\nclusters: []\n",
    )
    .unwrap();
    let out = weft().args(["validate", "-c"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(err.contains("2 configuration errors"), "{err}");
    assert!(
        err.contains(&format!("{file}:8:"))
            && err.contains(
                "listeners[0].virtual_hosts[0].routes[0].route.cluster: unknown cluster `missing`"
            ),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:9:"))
            && err.contains("routes[1].match.path.regex: invalid regular expression"),
        "{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "listeners: 7\n").unwrap();
    let out = weft().args(["run", "-c"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml:1:"));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.yaml");
    std::fs::write(
        &path,
        "admin: { address: 127.0.0.1:0 }\naccess_log: { path: \"off\" }\nlisteners:\n  - name: main\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes: [{ direct_response: { status: 200, body: up } }]\n",
    )
    .unwrap();
    let mut child = weft()
        .args(["run", "--log-format", "json", "-c"])
        .arg(&path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The log lines arrive on a channel (a reader thread), so that waiting for one can have a
    // failure guard instead of blocking forever on a silent child.
    let stderr = child.stderr.take().unwrap();
    let (line_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    // Ready: the `listening` line names the address.
    let addr = loop {
        let Ok(line) = lines.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!("weft did not log its listening address");
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "listening"
            && let Some(a) = v["fields"]["address"].as_str()
        {
            break a.to_owned();
        }
    };
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    let pid = child.id().to_string();
    // The exit arrives on a channel too (a thread blocked in `wait`).
    let (exit_tx, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = match exited.recv_timeout(Duration::from_secs(20)) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("weft did not exit after SIGTERM");
        }
    };
    assert_eq!(status.code(), Some(0));
    // Everything logged until the pipe closed.
    let rest: Vec<String> = lines.iter().collect();
    assert!(rest.iter().any(|l| l.contains("drained")), "{rest:?}");
}

#[test]
fn ca_init_intermediate_and_issue_write_a_verifiable_chain() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let inter = dir.path().join("intermediate");
    let out = dir.path().join("web");
    let ok = |args: &[&std::ffi::OsStr]| {
        let o = weft().arg("ca").args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(&[
        "init".as_ref(),
        "--dir".as_ref(),
        root.as_os_str(),
        "--trust-domain".as_ref(),
        "example.org".as_ref(),
    ]);
    ok(&[
        "init".as_ref(),
        "--dir".as_ref(),
        inter.as_os_str(),
        "--root-dir".as_ref(),
        root.as_os_str(),
        "--ttl".as_ref(),
        "30d".as_ref(),
    ]);
    ok(&[
        "issue".as_ref(),
        "--ca-dir".as_ref(),
        inter.as_os_str(),
        "--spiffe-id".as_ref(),
        "spiffe://example.org/ns/prod/sa/web".as_ref(),
        "--ttl".as_ref(),
        "1h".as_ref(),
        "--out-dir".as_ref(),
        out.as_os_str(),
    ]);
    let chain = std::fs::read_to_string(out.join("cert.pem")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );
    assert_eq!(
        std::fs::read(out.join("bundle.pem")).unwrap(),
        std::fs::read(root.join("root-cert.pem")).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    for key in [root.join("ca-key.pem"), out.join("key.pem")] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    // Outside the CA's trust domain: refused with a clear message.
    let o = weft()
        .args(["ca", "issue", "--ca-dir"])
        .arg(&inter)
        .args(["--spiffe-id", "spiffe://evil.org/ns/a/sa/b", "--out-dir"])
        .arg(dir.path().join("evil"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("outside this CA's trust domain `example.org`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The signing endpoint starts from the same directory.
    let mut serve = weft()
        .args(["ca", "serve", "--listen", "127.0.0.1:0", "--ca-dir"])
        .arg(&inter)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("serving on https://127.0.0.1:"), "{line}");
    let _ = serve.kill();
    let _ = serve.wait();
}

#[test]
fn plugin_compile_writes_an_artifact_or_names_why_the_module_does_not_compile() {
    let module = weft_test_artifacts::HEADER_ADDER;
    // To a file, and through standard input and output (as the proxy's child compile runs it).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("header_adder.cwasm");
    let status = weft()
        .args(["plugin", "compile", module, "-o"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap().starts_with(b"\x7fELF"));
    let mut child = weft()
        .args(["plugin", "compile", "-", "--output", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = weft_test_artifacts::bytes(module);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let piped = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(piped.status.success());
    assert!(piped.stdout.starts_with(b"\x7fELF"));
    // Into the module cache (no --output): the deployment step.
    let cache = tempfile::tempdir().unwrap();
    let status = weft()
        .args(["plugin", "compile", module])
        .env("XDG_CACHE_HOME", cache.path())
        .status()
        .unwrap();
    assert!(status.success());
    let entries: Vec<_> = std::fs::read_dir(cache.path().join("weft/wasm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].ends_with(".cwasm"), "{entries:?}");
    // A module that does not compile: exit code 3 and the compiler's reason.
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\xff").unwrap();
    let out = weft()
        .args(["plugin", "compile", "-o", "-"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("malformed section id"), "{stderr}");
}

#[test]
fn a_runtime_with_a_child_compiler_runs_the_plugin_from_the_cache_file() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = |cache_dir: &str, compiler: &std::path::Path| {
        weft_wasm::WasmRuntime::new(weft_wasm::EngineOptions {
            cache_dir: Some(cache.path().join(cache_dir)),
            compiler: Some(compiler.into()),
            ..weft_wasm::EngineOptions::default()
        })
        .unwrap()
    };
    let bytes = weft_test_artifacts::bytes(weft_test_artifacts::HEADER_ADDER);
    let rt = runtime("child", std::path::Path::new(env!("CARGO_BIN_EXE_weft")));
    let (module, digest) = rt.compile(&bytes).unwrap();
    assert!(
        module
            .exports()
            .any(|e| e.name() == "proxy_on_request_headers")
    );
    let entry = std::fs::read_dir(cache.path().join("child"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&digest));
    assert!(entry.is_some(), "the child's artifact is in the cache");
    // The child's verdict on a module that does not compile is the load error.
    let err = rt.compile(b"\0asm\x01\0\0\0\xff").unwrap_err().to_string();
    assert!(
        err.starts_with("compile: ") && err.contains("malformed section id"),
        "{err}"
    );
    // A compiler that cannot run: compiled in this process instead.
    let missing = cache.path().join("no-such-weft");
    let rt = runtime("fallback", &missing);
    let (module, _) = rt.compile(&bytes).unwrap();
    assert!(
        module
            .exports()
            .any(|e| e.name() == "proxy_on_request_headers")
    );
}
