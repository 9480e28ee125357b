//! Builds proxy-wasm plugin crates for `wasm32-wasip1` (release) with a nested `cargo build`.
//!
//! Used from three places: build scripts that embed or list `.wasm` files (the `weft` binary
//! embeds the shipped plugins; `weft-test-artifacts` builds the guest fixtures), and the plugin
//! test harness, which builds the crate under test when its `cargo test` starts.
//!
//! The nested cargo gets a scrubbed environment: everything cargo hands a build script or a
//! test binary (`CARGO_ENCODED_RUSTFLAGS`, `CARGO_CFG_*`, `CARGO_PKG_*`, `OUT_DIR`, `TARGET`, …)
//! and every host-build override (`RUSTFLAGS`, wrappers, `CARGO_BUILD_*`, `CARGO_PROFILE_*`,
//! `CARGO_TARGET_*`, …) would otherwise leak into the wasm build.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// `CARGO_*` variables (exact names or prefixes ending in `_`) the nested cargo keeps: where
/// cargo lives, registry / network / auth settings, the jobserver, terminal settings.
const KEEP_CARGO_VARS: &[&str] = &[
    "CARGO_HOME",
    "CARGO_MAKEFLAGS",
    "CARGO_BUILD_JOBS",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTRY_",
    "CARGO_REGISTRIES_",
    "CARGO_TERM_",
];

/// Non-`CARGO_*` variables that must not reach the nested cargo. `RUSTC` and
/// `RUSTUP_TOOLCHAIN` are kept on purpose: same compiler as the outer build.
const REMOVE_VARS: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "NUM_JOBS",
    "OPT_LEVEL",
    "DEBUG",
    "PROFILE",
];

/// Why a plugin could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// `cargo` could not be started.
    Spawn {
        /// The cargo binary.
        cargo: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// `cargo build` failed; its output went to stderr.
    Failed {
        /// The command line, to reproduce it.
        command: String,
    },
    /// The build succeeded but the module is missing or not WebAssembly.
    NotWasm {
        /// Where it was expected.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifest could not be read or has no `[package] name`.
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Spawn { cargo, error } => {
                write!(f, "cannot run {}: {error}", cargo.display())
            }
            BuildError::Failed { command } => write!(
                f,
                "building the plugin for {WASM_TARGET} failed (cargo's output is above); \
                 reproduce with: {command} (needs `rustup target add {WASM_TARGET}`)"
            ),
            BuildError::NotWasm { path, reason } => write!(f, "{}: {reason}", path.display()),
            BuildError::Manifest { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for BuildError {}

/// One nested build: some packages of the workspace (or package) at `manifest`.
#[derive(Debug, Clone)]
pub struct WasmBuild {
    manifest: PathBuf,
    packages: Vec<String>,
    target_dir: PathBuf,
    locked: bool,
}

impl WasmBuild {
    /// Builds the packages of the manifest at `manifest` (all default members when no package
    /// is named) into `target_dir`.
    pub fn new(manifest: impl Into<PathBuf>, target_dir: impl Into<PathBuf>) -> WasmBuild {
        WasmBuild {
            manifest: manifest.into(),
            packages: Vec::new(),
            target_dir: target_dir.into(),
            locked: false,
        }
    }

    /// Adds a package to build (`-p name`).
    pub fn package(mut self, name: impl Into<String>) -> WasmBuild {
        self.packages.push(name.into());
        self
    }

    /// Passes `--locked` (the lockfile must not change).
    pub fn locked(mut self, locked: bool) -> WasmBuild {
        self.locked = locked;
        self
    }

    /// The `.wasm` path a package's cdylib is written to.
    pub fn output(&self, package: &str) -> PathBuf {
        self.target_dir
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")))
    }

    /// The command this build runs.
    pub fn command(&self) -> Command {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut cmd = Command::new(cargo);
        if let Some(dir) = self.manifest.parent() {
            cmd.current_dir(dir);
        }
        cmd.arg("build")
            .arg("--release")
            .arg("--target")
            .arg(WASM_TARGET)
            .arg("--manifest-path")
            .arg(&self.manifest);
        for p in &self.packages {
            cmd.arg("-p").arg(p);
        }
        if self.locked {
            cmd.arg("--locked");
        }
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if leaks(key) {
                cmd.env_remove(key);
            }
        }
        cmd.env("CARGO_TARGET_DIR", &self.target_dir);
        // Plugins ship small: no debug info in the module, whatever the workspace's release
        // profile keeps for native binaries.
        cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
        cmd
    }

    /// Runs the build. Cargo's output goes to stderr (stdout is a build script's directive
    /// channel). Returns the `.wasm` path of each named package, checked to be WebAssembly.
    pub fn run(&self) -> Result<Vec<PathBuf>, BuildError> {
        ensure_target();
        let mut cmd = self.command();
        cmd.stdout(Stdio::from(std::io::stderr()))
            .stderr(Stdio::inherit());
        let status = cmd.status().map_err(|error| BuildError::Spawn {
            cargo: PathBuf::from(cmd.get_program()),
            error,
        })?;
        if !status.success() {
            return Err(BuildError::Failed {
                command: format!(
                    "cargo build --release --target {WASM_TARGET} --manifest-path {}{}",
                    self.manifest.display(),
                    self.packages
                        .iter()
                        .map(|p| format!(" -p {p}"))
                        .collect::<String>()
                ),
            });
        }
        self.packages
            .iter()
            .map(|p| {
                let path = self.output(p);
                check_wasm(&path)?;
                Ok(path)
            })
            .collect()
    }
}

/// Installs the `wasm32-wasip1` standard library with rustup when the compiler lacks it.
///
/// `rust-toolchain.toml` names the target, but rustup applies that list only when it installs
/// the toolchain: on a machine that already had the pinned toolchain (a fresh CI or developer
/// machine often does), the first `cargo run` would fail for want of `core`. Best effort: no
/// rustup, or a failed install, leaves the error to the build itself (which names the fix).
fn ensure_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .stderr(Stdio::null())
        .output();
    let Ok(out) = libdir else { return };
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !dir.is_empty() && has_core(Path::new(&dir)) {
        return;
    }
    eprintln!(
        "weft-plugin-build: the {WASM_TARGET} target is not installed; running `rustup target add {WASM_TARGET}`"
    );
    // RUSTUP_TOOLCHAIN (set by rustup's cargo proxy) selects the same toolchain as this build.
    let _ = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit())
        .status();
}

