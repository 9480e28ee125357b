//! Ketama-style consistent hash ring.

use xxhash_rust::xxh64::Xxh64;

use crate::Eligible;
use crate::random::index_u32;

/// Largest target ring size (8M entries). A larger `minimum_ring_size` is
/// clamped to it; the ring can exceed it only by giving every endpoint at
/// least one entry.
pub const MAX_RING_SIZE: usize = 8 * 1024 * 1024;

/// Sorted ring of virtual-node hashes and the endpoint owning each.
#[derive(Debug)]
pub(crate) struct Ring {
    hashes: Box<[u64]>,
    owners: Box<[u32]>,
    endpoints: usize,
}

impl Ring {
    /// Builds the ring. Like Envoy, the ring is scaled so that the lightest
    /// endpoint gets at least its share of `minimum_ring_size`; each endpoint
    /// gets about `scale * weight / total` entries (at least 1). Virtual node
    /// `r` of endpoint `i` sits at `xxh64(key_i ++ "_" ++ r)`, where `key_i`
    /// is `keys[i]` or else the decimal index.
    pub(crate) fn new(weights: &[u32], keys: Option<&[&[u8]]>, minimum_ring_size: usize) -> Ring {
        let counts = replica_counts(weights, minimum_ring_size);
        let size: usize = counts.iter().sum();
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(size);
        let mut index_key = [0u8; 20];
        for (index, &count) in counts.iter().enumerate() {
            let key: &[u8] = match keys.and_then(|keys| keys.get(index)) {
                Some(key) => key,
                None => decimal(index as u64, &mut index_key),
            };
            let mut replica_buf = [0u8; 20];
            for replica in 0..count {
                let mut hasher = Xxh64::new(0);
                hasher.update(key);
                hasher.update(b"_");
                hasher.update(decimal(replica as u64, &mut replica_buf));
                entries.push((hasher.digest(), index_u32(index)));
            }
        }
        entries.sort_unstable();
        let (hashes, owners) = entries.into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
        Ring {
            hashes: hashes.into_boxed_slice(),
            owners: owners.into_boxed_slice(),
            endpoints: weights.len(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Returns the first eligible endpoint clockwise from `hash` (the first
    /// entry whose hash is >= `hash`, wrapping around).
    ///
    /// Consecutive entries of the same endpoint are checked once. After
    /// `len` distinct checks fail, one scan confirms that some endpoint is
    /// eligible (else `None`); the walk then continues and ends within one
    /// turn, since every endpoint owns at least one entry.
    #[inline]
    pub(crate) fn pick(&self, hash: u64, el: &Eligible<'_>) -> Option<usize> {
        let len = self.hashes.len();
        let mut position = self.hashes.partition_point(|&h| h < hash);
        if position == len {
            position = 0;
        }
        let mut last_checked = usize::MAX;
        let mut checks = 0usize;
        for _ in 0..len {
            let owner = self.owners[position] as usize;
            if owner != last_checked {
                if el.check(owner) {
                    return Some(owner);
                }
                last_checked = owner;
                checks += 1;
                if checks == self.endpoints && !(0..self.endpoints).any(|i| el.check(i)) {
                    return None;
                }
            }
            position += 1;
            if position == len {
                position = 0;
            }
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn entries_of(&self, index: usize) -> usize {
        self.owners.iter().filter(|&&o| o as usize == index).count()
    }
}

/// Number of virtual nodes per endpoint.
fn replica_counts(weights: &[u32], minimum_ring_size: usize) -> Vec<usize> {
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let min_weight = weights.iter().copied().min().map_or(1.0, f64::from);
    let min_share = min_weight / total;
    let minimum = minimum_ring_size.min(MAX_RING_SIZE) as f64;
    let scale = ((min_share * minimum).ceil() / min_share).min(MAX_RING_SIZE as f64);
    let mut target = 0.0f64;
    let mut placed = 0usize;
    weights
        .iter()
        .map(|&w| {
            target += scale * f64::from(w) / total;
            // `as` saturates; the target never exceeds MAX_RING_SIZE + 1.
            let end = target.ceil() as usize;
            let count = end.saturating_sub(placed).max(1);
            placed += count;
            count
        })
        .collect()
}

/// Writes `value` in decimal into `buf` and returns the digits.
fn decimal(mut value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buf[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formatting() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(42, &mut buf), b"42");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }

    #[test]
    fn ring_size_follows_envoy_scaling() {
        let counts = replica_counts(&[1, 1, 1], 1024);
        assert_eq!(counts.iter().sum::<usize>(), 1026);
        let counts = replica_counts(&[5, 3, 2], 1024);
        assert_eq!(counts, vec![513, 307, 205]);
        // The lightest endpoint gets its full share of the minimum size.
        let counts = replica_counts(&[1, 9], 1024);
        assert!(counts[0] >= 103, "{counts:?}");
        assert!(counts[1].abs_diff(9 * counts[0]) <= 1, "{counts:?}");
    }

    #[test]
    fn ring_size_is_capped_and_every_endpoint_has_an_entry() {
        let counts = replica_counts(&[1, u32::MAX], usize::MAX);
        let total: usize = counts.iter().sum();
        assert!(total <= MAX_RING_SIZE + 1, "{total}");
        assert!(counts[0] >= 1);
        let ring = Ring::new(&[1, 1], None, 1);
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.entries_of(0), 1);
        assert_eq!(ring.entries_of(1), 1);
    }
}
