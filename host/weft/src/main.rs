//! The `weft` command: parse the command line and hand over to [`cli`].
#![forbid(unsafe_code)]

mod ca;
mod cli;
mod inject;
mod iptables;

fn main() -> std::process::ExitCode {
    cli::main(<cli::Cli as clap::Parser>::parse())
}
