//! The proxy-wasm ABI's pure decoding, with no dependency (not even wasmtime): guest memory
//! ranges, the header-map wire format, property paths and header checks. Everything the guest
//! hands the host passes through here before the host acts on it; the `wasm_abi` fuzz target
//! (`fuzz/`) includes this file as it is.

/// A guest pointer or length was out of bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryError;

/// The byte range `ptr..ptr + len` of a guest memory of `size` bytes, pointer and length read
/// as the guest's unsigned 32-bit values; `Err` when it does not fit. Never panics.
///
/// # Errors
///
/// [`MemoryError`] when the range overflows or ends past `size`.
pub fn guest_range(ptr: i32, len: i32, size: usize) -> Result<std::ops::Range<usize>, MemoryError> {
    let start = ptr as u32 as usize;
    let len = len as u32 as usize;
    let end = start.checked_add(len).ok_or(MemoryError)?;
    if end > size {
        return Err(MemoryError);
    }
    Ok(start..end)
}

/// An ordered list of header (or trailer, or metadata) pairs, pseudo-headers included
/// (`:method`, `:path`, `:authority`, `:scheme`, `:status`), names lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList(pub Vec<(String, Vec<u8>)>);

impl HeaderList {
    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Appends a pair.
    pub fn add(&mut self, name: &str, value: &[u8]) {
        self.0.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    /// Replaces every value of `name` with `value` (keeping the first position).
    pub fn replace(&mut self, name: &str, value: &[u8]) {
        let lower = name.to_ascii_lowercase();
        if let Some(pos) = self.0.iter().position(|(k, _)| *k == lower) {
            self.0[pos].1 = value.to_vec();
            let mut i = pos + 1;
            while i < self.0.len() {
                if self.0[i].0 == lower {
                    self.0.remove(i);
                } else {
                    i += 1;
                }
            }
        } else {
            self.0.push((lower, value.to_vec()));
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The spec's serialization: count, (key len, value len) pairs, then NUL-terminated keys and
    /// values, all little-endian u32.
    pub fn serialize(&self) -> Vec<u8> {
        let mut size = 4 + self.0.len() * 8;
        for (k, v) in &self.0 {
            size += k.len() + v.len() + 2;
        }
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    /// Parses the spec's serialization; `None` when malformed.
    pub fn deserialize(bytes: &[u8]) -> Option<HeaderList> {
        if bytes.is_empty() || bytes == [0] {
            return Some(HeaderList::default());
        }
        let u32_at = |i: usize| -> Option<usize> {
            let b = bytes.get(i..i + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let count = u32_at(0)?;
        if count > bytes.len() / 8 {
            return None;
        }
        let mut sizes = Vec::with_capacity(count);
        for i in 0..count {
            sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
        }
        let mut pos = 4 + count * 8;
        let mut out = Vec::with_capacity(count);
        for (kl, vl) in sizes {
            let k = bytes.get(pos..pos + kl)?;
            pos += kl + 1;
            let v = bytes.get(pos..pos + vl)?;
            pos += vl + 1;
            if pos > bytes.len() {
                return None;
            }
            out.push((String::from_utf8(k.to_vec()).ok()?, v.to_vec()));
        }
        Some(HeaderList(out))
    }
}

/// True when a header name is acceptable on the wire (a token, or a pseudo-header).
pub fn valid_header_name(name: &str) -> bool {
    let name = name.strip_prefix(':').unwrap_or(name);
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// True when a header value is acceptable on the wire: no CR, LF or NUL (nor other controls
/// except tab).
pub fn valid_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A property path as the guest sends it, `a\0b\0c`, as its segments `["a", "b", "c"]`
/// (empty segments dropped, invalid UTF-8 replaced).
pub fn path_segments(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_list_round_trips_in_spec_format() {
        let h = HeaderList(vec![
            (":path".into(), b"/a".to_vec()),
            ("x".into(), b"".to_vec()),
        ]);
        let bytes = h.serialize();
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(HeaderList::deserialize(&bytes), Some(h));
        assert_eq!(HeaderList::deserialize(&[0]), Some(HeaderList::default()));
        assert_eq!(HeaderList::deserialize(&[5, 0, 0, 0]), None);
        assert_eq!(HeaderList::deserialize(&bytes[..bytes.len() - 2]), None);
    }

    #[test]
    fn replace_keeps_position_and_drops_duplicates() {
        let mut h = HeaderList(vec![
            ("a".into(), b"1".to_vec()),
            ("b".into(), b"2".to_vec()),
            ("a".into(), b"3".to_vec()),
        ]);
        h.replace("A", b"9");
        assert_eq!(
            h.0,
            vec![("a".into(), b"9".to_vec()), ("b".into(), b"2".to_vec())]
        );
    }

    #[test]
    fn ranges_are_checked_as_unsigned_without_overflow() {
        assert_eq!(guest_range(0, 4, 4), Ok(0..4));
        assert_eq!(guest_range(1, 4, 4), Err(MemoryError));
        assert_eq!(
            guest_range(-1, 1, usize::MAX),
            Ok(0xffff_ffff..0x1_0000_0000)
        );
        assert_eq!(guest_range(-1, -1, 1 << 20), Err(MemoryError));
        assert_eq!(
            path_segments(b"a\0\0b\0"),
            vec!["a".to_owned(), "b".to_owned()]
        );
    }

    #[test]
    fn header_validation() {
        assert!(valid_header_name(":path"));
        assert!(!valid_header_name("bad name"));
        assert!(!valid_header_value(b"a\r\nb"));
        assert!(!valid_header_value(b"a\0"));
        assert!(valid_header_value(b"a\tb"));
    }
}
