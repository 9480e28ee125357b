//! `weft ca init | issue | serve`: argument parsing only; the CA is the crate `weft_ca`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use weft_ca::{Ca, IssueRequest};
use weft_tls::creds::write_file;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// CA subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root CA, or with `--root-dir` an intermediate signed by an existing root.
    /// Writes ca-cert.pem, ca-key.pem (0600), root-cert.pem and cert-chain.pem.
    Init {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain (`cluster.local`); an intermediate inherits its root's.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Lifetime of the CA certificate.
        #[arg(long, value_parser = duration, default_value = "3650d")]
        ttl: Duration,
        /// Directory of an existing (root) CA: create an intermediate signed by it.
        #[arg(long)]
        root_dir: Option<PathBuf>,
    },
    /// Issue a workload certificate and key (for operators and tests; sidecars use `identity`
    /// with `weft ca serve` so their keys never leave them). Writes cert.pem, key.pem (0600),
    /// bundle.pem.
    Issue {
        /// The CA's directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// SPIFFE ID (`spiffe://cluster.local/ns/default/sa/web`).
        #[arg(long)]
        spiffe_id: String,
        /// Lifetime.
        #[arg(long, value_parser = duration, default_value = "24h")]
        ttl: Duration,
        /// Extra DNS SANs.
        #[arg(long)]
        dns: Vec<String>,
        /// Output directory.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Run the signing endpoint (HTTPS): CSRs authenticated by a bootstrap token or by the
    /// caller's current certificate.
    Serve {
        /// The CA's directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:15012")]
        listen: SocketAddr,
        /// Token file: `<token> <spiffe-id-pattern>` per line.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Lifetime when the caller asks for none.
        #[arg(long, value_parser = duration, default_value = "24h")]
        default_ttl: Duration,
        /// Longest lifetime granted.
        #[arg(long, value_parser = duration, default_value = "7d")]
        max_ttl: Duration,
    },
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("{e}");
    ExitCode::FAILURE
}

/// Runs a CA subcommand.
pub fn main(cmd: CaCommand) -> ExitCode {
    match cmd {
        CaCommand::Init {
            dir,
            trust_domain,
            ttl,
            root_dir,
        } => {
            let ca = match root_dir {
                Some(root) => Ca::load(&root).and_then(|r| r.new_intermediate(ttl)),
                None => Ca::new_root(&trust_domain, ttl),
            };
            match ca.and_then(|ca| ca.save(&dir).map(|()| ca)) {
                Ok(ca) => {
                    println!(
                        "CA for trust domain `{}` written to {}",
                        ca.trust_domain(),
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        CaCommand::Issue {
            ca_dir,
            spiffe_id,
            ttl,
            dns,
            out_dir,
        } => {
            let result = Ca::load(&ca_dir).and_then(|ca| {
                let mut req = IssueRequest::new(&spiffe_id, ttl);
                req.dns_names = dns;
                let issued = ca.issue(&req)?;
                std::fs::create_dir_all(&out_dir).map_err(|source| weft_tls::TlsError::Write {
                    path: out_dir.clone(),
                    source,
                })?;
                write_file(&out_dir.join("bundle.pem"), &ca.bundle_pem(), false)?;
                write_file(&out_dir.join("key.pem"), &issued.key_pem, true)?;
                write_file(&out_dir.join("cert.pem"), &issued.chain_pem, false)?;
                Ok(())
            });
            match result {
                Ok(()) => {
                    println!(
                        "{spiffe_id}: cert.pem, key.pem, bundle.pem written to {}",
                        out_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        CaCommand::Serve {
            ca_dir,
            listen,
            token_file,
            default_ttl,
            max_ttl,
        } => {
            let ca = match Ca::load(&ca_dir) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let tokens = match token_file.as_deref().map(weft_ca::server::load_tokens) {
                None => Vec::new(),
                Some(Ok(t)) => t,
                Some(Err(e)) => return fail(e),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(format!("cannot start the runtime: {e}")),
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => return fail(format!("{listen}: cannot bind: {e}")),
                };
                let addr = listener.local_addr().unwrap_or(listen);
                println!(
                    "weft CA for `{}` serving on https://{addr}",
                    ca.trust_domain()
                );
                let opts = weft_ca::server::ServeOptions {
                    tokens,
                    default_ttl,
                    max_ttl,
                };
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(s) => s,
                        Err(e) => return fail(format!("cannot install signal handlers: {e}")),
                    };
                tokio::select! {
                    r = weft_ca::server::serve(ca, listener, opts) => match r {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => fail(e),
                    },
                    _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
                    _ = term.recv() => ExitCode::SUCCESS,
                }
            })
        }
    }
}
