//! The plugin configuration: the JSON schema (serde, unknown fields refused) and its
//! compilation into [`Config`] — templates parsed, regexes compiled, header names checked — with
//! errors naming the field (`rules[0].request.set.x-id: unclosed `%{` …`).

use std::collections::BTreeMap;

use regex_lite::{Regex, RegexBuilder};
use serde::Deserialize;
use weft_sdk::prelude::ConfigError;
use weft_sdk::template::{Template, Var};

use crate::rules::{
    Conditions, HeaderMatch, Ops, PathOp, PathRewrite, Rule, StatusMatch, ValueMatch,
};
use crate::security::{Preset, SecurityHeaders};

/// Most rules a configuration may hold.
pub const MAX_RULES: usize = 256;

/// Most entries in any one list or map of a rule (paths, headers, operations, overrides).
pub const MAX_ENTRIES: usize = 64;

/// Compiled regex size limit (bytes), so a pathological pattern is refused at configure time.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Headers the plugin refuses to touch: hop-by-hop and framing headers (the proxy owns them),
/// and `host`, which is the `:authority` pseudo-header (use a rule's `authority`).
pub const PROTECTED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
];

/// The compiled configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Rules, in order.
    pub rules: Vec<Rule>,
    /// Security response headers, when enabled.
    pub security: Option<SecurityHeaders>,
    /// True when a response-phase template reads a request header (so the filter keeps the
    /// request headers for the response phase).
    pub response_reads_request_headers: bool,
}

