//! The command lines, ports and user the injected containers use: the contract between
//! `weft inject` and the `weft iptables` / `weft run` subcommands, kept in one place.

/// The sidecar's fixed ports (Istio's numbers).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Outbound capture: every outbound TCP connection of the pod is redirected here.
    pub outbound: u16,
    /// Inbound capture: every inbound TCP connection of the pod is redirected here.
    pub inbound: u16,
    /// Admin (loopback only).
    pub admin: u16,
    /// Merged application + proxy metrics (the Prometheus scrape target, as Istio's).
    pub merged_metrics: u16,
    /// `/healthz/ready`.
    pub health: u16,
    /// The proxy's own metrics, `/stats/prometheus`.
    pub proxy_metrics: u16,
}

/// The ports `weft inject` writes into manifests.
pub const PORTS: Ports = Ports {
    outbound: 15001,
    inbound: 15006,
    admin: 15000,
    merged_metrics: 15020,
    health: 15021,
    proxy_metrics: 15090,
};

/// The path of the readiness endpoint on [`Ports::health`].
pub const READY_PATH: &str = "/healthz/ready";
/// The path Prometheus scrapes on [`Ports::merged_metrics`] and [`Ports::proxy_metrics`].
pub const METRICS_PATH: &str = "/stats/prometheus";

/// The proxy's user and group: `weft iptables` exempts this uid/gid's own connections from
/// capture, so the proxy must run as exactly these.
pub const PROXY_UID: i64 = 1337;
/// See [`PROXY_UID`].
pub const PROXY_GID: i64 = 1337;

/// The executable in the image.
pub const EXECUTABLE: &str = "weft";

/// Where the mesh configuration (the ConfigMap's `weft.yaml`) is mounted.
pub const CONFIG_DIR: &str = "/etc/weft";
/// The configuration file `weft run` reads.
pub const CONFIG_FILE: &str = "/etc/weft/weft.yaml";

/// What the capture init container is told: lists are comma-separated, `*` means all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaptureArgs {
    /// Outbound destinations captured (`*` = all).
    pub include_outbound_cidrs: String,
    /// Outbound destinations never captured.
    pub exclude_outbound_cidrs: String,
    /// Inbound ports captured (`*` = all).
    pub include_inbound_ports: String,
    /// Inbound ports never captured.
    pub exclude_inbound_ports: String,
    /// Outbound destination ports never captured.
    pub exclude_outbound_ports: String,
}

impl CaptureArgs {
    /// `weft iptables …`'s arguments (after the executable), with its long flag names (which
    /// are istio-iptables' long names: `-p`, `-z`, `-u`, `-g`, `-i`, `-x`, `-b`, `-d`, `-o`).
    /// A list left empty is not passed.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "iptables".to_owned(),
            "--proxy-uid".to_owned(),
            PROXY_UID.to_string(),
            "--proxy-gid".to_owned(),
            PROXY_GID.to_string(),
            "--proxy-port".to_owned(),
            PORTS.outbound.to_string(),
            "--inbound-capture-port".to_owned(),
            PORTS.inbound.to_string(),
        ];
        let lists = [
            ("--outbound-ranges", &self.include_outbound_cidrs),
            ("--outbound-ranges-exclude", &self.exclude_outbound_cidrs),
            ("--inbound-ports", &self.include_inbound_ports),
            ("--inbound-ports-exclude", &self.exclude_inbound_ports),
            ("--outbound-ports-exclude", &self.exclude_outbound_ports),
        ];
        for (flag, value) in lists {
            if !value.is_empty() {
                args.push(flag.to_owned());
                args.push(value.clone());
            }
        }
        args
    }
}

/// `weft run …`'s arguments (after the executable).
pub fn proxy_args() -> Vec<String> {
    ["run", "--config", CONFIG_FILE]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// Where the CA's root certificate (`root-cert.pem`) and the bootstrap token (`token`) are
/// mounted.
pub const CA_DIR: &str = "/var/run/weft/ca";
/// Where the certificate agent writes the workload's `cert.pem`, `key.pem` and `bundle.pem`.
pub const CERTS_DIR: &str = "/var/run/weft/certs";
/// A writable directory for plugin files.
pub const PLUGINS_DIR: &str = "/var/lib/weft/plugins";
