//! The capture rules as `iptables-restore` input, generated from the options (pure: no
//! process is run here, so the rules are unit-tested against golden files).
//!
//! Istio's model (`istio-iptables`, REDIRECT mode), with `WEFT_*` chains in the `nat` table:
//!
//! ```text
//! PREROUTING -p tcp ─► WEFT_INBOUND ─► (excluded / own ports: RETURN) ─► WEFT_IN_REDIRECT ─► :15006
//! OUTPUT     -p tcp ─► WEFT_OUTPUT  ─► (proxy uid/gid, loopback, excluded: RETURN) ─► WEFT_REDIRECT ─► :15001
//! ```

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

/// The chains we own; nothing else is ever touched except one jump each from PREROUTING and
/// OUTPUT.
pub const CHAINS: [&str; 4] = [
    "WEFT_INBOUND",
    "WEFT_REDIRECT",
    "WEFT_IN_REDIRECT",
    "WEFT_OUTPUT",
];

/// The jumps from the built-in chains into ours: (built-in chain, rule spec).
pub const JUMPS: [(&str, &str); 2] = [
    ("PREROUTING", "-p tcp -j WEFT_INBOUND"),
    ("OUTPUT", "-p tcp -j WEFT_OUTPUT"),
];

/// Weft's own ports, never captured inbound: admin, outbound and inbound capture, merged
/// metrics, health, Prometheus (Istio's 15000, 15001, 15006, 15020, 15021, 15090).
pub const OWN_PORTS: [u16; 6] = [15000, 15001, 15006, 15020, 15021, 15090];

/// Ports or CIDRs: every one (`*`) or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<T> {
    /// `*`.
    All,
    /// Only these (empty: none).
    Only(Vec<T>),
}

/// What `weft iptables` captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Outbound connections are redirected here (Istio `-p`, 15001).
    pub proxy_port: u16,
    /// Inbound connections are redirected here (Istio `-z`, 15006).
    pub inbound_capture_port: u16,
    /// Connections opened by these users are never captured (Istio `-u`, 1337).
    pub proxy_uids: Vec<u32>,
    /// … nor by these groups (Istio `-g`, 1337).
    pub proxy_gids: Vec<u32>,
    /// Inbound ports captured (Istio `-b`; `*` by default).
    pub inbound_ports: Selection<u16>,
    /// Inbound ports never captured with `*` (Istio `-d`), besides [`OWN_PORTS`].
    pub inbound_ports_exclude: Vec<u16>,
    /// Outbound destinations captured (Istio `-i`; `*` by default).
    pub outbound_ranges: Selection<IpNet>,
    /// Outbound destinations never captured (Istio `-x`).
    pub outbound_ranges_exclude: Vec<IpNet>,
    /// Outbound ports always captured, whatever the destination (Istio `-q`).
    pub outbound_ports_include: Vec<u16>,
    /// Outbound ports never captured (Istio `-o`).
    pub outbound_ports_exclude: Vec<u16>,
    /// Interfaces whose traffic is never captured (Istio `-c`).
    pub exclude_interfaces: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            proxy_port: 15001,
            inbound_capture_port: 15006,
            proxy_uids: vec![1337],
            proxy_gids: vec![1337],
            inbound_ports: Selection::All,
            inbound_ports_exclude: Vec::new(),
            outbound_ranges: Selection::All,
            outbound_ranges_exclude: Vec::new(),
            outbound_ports_include: Vec::new(),
            outbound_ports_exclude: Vec::new(),
            exclude_interfaces: Vec::new(),
        }
    }
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl Family {
    /// The command that applies rules of this family.
    pub fn restore_command(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The command that edits rules of this family.
    pub fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The loopback address the application uses (`127.0.0.1/32`, `::1/128`).
    fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// The source Istio's inbound passthrough binds to (`127.0.0.6/32`, `::6/128`): such
    /// connections are the proxy delivering to the application, never captured again.
    fn passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }

    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net.addr()),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

