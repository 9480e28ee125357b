//! Behaviour of `weft inject` beyond the goldens: the facts each annotation controls, the
//! errors (each naming its document and field), and idempotence on edited manifests.
#![expect(
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail loudly on unexpected input"
)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use weft_inject::{InjectError, Options, Outcome, inject};

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: prod}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: ANNOTATIONS
    spec:
      serviceAccountName: frontend
      containers:
        - {name: web, image: example/web:1, ports: [{containerPort: 8080}]}
";

fn deployment(annotations: &str) -> String {
    DEPLOYMENT.replace("ANNOTATIONS", annotations)
}

fn injected_spec(yaml: &str) -> PodSpec {
    let out = inject(yaml, &Options::default()).expect("inject").yaml;
    let d: Deployment = serde_saphyr::from_str(&out).expect("typed output");
    d.spec
        .and_then(|s| s.template.spec)
        .expect("pod spec in output")
}

fn init<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.init_containers
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no init container {name}"))
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn flag<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
    let args = c.args.as_deref().unwrap_or_default();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[test]
fn sidecar_is_native_and_capture_runs_first_as_root() {
    let spec = injected_spec(&deployment("{}"));
    let names: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["weft-init", "weft-proxy"]);
    let capture = init(&spec, "weft-init");
    assert_eq!(capture.restart_policy, None, "the capture step exits");
    let sc = capture.security_context.as_ref().expect("securityContext");
    assert_eq!((sc.run_as_user, sc.run_as_non_root), (Some(0), Some(false)));
    let caps = sc.capabilities.as_ref().and_then(|c| c.add.clone());
    assert_eq!(caps, Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]));
    assert_eq!(
        capture.args.as_ref().map(|a| a[0].as_str()),
        Some("iptables")
    );
    assert_eq!(flag(capture, "--proxy-uid"), Some("1337"));
    assert_eq!(flag(capture, "--proxy-port"), Some("15001"));
    assert_eq!(flag(capture, "--inbound-capture-port"), Some("15006"));

    let proxy = init(&spec, "weft-proxy");
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let sc = proxy.security_context.as_ref().expect("securityContext");
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1337), Some(1337)));
    for probe in [&proxy.readiness_probe, &proxy.startup_probe] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet");
        assert_eq!(get.path.as_deref(), Some("/healthz/ready"));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15021)
        );
    }
    assert_eq!(
        proxy.args.as_deref(),
        Some(
            &[
                "run".to_owned(),
                "--config".into(),
                "/etc/weft/weft.yaml".into()
            ][..]
        )
    );
    assert_eq!(
        env(proxy, "WEFT_SPIFFE_ID"),
        Some("spiffe://cluster.local/ns/prod/sa/frontend")
    );
    assert_eq!(env(proxy, "ISTIO_META_WORKLOAD_NAME"), Some("web"));
    assert_eq!(
        env(proxy, "ISTIO_META_OWNER"),
        Some("kubernetes://apis/apps/v1/namespaces/prod/deployments/web")
    );
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        ["weft-config", "weft-ca", "weft-certs", "weft-plugins"]
    );
}

#[test]
fn trust_domain_and_resources_come_from_the_options() {
    let options = Options {
        trust_domain: "mesh.example".into(),
        resources: weft_inject::ProxyResources {
            cpu: "10m".into(),
            memory: "32Mi".into(),
            cpu_limit: String::new(),
            memory_limit: "128Mi".into(),
        },
        ..Options::default()
    };
    let out = inject(&deployment("{}"), &options).expect("inject").yaml;
    let d: Deployment = serde_saphyr::from_str(&out).expect("typed");
    let spec = d.spec.and_then(|s| s.template.spec).expect("spec");
    let proxy = init(&spec, "weft-proxy");
    assert_eq!(
        env(proxy, "WEFT_SPIFFE_ID"),
        Some("spiffe://mesh.example/ns/prod/sa/frontend")
    );
    let r = proxy.resources.as_ref().expect("resources");
    let limits = r.limits.as_ref().expect("limits");
    assert!(!limits.contains_key("cpu"), "an empty limit is no limit");
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("128Mi"));
    assert_eq!(
        r.requests
            .as_ref()
            .and_then(|m| m.get("cpu"))
            .map(|q| q.0.as_str()),
        Some("10m")
    );
}

