//! One load-balancer pick for each policy over 16 weighted endpoints.
#![expect(
    clippy::expect_used,
    reason = "a benchmark whose setup fails has nothing to measure: it stops, naming the step"
)]

use criterion::{Criterion, criterion_group, criterion_main};
use weft_balance::{AllAvailable, Balancer, PickContext, Policy, hash_bytes};

fn bench(c: &mut Criterion) {
    let weights: Vec<u32> = (1..=16).collect();
    let policies = [
        ("round_robin", Policy::RoundRobin),
        ("random", Policy::Random),
        ("least_request", Policy::least_request()),
        ("ring_hash", Policy::ring_hash()),
    ];
    for (name, policy) in policies {
        let balancer = Balancer::new(policy, &weights).expect("balancer");
        let hash = hash_bytes(b"user-42");
        c.bench_function(&format!("pick {name} (16 endpoints)"), |b| {
            b.iter(|| {
                let mut ctx = PickContext::new(&AllAvailable);
                ctx.hash = Some(hash);
                std::hint::black_box(balancer.pick(&ctx))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
