//! LDS entry point: `envoy.config.listener.v3.Listener` → a plain listener (one filter chain,
//! [`super::listener`]) or a capture listener (`use_original_dst`, [`super::capture`]).

use envoy_types::pb::envoy::config::listener::v3::Listener as XListener;

use super::listener::{Translated, chain};
use crate::fields::reject_rest;

/// Translates one listener.
pub(crate) fn translate(l: XListener) -> Result<Translated, String> {
    let name = l.name.clone();
    if name.is_empty() {
        return Err("listener: name must not be empty".into());
    }
    let path = format!("listener \"{name}\"");
    let mut rest = l;
    rest.name.clear();
    let (host, port) = super::socket_address(&format!("{path}.address"), rest.address.as_ref())?;
    rest.address = None;
    let address = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port),
        Err(_) => return Err(format!("{path}.address: `{host}` is not an IP address")),
    };
    // Ignored: names and hints that change no behaviour.
    rest.stat_prefix.clear();
    rest.metadata = None;
    rest.traffic_direction = 0;
    if rest.bind_to_port.as_ref().is_some_and(|b| !b.value) {
        return super::capture::by_address(&path, &name, address, rest);
    }
    let hands_off = rest.use_original_dst.as_ref().is_some_and(|b| b.value);
    let capture = super::capture::is_capture(&path, &mut rest)?;
    let chains = std::mem::take(&mut rest.filter_chains);
    if capture {
        let default_chain = rest.default_filter_chain.take();
        let timeout = super::capture::detection_timeout(&path, &mut rest)?;
        reject_rest(&path, &rest)?;
        let mut t = super::capture::translate(&path, &name, address, chains, default_chain)?;
        t.hands_off = hands_off;
        match timeout {
            // Envoy's 0 waits for the first bytes forever; Weft's longest wait is 60 s, after
            // which the connection is opaque TCP (documented in docs/xds.md).
            Some(t0) if t0.is_zero() => {
                t.listener.protocol_detection_timeout = std::time::Duration::from_secs(60);
            }
            Some(timeout) => t.listener.protocol_detection_timeout = timeout,
            None => {}
        }
        return Ok(t);
    }
    reject_rest(&path, &rest)?;
    let [only] = <[_; 1]>::try_from(chains).map_err(|chains: Vec<_>| {
        format!(
            "{path}.filter_chains: exactly one filter chain is implemented on a listener \
             without use_original_dst (got {})",
            chains.len()
        )
    })?;
    let cpath = format!("{path}.filter_chains[0]");
    if only
        .filter_chain_match
        .as_ref()
        .is_some_and(|m| *m != Default::default())
    {
        return Err(format!(
            "{cpath}.filter_chain_match: only on a capture listener (use_original_dst or the \
             original_dst listener filter)"
        ));
    }
    chain(&cpath, &name, address, only)
}
