//! Request path normalization before routing (Envoy's `normalize_path` and `merge_slashes`):
//! RFC 3986 §5.2.4 dot-segment removal, where a `%2e` (either case) counts as a dot and a
//! `..` at the root stays at the root (`/../a` is `/a`, as in Envoy), and runs of `/` merged
//! into one. The query is kept as it is.

use std::borrow::Cow;

/// `path` (without the query) normalized: dot segments removed when `dots`, slashes merged
/// when `merge`. Borrowed when nothing changes.
pub fn path(path: &str, dots: bool, merge: bool) -> Cow<'_, str> {
    let needs_dots = dots && has_dot_segment(path);
    let needs_merge = merge && path.contains("//");
    if !needs_dots && !needs_merge {
        return Cow::Borrowed(path);
    }
    let absolute = path.starts_with('/');
    let trailing = path.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        let seg = *seg;
        if merge && seg.is_empty() && i != last {
            continue;
        }
        match dots.then(|| dot_kind(seg)).flatten() {
            Some(Dot::One) => {
                if i == last {
                    out.push("");
                }
            }
            Some(Dot::Two) => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            None => out.push(seg),
        }
    }
    let mut s = String::with_capacity(path.len());
    if absolute {
        s.push('/');
    }
    s.push_str(&out.join("/"));
    if trailing && !s.ends_with('/') {
        s.push('/');
    }
    Cow::Owned(s)
}

enum Dot {
    One,
    Two,
}

fn dot_kind(seg: &str) -> Option<Dot> {
    let lower = seg.to_ascii_lowercase();
    let undotted = lower.replace("%2e", ".");
    match undotted.as_str() {
        "." => Some(Dot::One),
        ".." => Some(Dot::Two),
        _ => None,
    }
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| dot_kind(s).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        path(p, true, true).into_owned()
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/a/b/c"), "/a/b/c");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/a/%2e%2E/admin"), "/admin");
        assert_eq!(n("/a//b///c/"), "/a/b/c/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/a/../../b"), "/b");
        assert_eq!(n("/a..b/.c"), "/a..b/.c");
        // Only what is asked for.
        assert_eq!(path("/a//./b", true, false), "/a//b");
        assert_eq!(path("/a//./b", false, true), "/a/./b");
        assert!(matches!(path("/x/y", true, true), Cow::Borrowed(_)));
    }
}
