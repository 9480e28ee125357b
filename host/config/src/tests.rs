use super::*;

const GOOD: &str = r#"
admin:
  address: 127.0.0.1:15000
listeners:
  - name: ingress
    address: 127.0.0.1:10000
    virtual_hosts:
      - name: api
        domains: ["api.example.com", "*.api.example.com"]
        routes:
          - name: users
            match:
              path: { prefix: /users }
              headers: [{ name: x-canary, exact: "1" }]
            route: { cluster: users, prefix_rewrite: / }
          - match: { path: { exact: /old } }
            redirect: { path: /new, response_code: 308 }
          - direct_response: { status: 204 }
  - name: db
    address: 127.0.0.1:10001
    protocol: tcp
    tcp: { cluster: users }
clusters:
  - name: users
    lb_policy: least_request
    endpoints:
      - address: 127.0.0.1:8080
      - address: localhost:8081
        weight: 3
"#;

#[test]
fn a_good_config_parses_with_defaults() {
    let c = parse(GOOD, "good.yaml").expect("valid");
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].http.max_request_headers, 100);
    assert_eq!(c.clusters[0].endpoints[1].weight, 3);
    assert_eq!(
        c.clusters[0].connect_timeout,
        std::time::Duration::from_secs(5)
    );
}

#[test]
fn an_unknown_field_names_file_line_and_path() {
    let text = "listeners:\n  - name: a\n    adress: 127.0.0.1:1\n";
    let err = parse(text, "bad.yaml").unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(p.location.map(|l| l.line), Some(3));
    assert!(
        p.message.contains("unknown field `adress`"),
        "{}",
        p.message
    );
    assert!(
        err.to_string()
            .starts_with("bad.yaml: 1 configuration error"),
        "{err}"
    );
    assert!(err.to_string().contains("bad.yaml:3:"), "{err}");
}

#[test]
fn a_wrong_type_names_the_field_path() {
    let text = "clusters:\n  - name: c\n    endpoints: []\n    connect_timeout: soon\n";
    let err = parse(text, "t.yaml").unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(p.path, "clusters[0].connect_timeout");
    assert_eq!(p.location.map(|l| l.line), Some(4));
}

