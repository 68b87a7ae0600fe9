//! Streaming runs (SSE) and abandoned runs: frames are spaced as scheduled and never
//! coalesced, pings flow, and a client that leaves is counted once its run finishes.

use crate::common::sim;

use std::time::Duration;

use dify_shaper_tools::sim::SimConfig;
use http_body_util::BodyExt;
use sim::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Streams a run and returns each frame with its arrival time (relative to the head).
async fn stream_frames(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (http::HeaderMap, Vec<(Duration, String)>) {
    let resp = send(addr, build("POST", addr, path, headers, body)).await.expect("stream head");
    assert_eq!(resp.status(), 200);
    let head_at = Instant::now();
    let (parts, mut body) = resp.into_parts();
    let mut buf = String::new();
    let mut frames = Vec::new();
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while let Some(frame) =
        tokio::time::timeout_at(deadline, body.frame()).await.expect("stream ends in time")
    {
        let frame = frame.expect("frame");
        let at = head_at.elapsed();
        if let Some(data) = frame.data_ref() {
            buf.push_str(std::str::from_utf8(data).expect("utf-8"));
            frames.extend(take_frames(&mut buf).into_iter().map(|f| (at, f)));
        }
    }
    assert!(buf.is_empty(), "trailing partial frame: {buf:?}");
    (parts.headers, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_stream_frames_arrive_spaced_as_sent() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    // 5 nodes over 2 s: 10 node events 200 ms apart.
    let (headers, frames) = stream_frames(
        sim.addr(),
        "/v1/workflows/run",
        &[("x-sim-service-time", "2s"), ("x-sim-events", "5"), ("x-request-id", "s1")],
        WORKFLOW_STREAMING,
    )
    .await;
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["transfer-encoding"], "chunked");
    let names: Vec<String> = frames.iter().map(|(_, f)| event_name(f)).collect();
    let mut want = vec!["workflow_started".to_owned()];
    for _ in 0..5 {
        want.push("node_started".into());
        want.push("node_finished".into());
    }
    want.push("workflow_finished".into());
    assert_eq!(names, want);
    // Node event k is sent at k × 200 ms: each must arrive close to that, i.e. neither held
    // back nor coalesced with the next one.
    for (k, (at, f)) in frames.iter().enumerate().take(11).skip(1) {
        let due = Duration::from_millis(200 * k as u64);
        let skew = at.as_secs_f64() - due.as_secs_f64();
        assert!(skew.abs() < 0.150, "event {k} arrived at {at:?}, due {due:?}: {f}");
    }
    let s = sim.stats();
    assert_eq!((s.abandoned, s.killed), (0, 0));
    wait_until("stream completed", Duration::from_secs(5), || sim.stats().completed == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_matches_blocking_answer_and_pings() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig { ping_interval: Duration::from_millis(100), ..SimConfig::default() }).await;
    let headers = [("x-sim-service-time", "550ms"), ("x-sim-events", "3"), ("x-request-id", "c1")];
    let (_, frames) = stream_frames(sim.addr(), "/v1/chat-messages", &headers, CHAT_STREAMING).await;
    let pings = frames.iter().filter(|(_, f)| f.as_str() == "event: ping\n\n").count();
    assert!((4..=6).contains(&pings), "{pings} pings in {frames:?}");
    let data: Vec<serde_json::Value> = frames
        .iter()
        .filter_map(|(_, f)| f.strip_prefix("data: "))
        .map(|j| serde_json::from_str(j.trim()).expect("json"))
        .collect();
    let events: Vec<&str> = data.iter().map(|v| v["event"].as_str().unwrap_or("")).collect();
    assert_eq!(events, ["message", "message", "message", "message_end"]);
    let answer: String = data.iter().filter_map(|v| v["answer"].as_str()).collect();
    let conversation = data[3]["conversation_id"].clone();
    assert!(conversation.is_string());

    let blocking = call(sim.addr(), "POST", "/v1/chat-messages", &headers, CHAT_BLOCKING).await;
    assert_eq!(blocking.status, 200);
    let v = blocking.json();
    assert_eq!(v["answer"].as_str(), Some(answer.as_str()));
    assert_eq!(v["conversation_id"], conversation, "same request id, same ids");
    assert_eq!(v["mode"], "chat");
}

/// Sends a run over raw TCP and closes the connection once the run is active.
async fn leave_mid_run(sim: &dify_shaper_tools::sim::Simulator, body: &str) {
    let mut s = TcpStream::connect(sim.addr()).await.expect("connect");
    let req = format!(
        "POST /v1/workflows/run HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n\
         X-Sim-Service-Time: 1s\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    wait_until("run active", Duration::from_secs(10), || sim.stats().active == 1).await;
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_are_counted_as_abandoned() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    leave_mid_run(&sim, WORKFLOW_BLOCKING).await;
    // The run keeps working to its end, then finds its client gone.
    assert_eq!(sim.stats().abandoned, 0);
    wait_until("blocking run abandoned", Duration::from_secs(10), || sim.stats().abandoned == 1).await;
    wait_until("first run done", Duration::from_secs(5), || sim.stats().active == 0).await;
    leave_mid_run(&sim, WORKFLOW_STREAMING).await;
    wait_until("streaming run abandoned", Duration::from_secs(10), || sim.stats().abandoned == 2).await;

    // A client that stays is not abandoned.
    let r = call(sim.addr(), "POST", "/v1/workflows/run", &[], WORKFLOW_BLOCKING).await;
    assert_eq!(r.status, 200);
    wait_until("runs finished", Duration::from_secs(5), || {
        let s = sim.stats();
        s.active == 0 && s.completed == 1
    })
    .await;
    let s = sim.stats();
    assert_eq!(s.abandoned, 2, "{s:?}");
    assert_eq!(s.killed, 0);
    assert_eq!(s.completed, 1);
    assert_eq!(s.runs_by_path.get("/v1/workflows/run"), Some(&3));
}
