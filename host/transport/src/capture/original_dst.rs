//! The original destination of a redirected connection: `SO_ORIGINAL_DST` (IPv4) or
//! `IP6T_SO_ORIGINAL_DST` (IPv6), read from conntrack through `socket2` (no unsafe here).

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Where the client meant to connect before an iptables `REDIRECT` sent it to us; `None` when
/// the kernel has no NAT record for the connection (it was not redirected).
pub fn of(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let v4_first = match local {
        SocketAddr::V4(_) => true,
        // An IPv4 client on a dual-stack socket is NATed by iptables, not ip6tables.
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let found = if v4_first {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    found.ok().and_then(|a| a.as_socket())
}
