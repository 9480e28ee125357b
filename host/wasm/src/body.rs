//! [`BodyBuffer`]: a body (or TCP data) buffer as plugins see it, held as the embedding's own
//! `Bytes` chunks. A chunk no plugin changes leaves the buffer as the same `Bytes` it came in
//! as (no copy); a read of a range inside one chunk is a view of it; only a read of a range
//! spanning chunks, or a buffer split into too many pieces by writes, flattens it (one copy into
//! a `BytesMut`).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Most chunks writes may leave before the buffer is flattened (small writes to a large
/// buffer would otherwise leave it in ever smaller pieces).
const MAX_CHUNKS_AFTER_WRITE: usize = 16;

/// The bytes of a body buffer: `Bytes` chunks in order, and their total length. The first chunk
/// is kept inline, so a buffer of one chunk (a body frame passing through) allocates nothing.
#[derive(Clone, Default)]
pub struct BodyBuffer {
    /// The first chunk; `None` only when the buffer is empty.
    head: Option<Bytes>,
    /// The chunks after `head`.
    rest: VecDeque<Bytes>,
    len: usize,
}

impl std::fmt::Debug for BodyBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyBuffer")
            .field("len", &self.len)
            .field("chunks", &self.chunk_count())
            .finish()
    }
}

impl PartialEq for BodyBuffer {
    fn eq(&self, other: &BodyBuffer) -> bool {
        self.len == other.len && self.iter_bytes().eq(other.iter_bytes())
    }
}

impl Eq for BodyBuffer {}

impl PartialEq<[u8]> for BodyBuffer {
    fn eq(&self, other: &[u8]) -> bool {
        self.len == other.len() && self.iter_bytes().eq(other.iter().copied())
    }
}

impl PartialEq<&[u8]> for BodyBuffer {
    fn eq(&self, other: &&[u8]) -> bool {
        *self == **other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for BodyBuffer {
    fn eq(&self, other: &&[u8; N]) -> bool {
        *self == other[..]
    }
}

impl From<Bytes> for BodyBuffer {
    fn from(chunk: Bytes) -> BodyBuffer {
        let mut b = BodyBuffer::new();
        b.push(chunk);
        b
    }
}

impl From<Vec<u8>> for BodyBuffer {
    fn from(v: Vec<u8>) -> BodyBuffer {
        BodyBuffer::from(Bytes::from(v))
    }
}

impl From<&'static [u8]> for BodyBuffer {
    fn from(v: &'static [u8]) -> BodyBuffer {
        BodyBuffer::from(Bytes::from_static(v))
    }
}

impl From<&'static str> for BodyBuffer {
    fn from(v: &'static str) -> BodyBuffer {
        BodyBuffer::from(Bytes::from_static(v.as_bytes()))
    }
}

impl From<String> for BodyBuffer {
    fn from(v: String) -> BodyBuffer {
        BodyBuffer::from(Bytes::from(v))
    }
}

/// The chunk of `chunks` holding byte `pos` and the offset in it (`None` at or past the end).
fn locate<'a>(chunks: impl Iterator<Item = &'a Bytes>, pos: usize) -> Option<(usize, usize)> {
    let mut at = 0;
    for (i, c) in chunks.enumerate() {
        if pos < at + c.len() {
            return Some((i, pos - at));
        }
        at += c.len();
    }
    None
}

/// Splits `chunks` so that one begins at `pos`; returns its index (the end when `pos` is at or
/// past the end). Views only: nothing is copied.
fn split_at(chunks: &mut VecDeque<Bytes>, pos: usize) -> usize {
    match locate(chunks.iter(), pos) {
        Some((i, 0)) => i,
        Some((i, off)) => {
            let tail = chunks[i].split_off(off);
            chunks.insert(i + 1, tail);
            i + 1
        }
        None => chunks.len(),
    }
}

impl BodyBuffer {
    /// An empty buffer.
    pub fn new() -> BodyBuffer {
        BodyBuffer::default()
    }

    /// Total length in bytes (no flattening).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many chunks hold the bytes (0 when empty).
    pub fn chunk_count(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    /// The chunks, in order.
    pub fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.head.iter().chain(self.rest.iter())
    }

    /// The chunks, moved out in order (no copy).
    pub fn into_chunks(self) -> impl Iterator<Item = Bytes> {
        self.head.into_iter().chain(self.rest)
    }

