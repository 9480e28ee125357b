//! Behavioural tests of [`Balancer`] across policies.

use std::sync::Arc;

use super::*;

const PICKS: usize = 100_000;

/// Test endpoint state: a fixed availability mask and load vector.
struct State {
    available: Vec<bool>,
    active: Vec<u64>,
}

impl State {
    fn all(n: usize) -> State {
        State {
            available: vec![true; n],
            active: vec![0; n],
        }
    }

    fn with_available(available: &[bool]) -> State {
        State {
            available: available.to_vec(),
            active: vec![0; available.len()],
        }
    }

    fn with_load(active: &[u64]) -> State {
        State {
            available: vec![true; active.len()],
            active: active.to_vec(),
        }
    }
}

impl EndpointState for State {
    fn is_available(&self, index: usize) -> bool {
        self.available[index]
    }

    fn active_requests(&self, index: usize) -> u64 {
        self.active[index]
    }
}

fn all_policies() -> [Policy; 4] {
    [
        Policy::RoundRobin,
        Policy::Random,
        Policy::least_request(),
        Policy::ring_hash(),
    ]
}

/// Counts picks over `picks` requests. Ring hash gets a distinct random
/// hash per request so that it spreads over the ring.
fn counts(balancer: &Balancer, state: &dyn EndpointState, picks: usize, seed: u64) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut keys = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let mut counts = vec![0usize; balancer.len()];
    for _ in 0..picks {
        let mut ctx = PickContext::new(state);
        if matches!(balancer.policy(), Policy::RingHash { .. }) {
            ctx = ctx.with_hash(hash_bytes(&keys.u64(..).to_le_bytes()));
        }
        let index = balancer.pick_with_rng(&ctx, &mut rng).expect("an endpoint");
        counts[index] += 1;
    }
    counts
}

fn assert_shares(counts: &[usize], weights: &[u32], tolerance_points: f64, what: &str) {
    let picks: usize = counts.iter().sum();
    let total: u32 = weights.iter().sum();
    for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
        let share = 100.0 * c as f64 / picks as f64;
        let expected = 100.0 * f64::from(w) / f64::from(total);
        assert!(
            (share - expected).abs() <= tolerance_points,
            "{what}: endpoint {i} got {share:.2}%, expected {expected:.2}% ± {tolerance_points} ({counts:?})"
        );
    }
}

const WEIGHT_SETS: [&[u32]; 3] = [&[1, 1, 1], &[5, 3, 2], &[1, 9]];

#[test]
fn balancer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Balancer>();
    assert_send_sync::<BalanceError>();
}

#[test]
fn round_robin_distribution_is_exact_per_cycle() {
    for weights in WEIGHT_SETS {
        let balancer = Balancer::new(Policy::RoundRobin, weights).unwrap();
        let cycle: usize = weights.iter().map(|&w| w as usize).sum();
        assert_eq!(balancer.table_len(), cycle);
        let state = State::all(weights.len());
        // A whole number of cycles: counts are exact multiples of weights.
        let picks = PICKS / cycle * cycle;
        let got = counts(&balancer, &state, picks, 1);
        let expected: Vec<usize> = weights
            .iter()
            .map(|&w| w as usize * (picks / cycle))
            .collect();
        assert_eq!(got, expected, "weights {weights:?}");
        // And every single cycle is exact too.
        let got = counts(&balancer, &state, cycle, 2);
        let expected: Vec<usize> = weights.iter().map(|&w| w as usize).collect();
        assert_eq!(got, expected, "weights {weights:?}");
    }
}

#[test]
fn round_robin_reduces_weights_by_gcd() {
    let balancer = Balancer::new(Policy::RoundRobin, &[50, 30, 20]).unwrap();
    assert_eq!(balancer.table_len(), 10);
}

