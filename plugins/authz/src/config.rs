//! The configuration schema (serde) and its validation into [`Compiled`] settings. Every error
//! names the field at fault, e.g. `policies[1].rules[0].from[0].source.ip_blocks[2]: invalid
//! CIDR "10.0.0.0/33": prefix length must be 0..=32`.

use std::rc::Rc;

use serde::Deserialize;
use weft_sdk::config::ConfigError;

use crate::cidr::Cidr;
use crate::jwt::{self, Jwks};
use crate::policy::{
    self, Action, Condition, Key, Operation, Policy, PolicySet, Rule, Source, ValueKind, Values,
};

/// The plugin configuration as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// AuthorizationPolicy-like policies, evaluated DENY first, then ALLOW.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// JWT authentication.
    #[serde(default)]
    pub jwt: Option<JwtSpec>,
    /// API-key authentication.
    #[serde(default)]
    pub api_keys: Option<ApiKeysSpec>,
    /// External authorization service.
    #[serde(default)]
    pub ext_authz: Option<ExtAuthzSpec>,
    /// The header carrying the machine-readable reason of a 401 or 403.
    #[serde(default = "default_reason_header")]
    pub reason_header: String,
}

fn default_reason_header() -> String {
    "x-weft-authz-reason".into()
}

/// One policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Unique name, used in reasons (`denied_by_policy:<name>`), logs and metrics.
    pub name: String,
    /// `ALLOW`, `DENY`, `AUDIT` or `CUSTOM`.
    pub action: ActionSpec,
    /// The rules; the policy matches when any does. No rules: the policy matches nothing.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// A policy action.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ActionSpec {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
    /// Audit.
    Audit,
    /// Custom.
    Custom,
}

/// One rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Sources; any may match.
    #[serde(default)]
    pub from: Vec<FromSpec>,
    /// Operations; any may match.
    #[serde(default)]
    pub to: Vec<ToSpec>,
    /// Conditions; all must hold.
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

/// `from[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromSpec {
    /// The source.
    pub source: SourceSpec,
}

/// `to[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToSpec {
    /// The operation.
    pub operation: OperationSpec,
}

/// `from[].source`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
}

/// `to[].operation`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub not_ports: Vec<PortSpec>,
}

/// A port, as a number or (as in Istio) a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// `8080`.
    Number(u64),
    /// `"8080"`.
    Text(String),
}

/// `when[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// The attribute (`request.headers[x-tenant]`, `request.auth.claims[groups]`, …).
    pub key: String,
    /// Any must match.
    #[serde(default)]
    pub values: Vec<String>,
    /// None may match.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// `jwt`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// Token issuers; a token is checked by the provider whose `issuer` is its `iss`.
    pub providers: Vec<ProviderSpec>,
}

/// `jwt.providers[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Unique name (metrics, logs).
    pub name: String,
    /// The exact `iss` the tokens carry.
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any audience.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// An inline JWKS: a JSON object or a string holding one.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Where the JWKS is published (fetched through `jwks_cluster`).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The proxy cluster the JWKS is fetched from.
    #[serde(default)]
    pub jwks_cluster: Option<String>,
    /// How long a fetched JWKS is used before it is fetched again, in seconds.
    #[serde(default = "default_cache_duration")]
    pub cache_duration_seconds: u64,
    /// Timeout of a JWKS fetch, in milliseconds.
    #[serde(default = "default_jwks_timeout")]
    pub jwks_timeout_ms: u64,
    /// An HS256 shared secret (at least 32 bytes of UTF-8).
    #[serde(default)]
    pub secret: Option<String>,
    /// Headers the token is read from; default `Authorization: Bearer <token>`.
    #[serde(default)]
    pub from_headers: Option<Vec<FromHeaderSpec>>,
    /// Query parameters the token is read from; default `access_token` when `from_headers` is
    /// not set either.
    #[serde(default)]
    pub from_params: Option<Vec<String>>,
    /// Keep the token on the request sent upstream (default: it is removed).
    #[serde(default)]
    pub forward: bool,
    /// Tolerance for `exp` and `nbf`, in seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// Claims copied to upstream request headers after a successful check.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
}

fn default_cache_duration() -> u64 {
    600
}

fn default_jwks_timeout() -> u64 {
    5000
}

fn default_skew() -> u64 {
    60
}

/// `from_headers[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromHeaderSpec {
    /// The header name.
    pub name: String,
    /// A prefix stripped from the value (`Bearer `), matched case-insensitively.
    #[serde(default)]
    pub prefix: String,
}

/// `output_claim_to_headers[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeaderSpec {
    /// The upstream request header.
    pub header: String,
    /// The claim; nested claims as `a.b`.
    pub claim: String,
}

