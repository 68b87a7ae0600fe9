//! Helpers of the `sim_*` test modules (the simulator's own behaviour): start a
//! simulator on `127.0.0.1:0`, one-shot HTTP/1.1 requests on fresh connections, bounded
//! polling of conditions. No test lives here.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dify_shaper_tools::sim::{SimConfig, Simulator};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;

pub use super::send;
pub use super::sse::{event_name, take_frames};

/// Upper bound for any single request in these tests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A workflow run body in blocking mode.
pub const WORKFLOW_BLOCKING: &str = r#"{"inputs":{"q":"hi"},"response_mode":"blocking","user":"u1"}"#;
/// A workflow run body in streaming mode.
pub const WORKFLOW_STREAMING: &str = r#"{"inputs":{"q":"hi"},"response_mode":"streaming","user":"u1"}"#;
/// A chat body in blocking mode.
pub const CHAT_BLOCKING: &str = r#"{"inputs":{},"query":"hello","response_mode":"blocking","user":"u1"}"#;
/// A chat body in streaming mode.
pub const CHAT_STREAMING: &str = r#"{"inputs":{},"query":"hello","response_mode":"streaming","user":"u1"}"#;

/// Starts a simulator on an ephemeral port.
pub async fn start(config: SimConfig) -> Simulator {
    Simulator::start("127.0.0.1:0".parse().expect("addr"), config).await.expect("start simulator")
}

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as `&str`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Builds a request with `headers` and a string body.
pub fn build(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", addr.to_string());
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).expect("request")
}

/// Sends a request and reads the whole response, within [`REQUEST_TIMEOUT`].
pub async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    try_call(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
}

/// Like [`call`] but returns transport errors (connection cut, reset, …).
pub async fn try_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp, String> {
    let req = build(method, addr, path, headers, body);
    let fut = async {
        let resp = send(addr, req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp { status: parts.status, headers: parts.headers, body })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut).await.map_err(|_| format!("{method} {path} timed out"))?
}

/// Polls `cond` (in-process state, cheap to read) every 5 ms until it holds; panics with
/// `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    super::fixtures::poll_until(limit, Duration::from_millis(5), what, || std::future::ready(cond())).await;
}

/// Whether connecting to `addr` is refused right now.
pub async fn refused(addr: SocketAddr) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}
