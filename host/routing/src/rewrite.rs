//! Path rewrites applied before a request goes upstream.

use regex::Regex;
use weft_config::schema::ForwardAction;

use crate::RoutingError;

/// How a forwarded request's path changes.
#[derive(Debug, Default)]
pub enum PathRewrite {
    /// Unchanged.
    #[default]
    None,
    /// Replace the matched prefix.
    Prefix {
        /// The route's match prefix.
        matched: String,
        /// Its replacement.
        replacement: String,
    },
    /// Replace every match of a pattern.
    Regex {
        /// The pattern.
        pattern: Regex,
        /// The substitution (`$1`, `${name}`).
        substitution: String,
    },
}

impl PathRewrite {
    pub(crate) fn build(
        fpath: &str,
        prefix: Option<&str>,
        f: &ForwardAction,
    ) -> Result<PathRewrite, RoutingError> {
        if let (Some(replacement), Some(matched)) = (&f.prefix_rewrite, prefix) {
            return Ok(PathRewrite::Prefix {
                matched: matched.to_owned(),
                replacement: replacement.clone(),
            });
        }
        if let Some(rr) = &f.regex_rewrite {
            let pattern = Regex::new(&rr.pattern).map_err(|source| RoutingError::Regex {
                path: format!("{fpath}.regex_rewrite.pattern"),
                pattern: rr.pattern.clone(),
                source,
            })?;
            return Ok(PathRewrite::Regex {
                pattern,
                substitution: rr.substitution.clone(),
            });
        }
        Ok(PathRewrite::None)
    }

    /// True when the path is left alone.
    pub fn is_none(&self) -> bool {
        matches!(self, PathRewrite::None)
    }

    /// The rewritten path (without query), or `None` when unchanged.
    pub fn apply(&self, path: &str) -> Option<String> {
        match self {
            PathRewrite::None => None,
            PathRewrite::Prefix {
                matched,
                replacement,
            } => {
                let rest = path.get(matched.len()..)?;
                let mut out = replacement.clone();
                // Avoid `//` when both the replacement ends and the rest starts with a slash.
                if out.ends_with('/') && rest.starts_with('/') {
                    out.pop();
                }
                out.push_str(rest);
                if out.is_empty() || !out.starts_with('/') {
                    out.insert(0, '/');
                }
                Some(out)
            }
            PathRewrite::Regex {
                pattern,
                substitution,
            } => {
                let out = pattern
                    .replace_all(path, substitution.as_str())
                    .into_owned();
                Some(if out.starts_with('/') {
                    out
                } else {
                    format!("/{out}")
                })
            }
        }
    }
}
