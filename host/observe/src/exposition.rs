//! The two exposition formats a scraper may ask for: OpenMetrics 1.0 (what prometheus-client
//! encodes) and Prometheus text 0.0.4 (Envoy's `/stats/prometheus` default), chosen by the
//! request's `Accept` header.
//!
//! Text 0.0.4 is derived from the OpenMetrics encoding line by line: a counter family `x`
//! (samples `x_total`) is described as `x_total`, so `# HELP`/`# TYPE` name the samples they
//! describe; `info` and `stateset` families become gauges and `unknown` becomes `untyped`;
//! `# UNIT` lines, `_created` samples, exemplars and `# EOF` (none of which 0.0.4 has) are
//! dropped.

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    Text,
}

impl Format {
    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The format `accept` prefers: OpenMetrics when it is listed with a quality above zero and at
/// least that of `text/plain` (or `*/*`); text 0.0.4 otherwise, and without an `Accept`.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut open_metrics = 0.0f32;
    let mut text = 0.0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        match media.as_str() {
            "application/openmetrics-text" => open_metrics = open_metrics.max(q),
            "text/plain" | "*/*" | "text/*" => text = text.max(q),
            _ => {}
        }
    }
    if open_metrics > 0.0 && open_metrics >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// Prometheus text 0.0.4 from an OpenMetrics exposition (see the module documentation).
pub fn openmetrics_to_text(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    // The family being described: its name and OpenMetrics type.
    let mut family = String::new();
    let mut kind = "";
    let mut pending_help: Option<&str> = None;
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // Written once the TYPE line says what the samples are called.
            pending_help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.rsplit_once(' ').unwrap_or((rest, "unknown"));
            family = name.to_owned();
            kind = match t {
                "counter" => "counter",
                "gauge" => "gauge",
                "histogram" => "histogram",
                "summary" => "summary",
                "info" => "info",
                "stateset" => "stateset",
                _ => "untyped",
            };
            let (described, text_type) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_owned(), "gauge"),
                other => (name.to_owned(), other),
            };
            if let Some(help) = pending_help.take() {
                let text = help.split_once(' ').map_or("", |(_, h)| h);
                out.push_str("# HELP ");
                out.push_str(&described);
                if !text.is_empty() {
                    out.push(' ');
                    out.push_str(&help_0_0_4(text));
                }
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(&described);
            out.push(' ');
            out.push_str(text_type);
            out.push('\n');
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, rest) = split_name(line);
        if name.ends_with("_created")
            && name.len() > family.len()
            && name.starts_with(family.as_str())
            && matches!(kind, "counter" | "histogram" | "summary")
        {
            continue;
        }
        out.push_str(name);
        out.push_str(strip_exemplar(rest));
        out.push('\n');
    }
    out
}

/// HELP text escaped for 0.0.4 (only `\\` and `\n` are escapes there).
fn help_0_0_4(help: &str) -> String {
    help.replace("\\\"", "\"")
}

/// A sample line's metric name and the rest (labels and value).
fn split_name(line: &str) -> (&str, &str) {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    line.split_at(end)
}

/// The labels and value of a sample, without an exemplar (` # {…} value [timestamp]`).
fn strip_exemplar(rest: &str) -> &str {
    // Skip the label set (quoted values may hold ` # `), then cut at the exemplar marker.
    let mut start = 0;
    if rest.starts_with('{') {
        let bytes = rest.as_bytes();
        let mut i = 1;
        let mut quoted = false;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'}' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
        start = (i + 1).min(rest.len());
    }
    match rest[start..].find(" # ") {
        Some(at) => &rest[..start + at],
        None => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_accept_header_gets_openmetrics() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            negotiate(Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")),
            Format::Text
        );
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text; q=0")),
            Format::Text
        );
    }

    #[test]
    fn counters_are_described_by_their_sample_names() {
        let om = "# HELP weft_x Things \"quoted\".\n# TYPE weft_x counter\nweft_x_total{a=\"b # c\"} 3 # {trace_id=\"1\"} 1.0\nweft_x_created{a=\"b\"} 1.7e9\n# HELP h H\n# TYPE h histogram\n# UNIT h seconds\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n# TYPE i info\ni_info{v=\"1\"} 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP weft_x_total Things \"quoted\".\n# TYPE weft_x_total counter\nweft_x_total{a=\"b # c\"} 3\n# HELP h H\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n# TYPE i_info gauge\ni_info{v=\"1\"} 1\n"
        );
    }
}