#[test]
fn every_semantic_problem_is_reported_with_its_location() {
    let text = r#"listeners:
  - name: l
    address: 127.0.0.1:1
    virtual_hosts:
      - name: v
        domains: ["*"]
        routes:
          - match: { path: { regex: "(" } }
            route: { cluster: missing }
          - redirect: { response_code: 200 }
            direct_response: { status: 200 }
clusters:
  - name: c
    endpoints:
      - address: "not an address"
        weight: 0
"#;
    let err = parse(text, "many.yaml").unwrap_err();
    let rendered: Vec<String> = err
        .problems()
        .iter()
        .map(|p| p.render("many.yaml"))
        .collect();
    let all = rendered.join("\n");
    assert!(all.contains("many.yaml:8:"), "{all}");
    assert!(
        all.contains(
            "listeners[0].virtual_hosts[0].routes[0].match.path.regex: invalid regular expression"
        ),
        "{all}"
    );
    assert!(
        all.contains("routes[0].route.cluster: unknown cluster `missing`"),
        "{all}"
    );
    assert!(all.contains("routes[1]: needs exactly one of"), "{all}");
    assert!(
        all.contains("routes[1].redirect.response_code: 200 is not one of"),
        "{all}"
    );
    assert!(all.contains("clusters[0].endpoints[0].address"), "{all}");
    assert!(
        all.contains("clusters[0].endpoints[0].weight: must be at least 1"),
        "{all}"
    );
    assert_eq!(err.problems().len(), 6, "{all}");
    // Sorted by position in the file.
    let lines: Vec<usize> = err
        .problems()
        .iter()
        .filter_map(|p| p.location.map(|l| l.line))
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
fn duplicates_and_cross_references_are_caught() {
    let text = r#"listeners:
  - name: a
    address: 127.0.0.1:15000
  - name: a
    address: 127.0.0.1:2
    protocol: tcp
clusters: []
"#;
    let err = parse(text, "d.yaml").unwrap_err();
    let all: Vec<String> = err
        .problems()
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    let all = all.join("\n");
    assert!(
        all.contains("listeners[0].address: address 127.0.0.1:15000 is already used"),
        "{all}"
    );
    assert!(
        all.contains("listeners[1].name: duplicate listener name"),
        "{all}"
    );
    assert!(all.contains("listeners[1].tcp: required"), "{all}");
}

#[test]
fn header_mutations_refuse_control_characters_and_hop_by_hop_names() {
    let text = r#"listeners:
  - name: l
    address: 127.0.0.1:1
    virtual_hosts:
      - name: v
        domains: ["*"]
        routes:
          - direct_response: { status: 200 }
            response_headers:
              set: [{ name: transfer-encoding, value: chunked }, { name: x-ok, value: "a\r\nb" }]
"#;
    let err = parse(text, "h.yaml").unwrap_err();
    let all: Vec<String> = err
        .problems()
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    let all = all.join("\n");
    assert!(all.contains("response_headers.set[0].name"), "{all}");
    assert!(all.contains("response_headers.set[1].value"), "{all}");
}

#[test]
fn endpoint_addresses_parse() {
    assert_eq!(
        EndpointAddress::parse("127.0.0.1:80"),
        Ok(EndpointAddress::Ip("127.0.0.1:80".parse().unwrap()))
    );
    assert!(matches!(
        EndpointAddress::parse("[::1]:80"),
        Ok(EndpointAddress::Ip(_))
    ));
    assert_eq!(
        EndpointAddress::parse("svc.ns.svc.cluster.local:8080"),
        Ok(EndpointAddress::Dns {
            host: "svc.ns.svc.cluster.local".into(),
            port: 8080
        })
    );
    assert!(EndpointAddress::parse("nohost").is_err());
    assert!(EndpointAddress::parse("a b:80").is_err());
    assert!(EndpointAddress::parse("host:99999").is_err());
}

#[test]
fn a_yaml_syntax_error_has_a_location() {
    let err = parse("listeners: [\n", "s.yaml").unwrap_err();
    assert!(err.problems()[0].location.is_some(), "{err}");
}

/// The single problem `text` has, rendered as `weft validate` prints it.
fn only_problem(text: &str) -> String {
    let err = parse(text, "e.yaml").unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    let rendered = err.problems()[0].render("e.yaml");
    assert!(!rendered.contains(" at line "), "{rendered}");
    rendered
}

#[test]
fn parser_errors_are_file_line_column_path_message() {
    // A value of the wrong type: located at its key.
    assert_eq!(
        only_problem("clusters:\n  - name: c\n    endpoints: []\n    connect_timeout: soon\n"),
        "e.yaml:4:5: clusters[0].connect_timeout: invalid value: string \"soon\", expected a duration"
    );
    assert_eq!(
        only_problem(
            "listeners:\n  - name: l\n    address: 127.0.0.1:1\n    plugins: [{ name: p, disabled: yes }]\n"
        ),
        "e.yaml:4:36: listeners[0].plugins[0].disabled: invalid boolean (true or false expected)"
    );
    // An unknown field, in a flow mapping after non-ASCII text: columns count characters.
    assert_eq!(
        only_problem(
            "clusters:\n  - name: é\n    endpoints:\n      - { address: 127.0.0.1:1, wieght: 2 }\n"
        ),
        "e.yaml:4:33: clusters[0].endpoints[0].wieght: unknown field `wieght`, expected one of `address`, `weight`, `priority`, `labels`"
    );
    assert_eq!(
        only_problem("listeners:\n  - { name: éé, address: 127.0.0.1:1, bogus: 1 }\n"),
        "e.yaml:2:39: listeners[0].bogus: unknown field `bogus`, expected one of `name`, `address`, \
         `protocol`, `http`, `virtual_hosts`, `tcp`, `plugins`, `tls`, \
         `forward_client_cert_details`, `local_rate_limit`, `tracing`, `access_log`, \
         `max_connections`, `per_connection_buffer_limit_bytes`, `original_dst`, `bind_to_port`, \
         `filter_chains`, `outbound_traffic_policy`, `passthrough_cluster`, \
         `protocol_detection_timeout`, `traffic_direction`"
    );
    assert_eq!(
        only_problem("clusters:\n  - name: c\n    endpoints: []\n    lb_policy: fastest\n"),
        "e.yaml:4:16: clusters[0].lb_policy: unknown variant `fastest`, expected one of \
         `round_robin`, `random`, `least_request`, `ring_hash`"
    );
    // YAML syntax errors.
    assert_eq!(
        only_problem("listeners: [\n"),
        "e.yaml:1:12: listeners: unclosed bracket '['"
    );
    assert_eq!(
        only_problem("admin:\n  address: 1.2.3.4:5\n bad: x\n"),
        "e.yaml:3:2: while parsing a block mapping, did not find expected key"
    );
    // A repeated key, in a struct, at the top level, and in a map: located at the repetition.
    assert_eq!(
        only_problem("admin:\n  address: 127.0.0.1:1\n  address: 127.0.0.1:2\n"),
        "e.yaml:3:3: admin: duplicate mapping key `address` is not allowed here"
    );
    assert_eq!(
        only_problem("workers: 1\nworkers: 2\n"),
        "e.yaml:2:1: duplicate mapping key `workers` is not allowed here"
    );
    assert_eq!(
        only_problem("plugins:\n  - name: p\n    file: p.wasm\n    env:\n      A: x\n      A: y\n"),
        "e.yaml:6:7: plugins[0].env: duplicate mapping key `A` is not allowed here"
    );
    // Two documents.
    assert_eq!(
        only_problem("workers: 1\n---\nworkers: 2\n"),
        "e.yaml:3:1: only single YAML document expected but multiple found"
    );
}

#[test]
fn yaml_is_read_as_before() {
    // An empty file is the default configuration.
    assert_eq!(parse("", "e.yaml").expect("valid").listeners.len(), 0);
    assert_eq!(parse("# nothing\n", "e.yaml").expect("valid").workers, 0);
    // `<<` is not a merge key.
    let merge = "clusters:\n  - &c\n    name: c\n    endpoints: []\n  - <<: *c\n    name: d\n";
    assert!(only_problem(merge).starts_with("e.yaml:5:5: clusters[1].<<: unknown field `<<`"));
    // Aliases work.
    let alias = "clusters:\n  - name: c\n    endpoints: &e [{ address: 127.0.0.1:1 }]\n  - name: d\n    endpoints: *e\n";
    assert_eq!(
        parse(alias, "e.yaml").expect("valid").clusters[1]
            .endpoints
            .len(),
        1
    );
    // Untyped plugin configuration: YAML 1.2 scalars, `yes`, `017` and `1_000` are strings.
    let plugin = "plugins:\n  - name: p\n    file: p.wasm\n    configuration:\n      \
                  {a: yes, b: 017, c: 1_000, d: 0x10, e: ~, f: 1.5, g: '1', h: true, i: [on]}\n";
    let c = parse(plugin, "e.yaml").expect("valid");
    assert_eq!(
        c.plugins[0].configuration,
        Some(serde_json::json!({
            "a": "yes", "b": "017", "c": "1_000", "d": 16, "e": null, "f": 1.5, "g": "1",
            "h": true, "i": ["on"]
        }))
    );
}

#[test]
fn mesh_tls_fields_parse_and_are_checked() {
    let good = r#"
identity:
  ca_address: 127.0.0.1:15012
  ca_trust_bundle_file: ca.pem
  bootstrap_token_file: token
  spiffe_id: spiffe://cluster.local/ns/a/sa/b
  output_dir: certs
listeners:
  - name: in
    address: 127.0.0.1:1
    forward_client_cert_details: append_forward
    tls:
      mode: permissive
      cert_file: certs/cert.pem
      key_file: certs/key.pem
      trust_bundle_file: certs/bundle.pem
      min_version: TLSv1_3
      authorization:
        allow: [{ namespaces: [prod] }]
        deny: [{ principals: ["cluster.local/ns/prod/sa/banned"] }]
clusters:
  - name: c
    endpoints: [{ address: 127.0.0.1:2 }]
    tls: { cert_file: c.pem, key_file: k.pem, trust_bundle_file: b.pem, match_identities: ["spiffe://cluster.local/ns/a/*"] }
"#;
    let c = parse(good, "tls.yaml").expect("valid");
    let tls = c.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.mode, schema::TlsMode::Permissive);
    assert_eq!(tls.alpn, ["h2", "http/1.1"]);
    assert_eq!(c.identity.as_ref().map(|i| i.renew_fraction), Some(0.5));

    let bad = r#"
identity:
  ca_address: nowhere
  ca_trust_bundle_file: ""
  spiffe_id: cluster.local/ns/a
  output_dir: certs
  renew_fraction: 1.5
listeners:
  - name: in
    address: 127.0.0.1:1
    tls: { cert_file: "", key_file: k, trust_bundle_file: b, alpn: [spdy], trust_domain: "Bad TD", authorization: { allow: [{}], deny: [{ principals: ["a*b"] }] } }
  - name: t
    address: 127.0.0.1:3
    protocol: tcp
    tcp: { cluster: c }
    tls: { cert_file: c, key_file: k, trust_bundle_file: b }
clusters:
  - name: c
    endpoints: [{ address: 127.0.0.1:2 }]
    tls: { cert_file: c, key_file: k, trust_bundle_file: b, match_identities: [web] }
"#;
    let err = parse(bad, "bad.yaml").unwrap_err();
    let all = err.to_string();
    for expected in [
        "listeners[0].tls.cert_file: required",
        "listeners[0].tls.alpn[0]: `spdy` is not one of",
        "listeners[0].tls.trust_domain: `Bad TD` is not a trust domain",
        "listeners[0].tls.authorization.allow[0]: needs at least one of",
        "listeners[0].tls.authorization.deny[0].principals[0]: `a*b`",
        "listeners[1].tls: unimplemented: TLS on `protocol: tcp`",
        "clusters[0].tls.match_identities[0]: `web` is not a SPIFFE ID",
        "identity.ca_address",
        "identity.ca_trust_bundle_file: required",
        "identity.spiffe_id",
        "identity.renew_fraction: must be within 0.1..=0.9",
    ] {
        assert!(all.contains(expected), "missing `{expected}` in:\n{all}");
    }
}

