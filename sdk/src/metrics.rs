//! Plugin metrics, defined once by name and cached.
//!
//! Labels ride in the name, Weft's convention: `requests_total;method=GET;status=200` is the
//! counter `requests_total` with labels `method` and `status` (Weft exports it as
//! `weft_wasmcustom_requests_total{plugin="…",method="GET",status="200"}`; Envoy shows the name
//! as is). Use [`labeled`] to build such names.

use std::collections::HashMap;

use proxy_wasm::types::MetricType;

/// Metrics by name, defined on first use.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: HashMap<(u8, String), u32>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The id of metric `name` of `kind` (a counter and a histogram may share a name).
    fn id(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        let key = (kind as u8, name.to_owned());
        if let Some(id) = self.ids.get(&key) {
            return Some(*id);
        }
        let id = proxy_wasm::hostcalls::define_metric(kind, name).ok()?;
        self.ids.insert(key, id);
        Some(id)
    }

    /// Adds `delta` to counter `name`.
    pub fn increment(&mut self, name: &str, delta: i64) {
        if let Some(id) = self.id(MetricType::Counter, name) {
            let _ = proxy_wasm::hostcalls::increment_metric(id, delta);
        }
    }

    /// Sets gauge `name`.
    pub fn set_gauge(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = proxy_wasm::hostcalls::record_metric(id, value);
        }
    }

    /// Records one observation in histogram `name`.
    pub fn record(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, name) {
            let _ = proxy_wasm::hostcalls::record_metric(id, value);
        }
    }
}

/// `base;k1=v1;k2=v2`, with `;` and `=` in values replaced by `_` so the name stays parseable.
pub fn labeled(base: &str, labels: &[(&str, &str)]) -> String {
    let mut name = base.to_owned();
    for (k, v) in labels {
        name.push(';');
        name.push_str(k);
        name.push('=');
        name.extend(
            v.chars()
                .map(|c| if c == ';' || c == '=' { '_' } else { c }),
        );
    }
    name
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_are_encoded_in_the_name() {
        assert_eq!(
            super::labeled("requests_total", &[("method", "GET"), ("route", "a;b=c")]),
            "requests_total;method=GET;route=a_b_c"
        );
        assert_eq!(super::labeled("x", &[]), "x");
    }
}