/// `api_keys`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysSpec {
    /// The accepted keys.
    pub keys: Vec<ApiKeySpec>,
    /// The header the key is read from.
    #[serde(default = "default_api_key_header")]
    pub from_header: String,
    /// A query parameter the key is also read from.
    #[serde(default)]
    pub from_query: Option<String>,
    /// Whether a request without any credential is refused with 401 (default true).
    #[serde(default = "default_true")]
    pub required: bool,
    /// Keep the key on the request sent upstream (default: it is removed).
    #[serde(default)]
    pub forward: bool,
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}

fn default_true() -> bool {
    true
}

/// `api_keys.keys[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// The key's name (request principal `api-key/<name>`).
    pub name: String,
    /// The key itself.
    #[serde(default)]
    pub key: Option<String>,
    /// Or its SHA-256, hex.
    #[serde(default)]
    pub key_sha256: Option<String>,
}

/// `ext_authz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzSpec {
    /// The proxy cluster of the authorization service.
    pub cluster: String,
    /// `:authority` of the check request (default: the original request's).
    #[serde(default)]
    pub authority: Option<String>,
    /// Prepended to the original path.
    #[serde(default)]
    pub path_prefix: String,
    /// Timeout of the check, in milliseconds.
    #[serde(default = "default_ext_timeout")]
    pub timeout_ms: u64,
    /// Request headers sent to the service (exact names or `prefix*`).
    #[serde(default = "default_allowed_request_headers")]
    pub allowed_request_headers: Vec<String>,
    /// Headers of an allowing answer copied onto the upstream request.
    #[serde(default)]
    pub headers_to_upstream: Vec<String>,
    /// Headers of a denying answer copied to the client (default: all but hop-by-hop ones).
    #[serde(default)]
    pub headers_to_client: Option<Vec<String>>,
    /// Allow the request when the service cannot be reached, times out or answers 5xx.
    #[serde(default)]
    pub failure_mode_allow: bool,
    /// The status sent when the service fails and `failure_mode_allow` is false.
    #[serde(default = "default_status_on_error")]
    pub status_on_error: u16,
}

fn default_ext_timeout() -> u64 {
    200
}

fn default_allowed_request_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}

fn default_status_on_error() -> u16 {
    403
}

// === compiled settings ===

/// Validated settings, ready to serve.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// The policies.
    pub policies: PolicySet,
    /// JWT providers.
    pub providers: Vec<Provider>,
    /// API keys.
    pub api_keys: Option<ApiKeys>,
    /// External authorization.
    pub ext_authz: Option<ExtAuthz>,
    /// The reason header's name.
    pub reason_header: String,
}

/// A JWT provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Name.
    pub name: String,
    /// Issuer.
    pub issuer: String,
    /// Audiences.
    pub audiences: Vec<String>,
    /// Keys configured inline (and the HS256 secret).
    pub inline: Option<Rc<Jwks>>,
    /// A JWKS fetched from a cluster.
    pub remote: Option<RemoteJwks>,
    /// `(lower-case header, prefix)`.
    pub from_headers: Vec<(String, String)>,
    /// Query parameters.
    pub from_params: Vec<String>,
    /// Keep the token upstream.
    pub forward: bool,
    /// Skew in seconds.
    pub clock_skew: u64,
    /// `(header, claim path)`.
    pub claim_headers: Vec<(String, Vec<String>)>,
}

/// A remote JWKS location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The cluster.
    pub cluster: String,
    /// `:authority`.
    pub authority: String,
    /// `:path`.
    pub path: String,
    /// Cache lifetime in seconds.
    pub cache_duration: u64,
    /// Fetch timeout in milliseconds.
    pub timeout_ms: u64,
}

impl RemoteJwks {
    /// The shared-data key its JWKS is cached under (shared by all instances and providers
    /// that use the same location).
    pub fn cache_key(&self) -> String {
        format!(
            "weft-authz/jwks/{}/{}{}",
            self.cluster, self.authority, self.path
        )
    }
}

/// API keys.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    /// `(name, sha256(key))`.
    pub keys: Vec<(String, [u8; 32])>,
    /// Lower-case header.
    pub from_header: String,
    /// Query parameter.
    pub from_query: Option<String>,
    /// Refuse requests without credentials.
    pub required: bool,
    /// Keep the key upstream.
    pub forward: bool,
}

/// External authorization.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    /// The cluster.
    pub cluster: String,
    /// `:authority` override.
    pub authority: Option<String>,
    /// Path prefix.
    pub path_prefix: String,
    /// Timeout in milliseconds.
    pub timeout_ms: u64,
    /// Header patterns sent to the service (lower-case).
    pub allowed_request_headers: Vec<String>,
    /// Headers copied upstream (lower-case).
    pub headers_to_upstream: Vec<String>,
    /// Headers copied to the client on deny (lower-case); `None`: all but hop-by-hop.
    pub headers_to_client: Option<Vec<String>>,
    /// Failure mode.
    pub failure_mode_allow: bool,
    /// Status on failure.
    pub status_on_error: u32,
}

