//! Value templates: literal text with `%{…}` variables, e.g.
//! `%{request.path} from %{source.address}` or `user=%{request.header.x-user|anonymous}`.
//!
//! A variable is `request.header.<name>` / `response.header.<name>` (a header of the stream),
//! or any other dotted Envoy attribute (`request.path`, `source.address`, `response.code`, …).
//! `|text` gives a default when the value is missing; `%%` is a literal `%`.

use crate::config::ConfigError;

/// What a variable names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// A request header (lower-case name).
    RequestHeader(String),
    /// A response header (lower-case name).
    ResponseHeader(String),
    /// A dotted attribute.
    Property(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var { var: Var, default: Option<String> },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; errors name the problem (the caller adds the field with
    /// [`ConfigError::within`]).
    pub fn parse(text: &str) -> Result<Template, ConfigError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('%') {
            literal.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                literal.push('%');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body.find('}').ok_or_else(|| {
                    ConfigError::invalid(".", format!("unclosed `%{{` in template {text:?}"))
                })?;
                let (name, default) = match body[..end].split_once('|') {
                    Some((n, d)) => (n.trim(), Some(d.to_owned())),
                    None => (body[..end].trim(), None),
                };
                let var = parse_var(name).ok_or_else(|| {
                    ConfigError::invalid(
                        ".",
                        format!("bad variable `%{{{name}}}` in template {text:?}"),
                    )
                })?;
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Var { var, default });
                rest = &body[end + 1..];
            } else {
                literal.push('%');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// True when the template has no variables.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The variables it uses.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { var, .. } => Some(var),
            Part::Text(_) => None,
        })
    }

    /// Renders with `resolve`; a missing value renders as its default, or empty.
    pub fn render(&self, mut resolve: impl FnMut(&Var) -> Option<String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var { var, default } => match resolve(var) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(default.as_deref().unwrap_or_default()),
                },
            }
        }
        out
    }

    /// Renders against the current stream through the host: headers with
    /// `proxy_get_header_map_value`, attributes with `proxy_get_property`.
    pub fn render_from_host(&self) -> String {
        self.render(host_value)
    }
}

/// Resolves a variable through the host.
pub fn host_value(var: &Var) -> Option<String> {
    // Bytes, converted lossily: a non-UTF-8 header value must not trap the plugin.
    let lossy = |v: Vec<u8>| String::from_utf8_lossy(&v).into_owned();
    match var {
        Var::RequestHeader(h) => crate::host::request_header_bytes(h).map(lossy),
        Var::ResponseHeader(h) => crate::host::response_header_bytes(h).map(lossy),
        Var::Property(p) => crate::properties::get_string(p),
    }
}

fn parse_var(name: &str) -> Option<Var> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    if !valid(name) {
        return None;
    }
    if let Some(h) = name.strip_prefix("request.header.") {
        return Some(Var::RequestHeader(h.to_ascii_lowercase()));
    }
    if let Some(h) = name.strip_prefix("response.header.") {
        return Some(Var::ResponseHeader(h.to_ascii_lowercase()));
    }
    Some(Var::Property(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(var: &Var) -> Option<String> {
        match var {
            Var::Property(p) if p == "request.path" => Some("/x".into()),
            Var::RequestHeader(h) if h == "user-agent" => Some("curl".into()),
            _ => None,
        }
    }

    #[test]
    fn renders_variables_defaults_and_escapes() {
        let t =
            Template::parse("%{request.path} by %{request.header.User-Agent} 100%% %{x.y|none}")
                .expect("parse");
        assert_eq!(t.render(resolve), "/x by curl 100% none");
        assert!(!t.is_literal());
        assert_eq!(t.vars().count(), 3);
        let t = Template::parse("plain 5% text").expect("parse");
        assert!(t.is_literal());
        assert_eq!(t.render(resolve), "plain 5% text");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(Template::parse("%{request.path").is_err());
        assert!(Template::parse("%{}").is_err());
        assert!(Template::parse("%{a b}").is_err());
        let e = Template::parse("x %{a$b}").expect_err("bad var");
        assert!(e.message().contains("a$b"), "{e}");
    }
}
