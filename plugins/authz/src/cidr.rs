//! IP blocks (`10.0.0.0/8`, `2001:db8::/32`, or a bare address) and address parsing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 network: the address with its host bits cleared and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/len` or a bare address (a /32 or /128). Host bits set in `addr` are
    /// refused, as Istio does, because they usually mean a typo (`10.0.0.1/8`).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("invalid CIDR {text:?}: {addr:?} is not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(format!(
                        "invalid CIDR {text:?}: prefix length must be 0..={max}"
                    ));
                }
            },
        };
        let cidr = Cidr { network, prefix };
        if cidr.mask(network) != network {
            return Err(format!(
                "invalid CIDR {text:?}: host bits are set (did you mean {}?)",
                Cidr {
                    network: cidr.mask(network),
                    prefix
                }
            ));
        }
        Ok(cidr)
    }

    /// `ip` with the host bits of this network's prefix cleared.
    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }

    /// Whether `ip` is inside the block. An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`)
    /// matches IPv4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && self.mask(ip) == self.network
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The IP of an `ip:port`, `[ipv6]:port` or bare address string (Envoy's `source.address`).
pub fn parse_socket_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse().ok();
    }
    let (ip, _port) = text.rsplit_once(':')?;
    ip.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn v4_blocks() {
        let c = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "v4-mapped v6");
        assert!(!c.contains(ip("::1")));
        let all = Cidr::parse("0.0.0.0/0").expect("all");
        assert!(all.contains(ip("1.2.3.4")));
        let one = Cidr::parse("192.168.1.7").expect("bare");
        assert!(one.contains(ip("192.168.1.7")));
        assert!(!one.contains(ip("192.168.1.8")));
    }

    #[test]
    fn v6_blocks() {
        let c = Cidr::parse("2001:db8::/32").expect("cidr");
        assert!(c.contains(ip("2001:db8:1::5")));
        assert!(!c.contains(ip("2001:db9::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("::/0").expect("all").contains(ip("::1")));
        assert!(Cidr::parse("::1/128").expect("one").contains(ip("::1")));
    }

    #[test]
    fn invalid_blocks_say_why() {
        let e = Cidr::parse("10.0.0.0/33").expect_err("too long");
        assert!(e.contains("prefix length must be 0..=32"), "{e}");
        assert!(e.contains("\"10.0.0.0/33\""), "{e}");
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("10.0.0.0/").is_err());
        assert!(Cidr::parse("10.0.0.0/-1").is_err());
        assert!(Cidr::parse("::/129").is_err());
        let e = Cidr::parse("10.0.0.1/8").expect_err("host bits");
        assert!(e.contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(parse_socket_ip("10.1.2.3:4444"), Some(ip("10.1.2.3")));
        assert_eq!(parse_socket_ip("[::1]:80"), Some(ip("::1")));
        assert_eq!(parse_socket_ip("::1"), Some(ip("::1")));
        assert_eq!(parse_socket_ip("10.1.2.3"), Some(ip("10.1.2.3")));
        assert_eq!(parse_socket_ip("garbage"), None);
        assert_eq!(parse_socket_ip("[::1"), None);
    }
}
