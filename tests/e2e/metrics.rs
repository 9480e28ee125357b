//! `/metrics` read by an OpenMetrics parser: one exposition of one registry, every family
//! described once, the plugin families (a collector read at scrape time) among them.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use openmetrics_parser::{MetricFamily, MetricsExposition, OpenMetricsType, OpenMetricsValue};
use serde_json::{Value, json};
use weft_e2e::plugins::shipped_plugin;
use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, eventually, get, get_with};
use weft_test_artifacts as fx;

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;
type Family = MetricFamily<OpenMetricsType, OpenMetricsValue>;

/// A user agent that needs escaping in a label value (`;` and `=` would be replaced by the SDK).
const AGENT: &str = r#"probe "one" \ two, three"#;

/// A text as a YAML scalar (JSON strings are YAML).
fn quoted(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// Parses `text` as OpenMetrics and checks what the parser leaves to us: each family has
/// exactly one `# HELP` and one `# TYPE` line, and every sample belongs to the family
/// described just before it, with a name its type allows.
fn parse_and_check(text: &str) -> Exposition {
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("not a valid OpenMetrics exposition: {e}\n{text}"));

    let mut helps: HashMap<&str, usize> = HashMap::new();
    let mut types: HashMap<&str, (usize, &str)> = HashMap::new();
    let mut current: Option<(&str, &str)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            *helps.entry(name).or_default() += 1;
            current = None;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
            types.entry(name).or_insert((0, kind)).0 += 1;
            current = Some((name, kind));
        } else if line == "# EOF" {
            current = None;
        } else {
            let sample = line
                .split(['{', ' '])
                .next()
                .expect("a sample line starts with its name");
            let (family, kind) =
                current.unwrap_or_else(|| panic!("sample `{line}` comes before any # TYPE line"));
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "gauge" => &[""],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                other => panic!("family {family} has unexpected type {other}"),
            };
            assert!(
                suffixes.iter().any(|s| sample == format!("{family}{s}")),
                "sample `{line}` does not fit {kind} family {family}"
            );
        }
    }
    for (name, n) in &helps {
        assert_eq!(*n, 1, "{name} has {n} # HELP lines");
    }
    for (name, (n, _)) in &types {
        assert_eq!(*n, 1, "{name} has {n} # TYPE lines");
    }
    let described: BTreeSet<&str> = types.keys().copied().collect();
    assert_eq!(
        helps.keys().copied().collect::<BTreeSet<_>>(),
        described,
        "every family has both a # HELP and a # TYPE line"
    );
    let parsed: BTreeSet<&str> = exposition.families.keys().map(String::as_str).collect();
    assert_eq!(parsed, described, "the parser sees the described families");
    for f in exposition.families.values() {
        assert!(!f.help.is_empty(), "{} has no help", f.family_name);
        assert_ne!(f.family_type, OpenMetricsType::Unknown, "{}", f.family_name);
    }
    exposition
}

/// Checks a text 0.0.4 exposition: no OpenMetrics-only lines, one `# HELP` and `# TYPE` per
/// family, every sample named as its family (a counter's TYPE names its `_total` samples; a
/// histogram's samples add `_bucket`, `_sum`, `_count`), and `families` families in all.
pub(crate) fn check_text_0_0_4(text: &str, families: usize) {
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut helps: BTreeSet<&str> = BTreeSet::new();
    let mut current: Option<(&str, &str)> = None;
    for line in text.lines() {
        assert!(
            line != "# EOF" && !line.starts_with("# UNIT"),
            "OpenMetrics-only line `{line}` in text 0.0.4"
        );
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(helps.insert(name), "second HELP for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
            assert!(types.insert(name, kind).is_none(), "second TYPE for {name}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{kind} is no 0.0.4 type"
            );
            current = Some((name, kind));
        } else {
            let sample = line.split(['{', ' ']).next().unwrap_or_default();
            let (family, kind) = current.unwrap_or_else(|| panic!("`{line}` before any TYPE"));
            let ok = match kind {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample == format!("{family}{s}")),
                _ => sample == family,
            };
            assert!(ok, "sample `{sample}` under TYPE {family} {kind}");
            assert!(
                !line.contains(" # {"),
                "exemplars are OpenMetrics-only: {line}"
            );
        }
    }
    for name in &helps {
        assert!(types.contains_key(name), "HELP without TYPE: {name}");
    }
    assert_eq!(types.len(), families, "every family, once");
}

