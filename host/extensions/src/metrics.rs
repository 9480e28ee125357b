//! The plugins' metric families, exported through prometheus-client as a [`Collector`]: it is
//! registered once in the proxy's registry and, at every scrape, reads the live plugin handles,
//! the shared-queue drop counter and the metrics plugins define with `proxy_define_metric`.
//! Nothing is kept between scrapes, so handles swapped in or dropped by a reload show up (or
//! disappear) on the next scrape.
//!
//! Names are relative to the registry's `weft` prefix; counters get their `_total` from the
//! encoder. The families are listed in `docs/metrics.md`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use weft_wasm::shared::HISTOGRAM_BOUNDS;
use weft_wasm::types::MetricType as PluginMetricType;

use crate::registry::{PluginHandle, PluginRegistry, PluginVersion};

/// The per-plugin families, one series per handle (label `plugin`): name, help, type. The
/// values of a [`PluginReading`] follow this order.
const PLUGIN_FAMILIES: [(&str, &str, MetricType); 12] = [
    (
        "plugin_streams",
        "Streams a plugin served.",
        MetricType::Counter,
    ),
    ("plugin_traps", "Plugin traps.", MetricType::Counter),
    (
        "plugin_deadlines",
        "Plugin callbacks that hit the CPU deadline.",
        MetricType::Counter,
    ),
    (
        "plugin_oom",
        "Plugin callbacks that hit the memory cap.",
        MetricType::Counter,
    ),
    (
        "plugin_skipped",
        "Requests that skipped a broken plugin (fail_open).",
        MetricType::Counter,
    ),
    (
        "plugin_rejected",
        "Requests refused because a plugin failed.",
        MetricType::Counter,
    ),
    (
        "plugin_instances_replaced",
        "Plugin instances replaced (reload policy).",
        MetricType::Counter,
    ),
    (
        "plugin_swaps",
        "Plugin versions hot-swapped in.",
        MetricType::Counter,
    ),
    (
        "plugin_healthy_instances",
        "Healthy instances in a plugin's pool.",
        MetricType::Gauge,
    ),
    (
        "plugin_instances_peak",
        "Most healthy instances of a plugin's VM at once (never more than its pool size).",
        MetricType::Gauge,
    ),
    (
        "plugin_offloaded_calls",
        "Plugin callbacks run off the async worker because the plugin was slow.",
        MetricType::Counter,
    ),
    (
        "plugin_instance_waits",
        "Plugin callbacks that waited for their instance to finish another stream's callback.",
        MetricType::Counter,
    ),
];

/// Index of `plugin_swaps` in [`PLUGIN_FAMILIES`] (kept by the handle, not the version).
const SWAPS: usize = 7;

/// The shared-queue drop counter.
const QUEUE_DROPPED: (&str, &str) = (
    "wasm_shared_queue_dropped",
    "Items dropped from full plugin shared queues.",
);

/// Prefix of the families plugins define.
const CUSTOM_PREFIX: &str = "wasmcustom_";

/// Help of the families plugins define (the ABI carries no description).
const CUSTOM_HELP: &str = "Metric defined by a plugin (proxy_define_metric).";

/// The plugin families of a [`PluginRegistry`], read at scrape time.
#[derive(Debug)]
pub struct PluginMetrics {
    plugins: Arc<PluginRegistry>,
    /// Plugin-defined metrics left out of the exposition and already logged.
    warned: Mutex<HashSet<(String, String)>>,
}

impl PluginMetrics {
    /// A collector over `plugins`' handles (and the process's plugin-defined metrics).
    pub fn new(plugins: Arc<PluginRegistry>) -> PluginMetrics {
        PluginMetrics {
            plugins,
            warned: Mutex::new(HashSet::new()),
        }
    }

    fn warn_once(&self, m: &CustomReading, why: &str) {
        let first = self
            .warned
            .lock()
            .insert((m.plugin.clone(), m.name.clone()));
        if first {
            tracing::warn!(plugin = %m.plugin, metric = %m.name, "plugin metric not exported: {why}");
        }
    }
}

impl Collector for PluginMetrics {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        Readings::take(&self.plugins).encode(encoder, |m, why| self.warn_once(m, why))
    }
}

