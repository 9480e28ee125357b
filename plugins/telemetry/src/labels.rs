//! Label values and cardinality: each metric keeps at most `max_sets` distinct label sets;
//! later new sets are folded into one overflow series whose every label is `other`.

use std::collections::HashSet;

/// The value every label takes in the overflow series.
pub const OVERFLOW: &str = "other";

/// Longest label value kept (bytes); longer values are cut on a character boundary.
pub const MAX_VALUE_BYTES: usize = 128;

/// Distinct label sets seen per metric.
#[derive(Debug)]
pub struct LabelLimiter {
    max_sets: usize,
    seen: Vec<HashSet<String>>,
}

impl LabelLimiter {
    /// A limiter for `metrics` metrics of at most `max_sets` label sets each.
    pub fn new(metrics: usize, max_sets: usize) -> LabelLimiter {
        LabelLimiter {
            max_sets: max_sets.max(1),
            seen: (0..metrics).map(|_| HashSet::new()).collect(),
        }
    }

    /// The series name for metric `index` (`base` with `labels`): the labelled name when the
    /// set is known or there is room for it, else the overflow series. The second value is
    /// true on overflow.
    pub fn series(
        &mut self,
        index: usize,
        base: &str,
        labels: &[(&str, String)],
    ) -> (String, bool) {
        let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let name = weft_sdk::metrics::labeled(base, &pairs);
        let Some(seen) = self.seen.get_mut(index) else {
            return (name, false);
        };
        if seen.contains(&name) {
            return (name, false);
        }
        if seen.len() < self.max_sets {
            seen.insert(name.clone());
            return (name, false);
        }
        let other: Vec<(&str, &str)> = labels.iter().map(|(k, _)| (*k, OVERFLOW)).collect();
        (weft_sdk::metrics::labeled(base, &other), true)
    }
}

/// A rendered value made safe for a label: control characters become `_`, and it is cut to
/// [`MAX_VALUE_BYTES`].
pub fn clean_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_VALUE_BYTES));
    for c in value.chars() {
        if out.len() + c.len_utf8() > MAX_VALUE_BYTES {
            break;
        }
        out.push(if c.is_control() { '_' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(status: &str) -> Vec<(&'static str, String)> {
        vec![("method", "GET".into()), ("status", status.into())]
    }

    #[test]
    fn known_sets_pass_new_ones_overflow_past_the_limit() {
        let mut l = LabelLimiter::new(2, 2);
        assert_eq!(
            l.series(0, "rq", &labels("200")),
            ("rq;method=GET;status=200".into(), false)
        );
        assert!(!l.series(0, "rq", &labels("404")).1);
        assert_eq!(
            l.series(0, "rq", &labels("500")),
            ("rq;method=other;status=other".into(), true)
        );
        assert!(!l.series(0, "rq", &labels("200")).1, "known set");
        assert!(!l.series(1, "other_metric", &labels("500")).1, "per metric");
        assert!(!l.series(9, "unknown", &labels("1")).1, "no limiter");
    }

    #[test]
    fn values_are_cleaned_and_bounded() {
        assert_eq!(clean_value("a\nb\tc"), "a_b_c");
        let long = "é".repeat(100);
        let v = clean_value(&long);
        assert!(v.len() <= MAX_VALUE_BYTES && v.len() == 128, "{}", v.len());
        assert!(v.chars().all(|c| c == 'é'));
    }
}