fn family<'a>(e: &'a Exposition, name: &str) -> &'a Family {
    e.families
        .get(name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

/// The value of the series of `name` whose labels include `labels`.
fn value(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> Option<OpenMetricsValue> {
    family(e, name).iter_samples().find_map(|s| {
        let set = s.get_labelset().ok()?;
        labels
            .iter()
            .all(|(k, v)| set.get_label_value(k) == Some(*v))
            .then(|| s.value.clone())
    })
}

fn number(v: Option<OpenMetricsValue>) -> f64 {
    match v {
        Some(OpenMetricsValue::Counter(c)) => c.value.as_f64(),
        Some(OpenMetricsValue::Gauge(n)) => n.as_f64(),
        other => panic!("not a counter or gauge: {other:?}"),
    }
}

/// `(count, +Inf bucket)` of a histogram series.
fn histogram(v: Option<OpenMetricsValue>) -> (u64, f64) {
    match v {
        Some(OpenMetricsValue::Histogram(h)) => (
            h.count.expect("histogram count"),
            h.buckets
                .iter()
                .find(|b| b.upper_bound == f64::INFINITY)
                .expect("+Inf bucket")
                .count
                .as_f64(),
        ),
        other => panic!("not a histogram: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_is_one_valid_openmetrics_exposition_with_the_plugin_families() {
    let up = echo("up").await;
    let telemetry = json!({
        "metrics": [
            {
                "name": "scrape_requests_total",
                "type": "counter",
                "labels": {
                    "agent": "%{request.header.user-agent}",
                    "route": "%{xds.route_name|none}",
                },
            },
            {
                "name": "scrape_duration_milliseconds",
                "type": "histogram",
                "labels": { "route": "%{xds.route_name|none}" },
            },
        ],
    });
    let p = TestProxy::start(&format!(
        r#"
plugins:
  - name: scrape-hc
    file: {hostcalls}
    configuration: {{ metrics: true }}
  - name: scrape-tel
    file: {telemetry_file}
    configuration: {telemetry_config}
  - name: scrape-never
    file: {configure_fails}
    failure_policy: fail_open
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: scrape-tel }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - name: variant
            match: {{ path: {{ prefix: /variant }} }}
            route: {{ cluster: up }}
            plugins:
              - {{ name: scrape-hc, configuration: {{ metrics: true, add_request_header: [x-scrape, 'say "hi" \ there'] }} }}
          - name: never
            match: {{ path: {{ prefix: /never }} }}
            route: {{ cluster: up }}
            plugins: [{{ name: scrape-never }}]
          - name: api
            route: {{ cluster: up }}
            plugins: [{{ name: scrape-hc }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        hostcalls = quoted(fx::HOSTCALLS),
        telemetry_file = quoted(&shipped_plugin("telemetry")),
        telemetry_config = quoted(&telemetry.to_string()),
        configure_fails = quoted(fx::CONFIGURE_FAILS),
    ))
    .await;
    let admin = format!("http://{}", p.admin());

    // Before any traffic: valid, and one series per plugin handle already.
    parse_and_check(&p.metrics().await);

    for _ in 0..3 {
        let r = get_with(&p.url("main", "/api"), &[("user-agent", AGENT)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..2 {
        assert_eq!(get(&p.url("main", "/variant")).await.status, 200);
        // fail_open: the plugin that never loaded is skipped.
        assert_eq!(get(&p.url("main", "/never")).await.status, 200);
    }

    // The telemetry plugin counts a request when its stream ends, after the response.
    let agent_series = [("plugin", "scrape-tel"), ("agent", AGENT), ("route", "api")];
    assert!(
        eventually(Duration::from_secs(10), || async {
            let e = parse_and_check(&p.metrics().await);
            e.families.contains_key("weft_wasmcustom_scrape_requests")
                && value(&e, "weft_wasmcustom_scrape_requests", &agent_series)
                    .is_some_and(|v| number(Some(v)) == 3.0)
        })
        .await,
        "{}",
        p.metrics().await
    );
    let text = p.metrics().await;
    let e = parse_and_check(&text);
    // `/stats/prometheus` is the same exposition.
    let stats = parse_and_check(
        &get_with(
            &format!("{admin}/stats/prometheus"),
            &[("accept", "application/openmetrics-text; version=1.0.0")],
        )
        .await
        .text(),
    );
    assert_eq!(
        stats.families.keys().collect::<BTreeSet<_>>(),
        e.families.keys().collect::<BTreeSet<_>>()
    );
    // Without `Accept`: text 0.0.4, the same families, each described under its samples' names.
    let plain = get(&format!("{admin}/stats/prometheus")).await;
    assert_eq!(
        plain.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    check_text_0_0_4(&plain.text(), e.families.len());

    // The registry's own families and the plugin families side by side.
    assert!(
        number(value(
            &e,
            "weft_downstream_rq",
            &[("listener", "main"), ("code_class", "2xx")]
        )) >= 7.0
    );

    // One series per plugin handle, labelled as `/plugins` labels it (a route's configuration
    // override as `name[digest]`: the override itself may hold secrets).
    let plugins = get(&format!("{admin}/plugins")).await.json();
    let handles: BTreeSet<String> = plugins["plugins"]
        .as_array()
        .expect("plugins list")
        .iter()
        .map(|h| h["label"].as_str().expect("label").to_owned())
        .collect();
    let variant = handles
        .iter()
        .find(|l| l.starts_with("scrape-hc["))
        .expect("the route override's handle")
        .clone();
    assert!(!variant.contains("say"), "{variant}");
    assert_eq!(variant.len(), "scrape-hc[".len() + 12 + 1, "{variant}");
    for name in [
        "weft_plugin_streams",
        "weft_plugin_traps",
        "weft_plugin_deadlines",
        "weft_plugin_oom",
        "weft_plugin_skipped",
        "weft_plugin_rejected",
        "weft_plugin_instances_replaced",
        "weft_plugin_swaps",
        "weft_plugin_healthy_instances",
    ] {
        let f = family(&e, name);
        let kind = if name.ends_with("_instances") {
            OpenMetricsType::Gauge
        } else {
            OpenMetricsType::Counter
        };
        assert_eq!(f.family_type, kind, "{name}");
        assert_eq!(f.get_label_names(), ["plugin"], "{name}");
        let labels: BTreeSet<String> = f
            .iter_samples()
            .map(|s| {
                let set = s.get_labelset().expect("labels");
                set.get_label_value("plugin").expect("plugin").to_owned()
            })
            .collect();
        assert_eq!(labels, handles, "{name}");
    }
    let streams = |plugin: &str| number(value(&e, "weft_plugin_streams", &[("plugin", plugin)]));
    assert_eq!(streams("scrape-hc"), 3.0, "{text}");
    assert_eq!(streams(&variant), 2.0, "{text}");
    assert_eq!(streams("scrape-tel"), 7.0, "{text}");
    assert_eq!(streams("scrape-never"), 0.0, "{text}");
    let healthy = |plugin: &str| {
        number(value(
            &e,
            "weft_plugin_healthy_instances",
            &[("plugin", plugin)],
        ))
    };
    assert!(healthy("scrape-hc") >= 1.0, "{text}");
    assert_eq!(healthy("scrape-never"), 0.0, "{text}");
    assert_eq!(
        family(&e, "weft_wasm_shared_queue_dropped").family_type,
        OpenMetricsType::Counter
    );

    // What the plugins defined: the hostcalls fixture's counter, gauge and histogram (both
    // handles are plugin `scrape-hc`), and the telemetry plugin's labelled counter and
    // histogram.
    let hc = [("plugin", "scrape-hc")];
    assert_eq!(
        number(value(&e, "weft_wasmcustom_hostcalls_requests", &hc)),
        5.0
    );
    assert_eq!(
        family(&e, "weft_wasmcustom_hostcalls_inflight").family_type,
        OpenMetricsType::Gauge
    );
    assert!(number(value(&e, "weft_wasmcustom_hostcalls_inflight", &hc)) >= 0.0);
    assert_eq!(
        histogram(value(&e, "weft_wasmcustom_hostcalls_sizes", &hc)),
        (5, 5.0)
    );
    let requests = family(&e, "weft_wasmcustom_scrape_requests");
    assert_eq!(requests.family_type, OpenMetricsType::Counter);
    assert_eq!(requests.get_label_names(), ["agent", "plugin", "route"]);
    assert_eq!(
        number(value(
            &e,
            "weft_wasmcustom_scrape_requests",
            &[("plugin", "scrape-tel"), ("route", "variant")]
        )),
        2.0
    );
    let (count, inf) = histogram(value(
        &e,
        "weft_wasmcustom_scrape_duration_milliseconds",
        &[("plugin", "scrape-tel"), ("route", "api")],
    ));
    assert_eq!((count, inf), (3, 3.0));
}