impl Config {
    /// Parses and compiles a configuration (empty: no rules, no security headers).
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = weft_sdk::config::parse(bytes)?;
        raw.compile()
    }

    /// True when the response phase has something to do.
    pub fn has_response_work(&self) -> bool {
        self.security.is_some() || self.rules.iter().any(|r| !r.response.is_empty())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    rules: Vec<RawRule>,
    /// `true`, `false` or an object; parsed by hand so that errors inside the object keep
    /// their field path (an untagged enum would only say "did not match any variant").
    #[serde(default)]
    security_headers: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    when: RawWhen,
    #[serde(default)]
    request: RawOps,
    #[serde(default)]
    response: RawOps,
    #[serde(default)]
    path: Option<RawPath>,
    #[serde(default)]
    authority: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<RawHeaderMatch>,
    #[serde(default)]
    status: Vec<RawStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    present: Option<bool>,
    #[serde(default)]
    invert: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStatus {
    Code(u16),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    set_if_absent: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: Vec<RawRename>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRename {
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    #[serde(default)]
    replace_prefix: Option<RawReplacePrefix>,
    #[serde(default)]
    set: Option<String>,
    #[serde(default)]
    regex: Option<RawRegexRewrite>,
    #[serde(default = "yes")]
    keep_query: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplacePrefix {
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegexRewrite {
    pattern: String,
    substitution: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    #[serde(default)]
    preset: Option<Preset>,
    #[serde(default)]
    overrides: BTreeMap<String, Option<String>>,
    #[serde(default)]
    override_upstream: bool,
}

impl RawConfig {
    fn compile(self) -> Result<Config, ConfigError> {
        if self.rules.len() > MAX_RULES {
            return Err(ConfigError::invalid(
                "rules",
                format!("at most {MAX_RULES} rules"),
            ));
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.into_iter().enumerate() {
            let field = format!("rules[{i}]");
            rules.push(r.compile(i).map_err(|e| e.within(&field))?);
        }
        let mut names: Vec<&str> = rules.iter().map(|r| r.label.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::invalid(
                "rules",
                format!("two rules are named {:?}", w[0]),
            ));
        }
        let security = match self.security_headers {
            None | Some(serde_json::Value::Bool(false)) | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Bool(true)) => {
                Some(SecurityHeaders::new(Preset::Strict, &[], false))
            }
            Some(v @ serde_json::Value::Object(_)) => {
                Some(compile_security(&v).map_err(|e| e.within("security_headers"))?)
            }
            Some(_) => {
                return Err(ConfigError::invalid(
                    "security_headers",
                    "expected true, false or an object {preset, overrides, override_upstream}",
                ));
            }
        };
        let response_reads_request_headers = rules.iter().any(Rule::response_reads_request_headers);
        Ok(Config {
            rules,
            security,
            response_reads_request_headers,
        })
    }
}

fn compile_security(v: &serde_json::Value) -> Result<SecurityHeaders, ConfigError> {
    let text = v.to_string();
    let raw: RawSecurity = weft_sdk::config::parse(text.as_bytes())?;
    bounded("overrides", raw.overrides.len())?;
    let mut overrides = Vec::with_capacity(raw.overrides.len());
    for (name, value) in raw.overrides {
        let field = format!("overrides.{name}");
        let name = header_name(&name).map_err(|e| e.within(&field))?;
        if let Some(v) = &value
            && !crate::rules::valid_value(v)
        {
            return Err(ConfigError::invalid(
                field,
                "control characters are not allowed in a header value",
            ));
        }
        overrides.push((name, value));
    }
    Ok(SecurityHeaders::new(
        raw.preset.unwrap_or(Preset::Strict),
        &overrides,
        raw.override_upstream,
    ))
}

fn bounded(field: &str, n: usize) -> Result<(), ConfigError> {
    if n > MAX_ENTRIES {
        Err(ConfigError::invalid(
            field,
            format!("at most {MAX_ENTRIES} entries"),
        ))
    } else {
        Ok(())
    }
}

/// A header name an operation may change: a token, not a pseudo-header, not hop-by-hop.
/// Returned lower-case.
fn header_name(name: &str) -> Result<String, ConfigError> {
    if name.starts_with(':') {
        return Err(ConfigError::invalid(
            ".",
            format!(
                "pseudo-header {name:?} cannot be changed here (use the rule's `path` or `authority`)"
            ),
        ));
    }
    if !weft_sdk::http::is_token(name) {
        return Err(ConfigError::invalid(
            ".",
            format!("{name:?} is not a valid header name"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if PROTECTED_HEADERS.contains(&lower.as_str()) {
        return Err(ConfigError::invalid(
            ".",
            format!("{lower:?} is a hop-by-hop or framing header the proxy manages"),
        ));
    }
    Ok(lower)
}

/// A header name a condition may test: a token or one of the request pseudo-headers.
fn condition_name(name: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        ":method" | ":path" | ":authority" | ":scheme"
    ) || weft_sdk::http::is_token(name)
    {
        Ok(lower)
    } else {
        Err(ConfigError::invalid(
            ".",
            format!("{name:?} is not a valid header name"),
        ))
    }
}

fn template(text: &str) -> Result<Template, ConfigError> {
    if text.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ConfigError::invalid(
            ".",
            "control characters are not allowed in a header value",
        ));
    }
    Template::parse(text)
}

/// Refuses `%{response.header.…}` in a template rendered in the request phase, where there is no
/// response yet.
fn request_phase(t: &Template) -> Result<(), ConfigError> {
    match t.vars().find(|v| matches!(v, Var::ResponseHeader(_))) {
        Some(Var::ResponseHeader(h)) => Err(ConfigError::invalid(
            ".",
            format!("`response.header.{h}` is not known in the request phase"),
        )),
        _ => Ok(()),
    }
}

fn regex(pattern: &str, whole: bool) -> Result<Regex, ConfigError> {
    let source = if whole {
        format!("^(?:{pattern})$")
    } else {
        pattern.to_owned()
    };
    RegexBuilder::new(&source)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| ConfigError::invalid(".", format!("invalid regex: {e}")))
}

impl RawRule {
    fn compile(self, index: usize) -> Result<Rule, ConfigError> {
        let label = match self.name {
            Some(n) if n.is_empty() => return Err(ConfigError::invalid("name", "empty")),
            Some(n) => n,
            None => index.to_string(),
        };
        let when = self.when.compile().map_err(|e| e.within("when"))?;
        let request = self.request.compile().map_err(|e| e.within("request"))?;
        let response = self.response.compile().map_err(|e| e.within("response"))?;
        let path = self
            .path
            .map(RawPath::compile)
            .transpose()
            .map_err(|e| e.within("path"))?;
        let authority = self
            .authority
            .as_deref()
            .map(template)
            .transpose()
            .map_err(|e| e.within("authority"))?;
        for (kind, list) in [
            ("set", &request.set),
            ("set_if_absent", &request.set_if_absent),
            ("add", &request.add),
        ] {
            for (name, t) in list {
                request_phase(t).map_err(|e| e.within(&format!("request.{kind}.{name}")))?;
            }
        }
        if let Some(PathRewrite {
            op: PathOp::Set(t), ..
        }) = &path
        {
            request_phase(t).map_err(|e| e.within("path.set"))?;
        }
        if let Some(t) = &authority {
            request_phase(t).map_err(|e| e.within("authority"))?;
        }
        if !when.status.is_empty() && response.is_empty() {
            return Err(ConfigError::invalid(
                "when.status",
                "only applies to `response` operations, and the rule has none",
            ));
        }
        Ok(Rule {
            label,
            when,
            request,
            response,
            path,
            authority,
        })
    }
}

impl RawWhen {
    fn compile(self) -> Result<Conditions, ConfigError> {
        bounded("paths", self.paths.len())?;
        bounded("methods", self.methods.len())?;
        bounded("headers", self.headers.len())?;
        bounded("status", self.status.len())?;
        for (i, p) in self.paths.iter().enumerate() {
            if !(p.starts_with('/') || p.starts_with('*')) {
                return Err(ConfigError::invalid(
                    format!("paths[{i}]"),
                    "a path pattern starts with `/` or `*`",
                ));
            }
        }
        let path_regex = self
            .path_regex
            .as_deref()
            .map(|p| regex(p, true))
            .transpose()
            .map_err(|e| e.within("path_regex"))?;
        let mut methods = Vec::with_capacity(self.methods.len());
        for (i, m) in self.methods.into_iter().enumerate() {
            if !weft_sdk::http::is_token(&m) {
                return Err(ConfigError::invalid(
                    format!("methods[{i}]"),
                    format!("{m:?} is not a method"),
                ));
            }
            methods.push(m.to_ascii_uppercase());
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (i, h) in self.headers.into_iter().enumerate() {
            headers.push(
                h.compile()
                    .map_err(|e| e.within(&format!("headers[{i}]")))?,
            );
        }
        let mut status = Vec::with_capacity(self.status.len());
        for (i, s) in self.status.into_iter().enumerate() {
            status.push(s.compile().map_err(|e| e.within(&format!("status[{i}]")))?);
        }
        Ok(Conditions {
            paths: self.paths,
            path_regex,
            methods,
            headers,
            status,
        })
    }
}

impl RawHeaderMatch {
    fn compile(self) -> Result<HeaderMatch, ConfigError> {
        let name = condition_name(&self.name).map_err(|e| e.within("name"))?;
        let given = [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
            self.present.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err(ConfigError::invalid(
                ".",
                "exactly one of `exact`, `prefix`, `regex`, `present`",
            ));
        }
        let value = if let Some(e) = self.exact {
            ValueMatch::Exact(e)
        } else if let Some(p) = self.prefix {
            ValueMatch::Prefix(p)
        } else if let Some(r) = self.regex {
            ValueMatch::Regex(regex(&r, true).map_err(|e| e.within("regex"))?)
        } else {
            ValueMatch::Present(self.present.unwrap_or(true))
        };
        Ok(HeaderMatch {
            name,
            value,
            invert: self.invert,
        })
    }
}

impl RawStatus {
    fn compile(self) -> Result<StatusMatch, ConfigError> {
        match self {
            RawStatus::Code(c) if (100..=599).contains(&c) => Ok(StatusMatch::Code(c)),
            RawStatus::Code(c) => Err(ConfigError::invalid(
                ".",
                format!("{c} is not a status code (100-599)"),
            )),
            RawStatus::Text(t) => {
                let class = t
                    .strip_suffix("xx")
                    .or_else(|| t.strip_suffix("XX"))
                    .and_then(|d| d.parse::<u16>().ok())
                    .filter(|d| (1..=5).contains(d));
                match class {
                    Some(d) => Ok(StatusMatch::Class(d)),
                    None => Err(ConfigError::invalid(
                        ".",
                        format!("{t:?}: expected a code such as 404 or a class such as \"5xx\""),
                    )),
                }
            }
        }
    }
}

fn templates(
    map: BTreeMap<String, String>,
    field: &str,
) -> Result<Vec<(String, Template)>, ConfigError> {
    bounded(field, map.len())?;
    let mut out = Vec::with_capacity(map.len());
    for (name, text) in map {
        let at = format!("{field}.{name}");
        let lower = header_name(&name).map_err(|e| e.within(&at))?;
        out.push((lower, template(&text).map_err(|e| e.within(&at))?));
    }
    Ok(out)
}

impl RawOps {
    fn compile(self) -> Result<Ops, ConfigError> {
        bounded("remove", self.remove.len())?;
        bounded("rename", self.rename.len())?;
        let mut remove = Vec::with_capacity(self.remove.len());
        for (i, n) in self.remove.iter().enumerate() {
            remove.push(header_name(n).map_err(|e| e.within(&format!("remove[{i}]")))?);
        }
        let mut rename = Vec::with_capacity(self.rename.len());
        for (i, r) in self.rename.iter().enumerate() {
            let at = format!("rename[{i}]");
            let from = header_name(&r.from).map_err(|e| e.within(&format!("{at}.from")))?;
            let to = header_name(&r.to).map_err(|e| e.within(&format!("{at}.to")))?;
            rename.push((from, to));
        }
        Ok(Ops {
            rename,
            remove,
            set: templates(self.set, "set")?,
            set_if_absent: templates(self.set_if_absent, "set_if_absent")?,
            add: templates(self.add, "add")?,
        })
    }
}

impl RawPath {
    fn compile(self) -> Result<PathRewrite, ConfigError> {
        let given = [
            self.replace_prefix.is_some(),
            self.set.is_some(),
            self.regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err(ConfigError::invalid(
                ".",
                "exactly one of `replace_prefix`, `set`, `regex`",
            ));
        }
        let op = if let Some(p) = self.replace_prefix {
            if !p.from.starts_with('/') {
                return Err(ConfigError::invalid(
                    "replace_prefix.from",
                    "must start with `/`",
                ));
            }
            if !p.to.starts_with('/') || !crate::rules::valid_path(&p.to) {
                return Err(ConfigError::invalid(
                    "replace_prefix.to",
                    "must start with `/` and hold visible ASCII only, no `#`",
                ));
            }
            PathOp::ReplacePrefix {
                from: p.from,
                to: p.to,
            }
        } else if let Some(s) = self.set {
            if !(s.starts_with('/') || s.starts_with("%{")) {
                return Err(ConfigError::invalid("set", "must start with `/` or `%{`"));
            }
            PathOp::Set(template(&s).map_err(|e| e.within("set"))?)
        } else if let Some(r) = self.regex {
            PathOp::Regex {
                pattern: regex(&r.pattern, false).map_err(|e| e.within("regex.pattern"))?,
                substitution: r.substitution,
            }
        } else {
            return Err(ConfigError::invalid(".", "no rewrite given"));
        };
        Ok(PathRewrite {
            op,
            keep_query: self.keep_query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: serde_json::Value) -> ConfigError {
        Config::parse(json.to_string().as_bytes()).expect_err("refused")
    }

    #[test]
    fn empty_configuration_does_nothing() {
        let c = Config::parse(b"").expect("empty");
        assert!(c.rules.is_empty());
        assert!(c.security.is_none());
        assert!(!c.has_response_work());
    }

    #[test]
    fn a_full_configuration_compiles() {
        let c = Config::parse(
            serde_json::json!({
                "rules": [{
                    "name": "api",
                    "when": {
                        "paths": ["/api/*"], "path_regex": "/api/v[0-9]+/.*",
                        "methods": ["get", "POST"],
                        "headers": [{"name": "X-Debug", "present": true, "invert": true}],
                        "status": [200, "5xx"]
                    },
                    "request": {
                        "set": {"X-Id": "%{request.header.x-request-id|none}"},
                        "add": {"x-via": "weft"}, "remove": ["x-internal"],
                        "rename": [{"from": "x-old", "to": "x-new"}],
                        "set_if_absent": {"x-tenant": "default"}
                    },
                    "response": {"set": {"x-served-path": "%{request.path}"}},
                    "path": {"replace_prefix": {"from": "/api", "to": "/v2"}},
                    "authority": "backend.internal"
                }, {
                    "path": {"regex": {"pattern": "^/u/([0-9]+)$", "substitution": "/users/$1"}, "keep_query": false}
                }],
                "security_headers": {"preset": "basic", "overrides": {"X-Frame-Options": "DENY", "referrer-policy": null}}
            })
            .to_string()
            .as_bytes(),
        )
        .expect("compiles");
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].label, "api");
        assert_eq!(c.rules[1].label, "1");
        assert_eq!(c.rules[0].when.methods, ["GET", "POST"]);
        assert_eq!(c.rules[0].request.set[0].0, "x-id");
        assert_eq!(
            c.rules[0].when.status,
            [StatusMatch::Code(200), StatusMatch::Class(5)]
        );
        assert!(c.has_response_work());
        let s = c.security.as_ref().expect("security headers");
        assert!(
            s.headers
                .iter()
                .any(|(k, v)| k == "x-frame-options" && v == "DENY")
        );
        assert!(!s.headers.iter().any(|(k, _)| k == "referrer-policy"));
        assert!(!c.response_reads_request_headers);
    }

    #[test]
    fn the_documented_example_compiles() {
        // docs/plugins/header-rewrite.md, "Example (Weft YAML)", as JSON.
        let c = Config::parse(
            br#"{"rules": [{"name": "api-v2", "when": {"paths": ["/api/*"], "methods": ["GET", "HEAD"], "headers": [{"name": "x-internal", "present": true, "invert": true}]}, "request": {"set": {"x-client": "%{source.address}", "x-original-path": "%{request.path}", "x-agent": "%{request.header.user-agent|unknown}"}, "remove": ["x-debug-token"], "rename": [{"from": "x-user", "to": "x-forwarded-user"}], "set_if_absent": {"x-tenant": "default"}}, "response": {"set": {"x-api-version": "2"}, "remove": ["server"]}, "path": {"replace_prefix": {"from": "/api/", "to": "/v2/"}}}, {"name": "errors-not-cached", "when": {"status": ["5xx", 429]}, "response": {"set": {"cache-control": "no-store"}}}], "security_headers": true}"#,
        )
        .expect("the documented example is valid");
        assert_eq!(c.rules.len(), 2);
        assert!(c.security.is_some());
    }

    #[test]
    fn security_headers_shorthand() {
        let c = Config::parse(br#"{"security_headers": true}"#).expect("true");
        assert_eq!(
            c.security.expect("strict").headers.len(),
            crate::security::STRICT.len()
        );
        let c = Config::parse(br#"{"security_headers": false}"#).expect("false");
        assert!(c.security.is_none());
        let e = err(serde_json::json!({"security_headers": "yes"}));
        assert_eq!(e.field(), "security_headers");
        let e = err(serde_json::json!({"security_headers": {"preset": "paranoid"}}));
        assert_eq!(e.field(), "security_headers.preset", "{e}");
        let e = err(serde_json::json!({"security_headers": {"overides": {}}}));
        assert!(e.message().contains("unknown field `overides`"), "{e}");
        let e = err(serde_json::json!({"security_headers": {"overrides": {"x-a": "a\nb"}}}));
        assert_eq!(e.field(), "security_headers.overrides.x-a", "{e}");
    }

    #[test]
    fn template_errors_name_the_header() {
        let e =
            err(serde_json::json!({"rules": [{"request": {"set": {"x-id": "%{request.path"}}}]}));
        assert_eq!(e.field(), "rules[0].request.set.x-id");
        assert!(e.message().contains("unclosed"), "{e}");
        let e = err(serde_json::json!({"rules": [{}, {"response": {"add": {"x-a": "%{a b}"}}}]}));
        assert_eq!(e.field(), "rules[1].response.add.x-a");
        let e = err(serde_json::json!({"rules": [{"request": {"set": {"x-a": "a\r\nb: c"}}}]}));
        assert_eq!(e.field(), "rules[0].request.set.x-a");
        let e = err(
            serde_json::json!({"rules": [{"request": {"add": {"x-a": "%{response.header.server}"}}}]}),
        );
        assert_eq!(e.field(), "rules[0].request.add.x-a");
        assert!(e.message().contains("request phase"), "{e}");
        let e = err(serde_json::json!({"rules": [{"path": {"set": "/%{response.header.x}"}}]}));
        assert_eq!(e.field(), "rules[0].path.set");
        let e = err(serde_json::json!({"rules": [{"authority": "%{response.header.x}"}]}));
        assert_eq!(e.field(), "rules[0].authority");
    }

    #[test]
    fn header_names_are_checked() {
        let e = err(serde_json::json!({"rules": [{"request": {"set": {":path": "/x"}}}]}));
        assert_eq!(e.field(), "rules[0].request.set.:path");
        assert!(e.message().contains("pseudo-header"), "{e}");
        for name in [
            "connection",
            "Transfer-Encoding",
            "content-length",
            "host",
            "te",
        ] {
            let e = err(serde_json::json!({"rules": [{"request": {"remove": [name]}}]}));
            assert_eq!(e.field(), "rules[0].request.remove[0]", "{name}");
            assert!(e.message().contains("hop-by-hop"), "{e}");
        }
        let e = err(
            serde_json::json!({"rules": [{"response": {"rename": [{"from": "x a", "to": "y"}]}}]}),
        );
        assert_eq!(e.field(), "rules[0].response.rename[0].from");
        let e = err(
            serde_json::json!({"rules": [{"when": {"headers": [{"name": "bad name", "present": true}]}}]}),
        );
        assert_eq!(e.field(), "rules[0].when.headers[0].name");
        // Pseudo-headers may be tested.
        Config::parse(
            br#"{"rules": [{"when": {"headers": [{"name": ":authority", "exact": "a"}]}}]}"#,
        )
        .expect("pseudo-header condition");
    }

    #[test]
    fn conditions_are_checked() {
        let e = err(
            serde_json::json!({"rules": [{"when": {"headers": [{"name": "a", "exact": "x", "prefix": "y"}]}}]}),
        );
        assert_eq!(e.field(), "rules[0].when.headers[0]");
        let e = err(serde_json::json!({"rules": [{"when": {"headers": [{"name": "a"}]}}]}));
        assert!(e.message().contains("exactly one"), "{e}");
        let e = err(serde_json::json!({"rules": [{"when": {"path_regex": "("}}]}));
        assert_eq!(e.field(), "rules[0].when.path_regex");
        assert!(e.message().contains("invalid regex"), "{e}");
        let e = err(serde_json::json!({"rules": [{"when": {"paths": ["api"]}}]}));
        assert_eq!(e.field(), "rules[0].when.paths[0]");
        let e = err(
            serde_json::json!({"rules": [{"when": {"status": ["6xx"]}, "response": {"remove": ["x"]}}]}),
        );
        assert_eq!(e.field(), "rules[0].when.status[0]");
        let e = err(
            serde_json::json!({"rules": [{"when": {"status": [700]}, "response": {"remove": ["x"]}}]}),
        );
        assert_eq!(e.field(), "rules[0].when.status[0]");
        let e = err(
            serde_json::json!({"rules": [{"when": {"status": [200]}, "request": {"remove": ["x"]}}]}),
        );
        assert_eq!(e.field(), "rules[0].when.status");
        let e = err(serde_json::json!({"rules": [{"when": {"methods": ["G T"]}}]}));
        assert_eq!(e.field(), "rules[0].when.methods[0]");
        let e = err(serde_json::json!({"rules": [{"whem": {}}]}));
        assert!(e.message().contains("unknown field `whem`"), "{e}");
    }

    #[test]
    fn path_rewrites_are_checked() {
        let e = err(serde_json::json!({"rules": [{"path": {}}]}));
        assert_eq!(e.field(), "rules[0].path");
        let e = err(
            serde_json::json!({"rules": [{"path": {"set": "/a", "regex": {"pattern": "a", "substitution": "b"}}}]}),
        );
        assert!(e.message().contains("exactly one"), "{e}");
        let e = err(
            serde_json::json!({"rules": [{"path": {"regex": {"pattern": "[", "substitution": "b"}}}]}),
        );
        assert_eq!(e.field(), "rules[0].path.regex.pattern");
        let e = err(
            serde_json::json!({"rules": [{"path": {"replace_prefix": {"from": "a", "to": "/b"}}}]}),
        );
        assert_eq!(e.field(), "rules[0].path.replace_prefix.from");
        let e = err(
            serde_json::json!({"rules": [{"path": {"replace_prefix": {"from": "/a", "to": "/b c"}}}]}),
        );
        assert_eq!(e.field(), "rules[0].path.replace_prefix.to");
        let e = err(serde_json::json!({"rules": [{"path": {"set": "relative"}}]}));
        assert_eq!(e.field(), "rules[0].path.set");
    }

    #[test]
    fn limits_and_names() {
        let rules: Vec<_> = (0..=MAX_RULES).map(|_| serde_json::json!({})).collect();
        assert_eq!(err(serde_json::json!({ "rules": rules })).field(), "rules");
        let e = err(serde_json::json!({"rules": [{"name": "a"}, {"name": "a"}]}));
        assert!(e.message().contains("two rules are named"), "{e}");
        let e = err(serde_json::json!({"rules": [{"name": ""}]}));
        assert_eq!(e.field(), "rules[0].name");
        let remove: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("x-{i}")).collect();
        let e = err(serde_json::json!({"rules": [{"request": {"remove": remove}}]}));
        assert_eq!(e.field(), "rules[0].request.remove");
    }
}
