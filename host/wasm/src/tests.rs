//! The host against real `.wasm` fixtures built from `tests/fixtures/wasm`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use weft_test_artifacts as fx;

use super::*;

fn engine() -> WasmEngine {
    static E: OnceLock<WasmEngine> = OnceLock::new();
    E.get_or_init(|| {
        WasmEngine::new(EngineOptions {
            cache_dir: None,
            ..EngineOptions::default()
        })
        .unwrap()
    })
    .clone()
}

fn spec(name: &str, path: &str, config: &str) -> PluginSpec {
    let mut s = PluginSpec::new(name, fx::bytes(path));
    s.configuration = config.as_bytes().to_vec();
    s
}

fn load(spec: PluginSpec) -> Arc<Plugin> {
    Plugin::load(&engine(), spec, Arc::new(NoCallouts)).unwrap()
}

struct Props(HashMap<String, Vec<u8>>);

impl Properties for Props {
    fn get(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.0.get(&path.join(".")).cloned()
    }
}

fn request(stream: &mut Stream, path: &str) {
    let h = &mut stream.data().request_headers;
    h.add(":method", b"GET").unwrap();
    h.add(":path", path.as_bytes()).unwrap();
    h.add(":authority", b"example.com").unwrap();
}

/// Header lookup over a live map or a list (callouts, local replies).
trait HeaderGet {
    fn get(&self, name: &str) -> Option<&[u8]>;
}

impl HeaderGet for HeaderList {
    fn get(&self, name: &str) -> Option<&[u8]> {
        HeaderList::get(self, name)
    }
}

impl HeaderGet for Headers {
    fn get(&self, name: &str) -> Option<&[u8]> {
        Headers::get(self, name)
    }
}