/// The most policies, rules per policy and values per field accepted: the configuration is
/// walked on every request, so it stays bounded.
const MAX_ITEMS: usize = 1024;

impl Compiled {
    /// Parses and validates a configuration.
    pub fn parse(bytes: &[u8]) -> Result<Compiled, ConfigError> {
        let settings: Settings = weft_sdk::config::parse(bytes)?;
        Compiled::from_settings(&settings)
    }

    /// Validates parsed settings.
    pub fn from_settings(s: &Settings) -> Result<Compiled, ConfigError> {
        check_header_name(&s.reason_header)
            .map_err(|m| ConfigError::invalid("reason_header", m))?;
        bounded(s.policies.len(), "policies")?;
        let mut policies = Vec::with_capacity(s.policies.len());
        for (i, p) in s.policies.iter().enumerate() {
            let field = format!("policies[{i}]");
            if p.name.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    "must not be empty",
                ));
            }
            // The name goes into the reason header of a denial: it must be a valid header value.
            if p.name.len() > 128 || p.name.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    "use at most 128 visible ASCII characters (it is sent in the reason header)",
                ));
            }
            if s.policies[..i].iter().any(|q| q.name == p.name) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    format!("duplicate policy name {:?}", p.name),
                ));
            }
            policies.push(compile_policy(p).map_err(|e| e.within(&field))?);
        }
        let mut providers = Vec::new();
        if let Some(jwt) = &s.jwt {
            if jwt.providers.is_empty() {
                return Err(ConfigError::invalid(
                    "jwt.providers",
                    "must name at least one provider",
                ));
            }
            for (i, p) in jwt.providers.iter().enumerate() {
                let field = format!("jwt.providers[{i}]");
                if jwt.providers[..i].iter().any(|q| q.name == p.name) {
                    return Err(ConfigError::invalid(
                        format!("{field}.name"),
                        format!("duplicate provider name {:?}", p.name),
                    ));
                }
                providers.push(compile_provider(p).map_err(|e| e.within(&field))?);
            }
        }
        let api_keys = s
            .api_keys
            .as_ref()
            .map(|a| compile_api_keys(a).map_err(|e| e.within("api_keys")))
            .transpose()?;
        let ext_authz = s
            .ext_authz
            .as_ref()
            .map(|x| compile_ext_authz(x).map_err(|e| e.within("ext_authz")))
            .transpose()?;
        let has_custom = policies.iter().any(|p: &Policy| p.action == Action::Custom);
        if has_custom && ext_authz.is_none() {
            return Err(ConfigError::invalid(
                "policies",
                "a CUSTOM policy needs `ext_authz` to be configured",
            ));
        }
        Ok(Compiled {
            policies: PolicySet { policies },
            providers,
            api_keys,
            ext_authz,
            reason_header: s.reason_header.to_ascii_lowercase(),
        })
    }
}

fn bounded(len: usize, field: &str) -> Result<(), ConfigError> {
    if len > MAX_ITEMS {
        return Err(ConfigError::invalid(
            field,
            format!("at most {MAX_ITEMS} entries"),
        ));
    }
    Ok(())
}

fn compile_policy(p: &PolicySpec) -> Result<Policy, ConfigError> {
    bounded(p.rules.len(), "rules")?;
    let mut rules = Vec::with_capacity(p.rules.len());
    for (i, r) in p.rules.iter().enumerate() {
        rules.push(compile_rule(r).map_err(|e| e.within(&format!("rules[{i}]")))?);
    }
    Ok(Policy {
        name: p.name.clone(),
        action: match p.action {
            ActionSpec::Allow => Action::Allow,
            ActionSpec::Deny => Action::Deny,
            ActionSpec::Audit => Action::Audit,
            ActionSpec::Custom => Action::Custom,
        },
        rules,
    })
}

fn compile_rule(r: &RuleSpec) -> Result<Rule, ConfigError> {
    bounded(r.from.len(), "from")?;
    bounded(r.to.len(), "to")?;
    bounded(r.when.len(), "when")?;
    let mut rule = Rule::default();
    for (i, f) in r.from.iter().enumerate() {
        let source = compile_source(&f.source)
            .map_err(|e| e.within("source").within(&format!("from[{i}]")))?;
        rule.from.push(source);
    }
    for (i, t) in r.to.iter().enumerate() {
        let op = compile_operation(&t.operation)
            .map_err(|e| e.within("operation").within(&format!("to[{i}]")))?;
        rule.to.push(op);
    }
    for (i, c) in r.when.iter().enumerate() {
        rule.when
            .push(compile_condition(c).map_err(|e| e.within(&format!("when[{i}]")))?);
    }
    Ok(rule)
}

