//! Command-line interface: `weft run`, `weft validate`, `weft ca …`, `weft inject`, `weft iptables`,
//! `weft --version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use weft_config::schema::AcceptMode;
use weft_proxy::{ConfigSource, Proxy, Signals, StartOptions};

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The embedded demo configuration used by `weft run` without `-c`: the all-plugins example.
pub const DEFAULT_CONFIG: &str = include_str!("../../../examples/all-plugins/weft.yaml");
const DEFAULT_LABEL: &str = "<embedded default>";
/// Where the demo's echo upstream listens (must match the demo configuration).
const DEMO_ECHO: &str = "127.0.0.1:18080";

/// Weft: a WebAssembly-extensible service-mesh sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `weft_proxy=debug`.
    #[arg(long, global = true, default_value = "info", env = "WEFT_LOG")]
    log_level: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy. Without `-c`, runs the embedded demo: an echo upstream behind Weft.
    Run {
        /// Configuration file (YAML); watched and hot-reloaded.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Also serve the built-in echo upstream on this address (the demo's upstream; the
        /// embedded demo starts it on 127.0.0.1:18080).
        #[arg(long, value_name = "ADDRESS")]
        echo: Option<std::net::SocketAddr>,
        /// The SPIFFE ID the certificate agent asks for, instead of `identity.spiffe_id` (set by
        /// `weft inject` from the pod's namespace and service account).
        #[arg(long, value_name = "ID", env = "WEFT_SPIFFE_ID")]
        spiffe_id: Option<String>,
    },
    /// Check a configuration file and print every error found.
    Validate {
        /// Configuration file (YAML).
        #[arg(short, long)]
        config: PathBuf,
        /// Also load every plugin (compile, start, configure) and fail if one does not load, as
        /// Envoy refuses to start then (`weft run` serves with each plugin's failure policy).
        #[arg(long)]
        load_plugins: bool,
    },
    /// The built-in certificate authority (Citadel's role).
    Ca {
        #[command(subcommand)]
        command: crate::ca::CaCommand,
    },
    /// Add the Weft sidecar to Kubernetes manifests (as `istioctl kube-inject`).
    Inject(crate::inject::InjectArgs),
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Install (or print, or remove) the iptables rules that capture a pod's TCP traffic
    /// into Weft (outbound to 15001, inbound to 15006), as Istio's istio-iptables.
    Iptables(crate::iptables::IptablesArgs),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Compile a plugin ahead of time. Without `--output`, into the module cache that `weft run`
    /// reads (a deployment step, e.g. an init container); with it, the compiled module goes to
    /// that file (`-`: standard output). `weft run` itself compiles each new plugin this way, in
    /// a child process, so the compiler's memory never stays in the proxy.
    Compile {
        /// The plugin's `.wasm` file (`-`: standard input).
        module: PathBuf,
        /// Where to write the compiled module (`-`: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Engine setting the artifact must match: the pooling allocator.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, hide = true)]
        pooling: bool,
        /// Engine setting the artifact must match: the largest linear memory.
        #[arg(long, default_value_t = 256 * 1024 * 1024, hide = true)]
        max_memory_bytes: usize,
    },
}

/// Runs the parsed command line.
pub fn main(cli: Cli) -> ExitCode {
    init_logging(cli.log_format, &cli.log_level);
    weft_proxy::register_builtin_plugins(BUILTIN_PLUGINS);
    match cli.command {
        Command::Validate {
            config,
            load_plugins,
        } => validate(&config, load_plugins),
        Command::Run {
            config,
            echo,
            spiffe_id,
        } => run(config, echo, spiffe_id),
        Command::Ca { command } => crate::ca::main(command),
        Command::Inject(args) => crate::inject::main(args),
        Command::Iptables(args) => crate::iptables::main(args),
        Command::Plugin {
            command:
                PluginCommand::Compile {
                    module,
                    output,
                    pooling,
                    max_memory_bytes,
                },
        } => compile_plugin(&module, output.as_deref(), pooling, max_memory_bytes),
    }
}

