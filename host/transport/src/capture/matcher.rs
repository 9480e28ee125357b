//! Which filter chain takes a captured connection: Envoy's filter-chain match, narrowed level
//! by level (destination port, longest prefix range, server name, transport protocol,
//! application protocols). At each level only the most specific matching chains stay; a chain
//! that leaves no condition at a level matches it with the lowest specificity. Like Envoy,
//! there is no backtracking: when the most specific chains at one level fail a later level,
//! nothing matches. Ties go to the chain declared first.

use std::net::SocketAddr;

use weft_config::schema::{FilterChainMatch, TransportProtocol};

pub use crate::sniff::Detected;

/// Keeps the entries of `candidates` with the highest score (`None`: no match).
fn narrow(candidates: Vec<usize>, score: impl Fn(usize) -> Option<u32>) -> Vec<usize> {
    let scored: Vec<(usize, u32)> = candidates
        .into_iter()
        .filter_map(|i| score(i).map(|s| (i, s)))
        .collect();
    let best = scored.iter().map(|(_, s)| *s).max();
    scored
        .into_iter()
        .filter(|(_, s)| Some(*s) == best)
        .map(|(i, _)| i)
        .collect()
}

/// The chains that can take a connection to `dst`, before protocol detection (port and
/// prefix range levels).
pub fn by_destination(chains: &[&FilterChainMatch], dst: SocketAddr) -> Vec<usize> {
    let all: Vec<usize> = (0..chains.len()).collect();
    let by_port = narrow(all, |i| match chains[i].destination_port {
        None => Some(0),
        Some(p) if p == dst.port() => Some(1),
        Some(_) => None,
    });
    // IPv4-mapped IPv6 destinations match IPv4 ranges.
    let ip = match dst.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(dst.ip(), std::net::IpAddr::V4),
        v4 => v4,
    };
    narrow(by_port, |i| {
        let ranges = &chains[i].prefix_ranges;
        if ranges.is_empty() {
            return Some(0);
        }
        ranges
            .iter()
            .filter(|r| r.contains(&ip))
            .map(|r| 1 + u32::from(r.prefix_len()))
            .max()
    })
}

/// The chain among `candidates` (from [`by_destination`]) that takes a connection whose first
/// bytes showed `seen`.
pub fn select(
    chains: &[&FilterChainMatch],
    candidates: Vec<usize>,
    seen: &Detected,
) -> Option<usize> {
    let by_name = narrow(candidates, |i| {
        let names = &chains[i].server_names;
        if names.is_empty() {
            return Some(0);
        }
        let sni = seen.server_name.as_deref()?.to_ascii_lowercase();
        names
            .iter()
            .filter_map(|n| {
                let n = n.to_ascii_lowercase();
                match n.strip_prefix("*.") {
                    // Exact beats any wildcard.
                    None => (n == sni).then_some(u32::MAX),
                    Some(suffix) => sni
                        .strip_suffix(suffix)
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
                        .then(|| 1 + suffix.len() as u32),
                }
            })
            .max()
    });
    let by_transport = narrow(by_name, |i| match chains[i].transport_protocol {
        None => Some(0),
        Some(TransportProtocol::Tls) => seen.tls.then_some(1),
        Some(TransportProtocol::RawBuffer) => (!seen.tls).then_some(1),
    });
    let by_app = narrow(by_transport, |i| {
        let wanted = &chains[i].application_protocols;
        if wanted.is_empty() {
            return Some(0);
        }
        wanted
            .iter()
            .any(|w| seen.application_protocols.iter().any(|s| s == w))
            .then_some(1)
    });
    by_app.into_iter().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(yaml: &str) -> FilterChainMatch {
        serde_json::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn dst(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn pick(chains: &[FilterChainMatch], to: &str, seen: &Detected) -> Option<usize> {
        let refs: Vec<&FilterChainMatch> = chains.iter().collect();
        let c = by_destination(&refs, dst(to));
        select(&refs, c, seen)
    }

    #[test]
    fn port_then_longest_prefix_then_first_declared() {
        let chains = [
            m(r#"{}"#),
            m(r#"{"destination_port": 8080}"#),
            m(r#"{"destination_port": 8080, "prefix_ranges": ["10.0.0.0/8"]}"#),
            m(r#"{"destination_port": 8080, "prefix_ranges": ["10.1.0.0/16", "192.168.0.0/16"]}"#),
            m(r#"{"destination_port": 8080, "prefix_ranges": ["10.1.0.0/16"]}"#),
        ];
        let none = Detected::default();
        assert_eq!(pick(&chains, "10.1.2.3:8080", &none), Some(3));
        assert_eq!(pick(&chains, "10.9.2.3:8080", &none), Some(2));
        assert_eq!(pick(&chains, "172.16.0.1:8080", &none), Some(1));
        assert_eq!(pick(&chains, "10.1.2.3:9090", &none), Some(0));
        assert_eq!(pick(&chains, "[::ffff:10.1.2.3]:8080", &none), Some(3));
    }

    #[test]
    fn server_names_exact_beat_wildcards_and_tls_beats_raw() {
        let chains = [
            m(r#"{"destination_port": 443, "transport_protocol": "raw_buffer"}"#),
            m(r#"{"destination_port": 443, "transport_protocol": "tls"}"#),
            m(r#"{"destination_port": 443, "server_names": ["*.example.com"]}"#),
            m(r#"{"destination_port": 443, "server_names": ["api.example.com"]}"#),
        ];
        let tls = |sni: &str| Detected {
            tls: true,
            server_name: Some(sni.into()),
            application_protocols: vec!["h2".into()],
        };
        assert_eq!(
            pick(&chains, "1.2.3.4:443", &tls("api.example.com")),
            Some(3)
        );
        assert_eq!(
            pick(&chains, "1.2.3.4:443", &tls("www.example.com")),
            Some(2)
        );
        assert_eq!(pick(&chains, "1.2.3.4:443", &tls("example.com")), Some(1));
        assert_eq!(pick(&chains, "1.2.3.4:443", &Detected::default()), Some(0));
    }

    #[test]
    fn application_protocols_and_no_backtracking() {
        let chains = [
            m(r#"{"destination_port": 80, "application_protocols": ["http/1.1", "h2c"]}"#),
            m(r#"{"destination_port": 80, "transport_protocol": "raw_buffer"}"#),
            m(r#"{"application_protocols": ["http/1.1"]}"#),
        ];
        let http = Detected {
            application_protocols: vec!["http/1.1".into()],
            ..Detected::default()
        };
        // Both port-80 chains match at the transport level; raw_buffer is more specific there,
        // so it wins before application protocols are compared (Envoy's order).
        assert_eq!(pick(&chains, "1.2.3.4:80", &http), Some(1));
        assert_eq!(pick(&chains, "1.2.3.4:81", &http), Some(2));
        // The port-81 chains need http/1.1: opaque bytes match nothing (no fallback to others).
        assert_eq!(pick(&chains, "1.2.3.4:81", &Detected::default()), None);
    }
}