fn patterns(list: &[String], field: &str, lower: bool) -> Result<Vec<String>, ConfigError> {
    bounded(list.len(), field)?;
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            if p.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{field}[{i}]"),
                    "must not be empty",
                ));
            }
            if p.len() > 1 && p.as_bytes()[1..p.len() - 1].contains(&b'*') {
                return Err(ConfigError::invalid(
                    format!("{field}[{i}]"),
                    format!("{p:?}: `*` is only allowed at the start or the end"),
                ));
            }
            Ok(if lower {
                p.to_ascii_lowercase()
            } else {
                p.clone()
            })
        })
        .collect()
}

fn principals(list: &[String], field: &str) -> Result<Vec<String>, ConfigError> {
    Ok(patterns(list, field, false)?
        .into_iter()
        .map(|p| p.strip_prefix("spiffe://").map(str::to_owned).unwrap_or(p))
        .collect())
}

fn cidrs(list: &[String], field: &str) -> Result<Vec<Cidr>, ConfigError> {
    bounded(list.len(), field)?;
    list.iter()
        .enumerate()
        .map(|(i, c)| Cidr::parse(c).map_err(|m| ConfigError::invalid(format!("{field}[{i}]"), m)))
        .collect()
}

fn port_list(list: &[PortSpec], field: &str) -> Result<Vec<u16>, ConfigError> {
    bounded(list.len(), field)?;
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let n = match p {
                PortSpec::Number(n) => u16::try_from(*n).ok(),
                PortSpec::Text(t) => t.parse::<u16>().ok(),
            };
            n.filter(|n| *n > 0).ok_or_else(|| {
                ConfigError::invalid(format!("{field}[{i}]"), format!("invalid port {p:?}"))
            })
        })
        .collect()
}

fn compile_source(s: &SourceSpec) -> Result<Source, ConfigError> {
    let source = Source {
        principals: principals(&s.principals, "principals")?,
        not_principals: principals(&s.not_principals, "not_principals")?,
        request_principals: patterns(&s.request_principals, "request_principals", false)?,
        not_request_principals: patterns(
            &s.not_request_principals,
            "not_request_principals",
            false,
        )?,
        namespaces: patterns(&s.namespaces, "namespaces", false)?,
        not_namespaces: patterns(&s.not_namespaces, "not_namespaces", false)?,
        ip_blocks: cidrs(&s.ip_blocks, "ip_blocks")?,
        not_ip_blocks: cidrs(&s.not_ip_blocks, "not_ip_blocks")?,
    };
    let empty = source.principals.is_empty()
        && source.not_principals.is_empty()
        && source.request_principals.is_empty()
        && source.not_request_principals.is_empty()
        && source.namespaces.is_empty()
        && source.not_namespaces.is_empty()
        && source.ip_blocks.is_empty()
        && source.not_ip_blocks.is_empty();
    if empty {
        return Err(ConfigError::invalid(
            ".",
            "a source must set at least one field",
        ));
    }
    Ok(source)
}

fn compile_operation(o: &OperationSpec) -> Result<Operation, ConfigError> {
    let op = Operation {
        hosts: patterns(&o.hosts, "hosts", true)?,
        not_hosts: patterns(&o.not_hosts, "not_hosts", true)?,
        methods: patterns(&o.methods, "methods", false)?,
        not_methods: patterns(&o.not_methods, "not_methods", false)?,
        paths: patterns(&o.paths, "paths", false)?,
        not_paths: patterns(&o.not_paths, "not_paths", false)?,
        ports: port_list(&o.ports, "ports")?,
        not_ports: port_list(&o.not_ports, "not_ports")?,
    };
    for (field, list) in [("paths", &op.paths), ("not_paths", &op.not_paths)] {
        if let Some((i, p)) = list
            .iter()
            .enumerate()
            .find(|(_, p)| !p.starts_with('/') && !p.starts_with('*'))
        {
            return Err(ConfigError::invalid(
                format!("{field}[{i}]"),
                format!("{p:?} must start with `/` or `*`"),
            ));
        }
    }
    let empty = op.hosts.is_empty()
        && op.not_hosts.is_empty()
        && op.methods.is_empty()
        && op.not_methods.is_empty()
        && op.paths.is_empty()
        && op.not_paths.is_empty()
        && op.ports.is_empty()
        && op.not_ports.is_empty();
    if empty {
        return Err(ConfigError::invalid(
            ".",
            "an operation must set at least one field",
        ));
    }
    Ok(op)
}