fn dedup_ports(ports: impl IntoIterator<Item = u16>) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    for p in ports {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The `nat` table rules of `family` as `iptables-restore --noflush` input. Declaring our
/// chains flushes them when they exist, so applying the same input again leaves the same
/// rules; `with_jumps` adds the jumps from PREROUTING and OUTPUT (left out when they are
/// already there, so they are never doubled).
pub fn restore_input(opts: &Options, family: Family, with_jumps: bool) -> String {
    let mut out = String::new();
    let mut rule = |line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    rule("*nat".into());
    for chain in CHAINS {
        rule(format!(":{chain} - [0:0]"));
    }
    rule(format!(
        "-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        opts.proxy_port
    ));
    rule(format!(
        "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        opts.inbound_capture_port
    ));

    // Inbound.
    for interface in &opts.exclude_interfaces {
        rule(format!("-A WEFT_INBOUND -i {interface} -j RETURN"));
    }
    match &opts.inbound_ports {
        Selection::All => {
            let excluded = dedup_ports(
                OWN_PORTS
                    .iter()
                    .copied()
                    .chain(opts.inbound_ports_exclude.iter().copied()),
            );
            for port in excluded {
                rule(format!("-A WEFT_INBOUND -p tcp --dport {port} -j RETURN"));
            }
            rule("-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT".into());
        }
        Selection::Only(ports) => {
            for port in dedup_ports(ports.iter().copied()) {
                if OWN_PORTS.contains(&port) {
                    continue;
                }
                rule(format!(
                    "-A WEFT_INBOUND -p tcp --dport {port} -j WEFT_IN_REDIRECT"
                ));
            }
        }
    }

    // Outbound.
    for interface in &opts.exclude_interfaces {
        rule(format!("-A WEFT_OUTPUT -o {interface} -j RETURN"));
    }
    for port in dedup_ports(opts.outbound_ports_exclude.iter().copied()) {
        rule(format!("-A WEFT_OUTPUT -p tcp --dport {port} -j RETURN"));
    }
    let local = family.localhost();
    // The inbound passthrough's own connections to the application.
    rule(format!(
        "-A WEFT_OUTPUT -o lo -s {} -j RETURN",
        family.passthrough_source()
    ));
    // The proxy talking to its own pod's address over loopback is a call to a service of this
    // pod: it goes through inbound capture. Anyone else's loopback traffic is left alone; the
    // proxy's other connections are never captured again.
    for uid in &opts.proxy_uids {
        rule(format!(
            "-A WEFT_OUTPUT -o lo ! -d {local} -m owner --uid-owner {uid} -j WEFT_IN_REDIRECT"
        ));
        rule(format!(
            "-A WEFT_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN"
        ));
        rule(format!(
            "-A WEFT_OUTPUT -m owner --uid-owner {uid} -j RETURN"
        ));
    }
    for gid in &opts.proxy_gids {
        rule(format!(
            "-A WEFT_OUTPUT -o lo ! -d {local} -m owner --gid-owner {gid} -j WEFT_IN_REDIRECT"
        ));
        rule(format!(
            "-A WEFT_OUTPUT -o lo -m owner ! --gid-owner {gid} -j RETURN"
        ));
        rule(format!(
            "-A WEFT_OUTPUT -m owner --gid-owner {gid} -j RETURN"
        ));
    }
    rule(format!("-A WEFT_OUTPUT -d {local} -j RETURN"));
    for net in opts
        .outbound_ranges_exclude
        .iter()
        .filter(|n| family.holds(n))
    {
        rule(format!("-A WEFT_OUTPUT -d {net} -j RETURN"));
    }
    for port in dedup_ports(opts.outbound_ports_include.iter().copied()) {
        rule(format!(
            "-A WEFT_OUTPUT -p tcp --dport {port} -j WEFT_REDIRECT"
        ));
    }
    match &opts.outbound_ranges {
        Selection::All => rule("-A WEFT_OUTPUT -j WEFT_REDIRECT".into()),
        Selection::Only(nets) => {
            for net in nets.iter().filter(|n| family.holds(n)) {
                rule(format!("-A WEFT_OUTPUT -d {net} -j WEFT_REDIRECT"));
            }
        }
    }
    if with_jumps {
        for (chain, spec) in JUMPS {
            rule(format!("-A {chain} {spec}"));
        }
    }
    rule("COMMIT".into());
    out
}

/// Everything `--dry-run` prints: both families, each headed by the command that applies it.
pub fn dry_run(opts: &Options, families: &[Family]) -> String {
    let mut out = String::new();
    for family in families {
        let _ = writeln!(out, "# {} --noflush", family.restore_command());
        out.push_str(&restore_input(opts, *family, true));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/iptables/golden")
            .join(name);
        if std::env::var_os("WEFT_BLESS").is_some() {
            std::fs::write(&path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let expected =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            actual,
            expected,
            "{} differs (WEFT_BLESS=1 rewrites it)",
            path.display()
        );
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn defaults_capture_everything_but_the_proxy_and_its_ports() {
        golden(
            "default.txt",
            &dry_run(&Options::default(), &[Family::V4, Family::V6]),
        );
    }

    #[test]
    fn every_option() {
        let opts = Options {
            proxy_port: 16001,
            inbound_capture_port: 16006,
            proxy_uids: vec![2102],
            proxy_gids: vec![2103],
            inbound_ports: Selection::Only(vec![8080, 9090, 8080, 15021]),
            inbound_ports_exclude: vec![22],
            outbound_ranges: Selection::Only(vec![net("10.96.0.0/12"), net("fd00::/8")]),
            outbound_ranges_exclude: vec![net("169.254.169.254/32"), net("fe80::/10")],
            outbound_ports_include: vec![443],
            outbound_ports_exclude: vec![5432, 5432],
            exclude_interfaces: vec!["eth9".into()],
        };
        golden("options.txt", &dry_run(&opts, &[Family::V4, Family::V6]));
    }

    #[test]
    fn inbound_star_excludes_the_listed_and_own_ports_once() {
        let opts = Options {
            inbound_ports_exclude: vec![22, 15090, 22],
            ..Options::default()
        };
        let rules = restore_input(&opts, Family::V4, false);
        for port in [22, 15000, 15001, 15006, 15020, 15021, 15090] {
            let line = format!("-A WEFT_INBOUND -p tcp --dport {port} -j RETURN\n");
            assert_eq!(rules.matches(&line).count(), 1, "{port} in\n{rules}");
        }
        assert!(!rules.contains("-A PREROUTING"), "{rules}");
    }

    #[test]
    fn the_proxy_uid_returns_before_any_redirect() {
        let rules = restore_input(&Options::default(), Family::V4, true);
        let uid_return = rules
            .find("-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN")
            .unwrap_or(usize::MAX);
        let redirect = rules.find("-A WEFT_OUTPUT -j WEFT_REDIRECT").unwrap_or(0);
        assert!(uid_return < redirect, "{rules}");
    }
}
