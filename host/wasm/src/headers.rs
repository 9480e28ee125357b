//! The live header maps of a stream as plugins see them: the embedding's own `http::HeaderMap`
//! (moved in, never converted) plus the pseudo-headers (`:method`, `:scheme`, `:authority`,
//! `:path`, `:status`) taken from the request or response line.
//!
//! A [`Headers`] is a copy-on-write handle: cloning it is a reference-count increment, so every
//! plugin of a chain can keep the final request and response for `on_log` without a copy per
//! plugin; a write through a shared handle copies first (it never happens on the request path:
//! the maps are read-only once shared).

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use crate::abi::HeaderList;

/// A map's pseudo-headers, in order. (Inline storage was measured: the moves of a 270-byte
/// list cost more `memcpy` than the allocation saved.)
pub type Pseudo = Vec<(Cow<'static, str>, HeaderValue)>;

/// One header map: pseudo-headers (in order), then the embedding's `HeaderMap`.
#[derive(Debug, Clone, Default)]
struct Inner {
    pseudo: Pseudo,
    map: HeaderMap,
}

/// A stream's header (or trailer) map: pseudo-headers first, then regular headers, names
/// lower-case; empty when it does not exist (yet).
#[derive(Debug, Clone, Default)]
pub struct Headers(Option<Arc<Inner>>);

/// Why a header write was refused: the name or value is not valid on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid header name or value")]
pub struct InvalidHeader;

fn value(bytes: &[u8]) -> Result<HeaderValue, InvalidHeader> {
    HeaderValue::from_bytes(bytes).map_err(|_| InvalidHeader)
}

fn name(name: &str) -> Result<HeaderName, InvalidHeader> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| InvalidHeader)
}

/// The last few regular header names a plugin instance wrote, parsed: plugins write the same
/// few names on every request, and parsing one is two validations and, for a custom name, an
/// allocation. Bounded: [`NameCache::SLOTS`] names of at most [`NameCache::MAX_LEN`] bytes.
#[derive(Debug, Default)]
pub(crate) struct NameCache {
    names: [Option<HeaderName>; NameCache::SLOTS],
    next: usize,
}

impl NameCache {
    const SLOTS: usize = 4;
    const MAX_LEN: usize = 64;

    /// The cached name whose (lower-case) bytes are exactly `raw`.
    pub(crate) fn get(&self, raw: &[u8]) -> Option<HeaderName> {
        self.names
            .iter()
            .flatten()
            .find(|n| n.as_str().as_bytes() == raw)
            .cloned()
    }

    /// Remembers `name` (a short one), replacing the oldest entry.
    pub(crate) fn put(&mut self, name: &HeaderName) {
        if name.as_str().len() > NameCache::MAX_LEN {
            return;
        }
        if let Some(slot) = self.names.get_mut(self.next) {
            *slot = Some(name.clone());
        }
        self.next = (self.next + 1) % NameCache::SLOTS;
    }
}

/// A header name checked and converted once: a pseudo-header (kept in order before the map,
/// lower-case) or a regular one.
#[derive(Debug, Clone)]
pub(crate) enum Key {
    Pseudo(Cow<'static, str>),
    Regular(HeaderName),
}

impl Key {
    /// `name` as a key.
    pub(crate) fn parse(key: &str) -> Result<Key, InvalidHeader> {
        if key.starts_with(':') {
            Ok(Key::Pseudo(pseudo_name(key)))
        } else {
            name(key).map(Key::Regular)
        }
    }
}

/// A pseudo-header's name with a static spelling when it is one of the standard ones.
fn pseudo_name(name: &str) -> Cow<'static, str> {
    for known in [":method", ":scheme", ":authority", ":path", ":status"] {
        if name.eq_ignore_ascii_case(known) {
            return Cow::Borrowed(known);
        }
    }
    Cow::Owned(name.to_ascii_lowercase())
}

/// The scheme as a header value, static for `http` and `https`.
fn scheme_value(scheme: &str) -> HeaderValue {
    match scheme {
        "http" => HeaderValue::from_static("http"),
        "https" => HeaderValue::from_static("https"),
        other => HeaderValue::from_str(other).unwrap_or(HeaderValue::from_static("http")),
    }
}

/// The method as a header value without an allocation for the standard methods.
fn method_value(m: &Method) -> HeaderValue {
    let s = match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return HeaderValue::from_str(m.as_str()).unwrap_or(HeaderValue::from_static("")),
    };
    HeaderValue::from_static(s)
}

