//! Open-loop HTTP load, the one generator behind `dify-shaper demo`, the test suite and the
//! side-by-side benchmark (`examples/loadgen.rs`).
//!
//! Request `i` starts at `start + i / rate` whatever earlier requests are doing: real clients
//! do not wait for each other, and a generator that does hides overload (coordinated
//! omission). Each request opens its own TCP connection, as Dify's clients reach its nginx,
//! and its client gives up after its patience and closes that connection. The count is fixed
//! in advance, so a run always ends by `start + count / rate + patience`.
//!
//! This module sends and times; what counts as success (a whole stream, Dify's error
//! envelope, PostgreSQL's "too many clients") is each caller's to judge from the [`Answer`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bodies up to this size are kept whole; past it only the last [`KEPT_TAIL`] bytes are kept
/// (enough to see how a long stream ended).
const KEPT_WHOLE: usize = 1 << 20;
/// What is kept of a body longer than [`KEPT_WHOLE`].
const KEPT_TAIL: usize = 4096;

/// One request to send.
#[derive(Debug, Clone)]
pub struct Shot {
    /// Method.
    pub method: http::Method,
    /// Path (with query).
    pub path: String,
    /// Headers besides `Host` (and `Content-Type`, added with a body).
    pub headers: Vec<(String, String)>,
    /// JSON body; empty for none.
    pub body: Bytes,
}

impl Shot {
    /// A workflow run for app `key` (Dify's `POST /v1/workflows/run`), `blocking` or
    /// `streaming`, as `user`.
    pub fn workflow(key: &str, response_mode: &str, user: &str) -> Shot {
        let body = serde_json::json!({"inputs": {}, "response_mode": response_mode, "user": user});
        Shot {
            method: http::Method::POST,
            path: "/v1/workflows/run".into(),
            headers: vec![("authorization".into(), format!("Bearer {key}"))],
            body: Bytes::from(body.to_string()),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The connection was refused: nothing listened.
    Refused,
    /// The connection was closed or reset before a response head.
    Reset,
    /// The client's patience ran out first (it closed its connection).
    TimedOut,
    /// Anything else, with the error.
    Other(String),
}

/// A response head that arrived in time, and what followed it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// From sending to the response head.
    pub head: Duration,
    /// From sending to the first non-empty body frame, if any came.
    pub first_frame: Option<Duration>,
    /// The body: whole up to 1 MiB, else its last 4 KiB.
    pub body: Bytes,
    /// Whether the body ended properly (`false`: the connection broke mid-body).
    pub complete: bool,
}

impl Answer {
    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `code` of Dify's JSON error envelope in the body, if it is one.
    pub fn envelope_code(&self) -> Option<String> {
        envelope_code(&self.body)
    }
}

/// The `code` of Dify's JSON error envelope (dify-shaper answers in it too).
pub fn envelope_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("code")?.as_str().map(str::to_string)
}

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// When it was sent, since the run's start.
    pub sent_at: Duration,
    /// From sending to the end: the body's end, the error, or giving up.
    pub took: Duration,
    /// The answer, or why there was none.
    pub result: Result<Answer, Failure>,
}

/// Starts `send(i)` for `i` in `0..count` at `start + i / rate`, each as its own task, and
/// returns their results in sending order once all have ended (`None` for a task that
/// panicked). Behind schedule (a busy machine), requests go out at once rather than being
/// dropped.
pub async fn open_loop<T, F, Fut>(rate: f64, count: usize, start: Instant, mut send: F) -> Vec<Option<T>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        tasks.push(tokio::spawn(send(i)));
    }
    let mut results = Vec::with_capacity(count);
    for task in tasks {
        results.push(task.await.ok());
    }
    results
}

/// Sends `shot` to `addr` on a fresh connection and reads the whole answer, giving up after
/// `patience` (the whole exchange, body included). `start` is the run's start.
pub async fn exchange(addr: SocketAddr, shot: &Shot, patience: Duration, start: Instant) -> Exchange {
    let sent = Instant::now();
    let result = match tokio::time::timeout(patience, answer(addr, shot, sent)).await {
        Ok(result) => result,
        // Dropping the connection here closes it, as a client that gives up does.
        Err(_) => Err(Failure::TimedOut),
    };
    Exchange { sent_at: sent.duration_since(start), took: sent.elapsed(), result }
}