fn header(list: &impl HeaderGet, name: &str) -> Option<String> {
    list.get(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn header_adder_adds_request_and_response_headers() {
    let p = load(spec("adder", fx::HEADER_ADDER, "v1"));
    assert_eq!(p.abi_version, "0.2.1");
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    assert_eq!(s.on_request_headers(true).unwrap(), Action::Continue);
    assert_eq!(
        header(&s.data().request_headers, "x-plugin-seen").as_deref(),
        Some("v1")
    );
    s.data().response_headers.add(":status", b"200").unwrap();
    assert_eq!(s.on_response_headers(true).unwrap(), Action::Continue);
    assert_eq!(
        header(&s.data().response_headers, "x-plugin").as_deref(),
        Some("v1")
    );
    s.finish();
    assert_eq!(
        p.stats.streams.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn properties_are_read_with_envoy_encodings_and_set_properties_read_back() {
    let p = load(spec(
        "props",
        fx::HOSTCALLS,
        r#"{"echo_properties": ["request.path", "request.size", "plugin_name", "nope.nothing"], "properties_set": ["my.key", "my-value"]}"#,
    ));
    let mut props = HashMap::new();
    props.insert("request.path".to_owned(), b"/p".to_vec());
    props.insert("request.size".to_owned(), 42u64.to_le_bytes().to_vec());
    let mut s = Stream::new(&p, Arc::new(Props(props))).unwrap();
    request(&mut s, "/p");
    s.on_request_headers(true).unwrap();
    let h = &s.data().request_headers;
    assert_eq!(header(h, "x-prop-request-path").as_deref(), Some("/p"));
    assert_eq!(header(h, "x-prop-request-size").as_deref(), Some("42"));
    assert_eq!(header(h, "x-prop-plugin_name").as_deref(), Some("props"));
    assert_eq!(
        header(h, "x-prop-nope-nothing").as_deref(),
        Some("<missing>")
    );
    assert_eq!(header(h, "x-set-prop").as_deref(), Some("my-value"));
}

#[test]
fn local_reply_is_an_effect_after_the_callback() {
    let p = load(spec(
        "deny",
        fx::HOSTCALLS,
        r#"{"deny_if_header": "x-block"}"#,
    ));
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    s.data().request_headers.add("x-block", b"1").unwrap();
    assert_eq!(s.on_request_headers(true).unwrap(), Action::Pause);
    let reply = s.take_effects().local_response.unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(&reply.body[..], b"denied\n");
    assert_eq!(
        header(&reply.headers, "x-denied-by").as_deref(),
        Some("hostcalls")
    );
}

fn body_edit(mode: &str, body: &str) -> String {
    let (a, b) = body.split_at(body.len() / 2);
    body_edit_chunks(mode, &[a, b])
}

/// The hostcalls fixture's body `mode` on a body that arrives as `parts` (one `Bytes` chunk
/// each, delivered at once at the end of the stream).
fn body_edit_chunks(mode: &str, parts: &[&str]) -> String {
    let body: String = parts.concat();
    let p = load(spec(
        "body",
        fx::HOSTCALLS,
        &format!(r#"{{"request_body": "{mode}"}}"#),
    ));
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    s.on_request_headers(false).unwrap();
    s.data().request_body = body.as_bytes()[..2].to_vec().into();
    assert_eq!(
        s.on_request_body(false).unwrap(),
        Action::Pause,
        "buffers until the end"
    );
    let mut chunks = crate::BodyBuffer::new();
    for part in parts {
        chunks.push(bytes::Bytes::copy_from_slice(part.as_bytes()));
    }
    s.data().request_body = chunks;
    assert_eq!(s.on_request_body(true).unwrap(), Action::Continue);
    String::from_utf8(s.data().request_body.to_vec()).unwrap()
}

#[test]
fn buffer_host_calls_work_on_chunked_bodies() {
    let parts = ["hel", "", "lo wo", "rld"];
    assert_eq!(body_edit_chunks("append:!", &parts), "hello world!");
    assert_eq!(body_edit_chunks("prepend:>", &parts), ">hello world");
    assert_eq!(body_edit_chunks("replace:bye", &parts), "bye");
    // Reads the whole body (a range spanning the chunks), changes nothing.
    assert_eq!(body_edit_chunks("buffer", &parts), "hello world");
}

#[test]
fn set_buffer_bytes_prepends_appends_and_replaces() {
    assert_eq!(body_edit("append:-end", "hello"), "hello-end");
    assert_eq!(body_edit("prepend:start-", "hello"), "start-hello");
    assert_eq!(body_edit("replace:bye", "hello"), "bye");
}

#[test]
fn shared_data_metrics_and_wasi() {
    let mut sp = spec(
        "shared",
        fx::HOSTCALLS,
        r#"{"shared_counter": true, "metrics": true, "wasi": true}"#,
    );
    sp.vm_id = "vm-shared-test".into();
    sp.env = vec![("WEFT_FIXTURE_ENV".into(), "from-config".into())];
    let logs = Arc::new(Mutex::new(Vec::new()));
    sp.log_capture = Some(logs.clone());
    let p = load(sp);
    for expected in 1..=3 {
        let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
        request(&mut s, "/x");
        s.on_request_headers(true).unwrap();
        s.data().response_headers.add(":status", b"200").unwrap();
        s.on_response_headers(true).unwrap();
        let h = s.data().response_headers.clone();
        assert_eq!(header(&h, "x-hits"), Some(expected.to_string()));
        assert_eq!(header(&h, "x-counter"), Some(expected.to_string()));
        assert_eq!(header(&h, "x-env").as_deref(), Some("from-config"));
        assert_eq!(header(&h, "x-random").map(|v| v.len()), Some(16));
        assert!(header(&h, "x-time").unwrap().parse::<u64>().unwrap() > 1_600_000_000_000_000_000);
    }
    let metrics = engine().shared().all_metrics();
    let counter = metrics
        .iter()
        .find(|m| m.plugin == "shared" && m.name == "hostcalls_requests")
        .unwrap();
    assert_eq!(counter.value(), 3);
    let hist = metrics
        .iter()
        .find(|m| m.plugin == "shared" && m.name == "hostcalls_sizes")
        .unwrap();
    assert_eq!(hist.count(), 3);
    let logs = logs.lock();
    assert!(
        logs.iter()
            .any(|(l, m)| *l == LogLevel::Info && !m.is_empty()),
        "stdout reached the log: {logs:?}"
    );
    assert!(
        logs.iter().any(|(l, _)| *l == LogLevel::Error),
        "stderr reached the log at error: {logs:?}"
    );
}

#[test]
fn a_plugin_rejecting_its_configuration_is_refused() {
    let err = Plugin::load(
        &engine(),
        spec("r", fx::HOSTCALLS, r#"{"reject": true}"#),
        Arc::new(NoCallouts),
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::ConfigureRejected(_)), "{err}");
    let err = Plugin::load(
        &engine(),
        spec("r", fx::CONFIGURE_FAILS, ""),
        Arc::new(NoCallouts),
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::ConfigureRejected(_)), "{err}");
}

#[test]
fn bad_modules_are_refused_with_the_reason() {
    let e = engine();
    let refuse =
        |path: &str| Plugin::load(&e, spec("bad", path, ""), Arc::new(NoCallouts)).unwrap_err();
    assert_eq!(refuse(fx::NO_ABI_MARKER), LoadError::NoAbiMarker);
    assert_eq!(
        refuse(fx::WRONG_ABI),
        LoadError::UnsupportedAbi("proxy_abi_version_9_9_9".into())
    );
    let link = refuse(fx::UNKNOWN_IMPORT);
    assert!(
        matches!(&link, LoadError::Link(m) if m.contains("proxy_definitely_not_a_function")),
        "{link}"
    );
    let mut garbage = PluginSpec::new("garbage", vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    garbage.configuration = Vec::new();
    assert_eq!(
        Plugin::load(&e, garbage, Arc::new(NoCallouts)).unwrap_err(),
        LoadError::NotWasm
    );
    let truncated = PluginSpec::new("truncated", b"\0asm\x01\0\0\0\x01\xff".to_vec());
    assert!(matches!(
        Plugin::load(&e, truncated, Arc::new(NoCallouts)).unwrap_err(),
        LoadError::Compile(_)
    ));
}

#[test]
fn bad_pointers_get_statuses_and_control_characters_never_reach_headers() {
    let p = load(spec("ptr", fx::BAD_POINTERS, ""));
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    s.on_request_headers(true).unwrap();
    let h = s.data().request_headers.clone();
    // 6 = InvalidMemoryAccess, 2 = BadArgument.
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(
            header(&h, &format!("x-status-{i}")).as_deref(),
            Some("6"),
            "call {i}: {h:?}"
        );
    }
    assert_eq!(
        header(&h, "x-status-3").as_deref(),
        Some("2"),
        "CR/LF in a value is refused"
    );
    assert!(h.get("x-inject").is_none());
    assert!(
        h.iter()
            .all(|(_, v)| !v.contains(&b'\r') && !v.contains(&b'\n'))
    );
}

#[test]
fn a_trap_discards_the_instance_and_reload_replaces_it() {
    let mut sp = spec("trap", fx::TRAP, "");
    sp.failure_policy = FailurePolicy::Reload;
    sp.reload.backoff = Duration::ZERO;
    let p = load(sp);
    for round in 0..3 {
        let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
        request(&mut s, "/");
        let f = s.on_request_headers(true).unwrap_err();
        assert!(matches!(f, Failure::Trap(_)), "round {round}: {f}");
        assert!(
            s.on_response_headers(true).is_err(),
            "a trapped instance is never reused"
        );
    }
    assert_eq!(p.stats.traps.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(
        p.stats.replaced.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn reload_policy_quarantines_after_too_many_failures() {
    let mut sp = spec("q", fx::TRAP, "");
    sp.reload = ReloadPolicy {
        backoff: Duration::ZERO,
        max_failures: 2,
        window: Duration::from_secs(60),
    };
    let p = load(sp);
    for _ in 0..2 {
        let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
        request(&mut s, "/");
        assert!(s.on_request_headers(true).is_err());
    }
    assert_eq!(p.state(), "quarantined");
    assert!(matches!(
        Stream::new(&p, Arc::new(NoProperties)),
        Err(Failure::Unavailable(_))
    ));
}

#[test]
fn fail_open_and_fail_closed_plugins_stay_broken_until_reloaded() {
    for policy in [FailurePolicy::FailOpen, FailurePolicy::FailClosed] {
        let mut sp = spec("b", fx::TRAP, "");
        sp.failure_policy = policy;
        let p = load(sp);
        let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
        request(&mut s, "/");
        assert!(s.on_request_headers(true).is_err());
        assert!(p.is_broken());
        assert_eq!(p.state(), "broken");
        assert!(Stream::new(&p, Arc::new(NoProperties)).is_err());
    }
}

#[test]
fn an_infinite_loop_hits_the_cpu_deadline() {
    let mut sp = spec("loop", fx::BUSY_LOOP, "");
    sp.limits.cpu_deadline = Duration::from_millis(20);
    let p = load(sp);
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    let start = Instant::now();
    assert_eq!(s.on_request_headers(true).unwrap_err(), Failure::Deadline);
    // Bounded: a generous safety limit, not a timing assertion of the deadline itself.
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        p.stats.deadlines.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_memory_bomb_hits_the_memory_cap() {
    let mut sp = spec("bomb", fx::MEMORY_BOMB, "");
    sp.limits.memory_bytes = 16 * 1024 * 1024;
    let p = load(sp);
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    assert_eq!(
        s.on_request_headers(true).unwrap_err(),
        Failure::OutOfMemory
    );
    assert_eq!(
        p.stats
            .out_of_memory
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

struct ScriptedCallouts;

impl Embedder for ScriptedCallouts {
    fn has_cluster(&self, cluster: &str) -> bool {
        cluster == "authz"
    }
    fn http_call(
        &self,
        _call: HttpCallRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<HttpCallResponse>> + Send>> {
        Box::pin(async { None })
    }
}

#[test]
fn callouts_pause_then_resume_with_the_response() {
    let config = r#"{"callout": {"cluster": "authz", "path": "/check"}}"#;
    let p = Plugin::load(
        &engine(),
        spec("callout", fx::HOSTCALLS, config),
        Arc::new(ScriptedCallouts),
    )
    .unwrap();
    // Allowed.
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    assert_eq!(s.on_request_headers(true).unwrap(), Action::Pause);
    let calls = s.take_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "authz");
    assert_eq!(calls[0].headers.get(":path"), Some(&b"/check"[..]));
    let mut ok = HttpCallResponse::default();
    ok.headers.add(":status", b"200");
    ok.headers.add("x-auth-user", b"alice");
    s.on_http_call_response(&calls[0], Some(ok)).unwrap();
    let effects = s.take_effects();
    assert!(effects.resume_request);
    assert_eq!(
        header(&s.data().request_headers, "x-auth-user").as_deref(),
        Some("alice")
    );
    // Denied, and failed.
    for (resp, status) in [(Some(403u16), 403u16), (None, 503)] {
        let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
        request(&mut s, "/");
        s.on_request_headers(true).unwrap();
        let call = s.take_calls().remove(0);
        let r = resp.map(|code| {
            let mut r = HttpCallResponse::default();
            r.headers.add(":status", code.to_string().as_bytes());
            r
        });
        s.on_http_call_response(&call, r).unwrap();
        assert_eq!(s.take_effects().local_response.unwrap().status, status);
    }
}

/// A unary gRPC call: the request a plugin's `dispatch_grpc_call` becomes, and each outcome
/// delivered as Envoy delivers it (a message to `on_grpc_receive`, anything else to
/// `on_grpc_close` with `proxy_get_status`).
#[test]
fn a_grpc_call_is_framed_and_its_outcomes_reach_the_plugin() {
    let config = r#"{"grpc": {"cluster": "authz", "message": "ping", "timeout_ms": 1500}}"#;
    let p = Plugin::load(
        &engine(),
        spec("grpc", fx::ABI_PROBE, config),
        Arc::new(ScriptedCallouts),
    )
    .unwrap();
    let ok = || {
        let mut r = HttpCallResponse::default();
        r.headers.add(":status", b"200");
        r.headers.add("content-type", b"application/grpc");
        r.body = crate::grpc::frame(b"pong").into();
        r.trailers.add("grpc-status", b"0");
        r
    };
    let mut trailers_only = HttpCallResponse::default();
    trailers_only.headers.add(":status", b"200");
    trailers_only.headers.add("grpc-status", b"7");
    trailers_only.headers.add("grpc-message", b"denied");
    let cases = [
        (Some(ok()), "0", "pong", "<none>"),
        (Some(trailers_only), "7", "<none>", "denied{via_upstream}"),
        (None, "13", "<none>", "<none>"),
    ];
    for (reply, status, body, message) in cases {
        let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
        request(&mut s, "/");
        assert_eq!(s.on_request_headers(true).unwrap(), Action::Pause);
        let call = s.take_calls().remove(0);
        assert!(call.grpc);
        assert_eq!(call.cluster, "authz");
        let h = |n: &str| header(&call.headers, n);
        assert_eq!(h(":method").as_deref(), Some("POST"));
        assert_eq!(h(":path").as_deref(), Some("/weft.test.Echo/Say"));
        assert_eq!(h(":authority").as_deref(), Some("authz"));
        assert_eq!(h("content-type").as_deref(), Some("application/grpc"));
        assert_eq!(h("te").as_deref(), Some("trailers"));
        assert_eq!(h("grpc-timeout").as_deref(), Some("1500m"));
        assert_eq!(h("x-probe-md").as_deref(), Some("1"));
        assert_eq!(&call.body[..], &crate::grpc::frame(b"ping")[..]);
        s.on_http_call_response(&call, reply).unwrap();
        assert!(s.take_effects().resume_request, "resumed after {status}");
        s.data().response_headers.add(":status", b"200").unwrap();
        s.on_response_headers(true).unwrap();
        assert_eq!(probe_of(&mut s, "grpc-status").as_deref(), Some(status));
        assert_eq!(probe_of(&mut s, "grpc-body").as_deref(), Some(body));
        assert_eq!(probe_of(&mut s, "grpc-message").as_deref(), Some(message));
        s.finish();
    }
    // A gRPC stream: not implemented, an error the SDK returns (not a trap).
    let p = Plugin::load(
        &engine(),
        spec(
            "grpc-stream",
            fx::ABI_PROBE,
            r#"{"grpc": {"cluster": "authz", "stream": true}}"#,
        ),
        Arc::new(ScriptedCallouts),
    )
    .unwrap();
    let mut s = probe_stream(&p);
    assert!(!s.failed());
    assert_eq!(
        probe_of(&mut s, "grpc-stream").as_deref(),
        Some("Err(InternalFailure)")
    );
    s.finish();
    // A cluster that does not exist: `ParseFailure` (Envoy), reported by the SDK.
    let p = Plugin::load(
        &engine(),
        spec(
            "grpc-nope",
            fx::ABI_PROBE,
            r#"{"grpc": {"cluster": "nope"}}"#,
        ),
        Arc::new(ScriptedCallouts),
    )
    .unwrap();
    let mut s = probe_stream(&p);
    assert!(s.take_calls().is_empty());
    assert_eq!(
        probe_of(&mut s, "grpc-dispatch").as_deref(),
        Some("ParseFailure")
    );
    s.finish();
}

/// Callouts in flight are bounded per plugin: past `max_callouts_in_flight` a dispatch is
/// refused (`InternalFailure`, an error for the SDK, no trap) until one completes.
#[test]
fn callouts_in_flight_are_bounded_per_plugin() {
    let mut s = spec(
        "bounded",
        fx::ABI_PROBE,
        r#"{"callout": {"cluster": "authz"}}"#,
    );
    s.limits.max_callouts_in_flight = 1;
    let p = Plugin::load(&engine(), s, Arc::new(ScriptedCallouts)).unwrap();
    let mut first = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut first, "/");
    assert_eq!(first.on_request_headers(true).unwrap(), Action::Pause);
    let call = first.take_calls().remove(0);
    // The first call is in flight: the second stream's dispatch is refused.
    let mut second = probe_stream(&p);
    assert!(second.take_calls().is_empty());
    assert_eq!(
        probe_of(&mut second, "callout-dispatch").as_deref(),
        Some("InternalFailure")
    );
    second.finish();
    // Delivered and dropped: the next one goes out.
    let mut ok = HttpCallResponse::default();
    ok.headers.add(":status", b"200");
    first.on_http_call_response(&call, Some(ok)).unwrap();
    drop(call);
    first.finish();
    let mut third = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut third, "/");
    assert_eq!(third.on_request_headers(true).unwrap(), Action::Pause);
    assert_eq!(third.take_calls().len(), 1);
    third.finish();
}

#[test]
fn a_callout_to_an_unknown_cluster_is_refused() {
    let config = r#"{"callout": {"cluster": "nope"}}"#;
    let p = Plugin::load(
        &engine(),
        spec("nocluster", fx::HOSTCALLS, config),
        Arc::new(ScriptedCallouts),
    )
    .unwrap();
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    s.on_request_headers(true).unwrap();
    let reply = s.take_effects().local_response.unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(
        header(&reply.headers, "x-callout-error").as_deref(),
        Some("BadArgument")
    );
}

#[test]
fn ticks_fire_once_per_plugin_and_queues_wake_the_root() {
    let mut sp = spec("ticker", fx::HOSTCALLS, r#"{"tick_ms": 10, "queue": "q1"}"#);
    sp.vm_id = "vm-ticker".into();
    sp.instances = 3;
    let logs = Arc::new(Mutex::new(Vec::new()));
    sp.log_capture = Some(logs.clone());
    let p = load(sp);
    assert_eq!(p.healthy_instances(), 3);
    assert_eq!(p.tick_period(), Some(Duration::from_millis(10)));
    assert!(p.tick());
    assert!(p.tick());
    let (ticks, _) = engine().shared().get("vm-ticker", "ticks").unwrap();
    assert_eq!(ticks, b"2", "each tick ran once, not once per instance");
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/queued");
    s.on_request_headers(true).unwrap();
    let id = engine().shared().resolve_queue("vm-ticker", "q1").unwrap();
    p.queue_ready(id);
    assert!(
        logs.lock()
            .iter()
            .any(|(_, m)| m.contains("dequeued /queued"))
    );
}

/// Each worker thread's new streams go to its home instance (`affinity`) while it is free; a
/// thread that is no worker spreads its streams over the least-loaded instances.
#[test]
fn worker_threads_keep_to_their_home_instance() {
    let mut sp = spec("affine", fx::HEADER_ADDER, "v1");
    sp.instances = 2;
    let p = load(sp);
    let on_worker = |index: Option<usize>| {
        let p = p.clone();
        std::thread::spawn(move || {
            if let Some(i) = index {
                crate::affinity::enter_worker(i);
            }
            // Four streams open at once on this thread.
            let streams: Vec<Stream> = (0..4)
                .map(|_| Stream::new(&p, Arc::new(NoProperties)).unwrap())
                .collect();
            let ids: Vec<u64> = streams.iter().map(Stream::instance_id).collect();
            for mut s in streams {
                s.finish();
            }
            ids
        })
        .join()
        .unwrap()
    };
    let first = on_worker(Some(0));
    let second = on_worker(Some(1));
    assert!(first.iter().all(|&id| id == first[0]), "{first:?}");
    assert!(second.iter().all(|&id| id == second[0]), "{second:?}");
    assert_ne!(first[0], second[0], "two workers, two instances");
    let elsewhere = on_worker(None);
    assert_eq!(
        elsewhere.iter().filter(|&&id| id == first[0]).count(),
        2,
        "least-loaded: {elsewhere:?}"
    );
}

#[test]
fn the_module_cache_round_trips() {
    let dir = std::env::temp_dir().join(format!("weft-cache-test-{}", std::process::id()));
    let e = WasmEngine::new(EngineOptions {
        cache_dir: Some(dir.clone()),
        ..EngineOptions::default()
    })
    .unwrap();
    let bytes = fx::bytes(fx::HEADER_ADDER);
    let (_, sha) = e.compile(&bytes).unwrap();
    let entries = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(entries, 1);
    let (_, sha2) = e.compile(&bytes).unwrap();
    assert_eq!(sha, sha2);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn add_appends_to_existing_values() {
    let p = load(spec(
        "adds",
        fx::HOSTCALLS,
        r#"{"add_request_header": ["x-order", "second"]}"#,
    ));
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    s.data().request_headers.add("x-order", b"first").unwrap();
    s.on_request_headers(true).unwrap();
    let values: Vec<String> = s
        .data()
        .request_headers
        .iter()
        .filter(|(k, _)| *k == "x-order")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(values, ["first", "second"]);
}

#[test]
fn the_remaining_host_functions_answer_as_specified() {
    let mut sp = spec("misc", fx::HOSTCALLS, r#"{"misc": true}"#);
    sp.log_level = LogLevel::Warn;
    let p = load(sp);
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/misc");
    s.data().request_headers.add("x-original", b"kept").unwrap();
    s.on_request_headers(true).unwrap();
    let h = s.data().request_headers.clone();
    assert_eq!(
        header(&h, "x-log-level").as_deref(),
        Some("3"),
        "proxy_get_log_level: warn"
    );
    assert_eq!(header(&h, "x-set-pairs").as_deref(), Some("ok"));
    assert_eq!(
        header(&h, "x-pairs").as_deref(),
        Some("set"),
        "set_header_map_pairs replaced the map"
    );
    assert_eq!(
        header(&h, "x-original").as_deref(),
        Some("kept"),
        "the pairs round-tripped"
    );
    assert_eq!(
        header(&h, "x-resolved-queue").as_deref(),
        Some("none"),
        "unknown queue: NOT_FOUND"
    );
    assert_eq!(header(&h, "x-get-status").as_deref(), Some("0"));
    assert_eq!(header(&h, "x-done").as_deref(), Some("ok"));
    assert!(s.take_effects().done, "proxy_done recorded");
}

#[test]
fn every_bound_answers_the_plugin_without_growing_host_memory() {
    let mut sp = spec("bounds", fx::BOUNDS_ABUSE, "");
    sp.vm_id = "bounds-abuse".into();
    sp.limits.max_shared_data_bytes = 100_000;
    sp.limits.log_lines_per_second = 5;
    let capture: crate::plugin::LogCapture = Arc::default();
    sp.log_capture = Some(capture.clone());
    let p = load(sp);
    let limits = p.limits().clone();
    let mut s = Stream::new(&p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    let started = Instant::now();
    s.on_request_headers(true).unwrap();
    // A 2 GiB random_get is refused before anything is allocated or filled: the whole
    // callback, with its 200 000-byte writes, takes milliseconds.
    assert!(started.elapsed() < Duration::from_secs(2));
    let h = s.data().request_headers.clone();
    let status = |i: usize| header(&h, &format!("x-status-{i}")).unwrap_or_default();
    // WASI errno: 28 = EINVAL, 21 = EFAULT. Proxy-wasm: 2 = BadArgument.
    let expected = [
        (0, "28", "2 GiB random_get"),
        (1, "0", "32-byte random_get"),
        (2, "21", "out-of-bounds random_get"),
        (3, "0", "200 000 bytes to stdout"),
        (4, "28", "2^31 - 1 iovecs"),
        (5, "0", "a 200 000-byte log line"),
        (6, "2", "2 GiB shared-data value"),
        (7, "2", "shared data past max_shared_data_bytes"),
        (8, "0", "small shared data"),
        (9, "2", "queue item past max_queue_item_bytes"),
        (10, "0", "small queue item"),
        (11, "50", "every flood line answered OK"),
    ];
    for (i, want, what) in expected {
        assert_eq!(status(i), want, "call {i} ({what}): {h:?}");
    }
    assert!(engine().shared().get("bounds-abuse", "big").is_none());
    assert!(engine().shared().get("bounds-abuse", "huge").is_none());
    assert_eq!(
        engine().shared().get("bounds-abuse", "small").unwrap().0,
        b"v"
    );
    // Lines were cut to max_log_line_bytes (plus the marker), and the flood was rate limited:
    // the burst of 5 lines lets the stdout line, the log line and 3 flood lines through.
    let logs = capture.lock().clone();
    assert_eq!(
        logs.len(),
        5,
        "{:?}",
        logs.iter().map(|l| l.1.len()).collect::<Vec<_>>()
    );
    let marker = "…[truncated";
    assert!(
        logs[0]
            .1
            .starts_with(&"a".repeat(limits.max_log_line_bytes))
    );
    assert!(logs[0].1.contains(marker), "stdout line cut");
    assert!(logs[1].1.contains(&format!(
        "{marker} {} bytes]",
        200_000 - limits.max_log_line_bytes
    )));
    assert!(
        logs.iter()
            .all(|(_, l)| l.len() <= limits.max_log_line_bytes + 40)
    );
    assert_eq!(p.logs_dropped(), 47);
}

#[test]
fn reload_backoff_saturates_instead_of_overflowing() {
    use crate::plugin::{MAX_BACKOFF, backoff};
    assert_eq!(
        backoff(Duration::from_millis(100), 1),
        Duration::from_millis(100)
    );
    assert_eq!(
        backoff(Duration::from_millis(100), 3),
        Duration::from_millis(400)
    );
    assert_eq!(
        backoff(Duration::from_millis(100), u32::MAX),
        Duration::from_millis(25_600)
    );
    // Duration * 256 overflows for a first back-off this large; it used to panic.
    assert_eq!(backoff(Duration::MAX, 9), MAX_BACKOFF);
    assert_eq!(
        backoff(Duration::from_secs(u64::MAX / 100), 20),
        MAX_BACKOFF
    );
}

/// The `x-probe-<key>` value a probe stream reports in its response headers.
fn probe_of(s: &mut Stream, key: &str) -> Option<String> {
    header(&s.data().response_headers, &format!("x-probe-{key}"))
}

fn probe_stream(p: &Arc<Plugin>) -> Stream {
    let mut s = Stream::new(p, Arc::new(NoProperties)).unwrap();
    request(&mut s, "/");
    assert_eq!(s.on_request_headers(true).unwrap(), Action::Continue);
    s.data().response_headers.add(":status", b"200").unwrap();
    assert_eq!(s.on_response_headers(true).unwrap(), Action::Continue);
    s
}

#[test]
fn plugins_sharing_a_vm_id_share_one_vm_and_leave_it_cleanly() {
    let shared = |name: &str| {
        let mut s = spec(name, fx::ABI_PROBE, r#"{"vm_info":true}"#);
        s.vm_id = "shared-unit".into();
        s.share_vm = true;
        s
    };
    let one = load(shared("one"));
    let two = load(shared("two"));
    assert!(Arc::ptr_eq(&one.vm, &two.vm), "one VM for both");
    assert_ne!(one.root, two.root, "one root context per plugin");
    // Not shared without `share_vm`, nor with another `vm_id`.
    let mut own = shared("own");
    own.share_vm = false;
    let own = load(own);
    assert!(!Arc::ptr_eq(&own.vm, &one.vm));
    for p in [&one, &two] {
        let mut s = probe_stream(p);
        assert_eq!(probe_of(&mut s, "root-contexts").as_deref(), Some("2"));
        assert_eq!(probe_of(&mut s, "plugin-name"), Some(p.name.clone()));
        s.finish();
    }
    let mut s = probe_stream(&own);
    assert_eq!(probe_of(&mut s, "root-contexts").as_deref(), Some("1"));
    s.finish();
    // A new generation of `two` joins the VM; the old one's root context ends with it.
    let two_again = load(shared("two"));
    assert!(Arc::ptr_eq(&two_again.vm, &one.vm));
    drop(two);
    assert_eq!(one.vm.members.lock().len(), 2);
    let mut s = probe_stream(&two_again);
    assert_eq!(probe_of(&mut s, "root-contexts").as_deref(), Some("3"));
    s.finish();
    let mut s = probe_stream(&one);
    assert_eq!(probe_of(&mut s, "plugin-name").as_deref(), Some("one"));
    s.finish();
}

#[test]
fn module_cache_entries_are_trusted_only_when_private_to_this_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("weft-cache-trust-{}", std::process::id()));
    let e = WasmEngine::new(EngineOptions {
        cache_dir: Some(dir.clone()),
        ..EngineOptions::default()
    })
    .unwrap();
    let bytes = fx::bytes(fx::HEADER_ADDER);
    e.compile(&bytes).unwrap();
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // As Weft creates them: directory 0700, entry 0600.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&entry), 0o600);
    assert_eq!(crate::engine::trusted_cache_entry(&entry), Ok(()));
    // A directory others can write to is not trusted, nor a file others can write.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let why = crate::engine::trusted_cache_entry(&entry).unwrap_err();
    assert!(why.contains("directory") && why.contains("777"), "{why}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    let why = crate::engine::trusted_cache_entry(&entry).unwrap_err();
    assert!(why.contains("file") && why.contains("666"), "{why}");
    // The untrusted entry is not loaded: the module is compiled again, and still works.
    let (_, sha) = e.compile(&bytes).unwrap();
    assert_eq!(sha.len(), 64);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn two_runtimes_with_the_same_vm_id_share_nothing() {
    let runtime = || {
        WasmRuntime::new(EngineOptions {
            cache_dir: None,
            ..EngineOptions::default()
        })
        .unwrap()
    };
    let (a, b) = (runtime(), runtime());
    let plugin = |rt: &WasmRuntime| {
        let mut sp = spec("iso", fx::HOSTCALLS, r#"{"tick_ms": 10, "queue": "q-iso"}"#);
        sp.vm_id = "vm-iso".into();
        Plugin::load(rt, sp, Arc::new(NoCallouts)).unwrap()
    };
    let (pa, pb) = (plugin(&a), plugin(&b));
    assert!(pa.tick());
    assert!(pa.tick());
    assert_eq!(a.shared().get("vm-iso", "ticks").unwrap().0, b"2");
    assert!(
        b.shared().get("vm-iso", "ticks").is_none(),
        "the other runtime's shared data is untouched"
    );
    assert!(pb.tick());
    assert_eq!(b.shared().get("vm-iso", "ticks").unwrap().0, b"1");
    assert_eq!(a.shared().get("vm-iso", "ticks").unwrap().0, b"2");
    // Each runtime has its own queue registry.
    assert!(a.shared().resolve_queue("vm-iso", "q-iso").is_some());
    assert_ne!(
        a.shared().resolve_queue("vm-iso", "q-iso").map(|_| "a"),
        runtime()
            .shared()
            .resolve_queue("vm-iso", "q-iso")
            .map(|_| "a"),
    );
}
