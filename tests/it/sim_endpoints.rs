//! The simulator's endpoints on the wire: Dify's API shapes and error envelopes, the
//! `/sim/*` helpers, deterministic bodies, streamed uploads, and the websocket echo.

use crate::common::sim;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use dify_shaper_tools::sim::SimConfig;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use sim::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ping_and_app_endpoints() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let a = sim.addr();
    let r = call(a, "GET", "/health", &[], "").await;
    assert_eq!((r.status.as_u16(), r.json()), (200, json!({"status":"ok","version":"sim"})));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = call(a, "GET", "/console/api/ping", &[], "").await;
    assert_eq!(r.json(), json!({"result":"pong"}));
    for path in ["/v1/workflows/tasks/t-1/stop", "/v1/chat-messages/t-2/stop"] {
        let r = call(a, "POST", path, &[], r#"{"user":"u1"}"#).await;
        assert_eq!((r.status.as_u16(), r.json()), (200, json!({"result":"success"})));
    }
    let r = call(a, "GET", "/v1/parameters", &[], "").await;
    assert_eq!(r.status, 200);
    assert!(r.json()["user_input_form"].is_array());
    let r = call(a, "GET", "/v1/info", &[], "").await;
    assert_eq!(r.json()["mode"], "workflow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_use_difys_envelope() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let a = sim.addr();
    let r = call(a, "GET", "/v1/nope", &[], "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "not_found");
    assert_eq!(r.json()["status"], 404);
    let r = call(a, "GET", "/v1/workflows/run", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["code"], "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    for bad in ["{not json", "[1,2]", r#"{"inputs":1}"#, r#"{"response_mode":"eventually"}"#] {
        let r = call(a, "POST", "/v1/workflows/run", &[], bad).await;
        assert_eq!(r.status, 400, "{bad}");
        let v = r.json();
        assert_eq!(v["code"], "invalid_param");
        assert_eq!(v["status"], 400);
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let r = call(a, "POST", "/v1/workflows/run", &[("x-sim-service-time", "later")], WORKFLOW_BLOCKING).await;
    assert_eq!(r.status, 400);
    assert_eq!(sim.stats().by_status.get(&400), Some(&5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_bodies_are_deterministic_per_request_id() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let a = sim.addr();
    for (path, body) in [
        ("/v1/workflows/run", WORKFLOW_BLOCKING),
        ("/v1/chat-messages", CHAT_BLOCKING),
        ("/v1/completion-messages", r#"{"inputs":{"q":"x"},"response_mode":"blocking"}"#),
    ] {
        let one = call(a, "POST", path, &[("x-request-id", "same")], body).await;
        let two = call(a, "POST", path, &[("x-request-id", "same")], body).await;
        let other = call(a, "POST", path, &[("x-request-id", "other")], body).await;
        let anon1 = call(a, "POST", path, &[], body).await;
        let anon2 = call(a, "POST", path, &[], body).await;
        assert_eq!(one.status, 200, "{path}: {one:?}");
        assert_eq!(one.body, two.body, "{path}");
        assert_ne!(one.body, other.body, "{path}");
        assert_ne!(anon1.body, anon2.body, "{path}: random ids without a request id");
        let v = one.json();
        if path == "/v1/workflows/run" {
            assert_eq!(v["data"]["status"], "succeeded");
            assert_eq!(v["data"]["id"], v["workflow_run_id"]);
            assert_eq!(v["data"]["outputs"]["inputs"], json!({"q":"hi"}));
            assert!(v["task_id"].is_string());
        } else {
            assert_eq!(v["event"], "message");
            assert!(v["answer"].as_str().is_some_and(|s| !s.is_empty()));
        }
    }
    assert_eq!(sim.count_for_request_id("same"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_echo_bytes_and_fast() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let a = sim.addr();
    let r = call(
        a,
        "POST",
        "/sim/echo?x=1&y=2",
        &[("x-forwarded-for", "10.0.0.1"), ("x-request-id", "e1"), ("x-multi", "a"), ("x-multi", "b")],
        "12345",
    )
    .await;
    let v = r.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/sim/echo");
    assert_eq!(v["query"], "x=1&y=2");
    assert_eq!(v["headers"]["x-forwarded-for"], "10.0.0.1");
    assert_eq!(v["headers"]["host"], a.to_string());
    assert_eq!(v["headers"]["x-multi"], "a, b");
    assert_eq!(v["body_bytes"], 5);
    assert!(v["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")));

    let r = call(a, "GET", "/sim/bytes?n=1000001", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1_000_001);
    assert_eq!(r.header("content-length"), Some("1000001"));
    assert_eq!(&r.body[..4], b"0123");

    let r = call(a, "GET", "/sim/fast", &[], "").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
}

const BOUNDARY: &str = "----simboundary42";

fn multipart_head(name: &str, mime: &str) -> Bytes {
    Bytes::from(format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nu1\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: {mime}\r\n\r\n"
    ))
}

fn multipart_tail() -> Bytes {
    Bytes::from(format!("\r\n--{BOUNDARY}--\r\n"))
}

/// Uploads `chunks` copies of `chunk` as one file; returns (response JSON, bytes sent).
async fn upload(addr: std::net::SocketAddr, chunk: Bytes, chunks: usize) -> (serde_json::Value, u64) {
    let head = multipart_head("report.PDF", "application/pdf");
    let tail = multipart_tail();
    let total = (head.len() + tail.len() + chunk.len() * chunks) as u64;
    let parts = std::iter::once(head)
        .chain(std::iter::repeat_n(chunk, chunks))
        .chain(std::iter::once(tail))
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let req = http::Request::post(format!("http://{addr}/v1/files/upload"))
        .header("host", addr.to_string())
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .header("content-length", total)
        .header("authorization", "Bearer app-up")
        .body(StreamBody::new(futures_util::stream::iter(parts)))
        .expect("request");
    let fut = async {
        let resp = send(addr, req).await.expect("upload response");
        assert_eq!(resp.status(), 201);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).expect("json")
    };
    let v = tokio::time::timeout(Duration::from_secs(120), fut).await.expect("upload in time");
    (v, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_counts_streamed_bytes() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let (v, total) = upload(sim.addr(), Bytes::from(vec![7u8; 64 * 1024]), 48).await;
    assert_eq!(v["size"], total);
    assert_eq!(v["name"], "report.PDF");
    assert_eq!(v["extension"], "pdf");
    assert_eq!(v["mime_type"], "application/pdf");
    assert!(v["id"].is_string() && v["created_by"].is_string() && v["created_at"].is_i64());
    assert_eq!(sim.stats().upload_bytes, total);

    let r = call(sim.addr(), "POST", "/v1/files/upload", &[], r#"{"not":"multipart"}"#).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "no_file_uploaded");
}

/// Resident set size of this process in KiB (Linux).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_100_mb_runs_in_flat_memory() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let before = rss_kib();
    let (v, total) = upload(sim.addr(), Bytes::from(vec![1u8; 1 << 20]), 100).await;
    assert_eq!(v["size"], total);
    assert!(total > 100 * (1 << 20));
    assert_eq!(sim.stats().upload_bytes, total);
    if let (Some(before), Some(after)) = (before, rss_kib()) {
        let grown_mib = after.saturating_sub(before) / 1024;
        assert!(grown_mib < 48, "RSS grew by {grown_mib} MiB during a 100 MB upload");
    }
}

async fn next_message(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Message {
    tokio::time::timeout(REQUEST_TIMEOUT, ws.next())
        .await
        .expect("message in time")
        .expect("open")
        .expect("message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_websocket_echoes() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let addr = sim.addr();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, resp) = tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws.send(Message::Text("40".into())).await.expect("send text");
    assert_eq!(next_message(&mut ws).await, Message::Text("40".into()));
    ws.send(Message::Binary(vec![1, 2, 3])).await.expect("send binary");
    assert_eq!(next_message(&mut ws).await, Message::Binary(vec![1, 2, 3]));
    // The upgraded connection holds its slot.
    assert_eq!(sim.stats().open_connections, 1);
    ws.close(None).await.expect("close");

    // A plain GET without upgrade headers is refused in Dify's envelope.
    let r = call(addr, "GET", "/socket.io/?EIO=4", &[], "").await;
    assert_eq!(r.status, 400);
    // stop() also cuts websockets.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let url = format!("ws://{addr}/socket.io/");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("handshake");
    sim.stop().await;
    let end = tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await.expect("ends in time");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}
