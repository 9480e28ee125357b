//! The hot-swap demo, shortened: every swap is served and no request fails.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_plugin_under_load_fails_no_request() {
    let options = weft_hot_swap_demo::DemoOptions {
        clients: 4,
        duration: std::time::Duration::from_secs(4),
        swaps: 3,
        max_requests_per_client: 50_000,
    };
    let report = weft_hot_swap_demo::run(&options).await.expect("demo runs");
    assert!(report.requests > 100, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.swaps, 3, "{report:?}");
}

#[test]
fn the_second_version_is_a_distinct_valid_module() {
    let v1 = b"\0asm\x01\0\0\0".to_vec();
    let v2 = weft_hot_swap_demo::with_custom_section(&v1, "v", b"2");
    assert_ne!(v1, v2);
    assert_eq!(&v2[8..], &[0, 3, 1, b'v', b'2']);
}