const RESILIENT: &str = r#"
listeners:
  - name: edge
    address: 127.0.0.1:10000
    local_rate_limit: { max_tokens: 100, fill_interval: 1s }
    virtual_hosts:
      - name: api
        domains: ["*"]
        routes:
          - fault:
              delay: { fixed_delay: 5s, percentage: 10 }
              abort: { grpc_status: 14, percentage: 1.5 }
              headers: [{ name: x-chaos, present: true }]
            local_rate_limit: { max_tokens: 10, tokens_per_fill: 5, fill_interval: 100ms }
            route:
              weighted_clusters: [{ name: v1, weight: 90 }, { name: v2, weight: 10 }]
              retry_policy:
                attempts: 3
                per_try_timeout: 250ms
                retry_on: "5xx,reset,retriable-status-codes,unavailable,409"
                retriable_status_codes: [418]
                retry_back_off: { base_interval: 10ms, max_interval: 1s }
              request_mirror_policies:
                - { cluster: v2, percentage: 5 }
                - { cluster: v1, runtime_fraction: { default_value: { numerator: 25, denominator: TEN_THOUSAND } } }
clusters:
  - name: v1
    endpoints: [{ address: 127.0.0.1:8080 }]
    circuit_breakers: { max_requests: 100, max_retries: 10 }
    retry_budget: { budget_percent: 25, min_retry_concurrency: 5 }
    outlier_detection: { consecutive_5xx: 3, interval: 1s, base_ejection_time: 10s, max_ejection_percent: 50 }
    health_checks:
      - http: { path: /healthz, host: v1.local, expected_statuses: [200, "300-399"] }
        interval: 2s
        interval_jitter: 100ms
    panic_threshold: 30
  - name: v2
    endpoints: [{ address: 127.0.0.1:8081 }]
    health_checks: [{ tcp: {} }]
