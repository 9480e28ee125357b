//! `weft iptables`: installs (or prints, or removes) the rules that send a pod's TCP traffic
//! through Weft, as Istio's `istio-iptables` does. [`rules`] generates them; this module
//! parses the flags and drives `iptables-restore` / `ip6tables-restore`.
//!
//! Applying is one atomic `iptables-restore --noflush` transaction per family: declaring our
//! `WEFT_*` chains flushes them, the rules are added again, and the two jumps from PREROUTING
//! and OUTPUT are added only when `iptables -C` says they are missing. Running it twice leaves
//! the same rules; nothing outside our chains is touched.

pub mod rules;

use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};

use clap::Args;
use ipnet::IpNet;

use rules::{CHAINS, Family, JUMPS, Options, Selection};

/// `weft iptables` flags; the short letters are `istio-iptables`'.
#[derive(Debug, Args)]
pub struct IptablesArgs {
    /// Port outbound connections are redirected to (Weft's outbound capture listener).
    #[arg(short = 'p', long, default_value_t = 15001)]
    proxy_port: u16,
    /// Port inbound connections are redirected to (Weft's inbound capture listener).
    #[arg(short = 'z', long, default_value_t = 15006)]
    inbound_capture_port: u16,
    /// User id(s) Weft runs as, comma-separated: their connections are never captured.
    #[arg(short = 'u', long, default_value = "1337", value_delimiter = ',')]
    proxy_uid: Vec<u32>,
    /// Group id(s) Weft runs as, comma-separated: their connections are never captured.
    #[arg(short = 'g', long, default_value = "1337", value_delimiter = ',')]
    proxy_gid: Vec<u32>,
    /// Inbound interception mode; only `REDIRECT` is implemented (Istio also has `TPROXY`).
    #[arg(short = 'm', long, default_value = "REDIRECT")]
    inbound_interception_mode: String,
    /// Inbound ports captured: `*` (all, the default), a comma-separated list, or empty (none).
    #[arg(short = 'b', long, default_value = "*")]
    inbound_ports: String,
    /// Inbound ports never captured (with `-b '*'`), comma-separated; Weft's own ports always are.
    #[arg(short = 'd', long, value_delimiter = ',')]
    inbound_ports_exclude: Vec<u16>,
    /// Outbound destinations captured: `*` (the default), comma-separated CIDRs, or empty.
    #[arg(short = 'i', long, default_value = "*")]
    outbound_ranges: String,
    /// Outbound destinations never captured, comma-separated CIDRs.
    #[arg(short = 'x', long, value_delimiter = ',')]
    outbound_ranges_exclude: Vec<IpNet>,
    /// Outbound ports always captured, whatever the destination, comma-separated.
    #[arg(short = 'q', long, value_delimiter = ',')]
    outbound_ports_include: Vec<u16>,
    /// Outbound ports never captured, comma-separated.
    #[arg(short = 'o', long, value_delimiter = ',')]
    outbound_ports_exclude: Vec<u16>,
    /// Interfaces whose traffic is never captured, comma-separated.
    #[arg(short = 'c', long, value_delimiter = ',')]
    exclude_interfaces: Vec<String>,
    /// IPv4 only: leave ip6tables alone (IPv4 and IPv6 by default).
    #[arg(long)]
    ipv4_only: bool,
    /// Print the rules (iptables-restore input) instead of applying them.
    #[arg(long)]
    dry_run: bool,
    /// Remove Weft's chains and jumps (with `--dry-run`: print the commands).
    #[arg(long)]
    cleanup: bool,
}

fn parse_selection<T: std::str::FromStr>(flag: &str, value: &str) -> Result<Selection<T>, String>
where
    T::Err: std::fmt::Display,
{
    let value = value.trim();
    if value == "*" {
        return Ok(Selection::All);
    }
    let mut items = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        items.push(item.parse().map_err(|e| format!("{flag}: `{item}`: {e}"))?);
    }
    Ok(Selection::Only(items))
}