#[test]
fn each_traffic_annotation_reaches_its_flag() {
    let cases = [
        (
            "traffic.sidecar.weft.dev/excludeOutboundIPRanges",
            "10.0.0.0/8",
            "--outbound-ranges-exclude",
            "10.0.0.0/8",
        ),
        (
            "traffic.sidecar.weft.dev/includeOutboundIPRanges",
            "10.0.0.0/8 , fd00::/8",
            "--outbound-ranges",
            "10.0.0.0/8,fd00::/8",
        ),
        (
            "traffic.sidecar.weft.dev/excludeInboundPorts",
            "8081",
            "--inbound-ports-exclude",
            "15020,15021,15090,8081",
        ),
        (
            "traffic.sidecar.weft.dev/includeInboundPorts",
            "8080",
            "--inbound-ports",
            "8080",
        ),
        (
            "traffic.sidecar.weft.dev/excludeOutboundPorts",
            "3306",
            "--outbound-ports-exclude",
            "3306",
        ),
        (
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            "3306",
            "--outbound-ports-exclude",
            "3306",
        ),
    ];
    for (annotation, value, name, want) in cases {
        let spec = injected_spec(&deployment(&format!("{{{annotation}: \"{value}\"}}")));
        assert_eq!(
            flag(init(&spec, "weft-init"), name),
            Some(want),
            "{annotation}"
        );
    }
    // Absent: everything captured, nothing extra excluded.
    let spec = injected_spec(&deployment("{}"));
    let capture = init(&spec, "weft-init");
    assert_eq!(flag(capture, "--outbound-ranges"), Some("*"));
    assert_eq!(flag(capture, "--inbound-ports"), Some("*"));
    assert_eq!(flag(capture, "--outbound-ranges-exclude"), None);
    assert_eq!(flag(capture, "--outbound-ports-exclude"), None);
}

#[test]
fn weft_annotations_win_over_istio_ones() {
    let spec = injected_spec(&deployment(
        "{sidecar.weft.dev/proxyCPU: 300m, sidecar.istio.io/proxyCPU: 200m, sidecar.istio.io/proxyMemory: 99Mi}",
    ));
    let r = init(&spec, "weft-proxy")
        .resources
        .clone()
        .expect("resources");
    let requests = r.requests.expect("requests");
    assert_eq!(requests.get("cpu").map(|q| q.0.as_str()), Some("300m"));
    assert_eq!(requests.get("memory").map(|q| q.0.as_str()), Some("99Mi"));
}

#[test]
fn opt_out_leaves_the_document_byte_for_byte() {
    for a in [
        "{sidecar.weft.dev/inject: \"false\"}",
        "{sidecar.istio.io/inject: \"false\"}",
        "{sidecar.weft.dev/inject: \"no\"}",
    ] {
        let input = deployment(a);
        let r = inject(&input, &Options::default()).expect("inject");
        assert_eq!(r.yaml, input);
        let key = a
            .trim_start_matches('{')
            .split(':')
            .next()
            .unwrap_or_default();
        assert!(
            matches!(&r.outcomes[0].1, Outcome::Skipped(why) if why.contains(key)),
            "{:?} names {key}",
            r.outcomes[0].1
        );
    }
}