fn compile_condition(c: &ConditionSpec) -> Result<Condition, ConfigError> {
    let key = Key::parse(&c.key).ok_or_else(|| {
        ConfigError::invalid(
            "key",
            format!("unknown key {:?}; known keys: {}", c.key, policy::KEYS),
        )
    })?;
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(ConfigError::invalid(
            ".",
            "set `values`, `not_values` or both",
        ));
    }
    let compile = |list: &[String], field: &str| -> Result<Values, ConfigError> {
        Ok(match key.kind() {
            ValueKind::Text => Values::Text(patterns(list, field, false)?),
            ValueKind::Ip => Values::Ip(cidrs(list, field)?),
            ValueKind::Port => {
                let specs: Vec<PortSpec> = list.iter().map(|s| PortSpec::Text(s.clone())).collect();
                Values::Port(port_list(&specs, field)?)
            }
        })
    };
    Ok(Condition {
        values: compile(&c.values, "values")?,
        not_values: compile(&c.not_values, "not_values")?,
        key,
    })
}

fn compile_provider(p: &ProviderSpec) -> Result<Provider, ConfigError> {
    if p.name.is_empty() {
        return Err(ConfigError::invalid("name", "must not be empty"));
    }
    if p.issuer.is_empty() {
        return Err(ConfigError::invalid("issuer", "must not be empty"));
    }
    let mut keys = Vec::new();
    if let Some(jwks) = &p.jwks {
        let text = match jwks {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let parsed = Jwks::parse(text.as_bytes()).map_err(|m| ConfigError::invalid("jwks", m))?;
        keys.extend(parsed.keys);
    }
    if let Some(secret) = &p.secret {
        if secret.len() < 32 {
            return Err(ConfigError::invalid(
                "secret",
                "an HS256 secret must be at least 32 bytes",
            ));
        }
        keys.extend(Jwks::hmac_secret(secret.as_bytes()).keys);
    }
    let remote = match (&p.jwks_uri, &p.jwks_cluster) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "jwks_cluster",
                "required with `jwks_uri`",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "jwks_uri",
                "required with `jwks_cluster`",
            ));
        }
        (Some(uri), Some(cluster)) => {
            if cluster.is_empty() {
                return Err(ConfigError::invalid("jwks_cluster", "must not be empty"));
            }
            let (authority, path) =
                split_uri(uri).map_err(|m| ConfigError::invalid("jwks_uri", m))?;
            if p.cache_duration_seconds == 0 {
                return Err(ConfigError::invalid(
                    "cache_duration_seconds",
                    "must be at least 1",
                ));
            }
            if !(1..=60_000).contains(&p.jwks_timeout_ms) {
                return Err(ConfigError::invalid("jwks_timeout_ms", "must be 1..=60000"));
            }
            Some(RemoteJwks {
                cluster: cluster.clone(),
                authority,
                path,
                cache_duration: p.cache_duration_seconds,
                timeout_ms: p.jwks_timeout_ms,
            })
        }
    };
    if keys.is_empty() && remote.is_none() {
        return Err(ConfigError::invalid(
            ".",
            "set `jwks`, `secret` or `jwks_uri` + `jwks_cluster`",
        ));
    }
    let (from_headers, from_params) = match (&p.from_headers, &p.from_params) {
        (None, None) => (
            vec![("authorization".to_owned(), "Bearer ".to_owned())],
            vec!["access_token".to_owned()],
        ),
        (h, q) => {
            let mut headers = Vec::new();
            for (i, fh) in h.iter().flatten().enumerate() {
                check_header_name(&fh.name)
                    .map_err(|m| ConfigError::invalid(format!("from_headers[{i}].name"), m))?;
                headers.push((fh.name.to_ascii_lowercase(), fh.prefix.clone()));
            }
            let params: Vec<String> = q.iter().flatten().cloned().collect();
            if let Some(i) = params.iter().position(String::is_empty) {
                return Err(ConfigError::invalid(
                    format!("from_params[{i}]"),
                    "must not be empty",
                ));
            }
            if headers.is_empty() && params.is_empty() {
                return Err(ConfigError::invalid(
                    "from_headers",
                    "no token location left",
                ));
            }
            (headers, params)
        }
    };
    let mut claim_headers = Vec::new();
    for (i, c) in p.output_claim_to_headers.iter().enumerate() {
        let field = format!("output_claim_to_headers[{i}]");
        check_header_name(&c.header)
            .map_err(|m| ConfigError::invalid(format!("{field}.header"), m))?;
        if c.claim.is_empty() || c.claim.split('.').any(str::is_empty) {
            return Err(ConfigError::invalid(
                format!("{field}.claim"),
                "must be a claim name (`a` or `a.b`)",
            ));
        }
        claim_headers.push((
            c.header.to_ascii_lowercase(),
            c.claim.split('.').map(str::to_owned).collect(),
        ));
    }
    if p.clock_skew_seconds > 3600 {
        return Err(ConfigError::invalid("clock_skew_seconds", "at most 3600"));
    }
    Ok(Provider {
        name: p.name.clone(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        inline: (!keys.is_empty()).then(|| Rc::new(Jwks { keys })),
        remote,
        from_headers,
        from_params,
        forward: p.forward,
        clock_skew: p.clock_skew_seconds,
        claim_headers,
    })
}

