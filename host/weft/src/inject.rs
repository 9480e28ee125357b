//! `weft inject`: argument parsing and file handling only; the logic is the crate
//! `weft_inject`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use weft_inject::{Options, Outcome, ProxyResources};

/// `weft inject` (as `istioctl kube-inject`).
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Kubernetes manifests (multi-document YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    /// Write the result here instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Image of the sidecar and its capture init container.
    #[arg(long, default_value = weft_inject::DEFAULT_IMAGE)]
    image: String,
    /// SPIFFE trust domain: identities are `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// `ISTIO_META_CLUSTER_ID` of the injected proxies.
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// ConfigMap (in the workload's namespace) holding the mesh configuration, `weft.yaml`.
    #[arg(long, default_value = "weft-mesh")]
    config_map: String,
    /// ConfigMap holding the CA's `root-cert.pem`.
    #[arg(long, default_value = "weft-ca-root")]
    ca_root_config_map: String,
    /// Secret holding the CA bootstrap `token`.
    #[arg(long, default_value = "weft-bootstrap-token")]
    bootstrap_token_secret: String,
    /// CPU request of the sidecar (`sidecar.weft.dev/proxyCPU` overrides it per pod).
    #[arg(long, default_value = "100m")]
    proxy_cpu: String,
    /// Memory request of the sidecar (`sidecar.weft.dev/proxyMemory`).
    #[arg(long, default_value = "64Mi")]
    proxy_memory: String,
    /// CPU limit of the sidecar, empty for none (`sidecar.weft.dev/proxyCPULimit`).
    #[arg(long, default_value = "2")]
    proxy_cpu_limit: String,
    /// Memory limit of the sidecar, empty for none (`sidecar.weft.dev/proxyMemoryLimit`).
    #[arg(long, default_value = "512Mi")]
    proxy_memory_limit: String,
}

/// Runs `weft inject`.
pub fn main(args: InjectArgs) -> ExitCode {
    let stdin = args.file.as_os_str() == "-";
    let label = if stdin {
        "<stdin>".to_owned()
    } else {
        args.file.display().to_string()
    };
    let input = if stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(&args.file)
    };
    let input = match input {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{label}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        image: args.image,
        trust_domain: args.trust_domain,
        cluster_id: args.cluster_id,
        config_map: args.config_map,
        ca_root_config_map: args.ca_root_config_map,
        bootstrap_token_secret: args.bootstrap_token_secret,
        resources: ProxyResources {
            cpu: args.proxy_cpu,
            memory: args.proxy_memory,
            cpu_limit: args.proxy_cpu_limit,
            memory_limit: args.proxy_memory_limit,
        },
        ..Options::default()
    };
    let injected = match weft_inject::inject(&input, &options) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{label}: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (doc, outcome) in &injected.outcomes {
        if let Outcome::Skipped(why) = outcome {
            eprintln!("{label}: {doc}: not injected: {why}");
        }
    }
    let written = match &args.output {
        Some(path) => {
            std::fs::write(path, &injected.yaml).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => std::io::stdout()
            .lock()
            .write_all(injected.yaml.as_bytes())
            .map_err(|e| format!("standard output: {e}")),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