#[test]
fn round_robin_interleaves_smoothly() {
    let balancer = Balancer::new(Policy::RoundRobin, &[5, 1, 1]).unwrap();
    let ctx = PickContext::new(&AllAvailable);
    let sequence: Vec<usize> = (0..14).map(|_| balancer.pick(&ctx).unwrap()).collect();
    // a a b a c a a, twice.
    assert_eq!(sequence, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn round_robin_equal_weights_rotate() {
    let balancer = Balancer::new(Policy::RoundRobin, &[3, 3, 3, 3]).unwrap();
    let ctx = PickContext::new(&AllAvailable);
    let sequence: Vec<usize> = (0..8).map(|_| balancer.pick(&ctx).unwrap()).collect();
    assert_eq!(sequence, [0, 1, 2, 3, 0, 1, 2, 3]);
}

#[test]
fn round_robin_skips_unavailable_keeping_proportions() {
    let balancer = Balancer::new(Policy::RoundRobin, &[5, 3, 2]).unwrap();
    let state = State::with_available(&[true, false, true]);
    let got = counts(&balancer, &state, 70_000, 3);
    assert_eq!(got[1], 0);
    // Remaining weights 5:2 are kept exactly over whole cycles.
    assert_eq!(got, vec![50_000, 0, 20_000]);
}

#[test]
fn round_robin_finds_a_rare_available_endpoint() {
    // Endpoint 1 occupies 1 slot of 101; endpoint 0 is down.
    let balancer = Balancer::new(Policy::RoundRobin, &[100, 1]).unwrap();
    let state = State::with_available(&[false, true]);
    let ctx = PickContext::new(&state);
    for _ in 0..1_000 {
        assert_eq!(balancer.pick(&ctx), Some(1));
    }
}

#[test]
fn random_distribution_within_bounds() {
    for weights in WEIGHT_SETS {
        let balancer = Balancer::new(Policy::Random, weights).unwrap();
        let got = counts(&balancer, &State::all(weights.len()), PICKS, 11);
        assert_shares(&got, weights, 1.5, "random");
    }
}

#[test]
fn random_with_unavailable_is_weighted_among_the_rest() {
    let balancer = Balancer::new(Policy::Random, &[5, 3, 2]).unwrap();
    let state = State::with_available(&[false, true, true]);
    let got = counts(&balancer, &state, PICKS, 12);
    assert_eq!(got[0], 0);
    assert_shares(&got, &[0, 3, 2], 1.5, "random, 0 down");
    // Mostly-down list: exercises the linear-scan fallback.
    let weights = [50, 50, 50, 50, 50, 50, 50, 1, 3];
    let balancer = Balancer::new(Policy::Random, &weights).unwrap();
    let mask = [false, false, false, false, false, false, false, true, true];
    let got = counts(&balancer, &State::with_available(&mask), PICKS, 13);
    assert_shares(&got, &[0, 0, 0, 0, 0, 0, 0, 1, 3], 1.5, "random, scan");
}

#[test]
fn least_request_distribution_with_equal_load() {
    for weights in WEIGHT_SETS {
        let balancer = Balancer::new(Policy::least_request(), weights).unwrap();
        let got = counts(&balancer, &State::all(weights.len()), PICKS, 21);
        assert_shares(&got, weights, 1.5, "least request, idle");
        // Equal non-zero load: ties go to the first sample, so the shares
        // still follow the weights.
        let state = State::with_load(&vec![7; weights.len()]);
        let got = counts(&balancer, &state, PICKS, 22);
        assert_shares(&got, weights, 1.5, "least request, equal load");
    }
}

#[test]
fn least_request_prefers_the_less_loaded() {
    let state = State::with_load(&[100, 0, 100]);
    // Two choices: endpoint 1 wins whenever sampled, 1 - (2/3)^2 = 5/9.
    let balancer = Balancer::new(Policy::least_request(), &[1, 1, 1]).unwrap();
    let got = counts(&balancer, &state, PICKS, 23);
    let share = got[1] as f64 / PICKS as f64;
    assert!((share - 5.0 / 9.0).abs() < 0.015, "{got:?}");
    assert!(got[1] > got[0] + got[2], "{got:?}");
    // Five choices: 1 - (2/3)^5 ≈ 86.8%.
    let balancer = Balancer::new(Policy::LeastRequest { choice_count: 5 }, &[1, 1, 1]).unwrap();
    let got = counts(&balancer, &state, PICKS, 24);
    let share = got[1] as f64 / PICKS as f64;
    assert!(
        (share - (1.0 - (2.0f64 / 3.0).powi(5))).abs() < 0.015,
        "{got:?}"
    );
    // With only two endpoints one of which is idle, the idle one dominates.
    let state = State::with_load(&[50, 1]);
    let balancer = Balancer::new(Policy::least_request(), &[1, 1]).unwrap();
    let got = counts(&balancer, &state, PICKS, 25);
    assert!(got[1] as f64 / PICKS as f64 > 0.70, "{got:?}");
}

#[test]
fn ring_hash_same_hash_same_endpoint() {
    let balancer = Balancer::new(Policy::ring_hash(), &[5, 3, 2]).unwrap();
    let state = State::all(3);
    let mut rng = fastrand::Rng::with_seed(31);
    for key in 0..1_000u32 {
        let hash = hash_bytes(format!("user-{key}").as_bytes());
        let ctx = PickContext::new(&state).with_hash(hash);
        let first = balancer.pick(&ctx).unwrap();
        for _ in 0..5 {
            assert_eq!(balancer.pick_with_rng(&ctx, &mut rng), Some(first));
            assert_eq!(balancer.pick(&ctx), Some(first));
        }
    }
    // A rebuilt balancer (config reload) maps keys identically.
    let rebuilt = Balancer::new(Policy::ring_hash(), &[5, 3, 2]).unwrap();
    for key in 0..1_000u64 {
        let ctx = PickContext::new(&state).with_hash(hash_bytes(&key.to_le_bytes()));
        assert_eq!(balancer.pick(&ctx), rebuilt.pick(&ctx));
    }
}

#[test]
fn ring_hash_distribution_follows_weights() {
    for weights in WEIGHT_SETS {
        let balancer = Balancer::new(Policy::ring_hash(), weights).unwrap();
        let got = counts(&balancer, &State::all(weights.len()), PICKS, 32);
        assert_shares(&got, weights, 5.0, "ring hash");
    }
}

#[test]
fn ring_hash_is_consistent_when_an_endpoint_goes_down() {
    let balancer = Balancer::new(Policy::ring_hash(), &[1, 1, 1, 1, 1]).unwrap();
    let up = State::all(5);
    let down = State::with_available(&[true, true, false, true, true]);
    let mut stayed = 0;
    let mut others = 0;
    for key in 0..20_000u64 {
        let hash = hash_bytes(&key.to_le_bytes());
        let before = balancer
            .pick(&PickContext::new(&up).with_hash(hash))
            .unwrap();
        let after = balancer
            .pick(&PickContext::new(&down).with_hash(hash))
            .unwrap();
        assert_ne!(after, 2);
        if before != 2 {
            others += 1;
            if before == after {
                stayed += 1;
            }
        }
    }
    assert!(others > 14_000, "{others}");
    // Clockwise walk: keys not on the failed endpoint never move.
    assert_eq!(stayed, others);
    assert!(stayed as f64 / others as f64 > 0.9);
}

/// Fraction of keys, among those not on `before`'s endpoint `skip`, that
/// land on an endpoint with the same key in `after`.
fn stayed_fraction(
    before: &Balancer,
    before_keys: &[&[u8]],
    after: &Balancer,
    after_keys: &[&[u8]],
    skip: usize,
) -> f64 {
    let (mut stayed, mut others) = (0u32, 0u32);
    for key in 0..20_000u64 {
        let ctx = PickContext::new(&AllAvailable).with_hash(hash_bytes(&key.to_le_bytes()));
        let b = before.pick(&ctx).unwrap();
        let a = after.pick(&ctx).unwrap();
        if b != skip {
            others += 1;
            if before_keys[b] == after_keys[a] {
                stayed += 1;
            }
        }
    }
    f64::from(stayed) / f64::from(others)
}

#[test]
fn ring_hash_with_keys_is_consistent_across_reloads() {
    let names: Vec<String> = (0..6).map(|i| format!("10.0.0.{i}:8080")).collect();
    let keys: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
    let five = &keys[..5];
    let before = Balancer::with_endpoint_keys(Policy::ring_hash(), &[1; 5], five).unwrap();
    // Endpoint 2 is replaced by a new one: same ring scale and the same
    // virtual nodes for the survivors, so a key on a survivor either stays
    // there or moves to the newcomer; nothing moves between survivors.
    let replaced: Vec<&[u8]> = [0, 1, 5, 3, 4].iter().map(|&i| keys[i]).collect();
    let after = Balancer::with_endpoint_keys(Policy::ring_hash(), &[1; 5], &replaced).unwrap();
    for key in 0..20_000u64 {
        let ctx = PickContext::new(&AllAvailable).with_hash(hash_bytes(&key.to_le_bytes()));
        let (b, a) = (before.pick(&ctx).unwrap(), after.pick(&ctx).unwrap());
        if b != 2 {
            assert!(a == b || a == 2, "key {key}: {b} -> {a}");
        }
    }
    // Endpoint 2 is dropped: the others shift index but keep their keys.
    // The ring is rescaled to the minimum size (205 -> 256 entries each),
    // so a few keys move between survivors; most stay.
    let kept: Vec<&[u8]> = [0, 1, 3, 4].iter().map(|&i| keys[i]).collect();
    let after = Balancer::with_endpoint_keys(Policy::ring_hash(), &[1; 4], &kept).unwrap();
    let stayed = stayed_fraction(&before, five, &after, &kept, 2);
    assert!(stayed > 0.85, "{stayed}");
    assert!(matches!(
        Balancer::with_endpoint_keys(Policy::ring_hash(), &[1, 1], &keys),
        Err(BalanceError::KeyCountMismatch {
            weights: 2,
            keys: 6
        })
    ));
}

#[test]
fn ring_hash_without_hash_falls_back_to_random() {
    let balancer = Balancer::new(Policy::ring_hash(), &[5, 3, 2]).unwrap();
    let state = State::all(3);
    let mut rng = fastrand::Rng::with_seed(33);
    let mut got = vec![0usize; 3];
    for _ in 0..PICKS {
        got[balancer
            .pick_with_rng(&PickContext::new(&state), &mut rng)
            .unwrap()] += 1;
    }
    assert_shares(&got, &[5, 3, 2], 1.5, "ring hash, no hash");
}

#[test]
fn unavailable_endpoints_are_never_picked() {
    let weights = [4, 1, 3, 2, 5];
    let mask = [true, false, true, false, true];
    let state = State::with_available(&mask);
    for policy in all_policies() {
        let balancer = Balancer::new(policy, &weights).unwrap();
        let got = counts(&balancer, &state, 20_000, 41);
        for (i, &c) in got.iter().enumerate() {
            assert_eq!(c == 0, !mask[i], "{policy:?}: {got:?}");
        }
        // Only one left.
        let single = State::with_available(&[false, false, false, true, false]);
        let got = counts(&balancer, &single, 1_000, 42);
        assert_eq!(got[3], 1_000, "{policy:?}");
    }
}

#[test]
fn all_unavailable_yields_none() {
    let state = State::with_available(&[false; 4]);
    for policy in all_policies() {
        let balancer = Balancer::new(policy, &[1, 2, 3, 4]).unwrap();
        let mut rng = fastrand::Rng::with_seed(43);
        for hash in [None, Some(0), Some(u64::MAX), Some(hash_bytes(b"x"))] {
            let ctx = PickContext {
                hash,
                ..PickContext::new(&state)
            };
            assert_eq!(balancer.pick(&ctx), None, "{policy:?}");
            assert_eq!(balancer.pick_with_rng(&ctx, &mut rng), None, "{policy:?}");
            // A retry of an unavailable endpoint does not bring it back.
            assert_eq!(balancer.pick(&ctx.retry(1, 2)), None, "{policy:?}");
        }
    }
}

#[test]
fn retry_prefers_a_different_endpoint() {
    let state = State::all(3);
    for policy in all_policies() {
        let balancer = Balancer::new(policy, &[5, 3, 2]).unwrap();
        let mut rng = fastrand::Rng::with_seed(51);
        for key in 0..2_000u64 {
            let first_ctx = PickContext::new(&state).with_hash(hash_bytes(&key.to_le_bytes()));
            let first = balancer.pick_with_rng(&first_ctx, &mut rng).unwrap();
            let retry = balancer
                .pick_with_rng(&first_ctx.retry(1, first), &mut rng)
                .unwrap();
            assert_ne!(retry, first, "{policy:?}");
        }
        // Attempt 0 ignores `previous`.
        let single = Balancer::new(policy, &[1]).unwrap();
        let ctx = PickContext {
            previous: Some(0),
            ..PickContext::new(&state)
        };
        assert_eq!(single.pick(&ctx), Some(0));
    }
}

#[test]
fn retry_returns_previous_when_it_is_the_only_one_available() {
    let state = State::with_available(&[false, true, false]);
    for policy in all_policies() {
        let balancer = Balancer::new(policy, &[1, 1, 1]).unwrap();
        let ctx = PickContext::new(&state).with_hash(7).retry(2, 1);
        assert_eq!(balancer.pick(&ctx), Some(1), "{policy:?}");
    }
}

#[test]
fn ring_hash_retry_walks_clockwise_consistently() {
    let balancer = Balancer::new(Policy::ring_hash(), &[1, 1, 1, 1]).unwrap();
    for key in 0..500u64 {
        let hash = hash_bytes(&key.to_le_bytes());
        let ctx = PickContext::new(&AllAvailable).with_hash(hash);
        let first = balancer.pick(&ctx).unwrap();
        let retry = balancer.pick(&ctx.retry(1, first)).unwrap();
        assert_ne!(retry, first);
        // Same as the pick with `first` marked down.
        let mut mask = [true; 4];
        mask[first] = false;
        let down = State::with_available(&mask);
        let walked = balancer.pick(&PickContext::new(&down).with_hash(hash));
        assert_eq!(Some(retry), walked);
    }
}

#[test]
fn concurrent_round_robin_counts_are_exact() {
    let weights = [5u32, 3, 2];
    let balancer = Arc::new(Balancer::new(Policy::RoundRobin, &weights).unwrap());
    let per_thread = 25_000; // 4 * 25_000 = 10_000 whole cycles of 10.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let balancer = Arc::clone(&balancer);
            std::thread::spawn(move || {
                let ctx = PickContext::new(&AllAvailable);
                let mut counts = [0usize; 3];
                for _ in 0..per_thread {
                    counts[balancer.pick(&ctx).unwrap()] += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = [0usize; 3];
    for handle in handles {
        for (t, c) in total.iter_mut().zip(handle.join().unwrap()) {
            *t += c;
        }
    }
    assert_eq!(total, [50_000, 30_000, 20_000]);
}

#[test]
fn concurrent_picks_for_all_policies() {
    for policy in all_policies() {
        let balancer = Arc::new(Balancer::new(policy, &[1, 2, 3]).unwrap());
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let balancer = Arc::clone(&balancer);
                std::thread::spawn(move || {
                    let state = State::with_available(&[true, false, true]);
                    let mut counts = [0usize; 3];
                    for i in 0..10_000u64 {
                        let ctx = PickContext::new(&state)
                            .with_hash(hash_bytes(&(t * 1_000_000 + i).to_le_bytes()));
                        counts[balancer.pick(&ctx).unwrap()] += 1;
                    }
                    counts
                })
            })
            .collect();
        for handle in handles {
            let counts = handle.join().unwrap();
            assert_eq!(counts.iter().sum::<usize>(), 10_000, "{policy:?}");
            assert_eq!(counts[1], 0, "{policy:?}");
        }
    }
}

#[test]
fn seeded_rng_makes_picks_reproducible() {
    for policy in [Policy::Random, Policy::least_request(), Policy::ring_hash()] {
        let balancer = Balancer::new(policy, &[5, 3, 2]).unwrap();
        let state = State::with_load(&[3, 1, 2]);
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..200)
                .map(|_| balancer.pick_with_rng(&PickContext::new(&state), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(61), run(61), "{policy:?}");
        assert_ne!(run(61), run(62), "{policy:?}");
    }
}

#[test]
fn constructor_errors() {
    assert_eq!(
        Balancer::new(Policy::RoundRobin, &[]).unwrap_err(),
        BalanceError::NoEndpoints
    );
    assert_eq!(
        Balancer::new(Policy::Random, &[1, 0, 2]).unwrap_err(),
        BalanceError::ZeroWeight { index: 1 }
    );
    for choice_count in [0, 1] {
        assert_eq!(
            Balancer::new(Policy::LeastRequest { choice_count }, &[1]).unwrap_err(),
            BalanceError::InvalidChoiceCount { choice_count }
        );
    }
    assert_eq!(
        Balancer::new(
            Policy::RingHash {
                minimum_ring_size: 0
            },
            &[1]
        )
        .unwrap_err(),
        BalanceError::ZeroRingSize
    );
    // Messages name the bad input.
    let message = |e: BalanceError| e.to_string();
    assert!(message(BalanceError::ZeroWeight { index: 1 }).contains("endpoint 1 has weight 0"));
    assert!(
        message(BalanceError::InvalidChoiceCount { choice_count: 1 }).contains("choice_count 1")
    );
    assert!(message(BalanceError::ZeroRingSize).contains("minimum_ring_size 0"));
    assert!(message(BalanceError::NoEndpoints).contains("empty"));
    // Valid edge cases.
    assert!(Balancer::new(Policy::LeastRequest { choice_count: 2 }, &[1]).is_ok());
    assert!(
        Balancer::new(
            Policy::RingHash {
                minimum_ring_size: 1
            },
            &[u32::MAX]
        )
        .is_ok()
    );
}

#[test]
fn accessors_and_defaults() {
    let balancer = Balancer::new(Policy::default(), &[1, 2]).unwrap();
    assert_eq!(balancer.policy(), Policy::RoundRobin);
    assert_eq!(balancer.len(), 2);
    assert!(!balancer.is_empty());
    assert_eq!(
        Policy::least_request(),
        Policy::LeastRequest { choice_count: 2 }
    );
    assert_eq!(
        Policy::ring_hash(),
        Policy::RingHash {
            minimum_ring_size: 1024
        }
    );
    let ring = Balancer::new(Policy::ring_hash(), &[1, 1, 1]).unwrap();
    assert!(ring.table_len() >= 1024);
    assert!(format!("{ring:?}").contains("RingHash"));
}

#[test]
fn hash_bytes_is_xxh64_seed_0() {
    // Reference values of XXH64 with seed 0.
    assert_eq!(hash_bytes(b""), 0xef46_db37_51d8_e999);
    assert_eq!(hash_bytes(b"a"), 0xd24e_c4f1_a98c_6e5b);
    assert_ne!(hash_bytes(b"user-1"), hash_bytes(b"user-2"));
}
