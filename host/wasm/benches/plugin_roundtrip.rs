//! Per-request cost of a trivial header-adding plugin on Weft's host: a stream context created,
//! `on_request_headers` (header get + add), `on_response_headers`, and `on_log` / `on_done` /
//! `on_delete`, against the real `header_adder.wasm`. Also the cost of checking out an
//! instance (context creation alone) and the memory a loaded plugin adds.
#![expect(
    clippy::expect_used,
    reason = "a benchmark whose setup fails has nothing to measure: it stops, naming the step"
)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_wasm::{EngineOptions, NoCallouts, NoProperties, Plugin, PluginSpec, Stream, WasmEngine};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let engine = WasmEngine::new(EngineOptions {
        cache_dir: None,
        ..EngineOptions::default()
    })
    .expect("engine");
    let wasm = weft_test_artifacts::bytes(weft_test_artifacts::HEADER_ADDER);
    let mut spec = PluginSpec::new("adder", wasm.clone());
    spec.configuration = b"v1".to_vec();
    spec.instances = 1;
    let plugin = Plugin::load(&engine, spec, Arc::new(NoCallouts)).expect("plugin loads");

    // Memory per loaded plugin: load 20 more and divide the RSS growth.
    let before = rss_kib();
    let mut extra = Vec::new();
    for i in 0..20 {
        let mut s = PluginSpec::new(format!("adder-{i}"), wasm.clone());
        s.configuration = b"v1".to_vec();
        s.instances = 1;
        extra.push(Plugin::load(&engine, s, Arc::new(NoCallouts)).expect("plugin loads"));
    }
    let per_plugin = (rss_kib().saturating_sub(before)) as f64 / 20.0;
    eprintln!("memory: {per_plugin:.0} KiB RSS per loaded plugin (one instance each, 20 loaded)");

    let props: Arc<dyn weft_wasm::Properties> = Arc::new(NoProperties);
    c.bench_function("header_adder request+response round trip", |b| {
        b.iter(|| {
            let mut s = Stream::new(&plugin, props.clone()).expect("stream");
            let h = &mut s.data().request_headers;
            h.add(":method", b"GET").expect("valid header");
            h.add(":path", b"/").expect("valid header");
            h.add(":authority", b"example.com").expect("valid header");
            h.add("user-agent", b"bench").expect("valid header");
            s.on_request_headers(true).expect("request headers");
            s.data()
                .response_headers
                .add(":status", b"200")
                .expect("valid header");
            s.on_response_headers(true).expect("response headers");
            s.finish();
        })
    });
    c.bench_function("stream context create + delete (instance checkout)", |b| {
        b.iter(|| {
            let mut s = Stream::new(&plugin, props.clone()).expect("stream");
            s.finish();
        })
    });
    drop(extra);
}

criterion_group!(benches, bench);
criterion_main!(benches);