"#;

#[test]
fn resilience_settings_parse_with_istio_names_and_defaults() {
    let c = parse(RESILIENT, "ok.yaml").expect("valid");
    let r = c.listeners[0].virtual_hosts[0].routes[0]
        .route
        .as_ref()
        .unwrap();
    let retry = r.retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries, 3, "`attempts` is Istio's name");
    assert_eq!(retry.per_request_buffer_limit_bytes, 64 * 1024);
    assert_eq!(r.request_mirror_policies[0].effective_percentage(), 5.0);
    assert_eq!(r.request_mirror_policies[1].effective_percentage(), 0.25);
    let o = c.clusters[0].outlier_detection.as_ref().unwrap();
    assert_eq!(o.consecutive_gateway_errors, 0);
    assert_eq!(o.success_rate_stdev_factor, 1900);
    assert_eq!(c.clusters[1].panic_threshold, 50.0);
    assert_eq!(c.clusters[1].health_checks[0].unhealthy_threshold, 3);
    let ranges: Vec<_> = c.clusters[0].health_checks[0]
        .http
        .as_ref()
        .unwrap()
        .expected_statuses
        .iter()
        .map(|s| s.range().unwrap())
        .collect();
    assert_eq!(ranges, [(200, 200), (300, 399)]);
}