#[test]
fn editing_an_injected_manifest_and_injecting_again_applies_the_edit_once() {
    let first = inject(&deployment("{}"), &Options::default())
        .expect("inject")
        .yaml;
    let edited = first.replace(
        "      labels:\n        app: web\n",
        "      labels:\n        app: web\n        sidecar.istio.io/inject: \"true\"\n",
    );
    let edited = edited.replace(
        "sidecar.weft.dev/status:",
        "traffic.sidecar.weft.dev/excludeOutboundPorts: \"25\"\n        sidecar.weft.dev/status:",
    );
    assert_ne!(edited, first);
    let second = inject(&edited, &Options::default())
        .expect("re-inject")
        .yaml;
    let d: Deployment = serde_saphyr::from_str(&second).expect("typed");
    let spec = d.spec.and_then(|s| s.template.spec).expect("spec");
    assert_eq!(spec.init_containers.as_ref().map(Vec::len), Some(2));
    assert_eq!(spec.volumes.as_ref().map(Vec::len), Some(4));
    assert_eq!(
        flag(init(&spec, "weft-init"), "--outbound-ports-exclude"),
        Some("25")
    );
    // Without the status annotation, the containers' names still identify the old injection.
    let no_status: String = first
        .lines()
        .filter(|l| !l.contains("sidecar.weft.dev/status"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        inject(&no_status, &Options::default())
            .expect("inject")
            .yaml,
        first
    );
}

fn error(input: &str) -> String {
    match inject(input, &Options::default()) {
        Ok(r) => panic!("expected an error, got\n{}", r.yaml),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_yaml_names_the_document() {
    let input = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a}}\n---\n{}---\nkey: [unclosed\n",
        deployment("{}")
    );
    let e = error(&input);
    assert!(e.starts_with("document 3 (line 19)"), "{e}");
    assert!(e.contains("not valid YAML"), "{e}");
    assert!(
        e.contains("line 19 column 6"),
        "the position is the file's: {e}"
    );
}

#[test]
fn unknown_and_mistyped_fields_are_named() {
    let e = error(&deployment("{}").replace(
        "image: example/web:1",
        "image: example/web:1, imagePullPolcy: Always",
    ));
    assert_eq!(
        e,
        "document 1 (line 1, Deployment web): spec.template.spec.containers[0].imagePullPolcy: unknown field"
    );
    let e = error(&deployment("{}").replace("containerPort: 8080", "containerPort: http"));
    assert!(
        e.starts_with("document 1 (line 1, Deployment web): spec.template.spec.containers[0].ports[0].containerPort: "),
        "{e}"
    );
    // An unknown kind is not read at all, so its fields are its own business.
    let crd =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {anything: 1}\n";
    assert_eq!(inject(crd, &Options::default()).expect("inject").yaml, crd);
}

#[test]
fn bad_annotations_are_named() {
    for (a, name) in [
        (
            "{sidecar.weft.dev/inject: maybe}",
            "sidecar.weft.dev/inject",
        ),
        (
            "{sidecar.weft.dev/proxyCPU: lots}",
            "sidecar.weft.dev/proxyCPU",
        ),
        (
            "{sidecar.istio.io/proxyMemory: 1 GB}",
            "sidecar.istio.io/proxyMemory",
        ),
        (
            "{traffic.sidecar.weft.dev/excludeInboundPorts: \"80,http\"}",
            "traffic.sidecar.weft.dev/excludeInboundPorts",
        ),
        (
            "{traffic.sidecar.weft.dev/excludeOutboundIPRanges: 10.0.0.0}",
            "traffic.sidecar.weft.dev/excludeOutboundIPRanges",
        ),
        (
            "{traffic.sidecar.weft.dev/excludeOutboundIPRanges: \"*\"}",
            "traffic.sidecar.weft.dev/excludeOutboundIPRanges",
        ),
    ] {
        let e = error(&format!("---\n{}", deployment(a)));
        assert!(
            e.starts_with(&format!(
                "document 1 (line 2, Deployment web): annotation {name}: "
            )),
            "{a}: {e}"
        );
    }
}

#[test]
fn bad_options_are_refused_before_reading() {
    let options = Options {
        trust_domain: "Not A Domain".into(),
        ..Options::default()
    };
    let e = inject("", &options).expect_err("refused");
    assert!(
        matches!(
            e,
            InjectError::Option {
                flag: "trust-domain",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn list_items_are_injected_and_their_errors_name_the_item() {
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}",
        deployment("{}")
            .lines()
            .enumerate()
            .map(|(i, l)| format!("{}{l}\n", if i == 0 { "  - " } else { "    " }))
            .collect::<String>()
    );
    let r = inject(&list, &Options::default()).expect("inject");
    assert_eq!(r.outcomes[0].1, Outcome::Injected);
    assert!(r.yaml.contains("name: weft-proxy"));
    assert_eq!(
        inject(&r.yaml, &Options::default()).expect("again").yaml,
        r.yaml
    );
    let e = error(&list.replace("serviceAccountName", "serviceAcountName"));
    assert_eq!(
        e,
        "document 1 (line 1, List item 0: Deployment web): items[0].spec.template.spec.serviceAcountName: unknown field"
    );
}
