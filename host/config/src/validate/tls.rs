//! Checks of the mesh-security settings (`crate::tls`): listener and cluster TLS, peer
//! authorization rules and the certificate agent.

use super::Found;
use crate::schema::{Cluster, Identity, Listener, ListenerProtocol, SourceRule, TlsMode};

const ALPN: [&str; 2] = ["h2", "http/1.1"];

fn required(found: &mut Vec<Found>, path: String, value: &str) {
    if value.trim().is_empty() {
        found.push((path, "required (a PEM file path)".into()));
    }
}

fn alpn(found: &mut Vec<Found>, path: &str, list: &[String]) {
    for (i, a) in list.iter().enumerate() {
        if !ALPN.contains(&a.as_str()) {
            found.push((
                format!("{path}.alpn[{i}]"),
                format!("`{a}` is not one of `h2`, `http/1.1`"),
            ));
        }
    }
}

fn trust_domain(found: &mut Vec<Found>, path: String, td: &str) {
    let ok = !td.is_empty()
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if !ok {
        found.push((
            path,
            format!("`{td}` is not a trust domain (lowercase letters, digits, `.`, `-`, `_`)"),
        ));
    }
}

fn pattern(found: &mut Vec<Found>, path: String, p: &str) {
    if p.is_empty() || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        found.push((path, format!("`{p}` is not a valid pattern")));
    } else if p.len() > 1 && p.as_bytes()[1..p.len() - 1].contains(&b'*') {
        found.push((
            path,
            format!("`{p}`: `*` may only start or end a pattern (`prefix*`, `*suffix`, `*`)"),
        ));
    }
}

fn rules(found: &mut Vec<Found>, path: &str, rules: &[SourceRule]) {
    for (i, r) in rules.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        if r.principals.is_empty() && r.namespaces.is_empty() && r.trust_domains.is_empty() {
            found.push((
                rpath.clone(),
                "needs at least one of `principals`, `namespaces`, `trust_domains`".into(),
            ));
        }
        for (field, list) in [
            ("principals", &r.principals),
            ("namespaces", &r.namespaces),
            ("trust_domains", &r.trust_domains),
        ] {
            for (j, p) in list.iter().enumerate() {
                pattern(found, format!("{rpath}.{field}[{j}]"), p);
            }
        }
    }
}

/// Checks a listener's `tls`.
pub(crate) fn listener(path: &str, l: &Listener) -> Vec<Found> {
    let mut found = Vec::new();
    let Some(t) = &l.tls else {
        return found;
    };
    let path = format!("{path}.tls");
    if l.protocol == ListenerProtocol::Tcp && t.mode != TlsMode::Disable {
        found.push((
            path.clone(),
            "unimplemented: TLS on `protocol: tcp` listeners (use an HTTP listener)".into(),
        ));
    }
    if t.mode == TlsMode::Disable {
        if !t.authorization.allow.is_empty() || !t.authorization.deny.is_empty() {
            found.push((
                format!("{path}.authorization"),
                "needs mTLS (`mode: strict` or `permissive`): peer identities are unknown on plaintext".into(),
            ));
        }
        return found;
    }
    required(&mut found, format!("{path}.cert_file"), &t.cert_file);
    required(&mut found, format!("{path}.key_file"), &t.key_file);
    required(
        &mut found,
        format!("{path}.trust_bundle_file"),
        &t.trust_bundle_file,
    );
    if let Some(td) = &t.trust_domain {
        trust_domain(&mut found, format!("{path}.trust_domain"), td);
    }
    if t.alpn.is_empty() {
        found.push((format!("{path}.alpn"), "needs at least one protocol".into()));
    }
    alpn(&mut found, &path, &t.alpn);
    rules(
        &mut found,
        &format!("{path}.authorization.allow"),
        &t.authorization.allow,
    );
    rules(
        &mut found,
        &format!("{path}.authorization.deny"),
        &t.authorization.deny,
    );
    found
}

/// Checks a cluster's `tls`.
pub(crate) fn cluster(path: &str, c: &Cluster) -> Vec<Found> {
    let mut found = Vec::new();
    let Some(t) = &c.tls else {
        return found;
    };
    let path = format!("{path}.tls");
    required(&mut found, format!("{path}.cert_file"), &t.cert_file);
    required(&mut found, format!("{path}.key_file"), &t.key_file);
    required(
        &mut found,
        format!("{path}.trust_bundle_file"),
        &t.trust_bundle_file,
    );
    if let Some(td) = &t.trust_domain {
        trust_domain(&mut found, format!("{path}.trust_domain"), td);
    }
    if let Some(sni) = &t.sni
        && (sni.is_empty()
            || !sni
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')))
    {
        found.push((format!("{path}.sni"), format!("`{sni}` is not a DNS name")));
    }
    for (i, id) in t.match_identities.iter().enumerate() {
        let p = format!("{path}.match_identities[{i}]");
        if id != "*" && !id.starts_with("spiffe://") {
            found.push((p, format!("`{id}` is not a SPIFFE ID (`spiffe://…`)")));
        } else {
            pattern(&mut found, p, id);
        }
    }
    alpn(&mut found, &path, &t.alpn);
    found
}

/// Checks the `identity` block.
pub(crate) fn identity(i: &Identity) -> Vec<Found> {
    let mut found = Vec::new();
    if crate::EndpointAddress::parse(&i.ca_address).is_err() {
        found.push((
            "identity.ca_address".into(),
            format!("`{}` is not `host:port`", i.ca_address),
        ));
    }
    required(
        &mut found,
        "identity.ca_trust_bundle_file".into(),
        &i.ca_trust_bundle_file,
    );
    if i.output_dir.trim().is_empty() {
        found.push((
            "identity.output_dir".into(),
            "required (a directory)".into(),
        ));
    }
    let id_ok = i.spiffe_id.strip_prefix("spiffe://").is_some_and(|rest| {
        !rest.is_empty() && !rest.bytes().any(|b| b.is_ascii_control() || b == b' ')
    });
    if !id_ok {
        found.push((
            "identity.spiffe_id".into(),
            format!(
                "`{}` is not a SPIFFE ID (`spiffe://<trust-domain>/…`)",
                i.spiffe_id
            ),
        ));
    }
    if !(0.1..=0.9).contains(&i.renew_fraction) {
        found.push((
            "identity.renew_fraction".into(),
            "must be within 0.1..=0.9".into(),
        ));
    }
    if i.ttl.as_secs() < 10 {
        found.push(("identity.ttl".into(), "must be at least 10s".into()));
    }
    found
}
