//! Large bodies stream through without being buffered.

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_e2e::upstream::sink;
use weft_e2e::{TestProxy, rss_bytes};

const GIB: u64 = 1024 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_with_flat_memory() {
    let (up, received) = sink().await;
    let p = TestProxy::start(&format!(
        r#"
access_log: {{ path: "off" }}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up, timeout: 0s }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#
    ))
    .await;
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let chunks = (GIB / CHUNK as u64) as usize;
    let body = StreamBody::new(stream::iter(
        std::iter::repeat_n(chunk, chunks)
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c))),
    ));
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let before = rss_bytes();
    let req = http::Request::post(p.url("main", "/upload"))
        .header("content-length", GIB.to_string())
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(240), client.request(req))
        .await
        .expect("upload finishes")
        .expect("upload succeeds");
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, GIB.to_string());
    assert_eq!(received.load(std::sync::atomic::Ordering::Relaxed), GIB);
    let growth = rss_bytes().saturating_sub(before);
    // The client, the proxy and the upstream all live in this process: buffering anywhere would
    // show as ~1 GiB of growth. Allow for allocator noise.
    assert!(
        growth < 64 * 1024 * 1024,
        "RSS grew by {} MiB",
        growth / (1024 * 1024)
    );
}
