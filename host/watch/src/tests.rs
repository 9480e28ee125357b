//! Every test waits on the channel; the timeout only turns a hang into a failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc::Receiver;

use super::*;

/// Long enough that two writes issued back to back land in one window even on a busy machine.
const DEBOUNCE: Duration = Duration::from_millis(200);
const GUARD: Duration = Duration::from_secs(10);

async fn next(rx: &mut Receiver<Changed>) -> Changed {
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("a change is reported within 10 s")
        .expect("the watcher is running")
}

fn paths(list: &[&Path]) -> Vec<PathBuf> {
    list.iter().map(|p| p.to_path_buf()).collect()
}

fn write(path: &Path, data: &str) {
    std::fs::write(path, data).expect("write");
}

/// Writes a temporary file next to `path` and renames it over `path`.
fn replace(path: &Path, data: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn file_written_in_place() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("a.yaml");
    write(&a, "one");
    let (_w, mut rx) = Watcher::new([a.clone()], DEBOUNCE).expect("watch");
    write(&a, "two");
    assert_eq!(next(&mut rx).await.paths, paths(&[&a]));
}

#[tokio::test]
async fn file_replaced_by_rename() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("a.yaml");
    write(&a, "one");
    let (_w, mut rx) = Watcher::new([a.clone()], DEBOUNCE).expect("watch");
    replace(&a, "two");
    let changed = next(&mut rx).await;
    assert_eq!(
        changed.paths,
        paths(&[&a]),
        "the temporary file is not reported"
    );
    assert!(changed.contains(&a));
}

#[tokio::test]
async fn file_created_after_the_watcher_started() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("later.pem");
    let (_w, mut rx) = Watcher::new([a.clone()], DEBOUNCE).expect("watch");
    write(&a, "new");
    assert_eq!(next(&mut rx).await.paths, paths(&[&a]));
    // ... and deleted.
    std::fs::remove_file(&a).expect("rm");
    assert_eq!(next(&mut rx).await.paths, paths(&[&a]));
}

/// The layout of a Kubernetes ConfigMap or Secret volume: `config.yaml -> ..data/config.yaml`,
/// `..data -> ..<timestamp>`; an update renames a new `..data` link over the old one.
#[cfg(unix)]
#[tokio::test]
async fn symlink_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::create_dir(d.join("..2024_01")).expect("mkdir");
    write(&d.join("..2024_01/config.yaml"), "version: 1");
    symlink("..2024_01", d.join("..data")).expect("ln");
    symlink("..data/config.yaml", d.join("config.yaml")).expect("ln");
    let config = d.join("config.yaml");
    let (_w, mut rx) = Watcher::new([config.clone()], DEBOUNCE).expect("watch");

    std::fs::create_dir(d.join("..2024_02")).expect("mkdir");
    write(&d.join("..2024_02/config.yaml"), "version: 2");
    symlink("..2024_02", d.join("..data_tmp")).expect("ln");
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
    std::fs::remove_dir_all(d.join("..2024_01")).expect("rm old");

    assert_eq!(next(&mut rx).await.paths, paths(&[&config]));
    assert_eq!(
        std::fs::read_to_string(&config).expect("read"),
        "version: 2"
    );
}

#[tokio::test]
async fn quick_writes_are_one_change() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    write(&a, "0");
    write(&b, "0");
    let (_w, mut rx) = Watcher::new([a.clone(), b.clone()], DEBOUNCE).expect("watch");
    write(&a, "1");
    replace(&a, "2");
    write(&a, "3");
    assert_eq!(next(&mut rx).await.paths, paths(&[&a]));
    // Had any of the writes been reported a second time, that report would come before this.
    write(&b, "1");
    assert_eq!(next(&mut rx).await.paths, paths(&[&b]));
}

#[tokio::test]
async fn files_changed_together_are_reported_together() {
    let dir = tempfile::tempdir().expect("tmp");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    write(&cert, "c0");
    write(&key, "k0");
    let (_w, mut rx) = Watcher::new([cert.clone(), key.clone()], DEBOUNCE).expect("watch");
    replace(&key, "k1");
    replace(&cert, "c1");
    assert_eq!(next(&mut rx).await.paths, paths(&[&cert, &key]));
}

#[tokio::test]
async fn reads_touches_and_other_files_are_not_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    write(&a, "same");
    write(&b, "0");
    let (_w, mut rx) = Watcher::new([a.clone(), b.clone()], DEBOUNCE).expect("watch");
    // Same content rewritten, read, permissions changed, an unwatched file written.
    write(&a, "same");
    std::fs::read(&a).expect("read");
    let perms = std::fs::metadata(&a).expect("meta").permissions();
    std::fs::set_permissions(&a, perms).expect("chmod");
    write(&dir.path().join("unrelated.yaml"), "x");
    write(&b, "1");
    assert_eq!(next(&mut rx).await.paths, paths(&[&b]));
}

#[tokio::test]
async fn directory_of_wasm_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let x = d.join("x.wasm");
    write(&x, "x0");
    let (_w, mut rx) = Watcher::new([WatchTarget::dir(d, Some("wasm"))], DEBOUNCE).expect("watch");
    // Another extension, a hidden file and a directory are not reported; a new .wasm is.
    write(&d.join("notes.txt"), "n");
    write(&d.join(".hidden.wasm"), "h");
    std::fs::create_dir(d.join("sub.wasm")).expect("mkdir");
    let y = d.join("y.wasm");
    write(&y, "y0");
    assert_eq!(next(&mut rx).await.paths, paths(&[&y]));
    replace(&x, "x1");
    assert_eq!(next(&mut rx).await.paths, paths(&[&x]));
    std::fs::remove_file(&y).expect("rm");
    assert_eq!(next(&mut rx).await.paths, paths(&[&y]));
}

#[tokio::test]
async fn set_targets_moves_the_watch() {
    let one = tempfile::tempdir().expect("tmp");
    let two = tempfile::tempdir().expect("tmp");
    let a = one.path().join("a.yaml");
    let b = two.path().join("b.yaml");
    write(&a, "0");
    write(&b, "0");
    let (mut w, mut rx) = Watcher::new([a.clone()], DEBOUNCE).expect("watch");
    // A directory that does not exist is refused and nothing changes.
    let missing = one.path().join("missing/c.yaml");
    let err = w
        .set_targets([b.clone(), missing])
        .expect_err("missing directory");
    assert!(matches!(err, WatchError::Dir { .. }), "{err}");
    assert_eq!(w.targets(), vec![WatchTarget::File(a.clone())]);

    w.set_targets([b.clone()]).expect("retarget");
    assert_eq!(w.targets(), vec![WatchTarget::File(b.clone())]);
    write(&a, "1");
    write(&b, "1");
    assert_eq!(next(&mut rx).await.paths, paths(&[&b]));
}

#[tokio::test]
async fn missing_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let err = Watcher::new([dir.path().join("nope/a.yaml")], DEBOUNCE).expect_err("missing");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn dropping_the_watcher_closes_the_channel() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("a.yaml");
    let (w, mut rx) = Watcher::new([a.clone()], DEBOUNCE).expect("watch");
    drop(w);
    let end = tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("the channel closes within 10 s");
    assert_eq!(end, None);
}
