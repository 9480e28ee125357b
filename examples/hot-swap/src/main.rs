//! `cargo run --release -p weft-hot-swap-demo`: see the crate docs and README.md.
#![forbid(unsafe_code)]

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let options = weft_hot_swap_demo::DemoOptions::default();
    println!(
        "hot-swap demo: {} clients for {:?} through Weft with the hello plugin; its .wasm is replaced {} times",
        options.clients, options.duration, options.swaps
    );
    match weft_hot_swap_demo::run(&options).await {
        Ok(r) => {
            let times: Vec<String> = r
                .swap_times
                .iter()
                .map(|t| format!("{}ms", t.as_millis()))
                .collect();
            println!(
                "swaps served by Weft: {} (file replaced → new version serving: {})",
                r.swaps,
                times.join(", ")
            );
            println!("requests: {}", r.requests);
            println!("failed requests: {}", r.failed);
            if let Some(f) = r.first_failure {
                println!("first failure: {f}");
            }
            if r.failed == 0 && r.swaps as usize == options.swaps {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
