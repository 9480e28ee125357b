use super::*;
use crate::config::Config;

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Headers {
    let mut headers = h(&[
        (":method", method),
        (":scheme", "http"),
        (":authority", "example.com"),
        (":path", path),
    ]);
    headers.extend(h(extra));
    headers
}

fn rules(json: serde_json::Value) -> Vec<Rule> {
    Config::parse(serde_json::json!({ "rules": json }).to_string().as_bytes())
        .expect("valid rules")
        .rules
}

fn props(name: &str) -> Option<String> {
    match name {
        "source.address" => Some("10.0.0.1:4444".into()),
        "request.path" => Some("/orig?q=1".into()),
        "evil" => Some("a\r\nx-injected: 1".into()),
        _ => None,
    }
}

/// Runs the request phase; returns (matched, report).
fn run(rules: &[Rule], headers: &mut Headers) -> (Vec<bool>, Report) {
    let mut report = Report::default();
    let mut p = props;
    let mut resolver = Resolver {
        property: &mut p,
        request_headers: None,
    };
    let matched = apply_request(rules, headers, &mut resolver, &mut report);
    (matched, report)
}

fn run_response(
    rules: &[Rule],
    matched: &[bool],
    request: &Headers,
    headers: &mut Headers,
) -> Report {
    let mut report = Report::default();
    let mut p = props;
    let mut resolver = Resolver {
        property: &mut p,
        request_headers: Some(request),
    };
    apply_response(rules, matched, headers, &mut resolver, &mut report);
    report
}