impl Headers {
    /// Request headers: the pseudo-headers from the request line, then `map` (moved in; a
    /// `host` header in it is the `:authority`, as Envoy folds it).
    pub fn request(
        method: &Method,
        scheme: &str,
        authority: &str,
        path: &str,
        mut map: HeaderMap,
    ) -> Headers {
        let authority = match map.remove(http::header::HOST) {
            Some(h) => h,
            None => HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("")),
        };
        let path = HeaderValue::from_str(path).unwrap_or(HeaderValue::from_static("/"));
        Headers(Some(Arc::new(Inner {
            pseudo: vec![
                (Cow::Borrowed(":method"), method_value(method)),
                (Cow::Borrowed(":scheme"), scheme_value(scheme)),
                (Cow::Borrowed(":authority"), authority),
                (Cow::Borrowed(":path"), path),
            ],
            map,
        })))
    }

    /// Response headers: `:status`, then `map` (moved in).
    pub fn response(status: StatusCode, map: HeaderMap) -> Headers {
        Headers(Some(Arc::new(Inner {
            pseudo: vec![(
                Cow::Borrowed(":status"),
                HeaderValue::from_static(status_str(status)),
            )],
            map,
        })))
    }

    /// A map without pseudo-headers (trailers), moved in.
    pub fn from_map(map: HeaderMap) -> Headers {
        Headers(Some(Arc::new(Inner {
            pseudo: Pseudo::new(),
            map,
        })))
    }

    /// From a list of pairs (pseudo-headers anywhere); invalid pairs are skipped.
    pub fn from_list(list: &HeaderList) -> Headers {
        let mut h = Headers::default();
        for (k, v) in &list.0 {
            let _ = h.add(k, v);
        }
        h
    }

    /// The pairs, pseudo-headers first.
    pub fn to_list(&self) -> HeaderList {
        HeaderList(
            self.iter()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect(),
        )
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }

    /// Pairs, pseudo-headers first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().flat_map(|i| {
            i.pseudo
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_bytes()))
                .chain(i.map.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |i| i.pseudo.len() + i.map.len())
    }

    /// True when the map has no pair (or does not exist).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let i = self.0.as_ref()?;
        if name.starts_with(':') {
            i.pseudo
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        } else {
            i.map.get(name).map(HeaderValue::as_bytes)
        }
    }

    /// The value of pseudo-header `name` as text.
    pub fn pseudo(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Appends a pair.
    ///
    /// # Errors
    ///
    /// [`InvalidHeader`] when the name or value is not valid on the wire.
    pub fn add(&mut self, key: &str, v: &[u8]) -> Result<(), InvalidHeader> {
        let v = value(v)?;
        self.add_parsed(Key::parse(key)?, v);
        Ok(())
    }

    /// Appends a pair already checked.
    pub(crate) fn add_parsed(&mut self, key: Key, v: HeaderValue) {
        match key {
            Key::Pseudo(k) => self.inner_mut().pseudo.push((k, v)),
            Key::Regular(n) => {
                self.inner_mut().map.append(n, v);
            }
        }
    }

    /// Replaces every value of `key` with `v` (keeping the first position).
    ///
    /// # Errors
    ///
    /// [`InvalidHeader`] when the name or value is not valid on the wire.
    pub fn replace(&mut self, key: &str, v: &[u8]) -> Result<(), InvalidHeader> {
        let v = value(v)?;
        self.replace_parsed(Key::parse(key)?, v);
        Ok(())
    }

    /// Replaces every value of a key already checked.
    pub(crate) fn replace_parsed(&mut self, key: Key, v: HeaderValue) {
        match key {
            Key::Pseudo(key) => {
                let pseudo = &mut self.inner_mut().pseudo;
                match pseudo
                    .iter()
                    .position(|(k, _)| k.eq_ignore_ascii_case(&key))
                {
                    Some(pos) => {
                        pseudo[pos].1 = v;
                        let mut i = pos + 1;
                        while i < pseudo.len() {
                            if pseudo[i].0.eq_ignore_ascii_case(&key) {
                                pseudo.remove(i);
                            } else {
                                i += 1;
                            }
                        }
                    }
                    None => pseudo.push((key, v)),
                }
            }
            Key::Regular(n) => {
                self.inner_mut().map.insert(n, v);
            }
        }
    }

    /// Removes every value of `key`.
    pub fn remove(&mut self, key: &str) {
        if self.get(key).is_none() {
            return;
        }
        let inner = self.inner_mut();
        if key.starts_with(':') {
            inner.pseudo.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        } else {
            inner.map.remove(key);
        }
    }

    /// Replaces every pair (`proxy_set_header_map_pairs`).
    ///
    /// # Errors
    ///
    /// [`InvalidHeader`] when a name or value is not valid on the wire (nothing changed).
    pub fn set_list(&mut self, list: &HeaderList) -> Result<(), InvalidHeader> {
        let mut fresh = Headers(Some(Arc::new(Inner::default())));
        for (k, v) in &list.0 {
            fresh.add(k, v)?;
        }
        *self = fresh;
        Ok(())
    }

    /// The spec's serialization: count, (key len, value len) pairs, then NUL-terminated keys and
    /// values, all little-endian u32.
    pub fn serialize(&self) -> Vec<u8> {
        let mut n = 0usize;
        let mut size = 4;
        for (k, v) in self.iter() {
            n += 1;
            size += 8 + k.len() + v.len() + 2;
        }
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&(n as u32).to_le_bytes());
        for (k, v) in self.iter() {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in self.iter() {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    /// Bytes of names and values (Envoy's header part of `*.total_size`).
    pub fn byte_size(&self) -> usize {
        self.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Takes the regular headers out (moving them when this handle is the only one, copying
    /// otherwise) and the pseudo-headers; leaves the map empty.
    pub fn take_parts(&mut self) -> (Pseudo, HeaderMap) {
        match self.0.take() {
            None => (Pseudo::new(), HeaderMap::new()),
            Some(arc) => {
                let inner = Arc::try_unwrap(arc).unwrap_or_else(|shared| (*shared).clone());
                (inner.pseudo, inner.map)
            }
        }
    }

    /// [`take_parts`](Self::take_parts), keeping a read-only copy of the map as it is now (for
    /// the response phase and `on_log`, once the parts are sent). The copy is the snapshot's,
    /// so the parts returned are the originals, spare capacity included: the embedding's own
    /// edits after the plugins (`host` back into a request map) do not grow a fresh copy.
    pub fn take_parts_keeping(&mut self) -> (Pseudo, HeaderMap, Headers) {
        match self.0.take() {
            None => (Pseudo::new(), HeaderMap::new(), Headers::default()),
            Some(arc) => {
                let snapshot = Headers(Some(Arc::new(Inner::clone(&arc))));
                let inner = Arc::try_unwrap(arc).unwrap_or_else(|shared| (*shared).clone());
                (inner.pseudo, inner.map, snapshot)
            }
        }
    }

    /// True when another handle shares this map (it is read-only for the request path).
    pub fn is_shared(&self) -> bool {
        self.0.as_ref().is_some_and(|a| Arc::strong_count(a) > 1)
    }
}

/// A status code's three digits, from a table built once (no allocation per response).
fn status_str(s: StatusCode) -> &'static str {
    static TABLE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| (0..1000).map(|n| format!("{n:03}")).collect());
    table
        .get(usize::from(s.as_u16()))
        .map_or("500", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_cache_keeps_the_last_four_short_names_by_their_exact_bytes() {
        let mut cache = NameCache::default();
        let names: Vec<HeaderName> = ["x-a", "x-b", "x-c", "x-d", "x-e"]
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        for n in &names[..4] {
            cache.put(n);
        }
        assert_eq!(cache.get(b"x-a"), Some(names[0].clone()));
        assert_eq!(
            cache.get(b"X-A"),
            None,
            "only the exact (lower-case) bytes hit"
        );
        cache.put(&names[4]);
        assert_eq!(cache.get(b"x-a"), None, "the oldest was replaced");
        assert_eq!(cache.get(b"x-e"), Some(names[4].clone()));
        let long = HeaderName::from_bytes(&[b'x'; 65]).unwrap();
        cache.put(&long);
        assert_eq!(
            cache.get(long.as_str().as_bytes()),
            None,
            "long names are not kept"
        );
        assert_eq!(cache.get(b"x-b"), Some(names[1].clone()));
    }

    #[test]
    fn request_map_is_live_and_folds_host() {
        let mut map = HeaderMap::new();
        map.insert("host", HeaderValue::from_static("example.com"));
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        let mut h = Headers::request(&Method::GET, "https", "fallback", "/p?q", map);
        assert_eq!(h.get(":authority"), Some(&b"example.com"[..]));
        assert_eq!(h.get("host"), None);
        assert_eq!(h.get(":scheme"), Some(&b"https"[..]));
        assert_eq!(h.len(), 6);
        h.replace("X-A", b"9").unwrap();
        assert_eq!(h.get("x-a"), Some(&b"9"[..]));
        assert_eq!(h.len(), 5);
        assert!(h.add("bad name", b"v").is_err());
        assert!(h.add("x", b"a\r\nb").is_err());
        h.remove(":path");
        assert_eq!(h.get(":path"), None);
        let list = h.to_list();
        assert_eq!(
            HeaderList::deserialize(&h.serialize()),
            Some(list.clone()),
            "serialization matches the pairs"
        );
        let shared = h.clone();
        assert!(h.is_shared());
        h.add("x-late", b"1").unwrap();
        assert_eq!(shared.get("x-late"), None, "a write copies a shared map");
    }

    #[test]
    fn response_status_is_a_pseudo_header() {
        let h = Headers::response(StatusCode::IM_A_TEAPOT, HeaderMap::new());
        assert_eq!(h.pseudo(":status"), Some("418"));
    }
}
