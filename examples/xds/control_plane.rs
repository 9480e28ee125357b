//! A tiny ADS control plane for `examples/xds/weft.yaml`: it serves, on 127.0.0.1:15010, one
//! EDS cluster `echo` (an echo upstream this program runs), a listener `web` on
//! 127.0.0.1:10000 and a route configuration sending everything to `echo` with a response
//! header `x-served-by: xds-<version>`. It answers both state-of-the-world and delta ADS (the
//! server of tests/support/xds.rs). Every 20 s it pushes a new version (the header counts up),
//! to watch Weft ACK and serve it.
//!
//! ```sh
//! cargo run -p weft-e2e --example xds_control_plane          # terminal 1
//! cargo run --release -p weft -- run -c examples/xds/weft.yaml  # terminal 2
//! curl -si http://127.0.0.1:10000/hello                        # x-served-by: xds-1
//! ```
#![forbid(unsafe_code)]
#![expect(
    clippy::expect_used,
    reason = "an example: a setup step that fails stops it, naming the step"
)]

use std::net::SocketAddr;

use weft_e2e::xds::{
    ControlPlane, Snapshot, assignment, eds_cluster, header, http_listener, prefix_route,
    route_config,
};

fn snapshot(version: u64, echo: SocketAddr) -> Snapshot {
    let mut route = prefix_route("/", &[("echo", 1)]);
    route.response_headers_to_add = vec![header("x-served-by", &format!("xds-{version}"), false)];
    Snapshot::new(&version.to_string())
        .with("echo", eds_cluster("echo"))
        .with("echo", assignment("echo", &[(echo, 1)]))
        .with(
            "web",
            http_listener("web", "127.0.0.1:10000".parse().expect("address"), "routes"),
        )
        .with("routes", route_config("routes", vec![route]))
}

#[tokio::main]
async fn main() {
    let echo = weft_e2e::upstream::echo("echo").await;
    let addr: SocketAddr = "127.0.0.1:15010".parse().expect("address");
    let cp = ControlPlane::start_on(addr, snapshot(1, echo)).await;
    println!("ADS on {addr} (echo upstream on {echo}); a new version every 20 s; Ctrl-C stops");
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(20));
    tick.tick().await;
    let mut version = 1;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                version += 1;
                cp.set(snapshot(version, echo));
                let requests = cp.requests().len() + cp.delta_requests().len();
                println!("version {version} pushed ({requests} discovery requests so far)");
            }
        }
    }
    cp.stop().await;
}