fn values(headers: &Headers, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn set_add_remove_rename_in_order() {
    let r = rules(serde_json::json!([{
        "request": {
            "rename": [{"from": "x-old", "to": "x-new"}],
            "remove": ["x-secret"],
            "set": {"x-one": "1"},
            "set_if_absent": {"x-tenant": "default", "x-keep": "replaced?"},
            "add": {"x-multi": "b"}
        }
    }]));
    let mut headers = request(
        "GET",
        "/",
        &[
            ("x-old", "o"),
            ("x-secret", "s1"),
            ("x-one", "a"),
            ("x-one", "b"),
            ("x-keep", "k"),
            ("x-multi", "a"),
            ("x-secret", "s2"),
        ],
    );
    let (matched, report) = run(&r, &mut headers);
    assert_eq!(matched, [true]);
    assert_eq!(report.applied, [0]);
    assert!(values(&headers, "x-old").is_empty());
    assert_eq!(values(&headers, "x-new"), ["o"]);
    assert!(values(&headers, "x-secret").is_empty());
    assert_eq!(values(&headers, "x-one"), ["1"]);
    assert_eq!(values(&headers, "x-tenant"), ["default"]);
    assert_eq!(values(&headers, "x-keep"), ["k"]);
    assert_eq!(values(&headers, "x-multi"), ["a", "b"]);
    // Pseudo-headers untouched and still first.
    assert_eq!(headers[0].0, ":method");
    assert_eq!(values(&headers, ":path"), ["/"]);
}

#[test]
fn templates_render_properties_and_headers_with_defaults() {
    let r = rules(serde_json::json!([{
        "request": {"set": {
            "x-client": "%{source.address}",
            "x-ua": "%{request.header.user-agent|unknown}",
            "x-path": "path=%{request.path} 100%%",
            "x-missing": "[%{no.such}]"
        }}
    }]));
    let mut headers = request("GET", "/a", &[]);
    run(&r, &mut headers);
    assert_eq!(values(&headers, "x-client"), ["10.0.0.1:4444"]);
    assert_eq!(values(&headers, "x-ua"), ["unknown"]);
    assert_eq!(values(&headers, "x-path"), ["path=/orig?q=1 100%"]);
    assert_eq!(values(&headers, "x-missing"), ["[]"]);
    let mut headers = request("GET", "/a", &[("user-agent", "curl/8")]);
    run(&r, &mut headers);
    assert_eq!(values(&headers, "x-ua"), ["curl/8"]);
}

#[test]
fn templates_see_the_headers_as_the_rule_started() {
    // The value is rendered before the same rule removes its source, and later rules see the
    // earlier rules' changes.
    let r = rules(serde_json::json!([
        {"request": {"remove": ["x-user"], "set": {"x-copy": "%{request.header.x-user}"}}},
        {"request": {"set": {"x-second": "%{request.header.x-copy}/%{request.header.x-user|gone}"}}}
    ]));
    let mut headers = request("GET", "/", &[("x-user", "alice")]);
    run(&r, &mut headers);
    assert_eq!(values(&headers, "x-copy"), ["alice"]);
    assert_eq!(values(&headers, "x-second"), ["alice/gone"]);
}

#[test]
fn invalid_rendered_values_are_skipped_and_reported() {
    let r = rules(serde_json::json!([{
        "request": {"set": {"x-evil": "%{evil}", "x-fine": "ok"},
                    "add": {"x-long": "%{request.header.x-big}"}}
    }]));
    let big = "a".repeat(MAX_VALUE_BYTES + 1);
    let mut headers = request("GET", "/", &[("x-big", &big)]);
    let (_, report) = run(&r, &mut headers);
    assert!(values(&headers, "x-evil").is_empty());
    assert!(values(&headers, "x-long").is_empty());
    assert_eq!(values(&headers, "x-fine"), ["ok"]);
    assert_eq!(
        report.invalid,
        [(0, "x-evil".to_owned()), (0, "x-long".to_owned())]
    );
    assert!(!headers.iter().any(|(k, _)| k == "x-injected"));
}

/// Method, path, extra headers, and which of the three rules should match.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], [bool; 3]);

#[test]
fn path_method_and_header_conditions() {
    let r = rules(serde_json::json!([
        {"name": "api", "when": {"paths": ["/api/*", "*.json"], "methods": ["get"]},
         "request": {"set": {"x-api": "1"}}},
        {"name": "re", "when": {"path_regex": "/v[0-9]+/items"}, "request": {"set": {"x-re": "1"}}},
        {"name": "hdr", "when": {"headers": [
            {"name": "x-env", "exact": "prod"},
            {"name": "user-agent", "prefix": "curl/"},
            {"name": "x-debug", "present": true, "invert": true},
            {"name": "x-tenant", "regex": "t-[a-z]+"}
        ]}, "request": {"set": {"x-hdr": "1"}}}
    ]));
    let cases: &[Case<'_>] = &[
        ("GET", "/api/x?y=1", &[], [true, false, false]),
        ("get", "/data.json", &[], [true, false, false]),
        ("POST", "/api/x", &[], [false, false, false]),
        ("GET", "/apix", &[], [false, false, false]),
        ("GET", "/v2/items?x", &[], [false, true, false]),
        ("GET", "/v2/items/1", &[], [false, false, false]),
        (
            "GET",
            "/",
            &[
                ("x-env", "prod"),
                ("user-agent", "curl/8"),
                ("x-tenant", "t-abc"),
            ],
            [false, false, true],
        ),
        (
            "GET",
            "/",
            &[
                ("x-env", "prod"),
                ("user-agent", "curl/8"),
                ("x-tenant", "t-abc"),
                ("x-debug", "1"),
            ],
            [false, false, false],
        ),
        (
            "GET",
            "/",
            &[
                ("x-env", "prod"),
                ("user-agent", "curl/8"),
                ("x-tenant", "t-ABC"),
            ],
            [false, false, false],
        ),
        (
            "GET",
            "/",
            &[
                ("x-env", "dev"),
                ("x-env", "prod"),
                ("user-agent", "curl/8"),
                ("x-tenant", "t-a"),
            ],
            [false, false, true],
        ),
    ];
    for (method, path, extra, want) in cases {
        let mut headers = request(method, path, extra);
        let (matched, report) = run(&r, &mut headers);
        assert_eq!(matched, want, "{method} {path} {extra:?}");
        assert_eq!(values(&headers, "x-api").len() == 1, want[0]);
        assert_eq!(values(&headers, "x-re").len() == 1, want[1]);
        assert_eq!(values(&headers, "x-hdr").len() == 1, want[2]);
        assert_eq!(report.applied.len(), want.iter().filter(|b| **b).count());
    }
}

#[test]
fn long_inputs_do_not_match_regexes() {
    let r = rules(serde_json::json!([
        {"when": {"path_regex": "/a*"}, "request": {"set": {"x-hit": "1"}}},
        {"when": {"headers": [{"name": "x-v", "regex": "a*"}]}, "request": {"set": {"x-hit2": "1"}}}
    ]));
    let long_path = format!("/{}", "a".repeat(MAX_REGEX_INPUT + 1));
    let long_value = "a".repeat(MAX_REGEX_INPUT + 1);
    let mut headers = request("GET", &long_path, &[("x-v", &long_value)]);
    let (matched, _) = run(&r, &mut headers);
    assert_eq!(matched, [false, false]);
}

#[test]
fn path_rewrites_keep_the_query() {
    let r = rules(serde_json::json!([
        {"when": {"paths": ["/old/*"]}, "path": {"replace_prefix": {"from": "/old/", "to": "/new/"}}},
        {"when": {"paths": ["/u/*"]}, "path": {"regex": {"pattern": "^/u/([0-9]+)$", "substitution": "/users/$1"}}},
        {"when": {"paths": ["/t/*"]}, "path": {"set": "/tmpl%{request.header.x-sfx|}?from=t"}},
        {"when": {"paths": ["/drop/*"]}, "path": {"replace_prefix": {"from": "/drop", "to": "/"}, "keep_query": false}}
    ]));
    let cases = [
        ("/old/a/b?x=1&y=2", "/new/a/b?x=1&y=2"),
        ("/old/", "/new/"),
        ("/u/42?v=1", "/users/42?v=1"),
        ("/u/abc", "/u/abc"),
        ("/t/x?q=1", "/tmpl?from=t&q=1"),
        ("/drop/x?secret=1", "//x"),
        ("/other?x", "/other?x"),
    ];
    for (from, to) in cases {
        let mut headers = request("GET", from, &[]);
        let (_, report) = run(&r, &mut headers);
        assert_eq!(values(&headers, ":path"), [to], "{from}");
        assert!(report.invalid.is_empty());
    }
}

#[test]
fn a_path_that_renders_invalid_is_left_alone() {
    let r = rules(serde_json::json!([
        {"path": {"set": "/%{request.header.x-p}"}}
    ]));
    let mut headers = request("GET", "/a?b", &[("x-p", "with space")]);
    let (_, report) = run(&r, &mut headers);
    assert_eq!(values(&headers, ":path"), ["/a?b"]);
    assert_eq!(report.invalid, [(0, ":path".to_owned())]);
}

#[test]
fn authority_rewrite() {
    let r = rules(serde_json::json!([
        {"authority": "%{request.header.x-target|default.svc}:8080"}
    ]));
    let mut headers = request("GET", "/", &[]);
    run(&r, &mut headers);
    assert_eq!(values(&headers, ":authority"), ["default.svc:8080"]);
    let mut headers = request("GET", "/", &[("x-target", "evil/path")]);
    let (_, report) = run(&r, &mut headers);
    assert_eq!(values(&headers, ":authority"), ["example.com"]);
    assert_eq!(report.invalid, [(0, ":authority".to_owned())]);
}

#[test]
fn response_ops_follow_the_request_match_and_status() {
    let r = rules(serde_json::json!([
        {"when": {"paths": ["/api/*"]}, "response": {
            "set": {"x-path": "%{request.header.x-id|none} %{response.header.content-type}"},
            "remove": ["server"], "rename": [{"from": "x-upstream", "to": "x-origin"}],
            "add": {"x-add": "2"}
        }},
        {"when": {"status": ["5xx", 404]}, "response": {"set": {"cache-control": "no-store"}}}
    ]));
    let mut req = request("GET", "/api/x", &[("x-id", "abc")]);
    let (matched, _) = run(&r, &mut req);
    assert_eq!(matched, [true, true]);
    let mut resp = h(&[
        (":status", "200"),
        ("content-type", "text/plain"),
        ("server", "up"),
        ("x-upstream", "u"),
        ("x-add", "1"),
    ]);
    let report = run_response(&r, &matched, &req, &mut resp);
    assert!(report.applied.is_empty(), "counted in the request phase");
    assert_eq!(values(&resp, "x-path"), ["abc text/plain"]);
    assert!(values(&resp, "server").is_empty());
    assert_eq!(values(&resp, "x-origin"), ["u"]);
    assert_eq!(values(&resp, "x-add"), ["1", "2"]);
    assert!(
        values(&resp, "cache-control").is_empty(),
        "200 is not 5xx/404"
    );
    for (status, hit) in [("503", true), ("404", true), ("403", false)] {
        let mut resp = h(&[(":status", status)]);
        run_response(&r, &matched, &req, &mut resp);
        assert_eq!(values(&resp, "cache-control").len() == 1, hit, "{status}");
    }
    // The request did not match rule 0: its response ops are skipped.
    let mut resp = h(&[(":status", "200"), ("server", "up")]);
    run_response(&r, &[false, true], &req, &mut resp);
    assert_eq!(values(&resp, "server"), ["up"]);
    // No request phase at all (e.g. a local reply): nothing matched.
    let mut resp = h(&[(":status", "503")]);
    run_response(&r, &[], &req, &mut resp);
    assert!(values(&resp, "cache-control").is_empty());
}

#[test]
fn header_helpers() {
    let mut headers = h(&[("a", "1"), ("B", "2"), ("a", "3")]);
    set(&mut headers, "A", b"x".to_vec());
    assert_eq!(headers, h(&[("a", "x"), ("B", "2")]));
    assert_eq!(get_str(&headers, "b").as_deref(), Some("2"));
    assert!(valid_value("tab\tok"));
    assert!(!valid_value("nul\0"));
    assert!(!valid_value("cr\r"));
    assert!(!valid_value("del\u{7f}"));
    assert!(valid_path("/a?b=c"));
    assert!(!valid_path("a"));
    assert!(!valid_path("/a#f"));
    assert!(!valid_path("/a b"));
    assert!(valid_authority("a.b:80"));
    assert!(!valid_authority(""));
    assert!(!valid_authority("a@b"));
}

#[test]
fn non_utf8_values_survive_untouched() {
    let r = rules(serde_json::json!([{"request": {"set": {"x-a": "1"}}}]));
    let mut headers = request("GET", "/", &[]);
    headers.push(("x-bin".into(), vec![0xff, 0xfe]));
    run(&r, &mut headers);
    assert_eq!(get(&headers, "x-bin"), Some(&[0xff, 0xfe][..]));
}