async fn answer(addr: SocketAddr, shot: &Shot, sent: Instant) -> Result<Answer, Failure> {
    let stream = TcpStream::connect(addr).await.map_err(|e| failure(&e))?;
    // Small requests and SSE frames must not wait for Nagle.
    stream.set_nodelay(true).map_err(|e| failure(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| failure(&e))?;
    tokio::spawn(conn);
    let mut request = http::Request::builder()
        .method(shot.method.clone())
        .uri(shot.path.as_str())
        .header(http::header::HOST, addr.to_string());
    if !shot.body.is_empty() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in &shot.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request =
        request.body(Full::new(shot.body.clone())).map_err(|e| Failure::Other(format!("request: {e}")))?;
    let response = sender.send_request(request).await.map_err(|e| failure(&e))?;
    let status = response.status().as_u16();
    let head = sent.elapsed();
    let mut body = response.into_body();
    let mut kept = BytesMut::new();
    let mut first_frame = None;
    let complete = loop {
        match body.frame().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                if first_frame.is_none() && !data.is_empty() {
                    first_frame = Some(sent.elapsed());
                }
                kept.extend_from_slice(&data);
                if kept.len() > KEPT_WHOLE {
                    let _ = kept.split_to(kept.len() - KEPT_TAIL);
                }
            }
        }
    };
    Ok(Answer { status, head, first_frame, body: kept.freeze(), complete })
}

/// Names a connect or protocol error by what it says about the server.
fn failure(e: &(dyn std::error::Error + 'static)) -> Failure {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return match io.kind() {
                ConnectionRefused => Failure::Refused,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Failure::Reset,
                _ => Failure::Other(e.to_string()),
            };
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return Failure::Reset;
            }
        }
        cause = err.source();
    }
    Failure::Other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{ServiceTime, SimConfig, Simulator};

    #[tokio::test]
    async fn sends_on_schedule_and_reports_what_came_back() {
        let config = SimConfig {
            db_connections: Some(1),
            service_time: ServiceTime::Fixed(Duration::from_millis(300)),
            ..SimConfig::default()
        };
        let sim = Simulator::start(([127, 0, 0, 1], 0).into(), config).await.expect("sim");
        let addr = sim.addr();
        let shot = Shot::workflow("app-loadgenloadgen01", "blocking", "test");
        // Two runs 50 ms apart on one DB connection: the second one gets Dify's 500.
        let start = Instant::now();
        let runs = open_loop(20.0, 2, start, |_| {
            let shot = shot.clone();
            async move { exchange(addr, &shot, Duration::from_secs(5), start).await }
        })
        .await;
        let runs: Vec<Exchange> = runs.into_iter().flatten().collect();
        let statuses: Vec<u16> =
            runs.iter().filter_map(|r| r.result.as_ref().ok()).map(|a| a.status).collect();
        assert_eq!(statuses, [200, 500], "{runs:?}");
        assert!(runs[1].sent_at >= Duration::from_millis(45), "{:?}", runs[1]);
        let first = runs[0].result.as_ref().expect("an answer");
        assert!(first.complete && first.is_success(), "{first:?}");
        assert!(runs[0].took >= Duration::from_millis(300) && first.head <= runs[0].took, "{:?}", runs[0]);
        assert!(first.first_frame.is_some_and(|f| f >= first.head), "{first:?}");

        // A client with less patience than the run gives up.
        let late = exchange(addr, &shot, Duration::from_millis(100), Instant::now()).await;
        assert_eq!(late.result.err(), Some(Failure::TimedOut));

        // Nothing listens any more: refused.
        sim.stop().await;
        let refused = exchange(addr, &shot, Duration::from_secs(2), Instant::now()).await;
        assert_eq!(refused.result.err(), Some(Failure::Refused));
    }

    #[test]
    fn envelope_code_reads_difys_error_body() {
        let answer = |body: &'static str| Answer {
            status: 503,
            head: Duration::ZERO,
            first_frame: None,
            body: Bytes::from_static(body.as_bytes()),
            complete: true,
        };
        assert_eq!(
            answer(r#"{"code":"server_busy","status":503}"#).envelope_code().as_deref(),
            Some("server_busy")
        );
        assert_eq!(answer("<html>bad gateway</html>").envelope_code(), None);
    }
}
