//! `weft inject` as a process (stdin, `-o`, exit codes) and `deploy/kubernetes/bootstrap.sh`
//! driving the real `weft ca init`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use weft_inject::documents;
use weft_inject::strict::from_value;

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn inject_reads_stdin_and_writes_stdout_or_a_file() {
    let source = repo().join("deploy/kubernetes/example/app.yaml");
    let want = std::fs::read_to_string(repo().join("deploy/kubernetes/example/app.injected.yaml"))
        .expect("injected example");
    let mut child = weft()
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&std::fs::read(&source).expect("source"))
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.yaml");
    let out = weft()
        .args(["inject", "-f"])
        .arg(&source)
        .arg("-o")
        .arg(&file)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file).expect("output file"), want);
}

#[test]
fn inject_errors_name_the_file_and_document_and_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, imagee: x}]}\n",
    )
    .expect("write");
    let out = weft()
        .args(["inject", "-f"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing half-written");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "bad.yaml: document 2 (line 5, Pod p): spec.containers[0].imagee: unknown field"
        ),
        "{err}"
    );
    let out = weft()
        .args(["inject", "-f", "/nonexistent/in.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/in.yaml"));
}

#[test]
fn bootstrap_prints_the_ca_and_per_namespace_secrets() {
    let out = Command::new("sh")
        .arg(repo().join("deploy/kubernetes/bootstrap.sh"))
        .args(["demo", "shop"])
        .env("WEFT", env!("CARGO_BIN_EXE_weft"))
        .output()
        .expect("run bootstrap.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut secrets = Vec::new();
    let mut config_maps = Vec::new();
    for doc in documents::split(&text) {
        let v = doc.parse().expect("yaml").expect("a document");
        match v["kind"].as_str() {
            Some("Secret") => secrets.push(from_value::<Secret>(&v).expect("typed Secret")),
            Some("ConfigMap") => {
                config_maps.push(from_value::<ConfigMap>(&v).expect("typed ConfigMap"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let find = |name: &str, ns: &str| {
        secrets
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(name)
                    && s.metadata.namespace.as_deref() == Some(ns)
            })
            .and_then(|s| s.data.clone())
            .unwrap_or_else(|| panic!("no Secret {ns}/{name}"))
    };
    // The CA Secret is a CA directory `weft ca serve` can load.
    let dir = tempfile::tempdir().expect("tempdir");
    for (file, bytes) in find("weft-ca", "weft-system") {
        std::fs::write(dir.path().join(file), bytes.0).expect("write");
    }
    let ca = weft_ca::Ca::load(dir.path()).expect("the CA loads");
    // Each namespace's token is in the CA's token file, limited to that namespace.
    let tokens_file = dir.path().join("tokens");
    let tokens = find("weft-ca-tokens", "weft-system");
    std::fs::write(&tokens_file, &tokens["tokens"].0).expect("write");
    let tokens = weft_ca::server::load_tokens(&tokens_file).expect("token file loads");
    for ns in ["demo", "shop"] {
        let token =
            String::from_utf8(find("weft-bootstrap-token", ns)["token"].0.clone()).expect("utf-8");
        let entry = tokens
            .iter()
            .find(|t| t.token == token)
            .expect("token known to the CA");
        assert_eq!(entry.pattern, format!("spiffe://cluster.local/ns/{ns}/*"));
        let root = config_maps
            .iter()
            .find(|c| c.metadata.namespace.as_deref() == Some(ns))
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get("root-cert.pem"))
            .expect("weft-ca-root");
        assert!(ca.bundle_pem().contains(root.trim()), "{ns}: the CA's root");
    }
}

/// The CA Deployment's command line in deploy/kubernetes/ca.yaml, run for real: its mount paths
/// point at a CA directory and token file from `weft ca init`, and it listens on 127.0.0.1:0.
#[test]
fn the_ca_deployment_command_line_serves() {
    use k8s_openapi::api::apps::v1::Deployment;
    use std::io::BufRead;

    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/ca.yaml")).expect("ca.yaml");
    let deployment: Deployment = documents::split(&text)
        .iter()
        .filter_map(|d| d.parse().expect("yaml"))
        .find(|v| v["kind"] == "Deployment")
        .map(|v| from_value(&v).expect("typed"))
        .expect("a Deployment");
    let spec = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let container = &spec.containers[0];
    assert_eq!(container.command.as_deref(), Some(&["weft".to_owned()][..]));
    let dir = tempfile::tempdir().expect("tempdir");
    let mounts: Vec<(String, String)> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.mount_path.clone(),
                dir.path().join(&m.name).display().to_string(),
            )
        })
        .collect();
    let status = weft()
        .args(["ca", "init", "--dir"])
        .arg(dir.path().join("ca"))
        .output()
        .expect("ca init");
    assert!(status.status.success());
    std::fs::create_dir_all(dir.path().join("tokens")).expect("mkdir");
    std::fs::write(
        dir.path().join("tokens/tokens"),
        "0123456789abcdef0123 spiffe://cluster.local/ns/demo/*\n",
    )
    .expect("tokens");
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|a| {
            let mut a = a.clone();
            for (mount, local) in &mounts {
                a = a.replace(mount.as_str(), local);
            }
            if a.starts_with("0.0.0.0:") {
                a = "127.0.0.1:0".to_owned();
            }
            a
        })
        .collect();
    let mut child = weft()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    child.kill().expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert!(
        line.contains("serving on https://127.0.0.1:"),
        "{line}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn skipped_workloads_are_reported_on_stderr_and_passed_through() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: x, annotations: {sidecar.weft.dev/inject: \"false\"}}\nspec: {containers: [{name: a, image: b}]}\n";
    let mut child = weft()
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), input);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "<stdin>: document 1 (line 1, Pod x): not injected: annotation sidecar.weft.dev/inject is `false`"
    );
}

/// Every `weft-init` container `weft inject` writes (in the goldens and the deployed example)
/// is a command line the real `weft iptables` accepts: run with `--dry-run` it prints rules.
#[test]
fn injected_capture_command_lines_are_accepted_by_weft_iptables() {
    use k8s_openapi::api::core::v1::Container;

    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(repo().join("tests/fixtures/inject"))
            .expect("fixtures")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.to_string_lossy().ends_with(".golden.yaml"))
            .collect();
    files.push(repo().join("deploy/kubernetes/example/app.injected.yaml"));
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in documents::split(&text) {
            let Some(v) = doc.parse().expect("yaml") else {
                continue;
            };
            // Every init container named weft-init, wherever the pod template is.
            let mut stack = vec![&v];
            while let Some(v) = stack.pop() {
                match v {
                    serde_json::Value::Object(m) => {
                        if m.get("name").and_then(|n| n.as_str()) == Some("weft-init") {
                            let c: Container = from_value(v).expect("container");
                            let mut cmd = weft();
                            cmd.args(c.args.iter().flatten()).arg("--dry-run");
                            let out = cmd.output().expect("run weft iptables");
                            assert!(
                                out.status.success() && !out.stdout.is_empty(),
                                "{}: {:?}: {}",
                                file.display(),
                                c.args,
                                String::from_utf8_lossy(&out.stderr)
                            );
                            checked += 1;
                        }
                        stack.extend(m.values());
                    }
                    serde_json::Value::Array(a) => stack.extend(a),
                    _ => {}
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} weft-init containers found");
}
