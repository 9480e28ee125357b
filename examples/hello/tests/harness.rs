//! The hello filter's real `.wasm` in Weft's host, through the test harness.

use weft_plugin_test::{CannedResponse, Outcome, TestPlugin};

fn load(config: serde_json::Value) -> TestPlugin {
    TestPlugin::builder(weft_plugin_test::this_plugin!())
        .configuration_json(config)
        .load()
        .unwrap_or_else(|e| panic!("hello loads: {e}"))
}

#[test]
fn adds_the_greeting_header_upstream() {
    let plugin = load(serde_json::json!({ "greeting": "hi there" }));
    let mut exchange = plugin.request().path("/api/items?page=2");
    assert_eq!(exchange.send_request(), Outcome::Continue);
    assert_eq!(
        exchange.request_header("x-hello").as_deref(),
        Some("hi there")
    );
    assert!(
        exchange
            .send_response(CannedResponse::new(200).body("ok"))
            .is_continue()
    );
    assert_eq!(exchange.response_body(), b"ok");
    exchange.finish();
    assert_eq!(plugin.counter("hello_greetings"), Some(1));
}

#[test]
fn answers_its_own_path_with_json() {
    let plugin = load(serde_json::json!({ "reply_path": "/hello" }));
    let mut exchange = plugin.request().path("/hello?x=1");
    let reply = exchange.send_request().expect_reply();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(reply.json()["greeting"], "hello from weft");
}

#[test]
fn a_bad_configuration_is_refused_naming_the_field() {
    let failure = TestPlugin::builder(weft_plugin_test::this_plugin!())
        .configuration_json(serde_json::json!({ "reply_path": "hello" }))
        .load()
        .expect_err("a relative reply_path is refused");
    assert!(
        failure.logged("reply_path: must start with `/`"),
        "{failure}"
    );
}
