//! Rules, compiled: conditions on the request (and the response status) and the operations they
//! apply to a header list. Pure — no host calls — so every decision is unit-tested natively;
//! `filter.rs` feeds it the stream's headers and writes the result back.
//!
//! A header list is the stream's pairs in order, pseudo-headers included (`:method`, `:path`,
//! `:authority` on requests, `:status` on responses). Values are bytes: a header the plugin does
//! not touch goes back exactly as it came, even when it is not UTF-8.

use regex_lite::Regex;
use weft_sdk::http::{glob_match, path_only};
use weft_sdk::template::{Template, Var};

/// A stream's headers, in order (lower-case names).
pub type Headers = Vec<(String, Vec<u8>)>;

/// Longest rendered header value, path or authority; longer is treated as invalid.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;

/// Longest text a regex condition or path regex is run on; longer does not match (conditions)
/// or is left alone (rewrites). The `regex` crate is linear-time; this bounds the constant.
pub const MAX_REGEX_INPUT: usize = 8 * 1024;

/// The first value of `name` (case-insensitive).
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// The first value of `name` as text (lossy UTF-8).
pub fn get_str(headers: &Headers, name: &str) -> Option<String> {
    get(headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn contains(headers: &Headers, name: &str) -> bool {
    headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

/// Replaces every value of `name` by one `value` (in the place of the first one; appended when
/// absent).
pub fn set(headers: &mut Headers, name: &str, value: Vec<u8>) {
    match headers
        .iter()
        .position(|(k, _)| k.eq_ignore_ascii_case(name))
    {
        Some(i) => {
            headers[i].1 = value;
            let mut seen = 0usize;
            headers.retain(|(k, _)| {
                if k.eq_ignore_ascii_case(name) {
                    seen += 1;
                    seen == 1
                } else {
                    true
                }
            });
        }
        None => headers.push((name.to_owned(), value)),
    }
}

fn remove(headers: &mut Headers, name: &str) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
}

fn rename(headers: &mut Headers, from: &str, to: &str) {
    for (k, _) in headers.iter_mut() {
        if k.eq_ignore_ascii_case(from) {
            to.clone_into(k);
        }
    }
}

/// True when `value` may go on the wire: not too long, no control character other than tab
/// (CR, LF and NUL above all: they would split or truncate the header).
pub fn valid_value(value: &str) -> bool {
    value.len() <= MAX_VALUE_BYTES && !value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// True when `path` is a usable `:path`: starts with `/`, visible ASCII only, no fragment.
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= MAX_VALUE_BYTES
        && path.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
}

/// True when `authority` is a usable `:authority` (`host` or `host:port`).
pub fn valid_authority(authority: &str) -> bool {
    !authority.is_empty()
        && authority.len() <= 255 + 6
        && authority
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'@'))
}

/// How a header condition tests the value.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// The whole value matches (`regex-lite`: RE2-like syntax, ASCII classes).
    Regex(Regex),
    /// `true`: the header is present; `false`: absent.
    Present(bool),
}

/// A condition on one request header.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Lower-case name (pseudo-headers such as `:authority` allowed).
    pub name: String,
    /// The test.
    pub value: ValueMatch,
    /// Negates the result.
    pub invert: bool,
}

impl HeaderMatch {
    /// True when the condition holds for `headers` (several values: any of them matching).
    pub fn matches(&self, headers: &Headers) -> bool {
        let mut values = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&self.name))
            .map(|(_, v)| String::from_utf8_lossy(v));
        let hit = match &self.value {
            ValueMatch::Present(want) => values.next().is_some() == *want,
            ValueMatch::Exact(e) => values.any(|v| v == e.as_str()),
            ValueMatch::Prefix(p) => values.any(|v| v.starts_with(p.as_str())),
            ValueMatch::Regex(r) => values.any(|v| v.len() <= MAX_REGEX_INPUT && r.is_match(&v)),
        };
        hit != self.invert
    }
}

/// A condition on the response status: one code or a class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// Exactly this code.
    Code(u16),
    /// Any code `n00..=n99`.
    Class(u16),
}

impl StatusMatch {
    fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(c) => c == status,
            StatusMatch::Class(n) => status / 100 == n,
        }
    }
}

/// A rule's `when`: every given condition must hold (an empty `when` always holds).
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// Glob patterns on the path without its query (`/exact`, `/prefix*`, `*suffix`, `*`);
    /// any may match.
    pub paths: Vec<String>,
    /// A regex the whole path (without query) must match.
    pub path_regex: Option<Regex>,
    /// Accepted methods (any may match; compared ignoring case).
    pub methods: Vec<String>,
    /// Header conditions; all must hold.
    pub headers: Vec<HeaderMatch>,
    /// Response statuses for the response operations (any may match); empty: any status.
    pub status: Vec<StatusMatch>,
}

