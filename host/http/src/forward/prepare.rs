//! Preparing the upstream request: hop-by-hop headers, the `x-forwarded-*` family,
//! `x-forwarded-client-cert`, `x-request-id`, and the hash that feeds ring-hash balancing.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use weft_routing::HashPolicy;

use crate::accounting::X_REQUEST_ID;
use crate::conn::ConnCtx;
use crate::settings::ListenerSettings;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The hop-by-hop headers [`strip_hop_by_hop`] removes by name, one bit each (the names
/// `Connection` nominates go only when `Connection` itself is present).
const CONNECTION: u8 = 1;
const TRANSFER_ENCODING: u8 = 1 << 1;
const TRAILER: u8 = 1 << 2;
const TE: u8 = 1 << 3;
const UPGRADE: u8 = 1 << 4;
const KEEP_ALIVE_BIT: u8 = 1 << 5;
const PROXY_CONNECTION_BIT: u8 = 1 << 6;

/// Which hop-by-hop headers `name` is (0: none).
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    if *name == header::CONNECTION {
        CONNECTION
    } else if *name == header::TRANSFER_ENCODING {
        TRANSFER_ENCODING
    } else if *name == header::TRAILER {
        TRAILER
    } else if *name == header::TE {
        TE
    } else if *name == header::UPGRADE {
        UPGRADE
    } else if *name == KEEP_ALIVE {
        KEEP_ALIVE_BIT
    } else if *name == PROXY_CONNECTION {
        PROXY_CONNECTION_BIT
    } else {
        0
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the Connection header names.
/// With `keep_upgrade`, `Upgrade` and `Connection: upgrade` are kept for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which are present; only those are removed (a hashed
    // removal each), and the common case, none at all, returns here.
    let present = headers.keys().fold(0u8, |acc, n| acc | hop_by_hop_bit(n));
    if present == 0 && !keep_upgrade {
        return;
    }
    if present & CONNECTION != 0 {
        let nominated: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| {
                let t = t.trim();
                // `keep-alive` and `close`, the usual tokens, need no removal of their own
                // (`close` names no header; `keep-alive` is removed below if present).
                if t.eq_ignore_ascii_case("keep-alive") || t.eq_ignore_ascii_case("close") {
                    None
                } else {
                    HeaderName::from_bytes(t.as_bytes()).ok()
                }
            })
            .collect();
        for name in nominated {
            if keep_upgrade && name == header::UPGRADE {
                continue;
            }
            // Never let a client strip headers the proxy itself relies on downstream.
            if name != header::HOST {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    if present & KEEP_ALIVE_BIT != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if present & PROXY_CONNECTION_BIT != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if present & TRANSFER_ENCODING != 0 {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if present & TRAILER != 0 {
        headers.remove(header::TRAILER);
    }
    if present & TE != 0
        && let Some(te) = headers.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Prepares the request head for the next hop: hop-by-hop headers out, `x-forwarded-for`,
/// `x-forwarded-proto`, `x-forwarded-client-cert` and `x-request-id` per the listener.
pub(crate) fn prepare_upstream_headers(
    headers: &mut HeaderMap,
    conn: &ConnCtx,
    listener: &ListenerSettings,
    is_upgrade: bool,
) {
    strip_hop_by_hop(headers, is_upgrade);
    // Envoy appends the peer only with `use_remote_address` (Istio's sidecars leave it off).
    if listener.config.http.use_remote_address {
        let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => {
                HeaderValue::from_str(&format!("{prev}, {}", conn.peer.ip())).ok()
            }
            // The common case: the connection's own address, formatted once per connection.
            _ => Some(conn.peer_ip.clone()),
        };
        if let Some(v) = xff {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
    }
    add_proto_and_request_id(headers, conn, listener);
    crate::security::apply_xfcc(
        headers,
        listener.config.forward_client_cert_details,
        conn.security.as_deref(),
    );
}

/// `x-forwarded-proto` and (when the listener generates them) `x-request-id`, unless present.
/// Envoy adds both before its HTTP filters run, so proxy-wasm plugins see them; the Wasm phase
/// calls this before its chain, forwarding again later changes nothing.
pub(crate) fn add_proto_and_request_id(
    headers: &mut HeaderMap,
    conn: &ConnCtx,
    listener: &ListenerSettings,
) {
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = if conn.security.as_ref().is_some_and(|s| s.tls) {
            "https"
        } else {
            "http"
        };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if listener.config.http.generate_request_id && !headers.contains_key(&X_REQUEST_ID) {
        let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
        let mut buf = uuid::Uuid::encode_buffer();
        if let Ok(v) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
}

/// The hash of the first hash policy that applies (`None`: none does).
pub(crate) fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Option<u64> {
    for p in policies {
        match p {
            HashPolicy::Header(name) => {
                if let Some(v) = headers.get(name) {
                    return Some(weft_balance::hash_bytes(v.as_bytes()));
                }
            }
            HashPolicy::Cookie(name) => {
                let found = headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|kv| kv.trim().split_once('='))
                    .find(|(k, _)| k == name);
                if let Some((_, v)) = found {
                    return Some(weft_balance::hash_bytes(v.as_bytes()));
                }
            }
            HashPolicy::SourceIp => {
                let bytes = match peer.ip() {
                    std::net::IpAddr::V4(a) => a.octets().to_vec(),
                    std::net::IpAddr::V6(a) => a.octets().to_vec(),
                };
                return Some(weft_balance::hash_bytes(&bytes));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_nominated_ones_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep"]);
    }

    #[test]
    fn only_the_hop_by_hop_headers_present_go_whatever_connection_says() {
        // nginx's usual response head: `Connection: keep-alive` and nothing else hop-by-hop.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["content-length"]
        );
        // Tokens in any case, `close`, a nominated Keep-Alive header, and a repeated
        // Connection header; Host is never removed by nomination.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Close, X-A"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("KEEP-ALIVE , host"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("example"));
        h.insert(header::TRAILER, HeaderValue::from_static("x-t"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"]);
        // Nothing hop-by-hop: untouched.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn upgrade_is_kept_when_asked_and_te_trailers_survives() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn hash_policies_fall_through_in_order() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; session=abc"));
        let policies = [
            HashPolicy::Header(HeaderName::from_static("x-user")),
            HashPolicy::Cookie("session".into()),
            HashPolicy::SourceIp,
        ];
        assert_eq!(
            request_hash(&policies, &h, peer),
            Some(weft_balance::hash_bytes(b"abc"))
        );
        h.insert("x-user", HeaderValue::from_static("u1"));
        assert_eq!(
            request_hash(&policies, &h, peer),
            Some(weft_balance::hash_bytes(b"u1"))
        );
        assert_eq!(
            request_hash(&policies[2..], &HeaderMap::new(), peer),
            Some(weft_balance::hash_bytes(&[10, 0, 0, 1]))
        );
        assert_eq!(request_hash(&[], &h, peer), None);
    }
}