/// `https://host[:port]/path` → (`host[:port]`, `/path`).
fn split_uri(uri: &str) -> Result<(String, String), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| format!("{uri:?} must start with http:// or https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(['@', ' ']) {
        return Err(format!("{uri:?} has no valid host"));
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("{uri:?} has an invalid path"));
    }
    Ok((authority.to_owned(), path.to_owned()))
}

fn compile_api_keys(a: &ApiKeysSpec) -> Result<ApiKeys, ConfigError> {
    if a.keys.is_empty() {
        return Err(ConfigError::invalid("keys", "must list at least one key"));
    }
    bounded(a.keys.len(), "keys")?;
    check_header_name(&a.from_header).map_err(|m| ConfigError::invalid("from_header", m))?;
    let mut keys = Vec::with_capacity(a.keys.len());
    for (i, k) in a.keys.iter().enumerate() {
        let field = format!("keys[{i}]");
        if k.name.is_empty() {
            return Err(ConfigError::invalid(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        if a.keys[..i].iter().any(|o| o.name == k.name) {
            return Err(ConfigError::invalid(
                format!("{field}.name"),
                format!("duplicate key name {:?}", k.name),
            ));
        }
        let digest = match (&k.key, &k.key_sha256) {
            (Some(key), None) if key.len() >= 16 => jwt::sha256(key.as_bytes()),
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    format!("{field}.key"),
                    "must be at least 16 characters",
                ));
            }
            (None, Some(hex)) => parse_sha256(hex).ok_or_else(|| {
                ConfigError::invalid(format!("{field}.key_sha256"), "must be 64 hex digits")
            })?,
            _ => {
                return Err(ConfigError::invalid(
                    field,
                    "set exactly one of `key` and `key_sha256`",
                ));
            }
        };
        keys.push((k.name.clone(), digest));
    }
    if a.from_query.as_deref() == Some("") {
        return Err(ConfigError::invalid("from_query", "must not be empty"));
    }
    Ok(ApiKeys {
        keys,
        from_header: a.from_header.to_ascii_lowercase(),
        from_query: a.from_query.clone(),
        required: a.required,
        forward: a.forward,
    })
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn compile_ext_authz(x: &ExtAuthzSpec) -> Result<ExtAuthz, ConfigError> {
    if x.cluster.is_empty() {
        return Err(ConfigError::invalid("cluster", "must not be empty"));
    }
    if !x.path_prefix.is_empty() && !x.path_prefix.starts_with('/') {
        return Err(ConfigError::invalid("path_prefix", "must start with `/`"));
    }
    if x.path_prefix
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'?')
    {
        return Err(ConfigError::invalid("path_prefix", "must be a plain path"));
    }
    if !(1..=60_000).contains(&x.timeout_ms) {
        return Err(ConfigError::invalid("timeout_ms", "must be 1..=60000"));
    }
    if !(200..=599).contains(&x.status_on_error) {
        return Err(ConfigError::invalid(
            "status_on_error",
            "must be an HTTP status 200..=599",
        ));
    }
    let names =
        |list: &[String], field: &str, allow_glob: bool| -> Result<Vec<String>, ConfigError> {
            bounded(list.len(), field)?;
            list.iter()
                .enumerate()
                .map(|(i, n)| {
                    let bare = if allow_glob {
                        n.strip_suffix('*').unwrap_or(n)
                    } else {
                        n
                    };
                    if bare.is_empty() && !(allow_glob && n == "*") {
                        return Err(ConfigError::invalid(
                            format!("{field}[{i}]"),
                            "must not be empty",
                        ));
                    }
                    if !bare.is_empty() {
                        check_header_name(bare)
                            .map_err(|m| ConfigError::invalid(format!("{field}[{i}]"), m))?;
                    }
                    Ok(n.to_ascii_lowercase())
                })
                .collect()
        };
    Ok(ExtAuthz {
        cluster: x.cluster.clone(),
        authority: x.authority.clone(),
        path_prefix: x.path_prefix.clone(),
        timeout_ms: x.timeout_ms,
        allowed_request_headers: names(
            &x.allowed_request_headers,
            "allowed_request_headers",
            true,
        )?,
        headers_to_upstream: names(&x.headers_to_upstream, "headers_to_upstream", false)?,
        headers_to_client: x
            .headers_to_client
            .as_ref()
            .map(|l| names(l, "headers_to_client", false))
            .transpose()?,
        failure_mode_allow: x.failure_mode_allow,
        status_on_error: u32::from(x.status_on_error),
    })
}