impl Conditions {
    /// True when the request conditions hold for request headers `headers`.
    pub fn matches_request(&self, headers: &Headers) -> bool {
        let full_path = get_str(headers, ":path").unwrap_or_default();
        let path = path_only(&full_path);
        if !self.paths.is_empty() && !self.paths.iter().any(|p| glob_match(p, path)) {
            return false;
        }
        if let Some(re) = &self.path_regex
            && (path.len() > MAX_REGEX_INPUT || !re.is_match(path))
        {
            return false;
        }
        if !self.methods.is_empty() {
            let method = get_str(headers, ":method").unwrap_or_default();
            if !self.methods.iter().any(|m| m.eq_ignore_ascii_case(&method)) {
                return false;
            }
        }
        self.headers.iter().all(|h| h.matches(headers))
    }

    /// True when the response conditions hold for `status` (`None`: unknown, matches only when
    /// no status condition is given).
    pub fn matches_status(&self, status: Option<u16>) -> bool {
        self.status.is_empty() || status.is_some_and(|s| self.status.iter().any(|m| m.matches(s)))
    }
}

/// One phase's header operations, applied in this order: `rename`, `remove`, `set`,
/// `set_if_absent`, `add`. Every template of a rule is rendered before any of its operations
/// runs, against the headers as the previous rules left them.
#[derive(Debug, Clone, Default)]
pub struct Ops {
    /// `(from, to)`: the header keeps its values under the new name.
    pub rename: Vec<(String, String)>,
    /// Names removed (every value).
    pub remove: Vec<String>,
    /// Replace every value by one.
    pub set: Vec<(String, Template)>,
    /// Set only when the header is absent.
    pub set_if_absent: Vec<(String, Template)>,
    /// Append a value, keeping the existing ones.
    pub add: Vec<(String, Template)>,
}

impl Ops {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.rename.is_empty()
            && self.remove.is_empty()
            && self.set.is_empty()
            && self.set_if_absent.is_empty()
            && self.add.is_empty()
    }

    fn templates(&self) -> impl Iterator<Item = &Template> {
        self.set
            .iter()
            .chain(&self.set_if_absent)
            .chain(&self.add)
            .map(|(_, t)| t)
    }
}

/// How the path is rewritten (the query string is handled by [`PathRewrite::keep_query`]).
#[derive(Debug, Clone)]
pub enum PathOp {
    /// Replace a leading `from` by `to`.
    ReplacePrefix {
        /// The prefix to replace.
        from: String,
        /// Its replacement.
        to: String,
    },
    /// A new path from a template.
    Set(Template),
    /// Replace every match of `pattern` by `substitution` (`$1`, `${name}`).
    Regex {
        /// The pattern.
        pattern: Regex,
        /// The replacement.
        substitution: String,
    },
}

/// A `:path` rewrite.
#[derive(Debug, Clone)]
pub struct PathRewrite {
    /// What to do with the path (without its query).
    pub op: PathOp,
    /// Keep the original query string (default `true`).
    pub keep_query: bool,
}

impl PathRewrite {
    /// The rewritten `:path` for `full_path`, `Ok(None)` when the rewrite does not apply (prefix
    /// or pattern not found, input too long) and `Err` with the value when it renders invalid.
    pub fn apply(&self, full_path: &str, rendered: Option<&str>) -> Result<Option<String>, String> {
        let path = path_only(full_path);
        let new_path = match &self.op {
            PathOp::ReplacePrefix { from, to } => match path.strip_prefix(from.as_str()) {
                Some(rest) => format!("{to}{rest}"),
                None => return Ok(None),
            },
            PathOp::Set(_) => rendered.unwrap_or_default().to_owned(),
            PathOp::Regex {
                pattern,
                substitution,
            } => {
                if path.len() > MAX_REGEX_INPUT || !pattern.is_match(path) {
                    return Ok(None);
                }
                pattern
                    .replace_all(path, substitution.as_str())
                    .into_owned()
            }
        };
        let query = weft_sdk::http::query_string(full_path);
        let out = if self.keep_query && !query.is_empty() {
            let sep = if new_path.contains('?') { '&' } else { '?' };
            format!("{new_path}{sep}{query}")
        } else {
            new_path
        };
        if valid_path(&out) {
            Ok(Some(out))
        } else {
            Err(out)
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `name`, or the rule's index: the `rule` label of its counter.
    pub label: String,
    /// Conditions.
    pub when: Conditions,
    /// Request header operations.
    pub request: Ops,
    /// Response header operations (when the request matched and the status condition holds).
    pub response: Ops,
    /// `:path` rewrite.
    pub path: Option<PathRewrite>,
    /// `:authority` rewrite.
    pub authority: Option<Template>,
}

impl Rule {
    /// True when a response-phase template reads a request header.
    pub fn response_reads_request_headers(&self) -> bool {
        self.response
            .templates()
            .flat_map(Template::vars)
            .any(|v| matches!(v, Var::RequestHeader(_)))
    }
}

/// What applying the rules did, for the counters and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Indexes of the rules whose request conditions matched (counted once per request, in the
    /// request phase).
    pub applied: Vec<usize>,
    /// `(rule index, header name)` of values skipped because they rendered invalid.
    pub invalid: Vec<(usize, String)>,
}

/// Where template variables come from: properties (from the host) and the headers of the other
/// direction (the request headers, in the response phase).
pub struct Resolver<'a> {
    /// Attribute lookup (`request.path`, `source.address`, …).
    pub property: &'a mut dyn FnMut(&str) -> Option<String>,
    /// The request headers when rendering in the response phase.
    pub request_headers: Option<&'a Headers>,
}

