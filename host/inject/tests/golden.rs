//! Golden manifests: every `tests/fixtures/inject/*.in.yaml` is injected and compared with its
//! `*.golden.yaml` (`WEFT_UPDATE_GOLDEN=1` rewrites them); every golden is injected again and
//! must come back unchanged.
#![expect(
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail loudly on unexpected input"
)]

use std::path::{Path, PathBuf};

use weft_inject::{Options, Outcome, inject};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/inject")
}

fn inputs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    v.sort();
    v
}

/// Fixed options, so the goldens do not change with the crate version.
pub fn options() -> Options {
    Options {
        image: "registry.example/weft:1.0.0".to_owned(),
        version: "1.0.0".to_owned(),
        ..Options::default()
    }
}

#[test]
fn goldens_match_and_reinjection_changes_nothing() {
    let update = std::env::var_os("WEFT_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let inputs = inputs();
    assert!(inputs.len() >= 10, "fixtures missing: {inputs:?}");
    let mut failures = Vec::new();
    for input in inputs {
        let text = std::fs::read_to_string(&input).expect("read input");
        let out = inject(&text, &options())
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()))
            .yaml;
        let golden = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".golden.yaml"));
        if update {
            std::fs::write(&golden, &out).expect("write golden");
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (WEFT_UPDATE_GOLDEN=1 creates it)",
                golden.display()
            )
        });
        if out != want {
            failures.push(format!(
                "{}: output differs from the golden",
                input.display()
            ));
        }
        let again = inject(&out, &options())
            .unwrap_or_else(|e| panic!("{} re-injected: {e}", input.display()))
            .yaml;
        if again != out {
            failures.push(format!(
                "{}: injecting twice changed the output",
                input.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_workload_kind_is_injected_by_some_fixture() {
    let mut kinds = std::collections::BTreeSet::new();
    for input in inputs() {
        let text = std::fs::read_to_string(&input).expect("read input");
        let result = inject(&text, &options()).expect("inject");
        for (doc, outcome) in result.outcomes {
            if outcome == Outcome::Injected {
                let object = doc.object.unwrap_or_default();
                kinds.insert(object.split(' ').next().unwrap_or("").to_owned());
            }
        }
    }
    let want = [
        "CronJob",
        "DaemonSet",
        "Deployment",
        "Job",
        "List",
        "Pod",
        "StatefulSet",
    ];
    assert_eq!(kinds.iter().map(String::as_str).collect::<Vec<_>>(), want);
}
