//! Smooth weighted round robin over a precomputed schedule.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use crate::Eligible;
use crate::random::index_u32;

/// Target length of a round-robin schedule: when the gcd-reduced weights sum
/// to more than this (and more than the endpoint count), they are scaled
/// down proportionally, each staying at least 1.
pub const MAX_SCHEDULE_LEN: usize = 65_536;

/// Above this many `len * schedule_len` steps the quadratic nginx build is
/// replaced by an earliest-deadline-first build in O(L log n).
const NGINX_BUILD_BUDGET: u64 = 1 << 24;

/// Weighted round robin: a fixed schedule walked by a shared atomic cursor.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
    endpoints: usize,
}

impl RoundRobin {
    /// `weights` is non-empty, each >= 1, at most `u32::MAX` entries.
    pub(crate) fn new(weights: &[u32]) -> RoundRobin {
        let reduced = reduce_weights(weights);
        let total: u64 = reduced.iter().sum();
        let schedule = if total.saturating_mul(reduced.len() as u64) <= NGINX_BUILD_BUDGET {
            smooth_schedule(&reduced, total)
        } else {
            edf_schedule(&reduced, total)
        };
        RoundRobin {
            schedule,
            cursor: AtomicUsize::new(0),
            endpoints: weights.len(),
        }
    }

    pub(crate) fn schedule_len(&self) -> usize {
        self.schedule.len()
    }

    /// Takes the next schedule slot whose endpoint is eligible. Each skipped
    /// slot consumes a cursor position, so the effective sequence is the
    /// schedule with ineligible entries removed (exact proportions among
    /// the eligible). After `len` misses, falls back to a scan by index.
    #[inline]
    pub(crate) fn pick(&self, el: &Eligible<'_>) -> Option<usize> {
        let slots = self.schedule.len();
        let mut last = 0;
        for _ in 0..self.endpoints {
            let position = self.cursor.fetch_add(1, AtomicOrdering::Relaxed);
            last = self.schedule[position % slots] as usize;
            if el.check(last) {
                return Some(last);
            }
        }
        (1..=self.endpoints)
            .map(|step| (last + step) % self.endpoints)
            .find(|&index| el.check(index))
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Divides weights by their gcd and, when they still sum past
/// `max(MAX_SCHEDULE_LEN, n)`, scales them down proportionally (each >= 1).
fn reduce_weights(weights: &[u32]) -> Vec<u64> {
    let divide = |ws: &[u64]| -> Vec<u64> {
        let g = ws.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        ws.iter().map(|&w| w / g).collect()
    };
    let mut reduced = divide(&weights.iter().map(|&w| u64::from(w)).collect::<Vec<_>>());
    let total: u64 = reduced.iter().sum();
    let cap = (MAX_SCHEDULE_LEN as u64).max(reduced.len() as u64);
    if total > cap {
        let scaled: Vec<u64> = reduced
            .iter()
            .map(|&w| {
                let w = u128::from(w) * u128::from(cap) / u128::from(total);
                u64::try_from(w).unwrap_or(u64::MAX).max(1)
            })
            .collect();
        reduced = divide(&scaled);
    }
    reduced
}

/// nginx's smooth weighted round robin, run for one full cycle: every step
/// adds each weight to its current value, picks the largest (first on ties)
/// and subtracts the total from it. Endpoint `i` appears exactly `w[i]`
/// times. O(n * total).
fn smooth_schedule(weights: &[u64], total: u64) -> Box<[u32]> {
    // Current values stay within (-total, total]; total fits i64 easily.
    let total = i64::try_from(total).unwrap_or(i64::MAX);
    let weights: Vec<i64> = weights
        .iter()
        .map(|&w| i64::try_from(w).unwrap_or(i64::MAX))
        .collect();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        let mut best_value = i64::MIN;
        for (i, (c, &w)) in current.iter_mut().zip(&weights).enumerate() {
            *c += w;
            if *c > best_value {
                best = i;
                best_value = *c;
            }
        }
        current[best] -= total;
        schedule.push(index_u32(best));
    }
    schedule.into_boxed_slice()
}

/// Heap entry for the earliest-deadline-first schedule: the `k`-th slot of
/// endpoint `index` (weight `w`) is due at `(2k + 1) / (2w)`, i.e. at the
/// middle of its `1/w` interval, which interleaves endpoints smoothly.
#[derive(Debug, PartialEq, Eq)]
struct Deadline {
    numerator: u64,
    weight: u64,
    index: usize,
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on numerator / (2 * weight), then on index.
        let lhs = u128::from(self.numerator) * u128::from(other.weight);
        let rhs = u128::from(other.numerator) * u128::from(self.weight);
        rhs.cmp(&lhs).then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Earliest-deadline-first schedule: same counts as the nginx build
/// (`w[i]` slots each), O(total * log n), for large endpoint lists.
fn edf_schedule(weights: &[u64], total: u64) -> Box<[u32]> {
    let mut heap: BinaryHeap<Deadline> = weights
        .iter()
        .enumerate()
        .map(|(index, &weight)| Deadline {
            numerator: 1,
            weight,
            index,
        })
        .collect();
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    while let Some(mut next) = heap.pop() {
        schedule.push(index_u32(next.index));
        next.numerator += 2;
        // Slot k exists while k < w, i.e. 2k + 1 < 2w.
        if next.numerator < 2 * next.weight {
            heap.push(next);
        }
    }
    schedule.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(schedule: &[u32], n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for &i in schedule {
            counts[i as usize] += 1;
        }
        counts
    }

    #[test]
    fn nginx_sequence_for_5_1_1() {
        let s = smooth_schedule(&[5, 1, 1], 7);
        assert_eq!(&*s, &[0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn edf_schedule_has_exact_counts_and_interleaves() {
        let s = edf_schedule(&[5, 3, 2], 10);
        assert_eq!(counts(&s, 3), vec![5, 3, 2]);
        // No endpoint of weight 5 of 10 runs more than twice in a row.
        let longest = s.chunk_by(|a, b| a == b).map(<[u32]>::len).max().unwrap();
        assert!(longest <= 2, "{s:?}");
        let s = edf_schedule(&[5, 1, 1], 7);
        assert_eq!(counts(&s, 3), vec![5, 1, 1]);
    }

    #[test]
    fn gcd_reduction() {
        assert_eq!(reduce_weights(&[10, 20, 30]), vec![1, 2, 3]);
        assert_eq!(reduce_weights(&[7, 7]), vec![1, 1]);
    }

    #[test]
    fn large_weights_are_scaled_to_the_cap() {
        let reduced = reduce_weights(&[u32::MAX, 1, u32::MAX - 1]);
        let total: u64 = reduced.iter().sum();
        assert!(total <= MAX_SCHEDULE_LEN as u64 + 3, "{reduced:?}");
        assert!(reduced.iter().all(|&w| w >= 1));
        assert_eq!(reduced[1], 1);
        let rr = RoundRobin::new(&[u32::MAX, 1, u32::MAX - 1]);
        assert!(rr.schedule_len() <= MAX_SCHEDULE_LEN + 3);
    }

    #[test]
    fn large_endpoint_lists_use_the_edf_build() {
        let weights: Vec<u32> = (0..5_000).map(|i| 1 + (i % 7)).collect();
        let rr = RoundRobin::new(&weights);
        let reduced = reduce_weights(&weights);
        assert_eq!(counts(&rr.schedule, weights.len()), reduced);
    }
}
