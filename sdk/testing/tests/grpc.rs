//! Scripted gRPC callouts: a plugin's `dispatch_grpc_call` is recorded (its message without
//! the frame prefix) and answered from `grpc_callout`, through the same host code the proxy
//! runs. The `abi_probe` fixture reports what its `on_grpc_call_response` saw as
//! `x-probe-grpc-*` response headers.

use weft_plugin_test::{CannedResponse, GrpcReply, TestPlugin};

#[test]
fn a_scripted_grpc_reply_reaches_the_plugin() {
    let plugin = TestPlugin::builder(weft_test_artifacts::ABI_PROBE)
        .configuration(r#"{"grpc": {"cluster": "authz", "message": "ping"}}"#)
        .grpc_callout("authz", GrpcReply::Message(b"pong".to_vec()))
        .load()
        .expect("the probe loads");
    let mut ex = plugin.request();
    assert!(ex.send_request().is_continue(), "resumed by the reply");
    let calls = plugin.callouts();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].grpc);
    assert_eq!(calls[0].body, b"ping");
    assert_eq!(
        calls[0].header(":path").as_deref(),
        Some("/weft.test.Echo/Say")
    );
    ex.send_response(CannedResponse::new(200));
    assert_eq!(
        ex.response_header("x-probe-grpc-status").as_deref(),
        Some("0")
    );
    assert_eq!(
        ex.response_header("x-probe-grpc-body").as_deref(),
        Some("pong")
    );
    ex.finish();

    plugin.set_grpc_callout("authz", GrpcReply::Status(7, "denied".into()));
    let mut ex = plugin.request();
    assert!(ex.send_request().is_continue());
    ex.send_response(CannedResponse::new(200));
    assert_eq!(
        ex.response_header("x-probe-grpc-status").as_deref(),
        Some("7")
    );
    assert_eq!(
        ex.response_header("x-probe-grpc-message").as_deref(),
        Some("denied{via_upstream}")
    );
    ex.finish();
}

/// A root context's call (from `on_tick`) is answered too, to the root context.
#[test]
fn a_root_context_grpc_call_is_answered_to_the_root_context() {
    let plugin = TestPlugin::builder(weft_test_artifacts::ABI_PROBE)
        .configuration(r#"{"grpc": {"cluster": "authz", "message": "tick", "from_tick": true}}"#)
        .grpc_callout("authz", GrpcReply::Message(b"pong".to_vec()))
        .load()
        .expect("the probe loads");
    assert!(plugin.tick(), "the probe asked for ticks");
    let calls = plugin.callouts();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].grpc);
    assert_eq!(calls[0].body, b"tick");
    let mut ex = plugin.request();
    assert!(ex.send_request().is_continue());
    ex.send_response(CannedResponse::new(200));
    assert_eq!(
        ex.response_header("x-probe-root-grpc").as_deref(),
        Some("0:pong")
    );
    ex.finish();
}