/// Whether a target library directory holds the `core` crate.
fn has_core(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libcore-") && name.ends_with(".rlib")
        })
    })
}

fn leaks(key: &str) -> bool {
    if key.starts_with("CARGO_") {
        !KEEP_CARGO_VARS.iter().any(|keep| {
            if keep.ends_with('_') {
                key.starts_with(keep)
            } else {
                key == *keep
            }
        })
    } else {
        key.starts_with("__CARGO") || REMOVE_VARS.contains(&key)
    }
}

/// Checks that `path` holds a WebAssembly module.
pub fn check_wasm(path: &Path) -> Result<(), BuildError> {
    let bytes = fs::read(path).map_err(|e| BuildError::NotWasm {
        path: path.to_owned(),
        reason: format!("unreadable ({e}); is the crate-type [\"cdylib\"]?"),
    })?;
    if !bytes.starts_with(b"\0asm") {
        return Err(BuildError::NotWasm {
            path: path.to_owned(),
            reason: "not a WebAssembly module".into(),
        });
    }
    Ok(())
}

/// `name = "..."` of the `[package]` table of a manifest (a minimal TOML reader).
pub fn package_name(manifest: &Path) -> Result<String, BuildError> {
    let text = fs::read_to_string(manifest).map_err(|e| BuildError::Manifest {
        path: manifest.to_owned(),
        reason: e.to_string(),
    })?;
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            return Ok(value.trim().trim_matches('"').to_owned());
        }
    }
    Err(BuildError::Manifest {
        path: manifest.to_owned(),
        reason: "no [package] name".into(),
    })
}

/// The directory cargo builds the package at `manifest_dir` into by default: `target/` beside
/// the manifest of its workspace (the nearest ancestor manifest with a `[workspace]` table),
/// unless `CARGO_TARGET_DIR` says otherwise.
pub fn default_target_dir(manifest_dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let mut root = manifest_dir.to_owned();
    let mut dir = Some(manifest_dir);
    while let Some(d) = dir {
        let manifest = d.join("Cargo.toml");
        if fs::read_to_string(&manifest)
            .map(|t| t.lines().any(|l| l.trim() == "[workspace]"))
            .unwrap_or(false)
        {
            root = d.to_owned();
            break;
        }
        dir = d.parent();
    }
    root.join("target")
}

/// Builds the plugin crate at `manifest_dir` for `wasm32-wasip1` into
/// `<target dir>/weft-plugins` and returns its `.wasm` path. What the test harness calls.
pub fn build_crate(manifest_dir: &Path) -> Result<PathBuf, BuildError> {
    let manifest = manifest_dir.join("Cargo.toml");
    let name = package_name(&manifest)?;
    let target = default_target_dir(manifest_dir).join("weft-plugins");
    let mut paths = WasmBuild::new(manifest, target).package(name).run()?;
    paths.pop().ok_or_else(|| BuildError::Manifest {
        path: manifest_dir.to_owned(),
        reason: "no package was built".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_script_variables_do_not_leak() {
        for key in [
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_PKG_NAME",
            "CARGO_CFG_TARGET_OS",
            "CARGO_MANIFEST_DIR",
            "CARGO_TARGET_DIR",
            "CARGO_PROFILE_RELEASE_LTO",
            "RUSTFLAGS",
            "OUT_DIR",
            "__CARGO_FIX_PLZ",
        ] {
            assert!(leaks(key), "{key} must be removed");
        }
        for key in [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "CARGO_MAKEFLAGS",
            "PATH",
            "RUSTC",
        ] {
            assert!(!leaks(key), "{key} must be kept");
        }
    }

    #[test]
    fn output_path_uses_the_lib_name() {
        let b = WasmBuild::new("/w/Cargo.toml", "/t");
        assert_eq!(
            b.output("weft-authz"),
            PathBuf::from("/t/wasm32-wasip1/release/weft_authz.wasm")
        );
    }

    #[test]
    fn package_name_is_read_from_the_package_table() {
        let dir = std::env::temp_dir().join(format!("weft-plugin-build-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let manifest = dir.join("Cargo.toml");
        fs::write(
            &manifest,
            "[workspace]\nname = \"no\"\n[package]\nname = \"my-filter\"\n",
        )
        .expect("write");
        assert_eq!(package_name(&manifest).expect("name"), "my-filter");
        fs::write(&manifest, "[lib]\nname = \"x\"\n").expect("write");
        assert!(package_name(&manifest).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
