//! Pure helpers over request data: paths, query strings, cookies, credentials, header lists.

/// The path without its query string or fragment: `/a/b?x=1` → `/a/b`.
pub fn path_only(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

/// The query string without `?` (empty when there is none).
pub fn query_string(path: &str) -> &str {
    match path.split_once('?') {
        Some((_, q)) => q.split('#').next().unwrap_or_default(),
        None => "",
    }
}

/// The first value of query parameter `name`, percent-decoded (`+` is a space).
pub fn query_param(path: &str, name: &str) -> Option<String> {
    query_string(path).split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2]))
            {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of a hexadecimal digit.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True for an HTTP token (RFC 9110 `tchar`s): what a header name must be.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The value of cookie `name` in a `Cookie` header value.
pub fn cookie<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The token of an `Authorization: Bearer <token>` value (scheme matched case-insensitively).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The first value of header `name` (case-insensitive) in a header list.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Matches `path` against a pattern: `*` alone matches everything, `prefix*` a prefix,
/// `*suffix` a suffix, anything else exactly (Istio's AuthorizationPolicy path syntax).
pub fn glob_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        pattern == value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert_eq!(path_only("/a/b?x=1#f"), "/a/b");
        assert_eq!(path_only("/a#f"), "/a");
        assert_eq!(query_string("/a?x=1&y=2#f"), "x=1&y=2");
        assert_eq!(query_string("/a"), "");
        assert_eq!(
            query_param("/a?x=1&na%6De=b+c%21", "name").as_deref(),
            Some("b c!")
        );
        assert_eq!(query_param("/a?flag&x=1", "flag").as_deref(), Some(""));
        assert_eq!(query_param("/a?x=1", "y"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn cookies_and_tokens() {
        assert_eq!(cookie("a=1; session=\"xyz\"; b=2", "session"), Some("xyz"));
        assert_eq!(cookie("a=1", "session"), None);
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn header_lookup_ignores_case() {
        let h = vec![("Content-Type".to_owned(), "text/plain".to_owned())];
        assert_eq!(header(&h, "content-type"), Some("text/plain"));
        assert_eq!(header(&h, "accept"), None);
    }

    #[test]
    fn tokens() {
        assert!(is_token("x-request-id"));
        assert!(is_token("A!#$%&'*+-.^_`|~9"));
        assert!(!is_token(""));
        assert!(!is_token("a b"));
        assert!(!is_token("a:b"));
        assert!(!is_token("é"));
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match("*", "/x"));
        assert!(glob_match("/api/*", "/api/v1"));
        assert!(!glob_match("/api/*", "/apx"));
        assert!(glob_match("*.png", "/a/b.png"));
        assert!(glob_match("/exact", "/exact"));
        assert!(!glob_match("/exact", "/exact/"));
    }
}
