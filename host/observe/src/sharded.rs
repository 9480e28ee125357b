//! A latency histogram with one shard per thread, for series every request updates
//! (`weft_downstream_rq_time_seconds`, `weft_upstream_rq_time_seconds`).
//!
//! prometheus-client's `Histogram` takes a mutex on every observation, shared by every worker
//! that serves the listener or cluster: a lock, and a cache line moving between cores, on
//! every request. Here each thread observes into its own shard (plain atomics on a line no
//! other worker writes), allocated on the thread's first observation; a scrape adds the
//! shards up. The exposition is the same as the classic histogram's.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Shards per histogram; threads beyond it share shards (still correct, only slower).
const SHARDS: usize = 16;

/// The next thread's shard.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// One thread's counts: per bucket (not cumulative), the count and the sum (`f64` bits).
#[derive(Debug)]
struct Shard {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds, the last one `+Inf`.
    bounds: Box<[f64]>,
    shards: [OnceLock<Box<Shard>>; SHARDS],
}

/// A histogram sharded by thread; cheap to clone (the clones share the counts).
#[derive(Debug, Clone)]
pub struct ShardedHistogram {
    inner: Arc<Inner>,
}

impl ShardedHistogram {
    /// A histogram with these finite upper bounds (plus `+Inf`).
    pub fn new(buckets: impl IntoIterator<Item = f64>) -> ShardedHistogram {
        let bounds = buckets
            .into_iter()
            .filter(|b| b.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        ShardedHistogram {
            inner: Arc::new(Inner {
                bounds,
                shards: std::array::from_fn(|_| OnceLock::new()),
            }),
        }
    }

    /// Records `v` in the calling thread's shard.
    pub fn observe(&self, v: f64) {
        let inner = &*self.inner;
        let shard = inner.shards[SHARD.with(|s| *s)].get_or_init(|| {
            Box::new(Shard {
                buckets: inner.bounds.iter().map(|_| AtomicU64::new(0)).collect(),
                count: AtomicU64::new(0),
                sum: AtomicU64::new(0f64.to_bits()),
            })
        });
        // NaN goes to the last bucket, like prometheus-client's histogram.
        let i = inner
            .bounds
            .iter()
            .position(|b| *b >= v)
            .unwrap_or(inner.bounds.len() - 1);
        if let Some(b) = shard.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        shard.count.fetch_add(1, Ordering::Relaxed);
        // Another thread shares this shard only past SHARDS threads: a CAS loop stays correct.
        let _ = shard
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((f64::from_bits(s) + v).to_bits())
            });
    }

    /// Sum, count and per-bucket counts over every shard.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &*self.inner;
        let mut buckets: Vec<(f64, u64)> = inner.bounds.iter().map(|b| (*b, 0)).collect();
        let (mut sum, mut count) = (0.0, 0);
        for shard in inner.shards.iter().filter_map(OnceLock::get) {
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
            count += shard.count.load(Ordering::Relaxed);
            for (acc, b) in buckets.iter_mut().zip(shard.buckets.iter()) {
                acc.1 += b.load(Ordering::Relaxed);
            }
        }
        (sum, count, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    use super::*;

    fn text(metric: impl EncodeMetric + Clone + std::fmt::Debug + Send + Sync + 'static) -> String {
        let mut reg = Registry::default();
        reg.register("t", "help", metric);
        let mut out = String::new();
        encode(&mut out, &reg).expect("encodes");
        out
    }

    #[test]
    fn encodes_like_the_classic_histogram_across_threads() {
        let bounds = || prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 6);
        let sharded = ShardedHistogram::new(bounds());
        let classic = Histogram::new(bounds());
        let values = [0.0, 0.0005, 0.001, 0.0015, 0.004, 0.02, 0.5, 7.0, f64::NAN];
        std::thread::scope(|s| {
            for t in 0..4 {
                let (sharded, classic) = (sharded.clone(), classic.clone());
                s.spawn(move || {
                    for (i, v) in values.iter().enumerate() {
                        // NaN (the last bucket) from two of the threads only.
                        if v.is_finite() || (i + t) % 2 == 0 {
                            sharded.observe(*v);
                            classic.observe(*v);
                        }
                    }
                });
            }
        });
        let (_, count, _) = sharded.snapshot();
        assert_eq!(count, 4 * 8 + 2, "every observation counted once");
        let strip_sum = |t: String| {
            t.lines()
                .filter(|l| !l.starts_with("t_sum"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip_sum(text(sharded)), strip_sum(text(classic)));
    }

    #[test]
    fn sums_finite_observations_exactly() {
        let h = ShardedHistogram::new([0.5, 1.0]);
        std::thread::scope(|s| {
            for _ in 0..3 {
                let h = h.clone();
                s.spawn(move || {
                    for _ in 0..100 {
                        h.observe(0.25);
                    }
                });
            }
        });
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 300);
        assert_eq!(sum, 75.0);
        assert_eq!(buckets, vec![(0.5, 300), (1.0, 0), (f64::INFINITY, 0)]);
    }
}
