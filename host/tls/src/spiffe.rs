//! SPIFFE IDs: `spiffe://<trust-domain>/<path>`, with Kubernetes-style paths
//! `/ns/<namespace>/sa/<service-account>` as Istio issues them.

use std::fmt;

/// Longest SPIFFE ID accepted, per the SPIFFE ID specification.
const MAX_LEN: usize = 2048;

/// A parsed, validated SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    /// Not `spiffe://`.
    #[error("`{0}` does not start with `spiffe://`")]
    Scheme(String),
    /// Bad trust domain.
    #[error("`{0}`: the trust domain must be non-empty lowercase letters, digits, `.`, `-`, `_`")]
    TrustDomain(String),
    /// Bad path.
    #[error(
        "`{0}`: path segments must be non-empty letters, digits, `.`, `-`, `_` (not `.` or `..`)"
    )]
    Path(String),
    /// Too long or has a query, fragment, port or user info.
    #[error("`{0}`: {1}")]
    Other(String, &'static str),
}

impl SpiffeId {
    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeError> {
        if s.len() > MAX_LEN {
            return Err(SpiffeError::Other(truncate(s), "longer than 2048 bytes"));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeError::Scheme(s.to_owned()))?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeError::Other(
                s.to_owned(),
                "must not have a query or fragment",
            ));
        }
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.contains([':', '@']) {
            return Err(SpiffeError::Other(
                s.to_owned(),
                "must not have a port or user info",
            ));
        }
        if !is_trust_domain(td) {
            return Err(SpiffeError::TrustDomain(s.to_owned()));
        }
        if !path.is_empty() {
            let ok = path[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            });
            if !ok {
                return Err(SpiffeError::Path(s.to_owned()));
            }
        }
        Ok(SpiffeId {
            trust_domain: td.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Builds `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn workload(trust_domain: &str, ns: &str, sa: &str) -> Result<SpiffeId, SpiffeError> {
        SpiffeId::parse(&format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path (empty or starting with `/`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The Kubernetes namespace of an Istio-style path `/ns/<ns>/sa/<sa>`.
    pub fn namespace(&self) -> Option<&str> {
        let mut it = self.path.split('/').skip(1);
        match (it.next(), it.next()) {
            (Some("ns"), Some(ns)) => Some(ns),
            _ => None,
        }
    }

    /// The service account of an Istio-style path `/ns/<ns>/sa/<sa>`.
    pub fn service_account(&self) -> Option<&str> {
        let segs: Vec<&str> = self.path.split('/').skip(1).collect();
        match segs.as_slice() {
            ["ns", _, "sa", sa, ..] => Some(sa),
            _ => None,
        }
    }

    /// The ID without `spiffe://`, as Istio writes principals (`cluster.local/ns/a/sa/b`).
    pub fn principal(&self) -> String {
        format!("{}{}", self.trust_domain, self.path)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

/// Whether `td` is a valid trust domain name.
pub fn is_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect::<String>() + "…"
}

/// An Istio-style string pattern: exact, `*` (any), `prefix*` or `*suffix`.
///
/// Principals may be written with or without `spiffe://`; both sides are compared without it.
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    let pattern = pattern.strip_prefix("spiffe://").unwrap_or(pattern);
    let value = value.strip_prefix("spiffe://").unwrap_or(value);
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sleep").expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("sleep"));
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        let td_only = SpiffeId::parse("spiffe://example.org").expect("valid");
        assert_eq!(td_only.namespace(), None);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "http://cluster.local/ns/a",
            "spiffe://",
            "spiffe://Cluster.local/ns/a",
            "spiffe://cluster.local:8080/ns/a",
            "spiffe://user@cluster.local/ns/a",
            "spiffe://cluster.local/ns//a",
            "spiffe://cluster.local/ns/a/",
            "spiffe://cluster.local/ns/../a",
            "spiffe://cluster.local/ns/a?x=1",
            "spiffe://cluster.local/ns/a#f",
            "spiffe://cluster.local/ns/a\0b",
            "spiffe://cluster.local/ns/a b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("spiffe://td/{}", "a".repeat(3000));
        assert!(SpiffeId::parse(&long).is_err());
    }

    #[test]
    fn patterns() {
        let v = "spiffe://cluster.local/ns/prod/sa/web";
        assert!(pattern_matches("*", v));
        assert!(pattern_matches("cluster.local/ns/prod/sa/web", v));
        assert!(pattern_matches("spiffe://cluster.local/ns/prod/sa/web", v));
        assert!(pattern_matches("cluster.local/ns/prod/*", v));
        assert!(pattern_matches("*/sa/web", v));
        assert!(!pattern_matches("cluster.local/ns/dev/*", v));
        assert!(!pattern_matches("cluster.local/ns/prod/sa/we", v));
    }
}
