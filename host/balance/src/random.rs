//! Weighted random sampling (Vose's alias method, exact integer
//! probabilities) restricted to eligible endpoints.

use crate::Eligible;

/// Rejection-sampling attempts before the exact linear scan.
const REJECTION_TRIES: usize = 4;

/// One column of the alias table: the column's own endpoint is chosen when a
/// draw in `0..total` falls below `threshold`, otherwise `alias` is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    threshold: u64,
    alias: u32,
}

/// O(1) weighted sampler over a fixed weight list.
#[derive(Debug)]
pub(crate) struct WeightedSampler {
    weights: Box<[u32]>,
    /// Empty when all weights are equal (plain uniform draw).
    slots: Box<[Slot]>,
    total: u64,
}

impl WeightedSampler {
    /// `weights` is non-empty, each >= 1, at most `u32::MAX` entries.
    pub(crate) fn new(weights: &[u32]) -> WeightedSampler {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let uniform = weights.iter().all(|&w| w == weights[0]);
        let slots = if uniform {
            Box::default()
        } else {
            build_alias(weights, total)
        };
        WeightedSampler {
            weights: weights.into(),
            slots,
            total,
        }
    }

    /// Draws an index with probability `weights[i] / total`.
    #[inline]
    pub(crate) fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let column = rng.usize(..self.weights.len());
        match self.slots.get(column) {
            None => column,
            Some(slot) => {
                if rng.u64(..self.total) < slot.threshold {
                    column
                } else {
                    slot.alias as usize
                }
            }
        }
    }

    /// Draws an eligible index with probability proportional to its weight
    /// among the eligible ones; `None` when none is eligible.
    ///
    /// A few rejection draws first (exact: rejecting ineligible draws gives
    /// the conditional distribution), then one linear pass of weighted
    /// reservoir sampling, also exact, which also detects "none eligible".
    pub(crate) fn sample_eligible(
        &self,
        rng: &mut fastrand::Rng,
        el: &Eligible<'_>,
    ) -> Option<usize> {
        for _ in 0..REJECTION_TRIES {
            let index = self.sample(rng);
            if el.check(index) {
                return Some(index);
            }
        }
        self.scan(rng, el)
    }

    fn scan(&self, rng: &mut fastrand::Rng, el: &Eligible<'_>) -> Option<usize> {
        let mut chosen = None;
        let mut seen: u64 = 0;
        for (index, &weight) in self.weights.iter().enumerate() {
            if el.check(index) {
                let weight = u64::from(weight);
                seen += weight;
                if rng.u64(..seen) < weight {
                    chosen = Some(index);
                }
            }
        }
        chosen
    }
}

/// Vose's alias method in integers. Column `i` carries `weights[i] * n`
/// units against a capacity of `total` per column; `n * total` units in all.
fn build_alias(weights: &[u32], total: u64) -> Box<[Slot]> {
    let n = weights.len() as u64;
    // weights[i] * n <= (2^32 - 1)^2 < 2^64.
    let mut units: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n).collect();
    let mut slots: Vec<Slot> = (0..weights.len())
        .map(|i| Slot {
            threshold: total,
            alias: index_u32(i),
        })
        .collect();
    let mut small: Vec<usize> = Vec::new();
    let mut large: Vec<usize> = Vec::new();
    for (i, &u) in units.iter().enumerate() {
        if u < total {
            small.push(i);
        } else {
            large.push(i);
        }
    }
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        slots[s] = Slot {
            threshold: units[s],
            alias: index_u32(l),
        };
        // units[l] >= total > units[s]: the donation fits without underflow.
        units[l] -= total - units[s];
        if units[l] < total {
            large.pop();
            small.push(l);
        }
    }
    // Leftovers in either list are full columns (exact arithmetic means
    // `small` only drains together with `large`); thresholds stay `total`.
    slots.into_boxed_slice()
}

/// Endpoint counts are checked against `u32::MAX` at construction.
#[inline]
pub(crate) fn index_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact probability of each index from the alias table, in units of
    /// 1 / (n * total).
    fn exact_units(sampler: &WeightedSampler) -> Vec<u64> {
        let n = sampler.weights.len();
        let mut units = vec![0u64; n];
        for (column, slot) in sampler.slots.iter().enumerate() {
            units[column] += slot.threshold;
            units[slot.alias as usize] += sampler.total - slot.threshold;
        }
        units
    }

    #[test]
    fn alias_table_is_exact() {
        for weights in [
            vec![5u32, 3, 2],
            vec![1, 9],
            vec![1, 2, 3, 4, 5, 6, 7],
            vec![u32::MAX, 1, 7],
            vec![100, 1, 1, 1, 1, 1],
        ] {
            let sampler = WeightedSampler::new(&weights);
            let n = weights.len() as u64;
            let expected: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n).collect();
            assert_eq!(exact_units(&sampler), expected, "weights {weights:?}");
        }
    }

    #[test]
    fn uniform_weights_skip_the_table() {
        let sampler = WeightedSampler::new(&[4, 4, 4]);
        assert!(sampler.slots.is_empty());
    }
}
