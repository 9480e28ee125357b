//! The `weft` command: parse the command line and hand over to [`cli`].
#![forbid(unsafe_code)]

mod ca;
mod cli;
mod inject;
mod iptables;

/// jemalloc, with background purging and one arena per CPU (`JEMALLOC_SYS_WITH_MALLOC_CONF` in
/// `.cargo/config.toml`): memory freed after a burst of slow clients goes back to the OS within
/// seconds, where glibc's allocator kept it (docs/hardening.md, measured by bench/hardening.py).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// mimalloc instead (`--no-default-features --features mimalloc`), for the allocator comparison.
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main(<cli::Cli as clap::Parser>::parse())
}
