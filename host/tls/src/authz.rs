//! Listener authorization on the peer's identity, with the semantics of Istio's
//! AuthorizationPolicy `from.source` (principals, namespaces) plus trust domains:
//! any matching DENY rule denies; otherwise, with no ALLOW rule everything is allowed, and with
//! ALLOW rules at least one must match. A rule matches when every field it sets matches (one
//! entry of a field suffices). Identity fields never match a plaintext peer.

use crate::spiffe::{SpiffeId, pattern_matches};

/// One source rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRule {
    /// Peer principals (`td/ns/x/sa/y` or `spiffe://…`; `*`, `prefix*`, `*suffix`).
    pub principals: Vec<String>,
    /// Peer namespaces (same patterns).
    pub namespaces: Vec<String>,
    /// Peer trust domains (same patterns).
    pub trust_domains: Vec<String>,
}

impl SourceRule {
    fn matches(&self, peer: Option<&SpiffeId>) -> bool {
        let field = |patterns: &[String], value: Option<String>| {
            patterns.is_empty()
                || value.is_some_and(|v| patterns.iter().any(|p| pattern_matches(p, &v)))
        };
        field(&self.principals, peer.map(SpiffeId::principal))
            && field(
                &self.namespaces,
                peer.and_then(|p| p.namespace().map(str::to_owned)),
            )
            && field(
                &self.trust_domains,
                peer.map(|p| p.trust_domain().to_owned()),
            )
    }
}

/// A listener's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorization {
    /// Rules that allow.
    pub allow: Vec<SourceRule>,
    /// Rules that deny (checked first).
    pub deny: Vec<SourceRule>,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Allow,
    /// Refuse; the string says which rule (for the access log).
    Deny(String),
}

impl Authorization {
    /// Whether there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Decides for a peer (`None`: plaintext or no client certificate).
    pub fn decide(&self, peer: Option<&SpiffeId>) -> Decision {
        if let Some(i) = self.deny.iter().position(|r| r.matches(peer)) {
            return Decision::Deny(format!("rbac_access_denied_matched_policy[deny[{i}]]"));
        }
        if self.allow.is_empty() || self.allow.iter().any(|r| r.matches(peer)) {
            Decision::Allow
        } else {
            Decision::Deny("rbac_access_denied_matched_policy[none]".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("id")
    }

    #[test]
    fn istio_semantics() {
        let web = id("spiffe://cluster.local/ns/prod/sa/web");
        let dev = id("spiffe://cluster.local/ns/dev/sa/web");
        let foreign = id("spiffe://other.org/ns/prod/sa/web");
        let none = Authorization::default();
        assert_eq!(none.decide(None), Decision::Allow);

        let a = Authorization {
            allow: vec![SourceRule {
                namespaces: vec!["prod".into()],
                trust_domains: vec!["cluster.local".into()],
                ..Default::default()
            }],
            deny: vec![SourceRule {
                principals: vec!["cluster.local/ns/prod/sa/banned".into()],
                ..Default::default()
            }],
        };
        assert_eq!(a.decide(Some(&web)), Decision::Allow);
        assert!(matches!(a.decide(Some(&dev)), Decision::Deny(_)));
        assert!(matches!(a.decide(Some(&foreign)), Decision::Deny(_)));
        assert!(matches!(a.decide(None), Decision::Deny(_)));
        let banned = id("spiffe://cluster.local/ns/prod/sa/banned");
        assert!(matches!(a.decide(Some(&banned)), Decision::Deny(d) if d.contains("deny[0]")));

        // `principals: ["*"]` = any authenticated peer.
        let any = Authorization {
            allow: vec![SourceRule {
                principals: vec!["*".into()],
                ..Default::default()
            }],
            deny: vec![],
        };
        assert_eq!(any.decide(Some(&foreign)), Decision::Allow);
        assert!(matches!(any.decide(None), Decision::Deny(_)));
    }
}
