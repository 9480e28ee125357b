//! Route match conditions: path, headers, query parameters, method.

use http::{HeaderName, Method};
use regex::Regex;
use weft_config::schema;

use crate::{RequestView, RoutingError};

/// A route's compiled conditions; all must hold.
#[derive(Debug, Default)]
pub struct RouteMatcher {
    path: Option<PathCond>,
    headers: Vec<HeaderCond>,
    query: Vec<QueryCond>,
    methods: Vec<Method>,
}

#[derive(Debug)]
enum PathCond {
    Exact(String),
    ExactIgnoreCase(String),
    Prefix(String),
    PrefixIgnoreCase(String),
    Regex(Regex),
}

#[derive(Debug)]
struct HeaderCond {
    name: HeaderName,
    test: ValueTest,
    invert: bool,
}

#[derive(Debug)]
struct QueryCond {
    name: String,
    test: ValueTest,
}

#[derive(Debug)]
enum ValueTest {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

/// Compiles `pattern` so that it must match the whole input, as Envoy's `safe_regex` does.
pub(crate) fn full_regex(path: &str, pattern: &str) -> Result<Regex, RoutingError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|source| RoutingError::Regex {
        path: path.to_owned(),
        pattern: pattern.to_owned(),
        source,
    })
}

impl RouteMatcher {
    pub(crate) fn build(rpath: &str, m: &schema::RouteMatch) -> Result<RouteMatcher, RoutingError> {
        let path = match &m.path {
            None => None,
            Some(p) => Some(if let Some(e) = &p.exact {
                if p.ignore_case {
                    PathCond::ExactIgnoreCase(e.to_ascii_lowercase())
                } else {
                    PathCond::Exact(e.clone())
                }
            } else if let Some(pre) = &p.prefix {
                if p.ignore_case {
                    PathCond::PrefixIgnoreCase(pre.to_ascii_lowercase())
                } else {
                    PathCond::Prefix(pre.clone())
                }
            } else if let Some(re) = &p.regex {
                PathCond::Regex(full_regex(&format!("{rpath}.match.path.regex"), re)?)
            } else {
                PathCond::Prefix("/".to_owned())
            }),
        };
        let mut headers = Vec::new();
        for (i, h) in m.headers.iter().enumerate() {
            let hpath = format!("{rpath}.match.headers[{i}]");
            let name =
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| RoutingError::Header {
                    path: format!("{hpath}.name"),
                    value: h.name.clone(),
                })?;
            let test = if let Some(e) = &h.exact {
                ValueTest::Exact(e.clone())
            } else if let Some(re) = &h.regex {
                ValueTest::Regex(full_regex(&format!("{hpath}.regex"), re)?)
            } else if let Some(absent) = h.absent {
                ValueTest::Present(!absent)
            } else {
                ValueTest::Present(h.present.unwrap_or(true))
            };
            headers.push(HeaderCond {
                name,
                test,
                invert: h.invert,
            });
        }
        let mut query = Vec::new();
        for (i, q) in m.query.iter().enumerate() {
            let test = if let Some(e) = &q.exact {
                ValueTest::Exact(e.clone())
            } else if let Some(re) = &q.regex {
                ValueTest::Regex(full_regex(&format!("{rpath}.match.query[{i}].regex"), re)?)
            } else {
                ValueTest::Present(q.present.unwrap_or(true))
            };
            query.push(QueryCond {
                name: q.name.clone(),
                test,
            });
        }
        let methods = m
            .methods
            .iter()
            .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
            .collect();
        Ok(RouteMatcher {
            path,
            headers,
            query,
            methods,
        })
    }

    /// Conditions on headers only (e.g. a fault's `headers`); `path` names them in errors.
    pub fn for_headers(
        path: &str,
        headers: &[schema::HeaderMatch],
    ) -> Result<RouteMatcher, RoutingError> {
        let m = schema::RouteMatch {
            headers: headers.to_vec(),
            ..schema::RouteMatch::default()
        };
        RouteMatcher::build(path, &m)
    }

    /// The prefix this route matches on, if it is a prefix match.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            Some(PathCond::Prefix(p) | PathCond::PrefixIgnoreCase(p)) => Some(p),
            _ => None,
        }
    }

    /// True when every condition holds for `req`.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return false;
        }
        let path_ok = match &self.path {
            None => true,
            Some(PathCond::Exact(p)) => req.path == p,
            Some(PathCond::ExactIgnoreCase(p)) => req.path.eq_ignore_ascii_case(p),
            Some(PathCond::Prefix(p)) => req.path.starts_with(p.as_str()),
            Some(PathCond::PrefixIgnoreCase(p)) => req
                .path
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Some(PathCond::Regex(re)) => re.is_match(req.path),
        };
        if !path_ok {
            return false;
        }
        for h in &self.headers {
            let mut values = req.headers.get_all(&h.name).iter().peekable();
            let hit = match &h.test {
                ValueTest::Present(want) => values.peek().is_some() == *want,
                ValueTest::Exact(e) => values.any(|v| v.as_bytes() == e.as_bytes()),
                ValueTest::Regex(re) => values.any(|v| v.to_str().is_ok_and(|s| re.is_match(s))),
            };
            if hit == h.invert {
                return false;
            }
        }
        if !self.query.is_empty() {
            let params: Vec<(String, String)> = parse_query(req.query.unwrap_or(""));
            for q in &self.query {
                let mut values = params.iter().filter(|(k, _)| *k == q.name).map(|(_, v)| v);
                let hit = match &q.test {
                    ValueTest::Present(want) => values.next().is_some() == *want,
                    ValueTest::Exact(e) => values.any(|v| v == e),
                    ValueTest::Regex(re) => values.any(|v| re.is_match(v)),
                };
                if !hit {
                    return false;
                }
            }
        }
        true
    }
}

/// `a=1&b=x%20y` → `[("a","1"), ("b","x y")]`, percent- and plus-decoded.
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