    /// Appends `chunk` as it is (no copy). Empty chunks are dropped.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        if self.head.is_none() {
            self.head = Some(chunk);
        } else {
            self.rest.push_back(chunk);
        }
    }

    /// Appends every chunk of `other` (no copy).
    pub fn append(&mut self, other: BodyBuffer) {
        if self.head.is_none() {
            *self = other;
            return;
        }
        for c in other.into_chunks() {
            self.push(c);
        }
    }

    /// Empties the buffer and returns what it held.
    pub fn take(&mut self) -> BodyBuffer {
        std::mem::take(self)
    }

    /// The bytes as one `Bytes`: a single chunk is returned as it is (the same allocation);
    /// several are copied once into one.
    pub fn into_bytes(self) -> Bytes {
        if self.rest.is_empty() {
            return self.head.unwrap_or_default();
        }
        self.flattened()
    }

    /// The bytes as a `Vec` (no copy when the buffer is one chunk owning its allocation).
    pub fn into_vec(self) -> Vec<u8> {
        if self.rest.is_empty() {
            return self.head.map(Vec::from).unwrap_or_default();
        }
        self.to_vec()
    }

    /// A copy of the bytes as a `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for c in self.chunks() {
            v.extend_from_slice(c);
        }
        v
    }

    /// Joins the chunks into one (one copy into a `BytesMut`); nothing to do for zero or one.
    pub fn flatten(&mut self) {
        if !self.rest.is_empty() {
            let one = self.flattened();
            self.rest.clear();
            self.head = Some(one);
        }
    }

    fn flattened(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len);
        for c in self.chunks() {
            out.extend_from_slice(c);
        }
        out.freeze()
    }

    fn iter_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.chunks().flat_map(|c| c.iter().copied())
    }

    /// The bytes `[start, start + max)`, cut at the end of the buffer: `proxy_get_buffer_bytes`.
    /// `None` when `start` is past the end. A range inside one chunk is a view of it (no copy);
    /// a range spanning chunks flattens the buffer first (once: later reads are views).
    pub fn range(&mut self, start: usize, max: usize) -> Option<Bytes> {
        if start > self.len {
            return None;
        }
        let end = start.saturating_add(max).min(self.len);
        if start == end {
            return Some(Bytes::new());
        }
        if let Some((i, off)) = locate(self.chunks(), start)
            && let Some(c) = self.chunks().nth(i)
            && end - start <= c.len() - off
        {
            return Some(c.slice(off..off + (end - start)));
        }
        self.flatten();
        self.head.as_ref().map(|c| c.slice(start..end))
    }

    /// `proxy_set_buffer_bytes` (Envoy's semantics): replaces `[start, start + size)` with
    /// `data`; a `start` at or past the end appends; `(0, 0)` prepends. The bytes around the
    /// range stay views of their chunks; `data` becomes a chunk of its own.
    pub fn set(&mut self, start: usize, size: usize, data: Bytes) {
        if start >= self.len {
            self.push(data);
        } else {
            let end = start.saturating_add(size).min(self.len);
            let mut chunks = std::mem::take(&mut self.rest);
            if let Some(h) = self.head.take() {
                chunks.push_front(h);
            }
            let first = split_at(&mut chunks, start);
            let last = split_at(&mut chunks, end);
            let removed: usize = chunks.drain(first..last).map(|c| c.len()).sum();
            self.len -= removed;
            if !data.is_empty() {
                self.len += data.len();
                chunks.insert(first, data);
            }
            self.head = chunks.pop_front();
            self.rest = chunks;
        }
        if self.chunk_count() > MAX_CHUNKS_AFTER_WRITE {
            self.flatten();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: &[&'static str]) -> BodyBuffer {
        let mut b = BodyBuffer::new();
        for p in parts {
            b.push(Bytes::from_static(p.as_bytes()));
        }
        b
    }

    #[test]
    fn an_unchanged_chunk_leaves_as_the_same_allocation() {
        let frame = Bytes::from(vec![7u8; 4096]);
        let ptr = frame.as_ptr();
        let b = BodyBuffer::from(frame);
        let out = b.into_bytes();
        assert_eq!(out.as_ptr(), ptr);
        assert_eq!(out.len(), 4096);
    }

    #[test]
    fn a_range_inside_one_chunk_is_a_view_of_it() {
        let a = Bytes::from(b"hello ".to_vec());
        let b2 = Bytes::from(b"world".to_vec());
        let (pa, pb) = (a.as_ptr(), b2.as_ptr());
        let mut b = BodyBuffer::new();
        b.push(a);
        b.push(b2);
        let r = b.range(1, 3).unwrap();
        assert_eq!(&r[..], b"ell");
        assert_eq!(r.as_ptr(), pa.wrapping_add(1));
        let r = b.range(7, 100).unwrap();
        assert_eq!(&r[..], b"orld");
        assert_eq!(r.as_ptr(), pb.wrapping_add(1));
        // No flattening happened.
        assert_eq!(b.chunk_count(), 2);
    }

    #[test]
    fn a_range_spanning_chunks_flattens_once() {
        let mut b = chunked(&["hello ", "wor", "ld"]);
        assert_eq!(&b.range(4, 5).unwrap()[..], b"o wor");
        assert_eq!(b.chunk_count(), 1);
        let again = b.range(0, 11).unwrap();
        assert_eq!(&again[..], b"hello world");
        assert_eq!(b.chunks().next().unwrap().as_ptr(), again.as_ptr());
    }

    #[test]
    fn range_bounds_follow_the_spec() {
        let mut b = chunked(&["abc", "def"]);
        assert_eq!(b.range(7, 1), None);
        assert_eq!(b.range(6, 10), Some(Bytes::new()));
        assert_eq!(&b.range(0, usize::MAX).unwrap()[..], b"abcdef");
        assert_eq!(BodyBuffer::new().range(0, 10), Some(Bytes::new()));
    }

    /// The reference: what the host did on a `Vec` before.
    fn reference(buf: &[u8], start: usize, size: usize, data: &[u8]) -> Vec<u8> {
        let mut v = buf.to_vec();
        if start >= v.len() {
            v.extend_from_slice(data);
        } else {
            let end = start.saturating_add(size).min(v.len());
            v.splice(start..end, data.iter().copied());
        }
        v
    }

    #[test]
    fn set_matches_the_vec_semantics_at_every_position() {
        let parts = ["ab", "cde", "f", "ghij"];
        let whole = b"abcdefghij";
        for start in 0..=whole.len() + 1 {
            for size in [0, 1, 2, 3, 5, 20, usize::MAX] {
                for data in [&b""[..], b"X", b"XYZW"] {
                    let mut b = chunked(&parts);
                    b.set(start, size, Bytes::copy_from_slice(data));
                    let want = reference(whole, start, size, data);
                    assert_eq!(b.to_vec(), want, "start {start} size {size} data {data:?}");
                    assert_eq!(b.len(), want.len());
                    assert!(b.chunks().all(|c| !c.is_empty()));
                }
            }
        }
    }

    #[test]
    fn set_keeps_the_untouched_bytes_as_views() {
        let a = Bytes::from(b"0123456789".to_vec());
        let pa = a.as_ptr();
        let mut b = BodyBuffer::from(a);
        b.set(0, 0, Bytes::from_static(b">>"));
        b.set(12, 0, Bytes::from_static(b"<<"));
        b.set(5, 2, Bytes::from_static(b"--"));
        assert_eq!(b.to_vec(), b">>012--56789<<");
        let views: Vec<_> = b.chunks().map(|c| c.as_ptr()).collect();
        assert!(views.contains(&pa));
        assert!(views.contains(&pa.wrapping_add(5)));
    }

    #[test]
    fn many_small_writes_flatten_the_buffer() {
        let mut b = BodyBuffer::from(Bytes::from(vec![b'a'; 64]));
        for i in 0..30 {
            b.set(i * 2, 1, Bytes::from_static(b"b"));
        }
        assert!(b.chunk_count() <= MAX_CHUNKS_AFTER_WRITE);
        let mut want = vec![b'a'; 64];
        for i in 0..30 {
            want[i * 2] = b'b';
        }
        assert_eq!(b.to_vec(), want);
    }

    #[test]
    fn into_bytes_and_equality() {
        let b = chunked(&["ab", "cd"]);
        assert_eq!(b, &b"abcd"[..]);
        assert_eq!(b, chunked(&["a", "bcd"]));
        assert_eq!(&b.clone().into_bytes()[..], b"abcd");
        assert_eq!(BodyBuffer::new().into_bytes(), Bytes::new());
        let mut t = b.clone();
        assert_eq!(t.take(), b);
        assert!(t.is_empty());
    }
}