/// `weft plugin compile`. Exit codes: 0 compiled, 3 the module does not compile (stderr says
/// why; the proxy's child-process compile relies on it), 1 anything else.
fn compile_plugin(
    module: &std::path::Path,
    output: Option<&std::path::Path>,
    pooling: bool,
    max_memory_bytes: usize,
) -> ExitCode {
    use std::io::{Read, Write};
    let stdio = std::path::Path::new("-");
    let mut bytes = Vec::new();
    let read = if module == stdio {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::read(module).map(|b| bytes = b)
    };
    if let Err(e) = read {
        eprintln!("{}: {e}", module.display());
        return ExitCode::FAILURE;
    }
    let options = weft_wasm::EngineOptions {
        pooling,
        max_memory_bytes,
        cache_dir: if output.is_some() {
            None
        } else {
            weft_wasm::EngineOptions::default().cache_dir
        },
        compiler: None,
    };
    let runtime = match weft_wasm::WasmRuntime::new(options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let compile_failed = |e: weft_wasm::LoadError| {
        eprintln!("{e}");
        ExitCode::from(3)
    };
    let Some(output) = output else {
        return match runtime.compile(&bytes) {
            Ok((_, digest)) => {
                println!(
                    "{}: compiled into the module cache ({digest})",
                    module.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => compile_failed(e),
        };
    };
    let artifact = match runtime.precompile(&bytes) {
        Ok(a) => a,
        Err(e) => return compile_failed(e),
    };
    let written = if output == stdio {
        let mut out = std::io::stdout().lock();
        out.write_all(&artifact).and_then(|()| out.flush())
    } else {
        std::fs::write(output, &artifact)
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", output.display());
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn validate(path: &std::path::Path, load_plugins: bool) -> ExitCode {
    match weft_config::load(path) {
        Ok(c) if load_plugins => {
            let base_dir = ConfigSource::File(path.to_path_buf()).base_dir();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let errors = runtime.block_on(weft_proxy::check_plugins(&c, &base_dir));
            if errors.is_empty() {
                println!(
                    "{}: ok ({} listeners, {} clusters, {} plugins loaded)",
                    path.display(),
                    c.listeners.len(),
                    c.clusters.len(),
                    c.plugins.len()
                );
                return ExitCode::SUCCESS;
            }
            eprintln!("{}: {} plugin(s) do not load", path.display(), errors.len());
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
        Ok(c) => {
            println!(
                "{}: ok ({} listeners, {} clusters)",
                path.display(),
                c.listeners.len(),
                c.clusters.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: Option<PathBuf>,
    echo: Option<std::net::SocketAddr>,
    spiffe_id: Option<String>,
) -> ExitCode {
    let source = match &config {
        Some(path) => ConfigSource::File(path.clone()),
        None => ConfigSource::Embedded {
            label: DEFAULT_LABEL.to_owned(),
            text: DEFAULT_CONFIG.to_owned(),
        },
    };
    // Read the configuration once up front: the worker count comes from it, and a bad file
    // should fail before anything binds.
    let (workers, accept) = match source.load() {
        Ok(c) => (c.workers, c.runtime.accept),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // `runtime.accept: reuseport`: the proxy starts its own single-threaded worker runtimes;
    // this one only runs the control plane (admin, reloads, xDS, watchers).
    let mut builder = if workers == 1 || accept == AcceptMode::Reuseport {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 1 {
            b.worker_threads(workers);
        }
        // Each thread gets a home plugin instance (`weft_wasm::affinity`). The worker threads
        // start first and take indices 0..workers; blocking-pool threads started later
        // take the ones after.
        let next = std::sync::atomic::AtomicUsize::new(0);
        b.on_thread_start(move || {
            weft_wasm::affinity::enter_worker(
                next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            );
        });
        b
    };
    let runtime = match builder.enable_all().thread_name("weft-worker").build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Before anything listens: a SIGTERM during start-up then drains instead of killing.
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let demo = config.is_none();
        let echo = echo.or_else(|| {
            demo.then(|| {
                DEMO_ECHO
                    .parse()
                    .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 18080)))
            })
        });
        if let Some(addr) = echo
            && let Err(e) = weft_echo::spawn_echo(addr, "demo-echo").await
        {
            eprintln!("echo upstream {addr}: cannot bind: {e}");
            return ExitCode::FAILURE;
        }
        let proxy = match Proxy::start(
            source,
            StartOptions {
                watch: !demo,
                spiffe_id,
                // Plugins compile in a child `weft plugin compile`: Cranelift's memory stays out
                // of the proxy (issue 12, item 8; docs/performance.md).
                plugin_compiler: std::env::current_exe().ok(),
                ..Default::default()
            },
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        if demo {
            print_demo_help(&proxy);
        }
        // With an `xds` section, the control plane's resources join the file's (the client
        // stops with the process; the configuration it set is drained like any other).
        let _xds = match weft_xds::start(&proxy) {
            Ok(client) => client,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        if proxy.run_until_signalled(signals).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        }
    })
}

fn print_demo_help(proxy: &Proxy) {
    let listener = proxy
        .listener_addr("demo")
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin = proxy
        .admin_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!(
        "\nWeft demo is running: an echo upstream on {DEMO_ECHO} behind Weft on {listener},\n\
         with the shipped plugins (telemetry, header-rewrite, authz on /private).\n\
         Try:\n  \
         curl -i http://{listener}/hello                 # proxied; see x-client-address upstream, security headers back\n  \
         curl -i http://{listener}/private/data          # 401: no API key (authz)\n  \
         curl -i -H 'x-api-key: weft-demo-key-0123' http://{listener}/private/data   # 200\n  \
         curl -i -H 'x-api-key: weft-demo-key-0123' http://{listener}/private/admin  # 403: policy admins-only\n  \
         curl -s http://{admin}/metrics | grep wasmcustom   # the plugins' metrics\n  \
         curl -s http://{admin}/plugins                  # plugin versions and chains\n\
         Stop with Ctrl-C (graceful drain).\n"
    );
}