impl IptablesArgs {
    fn options(&self) -> Result<Options, String> {
        if !self
            .inbound_interception_mode
            .eq_ignore_ascii_case("REDIRECT")
        {
            return Err(format!(
                "--inbound-interception-mode {}: unimplemented (only REDIRECT)",
                self.inbound_interception_mode
            ));
        }
        Ok(Options {
            proxy_port: self.proxy_port,
            inbound_capture_port: self.inbound_capture_port,
            proxy_uids: self.proxy_uid.clone(),
            proxy_gids: self.proxy_gid.clone(),
            inbound_ports: parse_selection("--inbound-ports", &self.inbound_ports)?,
            inbound_ports_exclude: self.inbound_ports_exclude.clone(),
            outbound_ranges: parse_selection("--outbound-ranges", &self.outbound_ranges)?,
            outbound_ranges_exclude: self.outbound_ranges_exclude.clone(),
            outbound_ports_include: self.outbound_ports_include.clone(),
            outbound_ports_exclude: self.outbound_ports_exclude.clone(),
            exclude_interfaces: self.exclude_interfaces.clone(),
        })
    }

    fn families(&self) -> Vec<Family> {
        if self.ipv4_only {
            vec![Family::V4]
        } else {
            vec![Family::V4, Family::V6]
        }
    }
}

/// Runs `weft iptables`.
pub fn main(args: IptablesArgs) -> ExitCode {
    let opts = match args.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("weft iptables: {e}");
            return ExitCode::FAILURE;
        }
    };
    let families = args.families();
    let result = match (args.cleanup, args.dry_run) {
        (false, true) => {
            print!("{}", rules::dry_run(&opts, &families));
            Ok(())
        }
        (true, true) => {
            for family in &families {
                for line in cleanup_commands(*family) {
                    println!("{}", line.join(" "));
                }
            }
            Ok(())
        }
        (true, false) => families.iter().try_for_each(|f| cleanup(*f)),
        (false, false) => families.iter().try_for_each(|f| apply(&opts, *f)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft iptables: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `program args`; `Ok(true)` when it exits 0, `Ok(false)` on another status.
fn run(program: &str, args: &[&str]) -> Result<bool, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e} (is the iptables package installed?)"))?;
    Ok(out.status.success())
}

fn jump_present(family: Family, chain: &str, spec: &str) -> Result<bool, String> {
    let mut args = vec!["-w", "-t", "nat", "-C", chain];
    args.extend(spec.split(' '));
    run(family.command(), &args)
}

/// Installs the rules of `family` in one transaction.
fn apply(opts: &Options, family: Family) -> Result<(), String> {
    let mut missing = String::new();
    for (chain, spec) in JUMPS {
        if !jump_present(family, chain, spec)? {
            missing.push_str(&format!("-A {chain} {spec}\n"));
        }
    }
    let mut input = rules::restore_input(opts, family, false);
    if let Some(at) = input.rfind("COMMIT") {
        input.insert_str(at, &missing);
    }
    let program = family.restore_command();
    let mut child = Command::new(program)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e} (is the iptables package installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} refused the rules: {}\nrules:\n{input}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The commands `--cleanup` runs for `family`, in order.
fn cleanup_commands(family: Family) -> Vec<Vec<String>> {
    let cmd = family.command().to_owned();
    let mut out = Vec::new();
    for (chain, spec) in JUMPS {
        let mut c = vec![
            cmd.clone(),
            "-t".into(),
            "nat".into(),
            "-D".into(),
            chain.into(),
        ];
        c.extend(spec.split(' ').map(str::to_owned));
        out.push(c);
    }
    for chain in CHAINS {
        out.push(vec![
            cmd.clone(),
            "-t".into(),
            "nat".into(),
            "-F".into(),
            chain.into(),
        ]);
    }
    for chain in CHAINS {
        out.push(vec![
            cmd.clone(),
            "-t".into(),
            "nat".into(),
            "-X".into(),
            chain.into(),
        ]);
    }
    out
}

/// Removes our jumps (every copy) and chains; what is already gone is skipped.
fn cleanup(family: Family) -> Result<(), String> {
    for (chain, spec) in JUMPS {
        // Bounded: a rule can only be there a few times.
        for _ in 0..16 {
            if !jump_present(family, chain, spec)? {
                break;
            }
            let mut args = vec!["-w", "-t", "nat", "-D", chain];
            args.extend(spec.split(' '));
            run(family.command(), &args)?;
        }
    }
    for op in ["-F", "-X"] {
        for chain in CHAINS {
            // A missing chain is not an error: cleanup is idempotent.
            run(family.command(), &["-w", "-t", "nat", op, chain])?;
        }
    }
    Ok(())
}
