//! Policy evaluation with Istio's AuthorizationPolicy semantics. Pure: the request is a
//! [`RequestAttrs`] value.
//!
//! - A policy matches when any of its rules matches; a policy without rules matches nothing.
//! - A rule matches when any of its `from` sources matches (or it has none), any of its `to`
//!   operations matches (or it has none), and every `when` condition holds.
//! - Inside a source, operation or condition every field that is set must hold: a positive field
//!   (`paths`) when some value matches, a negative one (`not_paths`) when none does.
//! - Decision: a matching DENY policy denies; otherwise, if there are ALLOW policies, one of them
//!   must match; with no ALLOW policy the request is allowed. AUDIT policies only report.
//!   CUSTOM policies select the requests sent to the external authorization service.

use std::net::IpAddr;

use serde_json::{Map, Value};
use weft_sdk::http::glob_match;

use crate::cidr::Cidr;

/// What a policy does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The request may pass (if no DENY policy matches).
    Allow,
    /// The request is refused with 403.
    Deny,
    /// The match is logged and counted; the decision is unchanged.
    Audit,
    /// The request is sent to the external authorization service.
    Custom,
}

impl Action {
    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

/// What is known about a request when policies are evaluated.
#[derive(Debug, Clone, Default)]
pub struct RequestAttrs {
    /// `:method`.
    pub method: String,
    /// `:authority`, lower-cased.
    pub host: String,
    /// The path without its query, normalized by [`normalize_path`].
    pub path: String,
    /// The port the request arrived on.
    pub destination_port: Option<u16>,
    /// The address the request arrived on.
    pub destination_ip: Option<IpAddr>,
    /// The peer's address.
    pub source_ip: Option<IpAddr>,
    /// The peer's mTLS identity without `spiffe://` (`cluster.local/ns/default/sa/web`).
    pub peer_principal: Option<String>,
    /// The TLS server name.
    pub sni: Option<String>,
    /// Request headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// `iss/sub` of a valid JWT, or `api-key/<name>` of a valid API key.
    pub request_principal: Option<String>,
    /// The claims of a valid JWT.
    pub claims: Option<Map<String, Value>>,
    /// The name of a valid API key.
    pub api_key: Option<String>,
}

impl RequestAttrs {
    /// A header's value; repeated headers are joined with `,` (as Envoy's header matcher sees
    /// them), so a second copy cannot hide from a condition.
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let mut values = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = values.next()?;
        match values.next() {
            None => Some(std::borrow::Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = format!("{first},{second}");
                for v in values {
                    joined.push(',');
                    joined.push_str(v);
                }
                Some(std::borrow::Cow::Owned(joined))
            }
        }
    }

    fn namespace(&self) -> Option<&str> {
        let p = self.peer_principal.as_deref()?;
        let rest = p.split_once("/ns/").map(|(_, r)| r)?;
        Some(rest.split('/').next().unwrap_or(rest))
    }

    fn claim(&self, path: &[String]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.claims.as_ref()?.get(first)?;
        for seg in rest {
            v = v.get(seg)?;
        }
        Some(v)
    }
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its name (for reasons, logs and metrics).
    pub name: String,
    /// What it does.
    pub action: Action,
    /// Its rules.
    pub rules: Vec<Rule>,
}

impl Policy {
    /// Whether the policy looks at the request's credentials (request principals, claims,
    /// audiences, API key): a denial by such a policy of a request without credentials is a 401.
    pub fn uses_request_auth(&self) -> bool {
        self.rules.iter().any(|r| {
            r.from
                .iter()
                .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty())
                || r.when.iter().any(|c| c.key.is_request_auth())
        })
    }

    fn matches(&self, a: &RequestAttrs) -> bool {
        self.rules.iter().any(|r| r.matches(a))
    }
}

/// One rule of a policy.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Who sends the request; any may match.
    pub from: Vec<Source>,
    /// What is requested; any may match.
    pub to: Vec<Operation>,
    /// Extra conditions; all must hold.
    pub when: Vec<Condition>,
}

impl Rule {
    fn matches(&self, a: &RequestAttrs) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a)))
            && self.when.iter().all(|c| c.matches(a))
    }
}

