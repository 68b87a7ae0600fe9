//! An SSE stream that breaks after it started ends with Dify's `error` event,
//! not a silent truncation — when the backend dies mid-stream, and when it goes quiet past the
//! class's idle timeout.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use dify_shaper_tools::sim::{SimConfig, Simulator};
use http_body_util::Full;

const STREAMING: &str = r#"{"inputs":{},"response_mode":"streaming","user":"u"}"#;

/// Posts a streaming run and returns its SSE events as they arrive; `on_first` runs once the
/// first event is in.
async fn events(
    addr: std::net::SocketAddr,
    service: &str,
    on_first: impl std::future::Future<Output = ()>,
) -> Vec<String> {
    let req = request("POST", addr, "/v1/workflows/run")
        .header("content-type", "application/json")
        .header("x-sim-service-time", service)
        .header("x-sim-events", "2")
        .body(Full::new(Bytes::from_static(STREAMING.as_bytes())))
        .expect("request");
    let response = send(addr, req).await.expect("response");
    assert_eq!(response.status(), 200);
    let mut reader = common::sse::SseReader::new(response.into_body());
    let mut events = Vec::new();
    let mut on_first = Some(on_first);
    let stream_deadline = || tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some((_, event)) = reader.next(stream_deadline()).await.expect("stream ends in time") {
        events.push(event);
        if let Some(first) = on_first.take() {
            first.await;
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_the_backend_ends_with_an_error_event() {
    let _machine = crate::common::shared().await;
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    let events = events(proxy.addr, "6s", async { sim.stop().await }).await;
    let last = events.last().cloned().unwrap_or_default();
    assert!(events.first().is_some_and(|e| e.contains("workflow_started")), "{events:?}");
    assert!(last.contains("\"event\":\"error\""), "the stream ended without an error event: {events:?}");
    assert!(last.contains("\"code\":\"upstream_lost\"") && last.contains("\"status\":502"), "{last}");
    assert!(!events.iter().any(|e| e.contains("workflow_finished")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_hits_the_idle_timeout_with_an_error_event() {
    let _machine = crate::common::shared().await;
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    // Events 3 s apart (and pings only every 10 s) against a 1 s stream idle timeout; the
    // class's read_timeout (10 min, for blocking runs) does not apply to a stream.
    let config = format!(
        "[upstreams.api]\nservers = [\"{}\"]\n[classes.run]\nstream_idle_timeout = \"1s\"\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n",
        sim.addr()
    );
    let proxy = ProxyProcess::start(&config).await;
    let events = events(proxy.addr, "12s", async {}).await;
    let last = events.last().cloned().unwrap_or_default();
    assert!(events.first().is_some_and(|e| e.contains("workflow_started")), "{events:?}");
    assert!(last.contains("\"code\":\"upstream_timeout\"") && last.contains("\"status\":504"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_and_streaming_runs_get_their_own_timeouts() {
    let _machine = crate::common::shared().await;
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    // Blocking runs may take 1 s to answer; streams may be quiet for 5 s.
    let config = format!(
        "[upstreams.api]\nservers = [\"{}\"]\n[classes.run]\nread_timeout = \"1s\"\nstream_idle_timeout = \"5s\"\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n",
        sim.addr()
    );
    let proxy = ProxyProcess::start(&config).await;
    let blocking = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;
    let (status, headers, body) =
        post_json(proxy.addr, "/v1/workflows/run", blocking, &[("x-sim-service-time", "3s")]).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(json(&body)["code"], "upstream_timeout");
    // A stream whose events are 1.5 s apart is fine under its 5 s idle timeout.
    let events = events(proxy.addr, "3s", async {}).await;
    assert!(events.last().is_some_and(|e| e.contains("workflow_finished")), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_run_is_held_to_its_total_time() {
    let _machine = crate::common::shared().await;
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    // read_timeout alone would wait 10 minutes; total_timeout caps arrival-to-answer at 1 s.
    let config = format!(
        "[upstreams.api]\nservers = [\"{}\"]\n[classes.run]\nread_timeout = \"10m\"\ntotal_timeout = \"1s\"\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n",
        sim.addr()
    );
    let proxy = ProxyProcess::start(&config).await;
    let blocking = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;
    let started = tokio::time::Instant::now();
    let (status, _, body) =
        post_json(proxy.addr, "/v1/workflows/run", blocking, &[("x-sim-service-time", "5s")]).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(4), "answered after {:?}", started.elapsed());
}