#[test]
fn bad_resilience_settings_are_refused_with_their_paths_and_lines() {
    let bad = RESILIENT
        .replace("percentage: 10 }", "percentage: 110 }")
        .replace(
            "attempts: 3",
            "attempts: 3\n                retry_on: \"5xx,sometimes\"",
        )
        .replace(
            "                retry_on: \"5xx,reset,retriable-status-codes,unavailable,409\"\n",
            "",
        )
        .replace("cluster: v2, percentage: 5", "cluster: v3, percentage: 5")
        .replace(
            "consecutive_5xx: 3,",
            "consecutive_5xx: 3, max_ejection_time: 1s,",
        )
        .replace(
            "[{ tcp: {} }]",
            "[{ tcp: {}, http: {}, healthy_threshold: 0 }]",
        )
        .replace(
            "max_requests: 100,",
            "max_pending_requests: 10, max_requests: 100,",
        )
        .replace("panic_threshold: 30", "panic_threshold: -1")
        .replace("max_tokens: 10,", "max_tokens: 0,");
    let err = parse(&bad, "bad.yaml").unwrap_err();
    let text = err.to_string();
    let r = "listeners[0].virtual_hosts[0].routes[0]";
    for expected in [
        format!("{r}.fault.delay.percentage: 110 is outside 0..=100"),
        format!("{r}.local_rate_limit.max_tokens: must be at least 1"),
        format!("{r}.route.retry_policy.retry_on: unknown retry condition `sometimes`"),
        format!("{r}.route.request_mirror_policies[0].cluster: unknown cluster `v3`"),
        "clusters[0].outlier_detection.max_ejection_time: must be at least `base_ejection_time`"
            .to_owned(),
        "clusters[0].circuit_breakers.max_pending_requests: has no effect without `max_connections`".to_owned(),
        "clusters[0].panic_threshold: -1 is outside 0..=100".to_owned(),
        "clusters[1].health_checks[0]: needs exactly one of `http`, `tcp`".to_owned(),
        "clusters[1].health_checks[0].healthy_threshold: must be at least 1".to_owned(),
    ] {
        assert!(text.contains(&expected), "missing `{expected}` in:\n{text}");
    }
    let p = err
        .problems()
        .iter()
        .find(|p| p.path.ends_with("fault.delay.percentage"))
        .unwrap();
    let line = bad
        .lines()
        .position(|l| l.contains("percentage: 110"))
        .unwrap()
        + 1;
    assert_eq!(p.location.map(|l| l.line), Some(line), "{text}");
}