/// The inverse of the plugin-defined metrics' name mapping (`GET /stats/plugin_metrics`): for
/// every metric a plugin defined, the name it gave (`base;k=v;…`) next to the family and labels
/// it is exported as. Sanitizing names is lossy (`a.b` and `a_b` both become `a_b`); this list
/// is how a series is traced back to the exact plugin-defined name.
pub fn plugin_metric_names(plugins: &PluginRegistry) -> Vec<serde_json::Value> {
    plugins
        .plugin_metrics()
        .iter()
        .map(|m| {
            let reading = CustomReading {
                plugin: m.plugin.clone(),
                name: m.name.clone(),
                kind: m.kind,
                value: 0,
                count: 0,
                cumulative: Vec::new(),
            };
            let (family, labels) = custom_series(&reading);
            let sample = match m.kind {
                PluginMetricType::Counter => format!("{family}_total"),
                _ => family.clone(),
            };
            serde_json::json!({
                "plugin": m.plugin,
                "name": m.name,
                "type": match m.kind {
                    PluginMetricType::Counter => "counter",
                    PluginMetricType::Gauge => "gauge",
                    PluginMetricType::Histogram => "histogram",
                },
                "family": format!("weft_{family}"),
                "sample": format!("weft_{sample}"),
                "labels": labels
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect()
}

/// Everything the plugin families show, read once per scrape.
#[derive(Debug, Clone, Default)]
struct Readings {
    /// One per handle, sorted by label.
    plugins: Vec<PluginReading>,
    /// Items dropped from full shared queues.
    queue_dropped: u64,
    /// Plugin-defined metrics, in definition order.
    custom: Vec<CustomReading>,
}

/// One plugin handle's values.
#[derive(Debug, Clone, PartialEq)]
struct PluginReading {
    /// The `plugin` label: `name`, or `name[configuration]` for a route override.
    label: String,
    /// One value per [`PLUGIN_FAMILIES`] entry.
    values: [u64; 12],
}

/// One plugin-defined metric's values.
#[derive(Debug, Clone)]
struct CustomReading {
    /// The plugin that defined it.
    plugin: String,
    /// The name it gave (`base;k=v;…`).
    name: String,
    kind: PluginMetricType,
    /// A counter's or gauge's value; a histogram's sum.
    value: i64,
    /// A histogram's observations.
    count: u64,
    /// A histogram's cumulative counts, one per [`HISTOGRAM_BOUNDS`] entry.
    cumulative: Vec<u64>,
}

impl PluginReading {
    fn of(h: &PluginHandle) -> PluginReading {
        let swaps = h.swaps.load(Ordering::Relaxed);
        let values = match &*h.current() {
            PluginVersion::Loaded(p) => {
                let s = &p.stats;
                [
                    s.streams.load(Ordering::Relaxed),
                    s.traps.load(Ordering::Relaxed),
                    s.deadlines.load(Ordering::Relaxed),
                    s.out_of_memory.load(Ordering::Relaxed),
                    s.skipped.load(Ordering::Relaxed),
                    s.rejected.load(Ordering::Relaxed),
                    s.replaced.load(Ordering::Relaxed),
                    swaps,
                    p.healthy_instances() as u64,
                    p.peak_instances() as u64,
                    s.pace.offloaded.load(Ordering::Relaxed),
                    s.instance_waits.load(Ordering::Relaxed),
                ]
            }
            PluginVersion::Failed { .. } => {
                let mut v = [0; 12];
                v[SWAPS] = swaps;
                v
            }
        };
        PluginReading {
            label: h.label(),
            values,
        }
    }
}

impl Readings {
    fn take(plugins: &PluginRegistry) -> Readings {
        Readings {
            plugins: plugins
                .handles()
                .iter()
                .map(|h| PluginReading::of(h))
                .collect(),
            queue_dropped: plugins.queue_drops(),
            custom: plugins
                .plugin_metrics()
                .iter()
                .map(|m| CustomReading {
                    plugin: m.plugin.clone(),
                    name: m.name.clone(),
                    kind: m.kind,
                    value: m.value(),
                    count: m.count(),
                    cumulative: m.cumulative_buckets(),
                })
                .collect(),
        }
    }

    /// Encodes every family; `skipped` hears of plugin-defined metrics left out (and why).
    fn encode(
        &self,
        mut encoder: DescriptorEncoder<'_>,
        mut skipped: impl FnMut(&CustomReading, &str),
    ) -> Result<(), std::fmt::Error> {
        // As the registry does for an empty family: no descriptor without a series.
        if !self.plugins.is_empty() {
            for (i, (name, help, kind)) in PLUGIN_FAMILIES.iter().enumerate() {
                let mut family = encoder.encode_descriptor(name, help, None, *kind)?;
                for p in &self.plugins {
                    let labels = [("plugin", p.label.as_str())];
                    let series = family.encode_family(&labels)?;
                    if *kind == MetricType::Gauge {
                        ConstGauge::new(p.values[i]).encode(series)?;
                    } else {
                        ConstCounter::new(p.values[i]).encode(series)?;
                    }
                }
            }
        }

        let (name, help) = QUEUE_DROPPED;
        let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(self.queue_dropped).encode(family)?;

        let (families, left_out) = custom_families(&self.custom);
        for (m, why) in left_out {
            skipped(m, why);
        }
        for f in &families {
            let kind = match f.kind {
                PluginMetricType::Counter => MetricType::Counter,
                PluginMetricType::Gauge => MetricType::Gauge,
                PluginMetricType::Histogram => MetricType::Histogram,
            };
            let mut family = encoder.encode_descriptor(&f.name, CUSTOM_HELP, None, kind)?;
            for (labels, m) in &f.series {
                let mut series = family.encode_family(labels)?;
                match f.kind {
                    // Counters refuse negative deltas; a recorded u64 is stored as i64.
                    PluginMetricType::Counter => {
                        ConstCounter::new(m.value as u64).encode(series)?
                    }
                    PluginMetricType::Gauge => ConstGauge::new(m.value).encode(series)?,
                    PluginMetricType::Histogram => series.encode_histogram::<NoLabelSet>(
                        m.value as f64,
                        m.count,
                        &histogram_buckets(m),
                        None,
                    )?,
                }
            }
        }
        Ok(())
    }
}

/// A histogram's buckets as the encoder takes them: `(upper bound, count in this bucket)`, the
/// last one `+Inf` (observations above the largest bound are counted, not bucketed).
fn histogram_buckets(m: &CustomReading) -> Vec<(f64, u64)> {
    let mut buckets = Vec::with_capacity(HISTOGRAM_BOUNDS.len() + 1);
    let mut below = 0;
    for (bound, cumulative) in HISTOGRAM_BOUNDS.iter().zip(&m.cumulative) {
        buckets.push((*bound as f64, cumulative.saturating_sub(below)));
        below = below.max(*cumulative);
    }
    buckets.push((f64::INFINITY, m.count.saturating_sub(below)));
    buckets
}

/// A family of plugin-defined metrics.
struct CustomFamily<'a> {
    /// Name under the registry prefix, without a counter's `_total`.
    name: String,
    kind: PluginMetricType,
    /// Series: labels (`plugin` first) and values.
    series: Vec<(Vec<(String, String)>, &'a CustomReading)>,
}

/// Groups plugin-defined metrics into families. A name `base;k=v;k2=v2` (the SDK's label
/// convention) is the series `wasmcustom_base{plugin="…",k="v",k2="v2"}`; a counter named
/// `x_total` is family `wasmcustom_x`. Metrics that would break the exposition are left out
/// and returned with the reason: one whose family or sample names are taken by a family of
/// another type (plugins may give a counter and a histogram the same name), or one whose
/// labels repeat an existing series of its family.
fn custom_families(
    metrics: &[CustomReading],
) -> (Vec<CustomFamily<'_>>, Vec<(&CustomReading, &'static str)>) {
    let mut families: Vec<CustomFamily<'_>> = Vec::new();
    // Every name a family's descriptor or samples use → the family.
    let mut claimed: HashMap<String, usize> = HashMap::new();
    let mut series_seen: HashSet<(usize, Vec<(String, String)>)> = HashSet::new();
    let mut left_out = Vec::new();
    for m in metrics {
        let (name, labels) = custom_series(m);
        let index = match claimed.get(&name) {
            Some(&i) if families[i].name == name && families[i].kind == m.kind => i,
            Some(_) => {
                left_out.push((m, "its name is taken by a plugin metric of another type"));
                continue;
            }
            None => {
                let names = exposed_names(&name, m.kind);
                if names.iter().any(|n| claimed.contains_key(n)) {
                    left_out.push((m, "its name is taken by a plugin metric of another type"));
                    continue;
                }
                let i = families.len();
                claimed.extend(names.into_iter().map(|n| (n, i)));
                families.push(CustomFamily {
                    name,
                    kind: m.kind,
                    series: Vec::new(),
                });
                i
            }
        };
        let mut key = labels.clone();
        key.sort();
        if !series_seen.insert((index, key)) {
            left_out.push((m, "another plugin metric has the same name and labels"));
            continue;
        }
        families[index].series.push((labels, m));
    }
    (families, left_out)
}

/// The family name and labels of a plugin-defined metric.
fn custom_series(m: &CustomReading) -> (String, Vec<(String, String)>) {
    let mut parts = m.name.split(';');
    let base = sanitize(parts.next().unwrap_or_default());
    let mut name = format!("{CUSTOM_PREFIX}{base}");
    if m.kind == PluginMetricType::Counter
        && let Some(stripped) = name.strip_suffix("_total")
    {
        name = stripped.to_owned();
    }
    let mut labels = vec![("plugin".to_owned(), m.plugin.clone())];
    for part in parts {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let mut k = sanitize(k);
        if k.starts_with(|c: char| c.is_ascii_digit()) {
            k.insert(0, '_');
        }
        // `plugin` is ours, `le` the histograms'; a repeated name keeps its first value.
        if k.is_empty() || k == "le" || labels.iter().any(|(n, _)| *n == k) {
            continue;
        }
        labels.push((k, v.to_owned()));
    }
    (name, labels)
}

/// The names family `name` of `kind` uses in the exposition: its descriptor and its samples.
fn exposed_names(name: &str, kind: PluginMetricType) -> Vec<String> {
    let suffixes: &[&str] = match kind {
        PluginMetricType::Counter => &["", "_total", "_created"],
        PluginMetricType::Gauge => &[""],
        PluginMetricType::Histogram => &["", "_bucket", "_count", "_sum", "_created"],
    };
    suffixes.iter().map(|s| format!("{name}{s}")).collect()
}

/// A metric or label name: ASCII letters, digits and `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    /// Fixed readings as a collector.
    impl Collector for Readings {
        fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            Readings::encode(self, encoder, |_, _| {})
        }
    }

    /// The exposition of `collector` in a registry prefixed `weft`, as the proxy's.
    fn exposition(collector: impl Collector) -> String {
        let mut registry = Registry::with_prefix("weft");
        registry.register_collector(Box::new(collector));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
        out
    }

    fn custom(plugin: &str, name: &str, kind: PluginMetricType, value: i64) -> CustomReading {
        CustomReading {
            plugin: plugin.into(),
            name: name.into(),
            kind,
            value,
            count: 0,
            cumulative: vec![0; HISTOGRAM_BOUNDS.len()],
        }
    }

    #[test]
    fn plugin_stats_become_one_series_per_handle() {
        let readings = Readings {
            plugins: vec![
                PluginReading {
                    label: "authz".into(),
                    values: [12, 1, 2, 3, 4, 5, 6, 7, 2, 2, 9, 4],
                },
                PluginReading {
                    label: r#"hr["v"]"#.into(),
                    values: [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
                },
            ],
            queue_dropped: 9,
            custom: Vec::new(),
        };
        let text = exposition(readings);
        let expected = r#"# HELP weft_plugin_streams Streams a plugin served.
# TYPE weft_plugin_streams counter
weft_plugin_streams_total{plugin="authz"} 12
weft_plugin_streams_total{plugin="hr[\"v\"]"} 0
# HELP weft_plugin_traps Plugin traps.
# TYPE weft_plugin_traps counter
weft_plugin_traps_total{plugin="authz"} 1
weft_plugin_traps_total{plugin="hr[\"v\"]"} 0
# HELP weft_plugin_deadlines Plugin callbacks that hit the CPU deadline.
# TYPE weft_plugin_deadlines counter
weft_plugin_deadlines_total{plugin="authz"} 2
weft_plugin_deadlines_total{plugin="hr[\"v\"]"} 0
# HELP weft_plugin_oom Plugin callbacks that hit the memory cap.
# TYPE weft_plugin_oom counter
weft_plugin_oom_total{plugin="authz"} 3
weft_plugin_oom_total{plugin="hr[\"v\"]"} 0
# HELP weft_plugin_skipped Requests that skipped a broken plugin (fail_open).
# TYPE weft_plugin_skipped counter
weft_plugin_skipped_total{plugin="authz"} 4
weft_plugin_skipped_total{plugin="hr[\"v\"]"} 0
# HELP weft_plugin_rejected Requests refused because a plugin failed.
# TYPE weft_plugin_rejected counter
weft_plugin_rejected_total{plugin="authz"} 5
weft_plugin_rejected_total{plugin="hr[\"v\"]"} 0
# HELP weft_plugin_instances_replaced Plugin instances replaced (reload policy).
# TYPE weft_plugin_instances_replaced counter
weft_plugin_instances_replaced_total{plugin="authz"} 6
weft_plugin_instances_replaced_total{plugin="hr[\"v\"]"} 0
# HELP weft_plugin_swaps Plugin versions hot-swapped in.
# TYPE weft_plugin_swaps counter
weft_plugin_swaps_total{plugin="authz"} 7
weft_plugin_swaps_total{plugin="hr[\"v\"]"} 1
# HELP weft_plugin_healthy_instances Healthy instances in a plugin's pool.
# TYPE weft_plugin_healthy_instances gauge
weft_plugin_healthy_instances{plugin="authz"} 2
weft_plugin_healthy_instances{plugin="hr[\"v\"]"} 0
# HELP weft_plugin_instances_peak Most healthy instances of a plugin's VM at once (never more than its pool size).
# TYPE weft_plugin_instances_peak gauge
weft_plugin_instances_peak{plugin="authz"} 2
weft_plugin_instances_peak{plugin="hr[\"v\"]"} 0
# HELP weft_plugin_offloaded_calls Plugin callbacks run off the async worker because the plugin was slow.
# TYPE weft_plugin_offloaded_calls counter
weft_plugin_offloaded_calls_total{plugin="authz"} 9
weft_plugin_offloaded_calls_total{plugin="hr[\"v\"]"} 0
# HELP weft_plugin_instance_waits Plugin callbacks that waited for their instance to finish another stream's callback.
# TYPE weft_plugin_instance_waits counter
weft_plugin_instance_waits_total{plugin="authz"} 4
weft_plugin_instance_waits_total{plugin="hr[\"v\"]"} 0
# HELP weft_wasm_shared_queue_dropped Items dropped from full plugin shared queues.
# TYPE weft_wasm_shared_queue_dropped counter
weft_wasm_shared_queue_dropped_total 9
# EOF
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn no_plugin_no_plugin_families() {
        let text = exposition(Readings::default());
        assert!(!text.contains("weft_plugin_"), "{text}");
        assert!(
            text.contains("weft_wasm_shared_queue_dropped_total 0\n"),
            "{text}"
        );
    }

    #[test]
    fn plugin_defined_metrics_carry_their_labels_in_the_name() {
        let mut hist = custom("tel", "rq_ms;route=api", PluginMetricType::Histogram, 21);
        // Observations 1, 4, 16 and one above the largest bound.
        hist.count = 4;
        hist.cumulative = HISTOGRAM_BOUNDS
            .iter()
            .enumerate()
            .map(|(i, _)| (i as u64 + 1).min(3))
            .collect();
        let readings = Readings {
            custom: vec![
                custom(
                    "tel",
                    "requests_total;method=GET;status=200",
                    PluginMetricType::Counter,
                    6,
                ),
                custom(
                    "tel-2",
                    "requests_total;method=P\"O\\ST\n;status=5,0=0",
                    PluginMetricType::Counter,
                    1,
                ),
                custom("hc", "inflight", PluginMetricType::Gauge, -2),
                custom(
                    "hc",
                    "odd name;9x=a;plugin=p;le=1;x=1;x=2",
                    PluginMetricType::Counter,
                    3,
                ),
                hist,
            ],
            ..Readings::default()
        };
        let text = exposition(readings);
        let custom_part = text
            .split_once("weft_wasm_shared_queue_dropped_total 0\n")
            .map(|(_, rest)| rest)
            .expect("queue drops first");
        let expected = r#"# HELP weft_wasmcustom_requests Metric defined by a plugin (proxy_define_metric).
# TYPE weft_wasmcustom_requests counter
weft_wasmcustom_requests_total{plugin="tel",method="GET",status="200"} 6
weft_wasmcustom_requests_total{plugin="tel-2",method="P\"O\\ST\n",status="5,0=0"} 1
# HELP weft_wasmcustom_inflight Metric defined by a plugin (proxy_define_metric).
# TYPE weft_wasmcustom_inflight gauge
weft_wasmcustom_inflight{plugin="hc"} -2
# HELP weft_wasmcustom_odd_name Metric defined by a plugin (proxy_define_metric).
# TYPE weft_wasmcustom_odd_name counter
weft_wasmcustom_odd_name_total{plugin="hc",_9x="a",x="1"} 3
# HELP weft_wasmcustom_rq_ms Metric defined by a plugin (proxy_define_metric).
# TYPE weft_wasmcustom_rq_ms histogram
weft_wasmcustom_rq_ms_sum{plugin="tel",route="api"} 21.0
weft_wasmcustom_rq_ms_count{plugin="tel",route="api"} 4
weft_wasmcustom_rq_ms_bucket{le="1.0",plugin="tel",route="api"} 1
weft_wasmcustom_rq_ms_bucket{le="4.0",plugin="tel",route="api"} 2
weft_wasmcustom_rq_ms_bucket{le="16.0",plugin="tel",route="api"} 3
"#;
        assert!(custom_part.starts_with(expected), "{custom_part}");
        assert!(
            custom_part.ends_with(
                "weft_wasmcustom_rq_ms_bucket{le=\"1073741824.0\",plugin=\"tel\",route=\"api\"} 3\n\
                 weft_wasmcustom_rq_ms_bucket{le=\"+Inf\",plugin=\"tel\",route=\"api\"} 4\n# EOF\n"
            ),
            "{custom_part}"
        );
    }

    #[test]
    fn clashing_plugin_metrics_are_left_out_not_duplicated() {
        let metrics = vec![
            custom("a", "x", PluginMetricType::Counter, 1),
            // Same family name, another type (the SDK allows a counter and a histogram `x`).
            custom("a", "x", PluginMetricType::Histogram, 1),
            // Its sample would be `…_x_total`, the counter's.
            custom("b", "x_total", PluginMetricType::Gauge, 1),
            // Family `…_x` again: joins the counter, but repeats its series.
            custom("a", "x_total", PluginMetricType::Counter, 1),
            // Same labels in another order: the same series.
            custom("c", "y;k=1;j=2", PluginMetricType::Gauge, 1),
            custom("c", "y;j=2;k=1", PluginMetricType::Gauge, 2),
            // `…_h_count` belongs to histogram `…_h`.
            custom("d", "h", PluginMetricType::Histogram, 0),
            custom("d", "h_count", PluginMetricType::Gauge, 0),
            // A new series of an existing family is fine.
            custom("b", "x", PluginMetricType::Counter, 5),
        ];
        let (families, left_out) = custom_families(&metrics);
        let kept: Vec<(String, usize)> = families
            .iter()
            .map(|f| (f.name.clone(), f.series.len()))
            .collect();
        assert_eq!(
            kept,
            [
                ("wasmcustom_x".to_owned(), 2),
                ("wasmcustom_y".to_owned(), 1),
                ("wasmcustom_h".to_owned(), 1),
            ]
        );
        let dropped: Vec<(&str, &str)> = left_out
            .iter()
            .map(|(m, _)| (m.plugin.as_str(), m.name.as_str()))
            .collect();
        assert_eq!(
            dropped,
            [
                ("a", "x"),
                ("b", "x_total"),
                ("a", "x_total"),
                ("c", "y;j=2;k=1"),
                ("d", "h_count"),
            ]
        );
        // One descriptor per family in the text.
        let text = exposition(Readings {
            custom: metrics,
            ..Readings::default()
        });
        assert_eq!(
            text.matches("# TYPE weft_wasmcustom_x ").count(),
            1,
            "{text}"
        );
        assert!(!text.contains("# TYPE weft_wasmcustom_x_total"), "{text}");
    }

    #[tokio::test]
    async fn the_collector_reads_the_live_handles_at_scrape_time() {
        crate::register_builtin_plugins(&[("metrics-test-broken", b"not wasm")]);
        let plugins = Arc::new(PluginRegistry::new());
        let mut registry = Registry::with_prefix("weft");
        registry.register_collector(Box::new(PluginMetrics::new(plugins.clone())));
        let scrape = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
            out
        };
        assert!(!scrape().contains("weft_plugin_"));

        // A plugin that fails to load (not strict: the handle records the failure).
        let config: weft_config::schema::Plugin = serde_json::from_value(serde_json::json!({
            "name": "broken",
            "file": "builtin:metrics-test-broken",
            "failure_policy": "fail_open",
        }))
        .expect("plugin config");
        let handle = plugins
            .resolve(std::path::Path::new("."), &config, None, false)
            .await
            .expect("a failed load still makes a handle");
        handle.swaps.fetch_add(2, Ordering::Relaxed);
        let text = scrape();
        assert!(
            text.contains("weft_plugin_streams_total{plugin=\"broken\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_plugin_swaps_total{plugin=\"broken\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_plugin_healthy_instances{plugin=\"broken\"} 0\n"),
            "{text}"
        );

        // Dropped by a reload: gone on the next scrape.
        plugins.retain(&[]);
        assert!(!scrape().contains("weft_plugin_"));
    }
}
