//! Trace and span ids, and sampling draws: a SplitMix64 sequence seeded from the clock and
//! WASI `random_get` (through `getrandom`), with fresh host entropy folded in every
//! [`RESEED_EVERY`] draws. SplitMix64's output is a bijection of its state, so ids stay unique
//! even if the host's random source fails, and most requests cost no host call.

/// Draws between two reseeds from the host.
pub const RESEED_EVERY: u32 = 64;

/// An id source.
#[derive(Debug)]
pub struct Ids {
    state: u64,
    draws: u32,
}

impl Ids {
    /// A source seeded with `seed` (e.g. the current time in nanoseconds).
    pub fn new(seed: u64) -> Ids {
        let mut extra = [0u8; 8];
        let _ = getrandom::getrandom(&mut extra);
        Ids {
            state: seed ^ u64::from_le_bytes(extra),
            draws: 0,
        }
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.draws = self.draws.wrapping_add(1);
        if self.draws.is_multiple_of(RESEED_EVERY) {
            let mut random = [0u8; 8];
            if getrandom::getrandom(&mut random).is_ok() {
                // Jump to a fresh point of the sequence (odd increments keep the period 2^64).
                self.state ^= u64::from_le_bytes(random);
            }
        }
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// A trace id, never all zero.
    pub fn trace_id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        if id == [0; 16] {
            id[15] = 1;
        }
        id
    }

    /// A span id, never all zero.
    pub fn span_id(&mut self) -> [u8; 8] {
        let v = self.next_u64();
        (if v == 0 { 1 } else { v }).to_be_bytes()
    }

    /// True with probability `rate` (0 never, 1 always).
    pub fn sample(&mut self, rate: f64) -> bool {
        if rate >= 1.0 {
            return true;
        }
        if rate <= 0.0 {
            return false;
        }
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < rate
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_non_zero() {
        let mut ids = Ids::new(42);
        let traces: HashSet<_> = (0..10_000).map(|_| ids.trace_id()).collect();
        assert_eq!(traces.len(), 10_000);
        let spans: HashSet<_> = (0..10_000).map(|_| ids.span_id()).collect();
        assert_eq!(spans.len(), 10_000);
        assert!(!traces.contains(&[0; 16]) && !spans.contains(&[0; 8]));
    }

    #[test]
    fn sampling_follows_the_rate() {
        let mut ids = Ids::new(7);
        assert!((0..100).all(|_| ids.sample(1.0)));
        assert!((0..100).all(|_| !ids.sample(0.0)));
        let hits = (0..10_000).filter(|_| ids.sample(0.25)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
    }
}