/// `from[].source`.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// Peer (mTLS) principals.
    pub principals: Vec<String>,
    /// Peer principals that must not match.
    pub not_principals: Vec<String>,
    /// Request principals (`iss/sub`, `api-key/<name>`).
    pub request_principals: Vec<String>,
    /// Request principals that must not match.
    pub not_request_principals: Vec<String>,
    /// Peer namespaces (from the principal's `/ns/<namespace>/`).
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    pub not_namespaces: Vec<String>,
    /// Peer address blocks.
    pub ip_blocks: Vec<Cidr>,
    /// Peer address blocks that must not match.
    pub not_ip_blocks: Vec<Cidr>,
}

impl Source {
    fn matches(&self, a: &RequestAttrs) -> bool {
        let peer = a.peer_principal.as_deref();
        let req = a.request_principal.as_deref();
        let ns = a.namespace();
        strings(&self.principals, &self.not_principals, peer)
            && strings(&self.request_principals, &self.not_request_principals, req)
            && strings(&self.namespaces, &self.not_namespaces, ns)
            && ips(&self.ip_blocks, &self.not_ip_blocks, a.source_ip)
    }
}

/// `to[].operation`.
#[derive(Debug, Clone, Default)]
pub struct Operation {
    /// Hosts (lower-case; `*.example.com`, `api.*` allowed).
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    pub not_hosts: Vec<String>,
    /// Methods.
    pub methods: Vec<String>,
    /// Methods that must not match.
    pub not_methods: Vec<String>,
    /// Paths (exact, `prefix*`, `*suffix`, `*`).
    pub paths: Vec<String>,
    /// Paths that must not match.
    pub not_paths: Vec<String>,
    /// Destination ports.
    pub ports: Vec<u16>,
    /// Destination ports that must not match.
    pub not_ports: Vec<u16>,
}

impl Operation {
    fn matches(&self, a: &RequestAttrs) -> bool {
        hosts(&self.hosts, &self.not_hosts, &a.host)
            && strings(&self.methods, &self.not_methods, Some(&a.method))
            && strings(&self.paths, &self.not_paths, Some(&a.path))
            && ports(&self.ports, &self.not_ports, a.destination_port)
    }
}