#[test]
fn plugin_bounds_have_defaults_and_bad_values_are_refused_with_their_path() {
    let c = parse("plugins:\n  - name: p\n    file: p.wasm\n", "e.yaml").expect("valid");
    let p = &c.plugins[0];
    assert_eq!(p.max_random_bytes, 64 * 1024);
    assert_eq!(p.max_log_line_bytes, 4096);
    assert_eq!(p.max_fd_write_bytes, 64 * 1024);
    assert_eq!(p.log_lines_per_second, 100);
    assert_eq!(p.max_queue_item_bytes, 64 * 1024);
    assert_eq!(p.max_queue_bytes, 4 * 1024 * 1024);
    assert_eq!(p.max_shared_data_keys, 4096);
    assert_eq!(p.max_shared_data_bytes, 16 * 1024 * 1024);
    assert_eq!(p.max_callouts_in_flight, 1024);
    for (field, value) in [
        ("max_body_bytes", "0"),
        ("max_random_bytes", "0"),
        ("max_log_line_bytes", "10"),
        ("max_fd_write_bytes", "0"),
        ("log_lines_per_second", "0"),
        ("max_queue_item_bytes", "0"),
        ("max_queue_bytes", "10"),
        ("max_shared_data_keys", "0"),
        ("max_shared_data_bytes", "2000000000000"),
        ("max_callouts_in_flight", "0"),
    ] {
        let text = format!("plugins:\n  - name: p\n    file: p.wasm\n    {field}: {value}\n");
        let problem = only_problem(&text);
        assert!(
            problem.contains(&format!("plugins[0].{field}: must be")),
            "{field}: {problem}"
        );
    }
}

#[test]
fn hardening_limits_have_envoys_defaults_and_bad_values_name_their_field() {
    let c = parse(GOOD, "good.yaml").unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.per_connection_buffer_limit_bytes, 1024 * 1024);
    assert_eq!(l.max_connections, None);
    assert_eq!(
        l.http.stream_idle_timeout,
        std::time::Duration::from_secs(300)
    );
    assert_eq!(l.http.request_timeout, std::time::Duration::ZERO);
    assert_eq!(c.clusters[0].per_connection_buffer_limit_bytes, 1024 * 1024);
    assert_eq!(c.overload.max_rss_bytes, 0);
    let forward = c.listeners[0].virtual_hosts[0].routes[0]
        .route
        .as_ref()
        .unwrap();
    assert!(forward.upgrade_configs.is_empty());
    assert_eq!(forward.idle_timeout, None);

    let bad = GOOD
        .replace(
            "    address: 127.0.0.1:10000\n",
            "    address: 127.0.0.1:10000\n    max_connections: 0\n    per_connection_buffer_limit_bytes: 1000\n",
        )
        .replace(
            "route: { cluster: users, prefix_rewrite: / }",
            "route: { cluster: users, prefix_rewrite: /, idle_timeout: 1s, upgrade_configs: [{ upgrade_type: h2c }, { upgrade_type: \"not a token\" }, { upgrade_type: WebSocket }, { upgrade_type: websocket, enabled: false }] }",
        )
        .replace(
            "    lb_policy: least_request\n",
            "    lb_policy: least_request\n    per_connection_buffer_limit_bytes: 4294967296\n",
        )
        + "overload: { max_rss_bytes: 1000, refresh_interval: 0s }\n";
    let err = parse(&bad, "bad.yaml").unwrap_err();
    let all = err.to_string();
    for want in [
        "listeners[0].max_connections: must be at least 1",
        "listeners[0].per_connection_buffer_limit_bytes: 1000 is outside 69632..=2147483647",
        "routes[0].route.upgrade_configs[0].upgrade_type: h2c upgrades are always served",
        "routes[0].route.upgrade_configs[1].upgrade_type: `not a token` is not an HTTP token",
        "routes[0].route.upgrade_configs[3].upgrade_type: duplicate upgrade type `websocket`",
        "clusters[0].per_connection_buffer_limit_bytes: 4294967296 is outside 32768..=2147483647",
        "overload.max_rss_bytes: 1000 is less than 16 MiB",
        "overload.refresh_interval: must be within 10ms..=60s",
    ] {
        assert!(all.contains(want), "missing `{want}` in:\n{all}");
    }
    assert!(
        all.contains("bad.yaml:8:5: listeners[0].per_connection"),
        "errors are located: {all}"
    );
}