impl Resolver<'_> {
    fn render(&mut self, t: &Template, current: &Headers, phase: Phase) -> String {
        t.render(|var| match var {
            Var::RequestHeader(h) => match phase {
                Phase::Request => get_str(current, h),
                Phase::Response => self.request_headers.and_then(|r| get_str(r, h)),
            },
            Var::ResponseHeader(h) => match phase {
                Phase::Request => None,
                Phase::Response => get_str(current, h),
            },
            Var::Property(p) => (self.property)(p),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
}

/// Renders `templates`, keeping the valid values and reporting the others.
fn render_all(
    templates: &[(String, Template)],
    headers: &Headers,
    phase: Phase,
    resolver: &mut Resolver<'_>,
    rule: usize,
    report: &mut Report,
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(templates.len());
    for (name, t) in templates {
        let v = resolver.render(t, headers, phase);
        if valid_value(&v) {
            out.push((name.clone(), v.into_bytes()));
        } else {
            report.invalid.push((rule, name.clone()));
        }
    }
    out
}

fn apply_ops(
    ops: &Ops,
    headers: &mut Headers,
    phase: Phase,
    resolver: &mut Resolver<'_>,
    rule: usize,
    report: &mut Report,
) {
    if ops.is_empty() {
        return;
    }
    let set = render_all(&ops.set, headers, phase, resolver, rule, report);
    let set_if_absent = render_all(&ops.set_if_absent, headers, phase, resolver, rule, report);
    let add = render_all(&ops.add, headers, phase, resolver, rule, report);
    for (from, to) in &ops.rename {
        rename(headers, from, to);
    }
    for name in &ops.remove {
        remove(headers, name);
    }
    for (name, value) in set {
        self::set(headers, &name, value);
    }
    for (name, value) in set_if_absent {
        if !contains(headers, &name) {
            headers.push((name, value));
        }
    }
    headers.extend(add);
}

/// Request phase: runs every rule in order on `headers` (the request's, pseudo-headers
/// included). Returns which rules matched, for the response phase.
pub fn apply_request(
    rules: &[Rule],
    headers: &mut Headers,
    resolver: &mut Resolver<'_>,
    report: &mut Report,
) -> Vec<bool> {
    let mut matched = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let hit = rule.when.matches_request(headers);
        matched.push(hit);
        if !hit {
            continue;
        }
        report.applied.push(i);
        // Render the path and authority templates against the headers the rule started with.
        let path_value = match &rule.path {
            Some(PathRewrite {
                op: PathOp::Set(t), ..
            }) => Some(resolver.render(t, headers, Phase::Request)),
            _ => None,
        };
        let authority = rule
            .authority
            .as_ref()
            .map(|t| resolver.render(t, headers, Phase::Request));
        apply_ops(&rule.request, headers, Phase::Request, resolver, i, report);
        if let Some(rewrite) = &rule.path {
            let current = get_str(headers, ":path").unwrap_or_else(|| "/".to_owned());
            match rewrite.apply(&current, path_value.as_deref()) {
                Ok(Some(p)) => set(headers, ":path", p.into_bytes()),
                Ok(None) => {}
                Err(_) => report.invalid.push((i, ":path".to_owned())),
            }
        }
        if let Some(a) = authority {
            if valid_authority(&a) {
                set(headers, ":authority", a.into_bytes());
            } else {
                report.invalid.push((i, ":authority".to_owned()));
            }
        }
    }
    matched
}

/// Response phase: applies the response operations of the rules whose request matched
/// (`matched`, from [`apply_request`]) and whose status condition holds.
pub fn apply_response(
    rules: &[Rule],
    matched: &[bool],
    headers: &mut Headers,
    resolver: &mut Resolver<'_>,
    report: &mut Report,
) {
    let status = get_str(headers, ":status").and_then(|s| s.trim().parse::<u16>().ok());
    for (i, rule) in rules.iter().enumerate() {
        if rule.response.is_empty()
            || !matched.get(i).copied().unwrap_or(false)
            || !rule.when.matches_status(status)
        {
            continue;
        }
        apply_ops(
            &rule.response,
            headers,
            Phase::Response,
            resolver,
            i,
            report,
        );
    }
}

#[cfg(test)]
mod tests;