/// An HTTP header name: a non-empty token, not a pseudo-header.
fn check_header_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 256 && weft_sdk::http::is_token(name);
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Compiled, ConfigError> {
        Compiled::parse(v.to_string().as_bytes())
    }

    fn err(v: serde_json::Value) -> ConfigError {
        parse(v).expect_err("invalid configuration")
    }

    #[test]
    fn empty_configuration_allows_everything() {
        let c = Compiled::parse(b"").expect("empty");
        assert!(c.policies.policies.is_empty());
        assert_eq!(c.reason_header, "x-weft-authz-reason");
    }

    #[test]
    fn full_configuration_compiles() {
        let c = parse(json!({
            "reason_header": "X-Why",
            "policies": [
                {"name": "deny-admin", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*"], "ports": [8080, "9090"]}}]}]},
                {"name": "allow", "action": "ALLOW", "rules": [{
                    "from": [{"source": {"principals": ["spiffe://cluster.local/ns/web/sa/*"], "ip_blocks": ["10.0.0.0/8", "::1"]}}],
                    "when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}]
                }]},
                {"name": "audit", "action": "AUDIT", "rules": [{}]}
            ],
            "jwt": {"providers": [{"name": "hs", "issuer": "i", "secret": "0123456789abcdef0123456789abcdef",
                                   "output_claim_to_headers": [{"header": "x-sub", "claim": "sub"}]},
                                  {"name": "remote", "issuer": "j", "jwks_uri": "https://idp.example/.well-known/jwks.json",
                                   "jwks_cluster": "idp", "from_headers": [{"name": "x-token"}]}]},
            "api_keys": {"keys": [{"name": "ci", "key": "0123456789abcdef"},
                                  {"name": "ops", "key_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]},
            "ext_authz": {"cluster": "authz", "headers_to_upstream": ["x-user"], "allowed_request_headers": ["authorization", "x-*"]}
        }))
        .expect("valid");
        assert_eq!(c.reason_header, "x-why");
        assert_eq!(c.policies.policies.len(), 3);
        assert_eq!(
            c.policies.policies[0].rules[0].to[0].ports,
            vec![8080, 9090]
        );
        assert_eq!(
            c.policies.policies[1].rules[0].from[0].principals[0],
            "cluster.local/ns/web/sa/*"
        );
        assert!(c.policies.policies[1].uses_request_auth());
        let remote = c.providers[1].remote.as_ref().expect("remote");
        assert_eq!(
            (remote.authority.as_str(), remote.path.as_str()),
            ("idp.example", "/.well-known/jwks.json")
        );
        assert_eq!(
            c.providers[0].from_headers,
            vec![("authorization".to_owned(), "Bearer ".to_owned())]
        );
        assert_eq!(c.providers[0].from_params, vec!["access_token".to_owned()]);
        assert_eq!(c.providers[1].from_params, Vec::<String>::new());
        assert_eq!(
            c.api_keys.as_ref().expect("keys").keys[1].1,
            jwt::sha256(b"test")
        );
        assert_eq!(c.ext_authz.as_ref().expect("ext").status_on_error, 403);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"policies": [{"name": "a", "action": "ALLOW"}, {"name": "b", "action": "ALLOW", "rules": [{"from": [{"source": {"ip_blocks": ["10.0.0.0/8", "1.2.3.4", "10.0.0.0/33"]}}]}]}]}),
                "policies[1].rules[0].from[0].source.ip_blocks[2]",
                "invalid CIDR \"10.0.0.0/33\"",
            ),
            (
                json!({"policies": [{"name": "a", "action": "ALOW"}]}),
                "policies[0].action",
                "unknown variant",
            ),
            (
                json!({"policies": [{"name": "a", "action": "ALLOW"}, {"name": "a", "action": "DENY"}]}),
                "policies[1].name",
                "duplicate",
            ),
            (
                json!({"policies": [{"name": "a", "action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["admin"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.paths[0]",
                "must start with",
            ),
            (
                json!({"policies": [{"name": "a", "action": "ALLOW", "rules": [{"to": [{"operation": {"ports": [70000]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.ports[0]",
                "invalid port",
            ),
            (
                json!({"policies": [{"name": "a", "action": "ALLOW", "rules": [{"to": [{"operation": {}}]}]}]}),
                "policies[0].rules[0].to[0].operation",
                "at least one field",
            ),
            (
                json!({"policies": [{"name": "a", "action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/a*b"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.paths[0]",
                "only allowed at the start or the end",
            ),
            (
                json!({"policies": [{"name": "a", "action": "ALLOW", "rules": [{"when": [{"key": "remote.ip", "values": ["x"]}]}]}]}),
                "policies[0].rules[0].when[0].key",
                "unknown key",
            ),
            (
                json!({"policies": [{"name": "a", "action": "ALLOW", "rules": [{"when": [{"key": "source.ip", "values": ["nope"]}]}]}]}),
                "policies[0].rules[0].when[0].values[0]",
                "invalid CIDR",
            ),
            (
                json!({"policies": [{"name": "a", "action": "ALLOW", "rules": [{"when": [{"key": "source.ip"}]}]}]}),
                "policies[0].rules[0].when[0]",
                "values",
            ),
            (
                json!({"policies": [{"name": "a", "action": "CUSTOM", "rules": [{}]}]}),
                "policies",
                "ext_authz",
            ),
            (
                json!({"policies": [{"name": "a", "action": "ALLOW", "rulez": []}]}),
                "policies[0].rulez",
                "unknown field",
            ),
            (
                json!({"jwt": {"providers": [{"name": "p", "issuer": "i"}]}}),
                "jwt.providers[0]",
                "jwks",
            ),
            (
                json!({"jwt": {"providers": [{"name": "p", "issuer": "i", "secret": "short"}]}}),
                "jwt.providers[0].secret",
                "32 bytes",
            ),
            (
                json!({"jwt": {"providers": [{"name": "p", "issuer": "i", "jwks": "{]"}]}}),
                "jwt.providers[0].jwks",
                "not JSON",
            ),
            (
                json!({"jwt": {"providers": [{"name": "p", "issuer": "i", "jwks_uri": "ftp://x/y", "jwks_cluster": "c"}]}}),
                "jwt.providers[0].jwks_uri",
                "http",
            ),
            (
                json!({"jwt": {"providers": [{"name": "p", "issuer": "i", "jwks_uri": "https://x/y"}]}}),
                "jwt.providers[0].jwks_cluster",
                "required",
            ),
            (
                json!({"jwt": {"providers": [{"name": "p", "issuer": "", "jwks_uri": "https://x/y", "jwks_cluster": "c"}]}}),
                "jwt.providers[0].issuer",
                "empty",
            ),
            (
                json!({"jwt": {"providers": [{"name": "p", "issuer": "i", "secret": "0123456789abcdef0123456789abcdef",
                    "output_claim_to_headers": [{"header": "bad header", "claim": "sub"}]}]}}),
                "jwt.providers[0].output_claim_to_headers[0].header",
                "not a valid header name",
            ),
            (
                json!({"jwt": {"providers": []}}),
                "jwt.providers",
                "at least one",
            ),
            (
                json!({"api_keys": {"keys": [{"name": "a", "key": "short"}]}}),
                "api_keys.keys[0].key",
                "16 characters",
            ),
            (
                json!({"api_keys": {"keys": [{"name": "a", "key_sha256": "abc"}]}}),
                "api_keys.keys[0].key_sha256",
                "64 hex",
            ),
            (
                json!({"api_keys": {"keys": [{"name": "a"}]}}),
                "api_keys.keys[0]",
                "exactly one",
            ),
            (
                json!({"api_keys": {"keys": [{"name": "a", "key": "0123456789abcdef"}, {"name": "a", "key": "0123456789abcdefg"}]}}),
                "api_keys.keys[1].name",
                "duplicate",
            ),
            (
                json!({"ext_authz": {"cluster": "c", "status_on_error": 99}}),
                "ext_authz.status_on_error",
                "599",
            ),
            (
                json!({"ext_authz": {"cluster": "c", "timeout_ms": 0}}),
                "ext_authz.timeout_ms",
                "60000",
            ),
            (
                json!({"ext_authz": {"cluster": "c", "path_prefix": "authz"}}),
                "ext_authz.path_prefix",
                "start with",
            ),
            (
                json!({"ext_authz": {"cluster": "c", "headers_to_upstream": ["x y"]}}),
                "ext_authz.headers_to_upstream[0]",
                "header name",
            ),
            (json!({"reason_header": ""}), "reason_header", "header name"),
        ];
        for (config, field, needle) in cases {
            let e = err(config.clone());
            assert_eq!(e.field(), field, "{config}: {e}");
            assert!(e.message().contains(needle), "{config}: {e}");
        }
    }

    #[test]
    fn uri_split() {
        assert_eq!(
            split_uri("http://a:8080").expect("ok"),
            ("a:8080".to_owned(), "/".to_owned())
        );
        assert_eq!(split_uri("https://a/b?c=d").expect("ok").1, "/b?c=d");
        assert!(split_uri("https:///x").is_err());
    }
}