#[test]
fn buffer_limits_map_onto_hyper_and_h2_settings() {
    let mib = BufferLimit(1024 * 1024);
    assert_eq!(mib.http1_buf(69_632), 69_632);
    assert_eq!(mib.http1_buf(16 * 1024), 64 * 1024);
    assert_eq!(mib.h2_stream_window(), 1024 * 1024);
    assert_eq!(mib.h2_connection_window(), 1024 * 1024);
    assert_eq!(mib.h2_send_buf(), 64 * 1024);
    let small = BufferLimit(32 * 1024);
    assert_eq!(small.http1_buf(0), 8192);
    assert_eq!(
        small.h2_stream_window(),
        65_535,
        "never below the protocol's default"
    );
    assert_eq!(small.h2_send_buf(), 16 * 1024);
    let big = BufferLimit(64 * 1024 * 1024);
    assert_eq!(big.h2_stream_window(), 1024 * 1024);
    assert_eq!(big.h2_connection_window(), 64 * 1024 * 1024);
}

#[test]
fn telemetry_and_node_problems_name_file_and_field() {
    let text = "node:\n  namespace: \"\"\ntelemetry:\n  metrics:\n    overrides:\n      - match: { metric: REQUEST_COUNT }\n        tag_overrides:\n          request_protocol: { operation: REMOVE, value: x }\n          \"bad-name\": { value: v }\n          team: {}\n";
    let err = parse(text, "t.yaml").unwrap_err();
    let rendered: Vec<String> = err.problems().iter().map(|p| p.render("t.yaml")).collect();
    for expected in [
        "t.yaml:2:3: node.namespace: must be non-empty, without control characters",
        "telemetry.metrics.overrides[0].tag_overrides.request_protocol.value: REMOVE takes no value",
        "telemetry.metrics.overrides[0].tag_overrides.bad-name: not a Prometheus label name",
        "telemetry.metrics.overrides[0].tag_overrides.team.value: UPSERT needs a value",
    ] {
        assert!(
            rendered
                .iter()
                .any(|r| r.contains(expected) && r.starts_with("t.yaml:")),
            "{expected} in {rendered:#?}"
        );
    }
    // An unknown metric name is a schema error at its field.
    let bad =
        only_problem("telemetry:\n  metrics:\n    overrides: [{ match: { metric: REQUESTS } }]\n");
    assert!(
        bad.starts_with("e.yaml:3:") && bad.contains("telemetry.metrics.overrides[0].match.metric"),
        "{bad}"
    );
    // And a listener direction is Envoy's names only.
    let dir = only_problem(
        "listeners:\n  - { name: l, address: 127.0.0.1:1, traffic_direction: sideways }\n",
    );
    assert!(dir.contains("listeners[0].traffic_direction"), "{dir}");
}

#[test]
fn a_cluster_service_derives_its_name_and_namespace_from_a_kubernetes_host() {
    use crate::schema::ClusterService;
    let k8s = ClusterService {
        host: "reviews.prod.svc.cluster.local".into(),
        name: None,
        namespace: None,
    };
    assert_eq!((k8s.name(), k8s.namespace()), ("reviews", Some("prod")));
    let external = ClusterService {
        host: "api.example.com".into(),
        name: None,
        namespace: None,
    };
    assert_eq!((external.name(), external.namespace()), ("api", None));
    let explicit = ClusterService {
        host: "api.example.com".into(),
        name: Some("payments".into()),
        namespace: Some("billing".into()),
    };
    assert_eq!(
        (explicit.name(), explicit.namespace()),
        ("payments", Some("billing"))
    );
}