/// A `when` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `request.headers[name]`.
    Header(String),
    /// `source.ip`.
    SourceIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.principal`.
    SourcePrincipal,
    /// `destination.ip`.
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
    /// `connection.sni`.
    Sni,
    /// `request.auth.principal`.
    RequestPrincipal,
    /// `request.auth.audiences`.
    Audiences,
    /// `request.auth.presenter`.
    Presenter,
    /// `request.auth.claims[a][b]…`.
    Claim(Vec<String>),
    /// `request.auth.api_key` (Weft): the name of the API key used.
    ApiKey,
}

/// The keys accepted in `when`, for error messages.
pub const KEYS: &str = "request.headers[<name>], source.ip, source.namespace, source.principal, \
     destination.ip, destination.port, connection.sni, request.auth.principal, \
     request.auth.audiences, request.auth.presenter, request.auth.claims[<name>], \
     request.auth.api_key";

impl Key {
    /// Parses a key; `None` when unknown.
    pub fn parse(text: &str) -> Option<Key> {
        Some(match text {
            "source.ip" => Key::SourceIp,
            "source.namespace" => Key::SourceNamespace,
            "source.principal" => Key::SourcePrincipal,
            "destination.ip" => Key::DestinationIp,
            "destination.port" => Key::DestinationPort,
            "connection.sni" => Key::Sni,
            "request.auth.principal" => Key::RequestPrincipal,
            "request.auth.audiences" => Key::Audiences,
            "request.auth.presenter" => Key::Presenter,
            "request.auth.api_key" => Key::ApiKey,
            _ => {
                if let Some(rest) = text.strip_prefix("request.headers[") {
                    let name = rest.strip_suffix(']')?;
                    if name.is_empty() || name.contains(['[', ']']) {
                        return None;
                    }
                    Key::Header(name.to_ascii_lowercase())
                } else if let Some(rest) = text.strip_prefix("request.auth.claims") {
                    let mut path = Vec::new();
                    let mut rest = rest;
                    while !rest.is_empty() {
                        let inner = rest.strip_prefix('[')?;
                        let (seg, after) = inner.split_once(']')?;
                        if seg.is_empty() || path.len() >= 8 {
                            return None;
                        }
                        path.push(seg.to_owned());
                        rest = after;
                    }
                    if path.is_empty() {
                        return None;
                    }
                    Key::Claim(path)
                } else {
                    return None;
                }
            }
        })
    }

    fn is_request_auth(&self) -> bool {
        matches!(
            self,
            Key::RequestPrincipal | Key::Audiences | Key::Presenter | Key::Claim(_) | Key::ApiKey
        )
    }

    /// What kind of values the key takes.
    pub fn kind(&self) -> ValueKind {
        match self {
            Key::SourceIp | Key::DestinationIp => ValueKind::Ip,
            Key::DestinationPort => ValueKind::Port,
            _ => ValueKind::Text,
        }
    }
}

/// The type of a condition's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Strings matched as exact / `prefix*` / `*suffix` / `*`.
    Text,
    /// CIDR blocks.
    Ip,
    /// Port numbers.
    Port,
}

/// Compiled condition values.
#[derive(Debug, Clone)]
pub enum Values {
    /// Patterns.
    Text(Vec<String>),
    /// Blocks.
    Ip(Vec<Cidr>),
    /// Ports.
    Port(Vec<u16>),
}

impl Values {
    fn is_empty(&self) -> bool {
        match self {
            Values::Text(v) => v.is_empty(),
            Values::Ip(v) => v.is_empty(),
            Values::Port(v) => v.is_empty(),
        }
    }
}

/// One `when` condition.
#[derive(Debug, Clone)]
pub struct Condition {
    /// What is looked at.
    pub key: Key,
    /// Any of these must match (when not empty).
    pub values: Values,
    /// None of these may match (when not empty).
    pub not_values: Values,
}

impl Condition {
    fn matches(&self, a: &RequestAttrs) -> bool {
        (self.values.is_empty() || self.any(&self.values, a))
            && (self.not_values.is_empty() || !self.any(&self.not_values, a))
    }

    fn any(&self, values: &Values, a: &RequestAttrs) -> bool {
        match values {
            Values::Ip(blocks) => {
                let ip = match self.key {
                    Key::SourceIp => a.source_ip,
                    _ => a.destination_ip,
                };
                ip.is_some_and(|ip| blocks.iter().any(|b| b.contains(ip)))
            }
            Values::Port(list) => a.destination_port.is_some_and(|p| list.contains(&p)),
            Values::Text(patterns) => {
                let one = |v: &str| !v.is_empty() && patterns.iter().any(|p| glob_match(p, v));
                match &self.key {
                    Key::Header(name) => a.header(name).is_some_and(|v| one(&v)),
                    Key::SourceNamespace => a.namespace().is_some_and(one),
                    Key::SourcePrincipal => a.peer_principal.as_deref().is_some_and(one),
                    Key::Sni => a.sni.as_deref().is_some_and(one),
                    Key::RequestPrincipal => a.request_principal.as_deref().is_some_and(one),
                    Key::ApiKey => a.api_key.as_deref().is_some_and(one),
                    Key::Audiences => a
                        .claim(&["aud".to_owned()])
                        .is_some_and(|v| claim_any(v, one)),
                    Key::Presenter => a
                        .claim(&["azp".to_owned()])
                        .is_some_and(|v| claim_any(v, one)),
                    Key::Claim(path) => a.claim(path).is_some_and(|v| claim_any(v, one)),
                    Key::SourceIp | Key::DestinationIp | Key::DestinationPort => false,
                }
            }
        }
    }
}

/// A claim matches when it is a matching string, number or boolean, or a list holding one.
fn claim_any(v: &Value, one: impl Fn(&str) -> bool) -> bool {
    match v {
        Value::String(s) => one(s),
        Value::Number(n) => one(&n.to_string()),
        Value::Bool(b) => one(if *b { "true" } else { "false" }),
        Value::Array(list) => list.iter().take(256).any(|item| match item {
            Value::String(s) => one(s),
            Value::Number(n) => one(&n.to_string()),
            _ => false,
        }),
        _ => false,
    }
}

fn any_glob(patterns: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && patterns.iter().any(|p| glob_match(p, v)))
}

fn strings(yes: &[String], no: &[String], value: Option<&str>) -> bool {
    (yes.is_empty() || any_glob(yes, value)) && (no.is_empty() || !any_glob(no, value))
}

fn ips(yes: &[Cidr], no: &[Cidr], ip: Option<IpAddr>) -> bool {
    let any = |list: &[Cidr]| ip.is_some_and(|ip| list.iter().any(|c| c.contains(ip)));
    (yes.is_empty() || any(yes)) && (no.is_empty() || !any(no))
}

fn ports(yes: &[u16], no: &[u16], port: Option<u16>) -> bool {
    let any = |list: &[u16]| port.is_some_and(|p| list.contains(&p));
    (yes.is_empty() || any(yes)) && (no.is_empty() || !any(no))
}

/// Hosts match case-insensitively, with or without the `:port` of the authority.
fn hosts(yes: &[String], no: &[String], host: &str) -> bool {
    let bare = strip_port(host);
    let any = |list: &[String]| {
        !host.is_empty()
            && list
                .iter()
                .any(|p| glob_match(p, host) || glob_match(p, bare))
    };
    (yes.is_empty() || any(yes)) && (no.is_empty() || !any(no))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The outcome of evaluating the policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by the local policies.
    Allow,
    /// Denied by the DENY policy at this index.
    DeniedBy(usize),
    /// There are ALLOW policies and none matched.
    NoAllowMatch,
}

/// The evaluation of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The decision.
    pub verdict: Verdict,
    /// The AUDIT policies that matched (indices).
    pub audited: Vec<usize>,
    /// Whether the external authorization service is to be asked: a CUSTOM policy matched, or
    /// there is none.
    pub custom: bool,
}

/// All policies, in configuration order.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// The policies.
    pub policies: Vec<Policy>,
}

impl PolicySet {
    /// Evaluates the policies for a request.
    pub fn evaluate(&self, a: &RequestAttrs) -> Evaluation {
        let audited = self
            .indices(Action::Audit)
            .filter(|i| self.policies[*i].matches(a))
            .collect();
        let mut custom_policies = self.indices(Action::Custom).peekable();
        let custom = custom_policies.peek().is_none()
            || custom_policies.any(|i| self.policies[i].matches(a));
        let verdict = if let Some(i) = self
            .indices(Action::Deny)
            .find(|i| self.policies[*i].matches(a))
        {
            Verdict::DeniedBy(i)
        } else {
            let mut allow = self.indices(Action::Allow).peekable();
            if allow.peek().is_none() || allow.any(|i| self.policies[i].matches(a)) {
                Verdict::Allow
            } else {
                Verdict::NoAllowMatch
            }
        };
        Evaluation {
            verdict,
            audited,
            custom,
        }
    }

    fn indices(&self, action: Action) -> impl Iterator<Item = usize> + '_ {
        self.policies
            .iter()
            .enumerate()
            .filter(move |(_, p)| p.action == action)
            .map(|(i, _)| i)
    }

    /// Whether a denial would have been avoidable with credentials: the deciding policy (or, for
    /// [`Verdict::NoAllowMatch`], some ALLOW policy) looks at request credentials.
    pub fn denial_needs_credentials(&self, verdict: &Verdict) -> bool {
        match verdict {
            Verdict::Allow => false,
            Verdict::DeniedBy(i) => self.policies.get(*i).is_some_and(Policy::uses_request_auth),
            Verdict::NoAllowMatch => self
                .indices(Action::Allow)
                .any(|i| self.policies[i].uses_request_auth()),
        }
    }
}

/// The path as policies see it: the query and fragment dropped, percent-escapes of unreserved
/// characters decoded (`%61` → `a`), repeated slashes merged and `.` / `..` segments resolved —
/// so `/public/../admin` and `//%61dmin` are matched as `/admin`, as Envoy's path normalization
/// does for Istio. Escaped slashes (`%2F`) stay as they are.
pub fn normalize_path(raw: &str) -> String {
    let path = weft_sdk::http::path_only(raw);
    // Every path is normalized, however long (linear time; the proxy bounds request heads):
    // skipping long ones would let `/public/` + many `a/../` + `admin` pass as `/public/…`.
    if !path.starts_with('/') {
        return path.to_owned();
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (
                weft_sdk::http::hex_digit(bytes[i + 1]),
                weft_sdk::http::hex_digit(bytes[i + 2]),
            )
        {
            let c = h << 4 | l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(c);
            } else {
                decoded.extend_from_slice(&[
                    b'%',
                    bytes[i + 1].to_ascii_uppercase(),
                    bytes[i + 2].to_ascii_uppercase(),
                ]);
            }
            i += 3;
            continue;
        }
        if bytes[i] == b'%'
            && bytes
                .get(i + 1)
                .is_some_and(|&b| b == b'%' || weft_sdk::http::hex_digit(b).is_some())
        {
            // A `%` that starts no escape but is followed by a hex digit or another `%` is
            // written `%25`, so it never forms a new escape with what the next escape decodes
            // to (`%3%33` would otherwise become `%33`, which a second normalization, or a
            // second decoder upstream, reads as `3`). Normalizing twice changes nothing.
            decoded.extend_from_slice(b"%25");
        } else {
            decoded.push(bytes[i]);
        }
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(method: &str, path: &str) -> RequestAttrs {
        RequestAttrs {
            method: method.into(),
            host: "api.example.com:8080".into(),
            path: normalize_path(path),
            destination_port: Some(8080),
            source_ip: "10.1.2.3".parse().ok(),
            ..RequestAttrs::default()
        }
    }

    fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Policy {
        Policy {
            name: name.into(),
            action,
            rules,
        }
    }

    fn to_paths(paths: &[&str]) -> Rule {
        Rule {
            to: vec![Operation {
                paths: paths.iter().map(|s| (*s).into()).collect(),
                ..Operation::default()
            }],
            ..Rule::default()
        }
    }

    #[test]
    fn deny_before_allow_and_default_allow() {
        let set = PolicySet {
            policies: vec![
                policy(
                    "public",
                    Action::Allow,
                    vec![to_paths(&["/public/*", "/admin/*"])],
                ),
                policy("no-admin", Action::Deny, vec![to_paths(&["/admin/*"])]),
            ],
        };
        assert_eq!(
            set.evaluate(&attrs("GET", "/public/x")).verdict,
            Verdict::Allow
        );
        assert_eq!(
            set.evaluate(&attrs("GET", "/admin/x")).verdict,
            Verdict::DeniedBy(1)
        );
        assert_eq!(
            set.evaluate(&attrs("GET", "/other")).verdict,
            Verdict::NoAllowMatch
        );
        let only_deny = PolicySet {
            policies: vec![set.policies[1].clone()],
        };
        assert_eq!(
            only_deny.evaluate(&attrs("GET", "/other")).verdict,
            Verdict::Allow
        );
        assert_eq!(
            PolicySet::default().evaluate(&attrs("GET", "/")).verdict,
            Verdict::Allow
        );
        // No rules: matches nothing (Istio's allow-nothing).
        let nothing = PolicySet {
            policies: vec![policy("allow-nothing", Action::Allow, vec![])],
        };
        assert_eq!(
            nothing.evaluate(&attrs("GET", "/")).verdict,
            Verdict::NoAllowMatch
        );
        // One empty rule: matches everything.
        let all = PolicySet {
            policies: vec![policy("allow-all", Action::Allow, vec![Rule::default()])],
        };
        assert_eq!(all.evaluate(&attrs("GET", "/")).verdict, Verdict::Allow);
    }

    #[test]
    fn audit_and_custom_only_report() {
        let set = PolicySet {
            policies: vec![
                policy("watch", Action::Audit, vec![to_paths(&["/admin/*"])]),
                policy("ext", Action::Custom, vec![to_paths(&["/ext/*"])]),
            ],
        };
        let e = set.evaluate(&attrs("GET", "/admin/x"));
        assert_eq!(
            (e.verdict, e.audited, e.custom),
            (Verdict::Allow, vec![0], false)
        );
        let e = set.evaluate(&attrs("GET", "/ext/y"));
        assert_eq!((e.audited.len(), e.custom), (0, true));
        assert!(
            PolicySet::default().evaluate(&attrs("GET", "/")).custom,
            "no CUSTOM policy: all"
        );
    }

    #[test]
    fn operations() {
        let op = Operation {
            hosts: vec!["api.example.com".into()],
            methods: vec!["GET".into(), "HEAD".into()],
            not_paths: vec!["/private*".into()],
            ports: vec![8080],
            ..Operation::default()
        };
        let rule = Rule {
            to: vec![op],
            ..Rule::default()
        };
        let set = PolicySet {
            policies: vec![policy("p", Action::Allow, vec![rule])],
        };
        assert_eq!(set.evaluate(&attrs("GET", "/x")).verdict, Verdict::Allow);
        assert_eq!(
            set.evaluate(&attrs("POST", "/x")).verdict,
            Verdict::NoAllowMatch
        );
        assert_eq!(
            set.evaluate(&attrs("GET", "/private/x")).verdict,
            Verdict::NoAllowMatch
        );
        let mut a = attrs("GET", "/x");
        a.destination_port = Some(9090);
        assert_eq!(set.evaluate(&a).verdict, Verdict::NoAllowMatch);
        let mut a = attrs("GET", "/x");
        a.host = "API.example.com".to_ascii_lowercase();
        assert_eq!(
            set.evaluate(&a).verdict,
            Verdict::Allow,
            "host without the port"
        );
        a.host = "other.example.com".into();
        assert_eq!(set.evaluate(&a).verdict, Verdict::NoAllowMatch);
        assert!(hosts(&["*.example.com".into()], &[], "a.example.com:80"));
        assert!(hosts(&["[::1]".into()], &[], "[::1]:80"));
    }

    #[test]
    fn sources() {
        let src = Source {
            principals: vec!["cluster.local/ns/web/sa/*".into()],
            not_ip_blocks: vec![Cidr::parse("10.9.0.0/16").expect("cidr")],
            ..Source::default()
        };
        let rule = Rule {
            from: vec![src],
            ..Rule::default()
        };
        let set = PolicySet {
            policies: vec![policy("p", Action::Allow, vec![rule])],
        };
        let mut a = attrs("GET", "/");
        assert_eq!(
            set.evaluate(&a).verdict,
            Verdict::NoAllowMatch,
            "no peer principal"
        );
        a.peer_principal = Some("cluster.local/ns/web/sa/frontend".into());
        assert_eq!(set.evaluate(&a).verdict, Verdict::Allow);
        a.source_ip = "10.9.1.1".parse().ok();
        assert_eq!(
            set.evaluate(&a).verdict,
            Verdict::NoAllowMatch,
            "blocked address"
        );
        let ns = Source {
            namespaces: vec!["web".into()],
            ..Source::default()
        };
        a.source_ip = None;
        assert!(ns.matches(&a));
        a.peer_principal = Some("cluster.local/ns/other/sa/x".into());
        assert!(!ns.matches(&a));
        // `*` needs a principal to be present.
        let any = Source {
            request_principals: vec!["*".into()],
            ..Source::default()
        };
        assert!(!any.matches(&a));
        a.request_principal = Some("iss/sub".into());
        assert!(any.matches(&a));
        let not_any = Source {
            not_request_principals: vec!["*".into()],
            ..Source::default()
        };
        assert!(!not_any.matches(&a));
        a.request_principal = None;
        assert!(not_any.matches(&a));
    }

    #[test]
    fn conditions() {
        let cond = |key: &str, values: Values, not_values: Values| Condition {
            key: Key::parse(key).expect("key"),
            values,
            not_values,
        };
        let none = || Values::Text(vec![]);
        let mut a = attrs("GET", "/");
        a.headers = vec![("x-tenant".into(), "acme-prod".into())];
        a.claims = json!({"iss": "i", "aud": ["api", "web"], "groups": ["dev", "admin"],
                          "org": {"id": 42}, "azp": "cli"})
        .as_object()
        .cloned();
        assert!(
            cond(
                "request.headers[X-Tenant]",
                Values::Text(vec!["acme-*".into()]),
                none()
            )
            .matches(&a)
        );
        assert!(
            !cond(
                "request.headers[x-tenant]",
                none(),
                Values::Text(vec!["*-prod".into()])
            )
            .matches(&a)
        );
        assert!(
            !cond(
                "request.headers[x-missing]",
                Values::Text(vec!["*".into()]),
                none()
            )
            .matches(&a)
        );
        // A repeated header is seen whole: the second copy cannot hide from a condition.
        let mut twice = a.clone();
        twice.headers.push(("x-tenant".into(), "evil".into()));
        let deny_evil = cond(
            "request.headers[x-tenant]",
            Values::Text(vec!["*evil".into()]),
            none(),
        );
        assert!(deny_evil.matches(&twice));
        assert!(!deny_evil.matches(&a));
        assert!(
            cond(
                "request.auth.claims[groups]",
                Values::Text(vec!["admin".into()]),
                none()
            )
            .matches(&a)
        );
        assert!(
            cond(
                "request.auth.claims[org][id]",
                Values::Text(vec!["42".into()]),
                none()
            )
            .matches(&a)
        );
        assert!(
            cond(
                "request.auth.audiences",
                Values::Text(vec!["web".into()]),
                none()
            )
            .matches(&a)
        );
        assert!(
            cond(
                "request.auth.presenter",
                Values::Text(vec!["cli".into()]),
                none()
            )
            .matches(&a)
        );
        assert!(
            !cond(
                "request.auth.claims[nope]",
                Values::Text(vec!["*".into()]),
                none()
            )
            .matches(&a)
        );
        let ip = Values::Ip(vec![Cidr::parse("10.0.0.0/8").expect("cidr")]);
        assert!(cond("source.ip", ip, Values::Ip(vec![])).matches(&a));
        assert!(
            cond(
                "destination.port",
                Values::Port(vec![8080]),
                Values::Port(vec![])
            )
            .matches(&a)
        );
        assert!(
            !cond(
                "destination.port",
                Values::Port(vec![]),
                Values::Port(vec![8080])
            )
            .matches(&a)
        );
        for bad in [
            "request.headers[]",
            "request.headers[x",
            "request.auth.claims",
            "request.auth.claims[a]x",
            "remote.ip",
        ] {
            assert_eq!(Key::parse(bad), None, "{bad}");
        }
        let p = policy(
            "p",
            Action::Allow,
            vec![Rule {
                when: vec![cond(
                    "request.auth.claims[groups]",
                    Values::Text(vec!["admin".into()]),
                    none(),
                )],
                ..Rule::default()
            }],
        );
        assert!(p.uses_request_auth());
        assert!(!policy("q", Action::Allow, vec![to_paths(&["/x"])]).uses_request_auth());
    }

    #[test]
    fn paths_are_normalized() {
        for (raw, want) in [
            ("/a/b?x=1", "/a/b"),
            ("//admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/%61dmin/./x", "/admin/x"),
            ("/a/%2F/b", "/a/%2F/b"),
            ("/a/%2f", "/a/%2F"),
            ("/../../", "/"),
            ("/a/", "/a/"),
            ("/a/..", "/"),
            ("/", "/"),
            ("*", "*"),
            ("/%", "/%"),
            ("/%zz", "/%zz"),
            ("/%E2%82%AC", "/%E2%82%AC"),
            ("/%3%33", "/%2533"),
            ("/%%33", "/%253"),
            ("/%3", "/%253"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
            assert_eq!(
                normalize_path(want),
                want,
                "{raw}: normalizing twice changes nothing"
            );
        }
    }

    /// Found by the `authz` fuzz target: normalization was not idempotent.
    #[test]
    fn normalizing_a_normalized_path_changes_nothing() {
        let raw = "/\u{fffd}/%3333%3%3333%33\u{fffd}3\u{fffd}";
        let once = normalize_path(raw);
        assert_eq!(normalize_path(&once), once);
    }

    #[test]
    fn long_paths_are_normalized_too() {
        // Skipping normalization for long paths would let this match ALLOW `/public/*` and
        // miss DENY `/admin/*`, while the upstream resolves it to `/admin/x`.
        let raw = format!("/public/{}admin/x", "a/../".repeat(8000));
        assert_eq!(normalize_path(&raw), "/public/admin/x");
        let raw = format!("/public/{}../admin/x", "a/../".repeat(8000));
        assert_eq!(normalize_path(&raw), "/admin/x");
    }
}
