//! The admin server's endpoints.

use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, client, get, metric_value, send};

#[tokio::test]
async fn admin_endpoints_report_state() {
    let up = echo("up").await;
    let p = TestProxy::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ name: all, route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}", weight: 3 }}] }}
"#
    ))
    .await;
    let admin = format!("http://{}", p.admin());
    for _ in 0..3 {
        assert_eq!(get(&p.url("main", "/x")).await.status, 200);
    }
    let r = get(&format!("{admin}/ready")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "LIVE\n"));
    assert_eq!(get(&format!("{admin}/live")).await.status, 200);

    let dump = get(&format!("{admin}/config_dump")).await.json();
    assert_eq!(dump["generation"], 1);
    assert_eq!(dump["config"]["clusters"][0]["name"], "up");
    assert_eq!(dump["listeners"]["main"], p.addr("main").to_string());

    let clusters = get(&format!("{admin}/clusters")).await.text();
    assert!(
        clusters.contains(&format!("up::{up}::rq_total::3")),
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!("up::{up}::weight::3")),
        "{clusters}"
    );
    let json = get(&format!("{admin}/clusters?format=json")).await.json();
    assert_eq!(json["clusters"][0]["endpoints"][0]["rq_total"], 3);

    let m = get(&format!("{admin}/metrics")).await.text();
    assert_eq!(
        metric_value(
            &m,
            r#"weft_downstream_rq_total{listener="main",code_class="2xx"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_route_rq_total{listener="main",route="all",code_class="2xx"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_upstream_rq_total{cluster="up",code_class="2xx"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_downstream_rq_time_seconds_count{listener="main"}"#
        ),
        3.0
    );
    assert!(metric_value(&m, r#"weft_upstream_cx_total{cluster="up"}"#) >= 1.0);
    assert!(metric_value(&m, r#"weft_downstream_cx_total{listener="main"}"#) >= 1.0);

    assert_eq!(get(&format!("{admin}/nope")).await.status, 404);
    let r = send(
        &client(),
        http::Request::post(format!("{admin}/ready"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);
}
