//! Least request: power of N choices over weighted samples.

use crate::Eligible;
use crate::random::WeightedSampler;

/// Samples `choice_count` eligible endpoints (weighted, with replacement)
/// and returns the one with the fewest active requests; ties go to the
/// first sampled. `None` when no endpoint is eligible.
pub(crate) fn pick(
    sampler: &WeightedSampler,
    choice_count: u32,
    rng: &mut fastrand::Rng,
    el: &Eligible<'_>,
) -> Option<usize> {
    let mut best = sampler.sample_eligible(rng, el)?;
    let mut best_load = el.active_requests(best);
    for _ in 1..choice_count {
        if best_load == 0 {
            // Nothing can beat an idle endpoint, and ties keep the first.
            break;
        }
        let Some(candidate) = sampler.sample_eligible(rng, el) else {
            break;
        };
        if candidate != best {
            let load = el.active_requests(candidate);
            if load < best_load {
                best = candidate;
                best_load = load;
            }
        }
    }
    Some(best)
}
