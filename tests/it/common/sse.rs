//! Reading Dify's SSE streams in tests: one parser for every test that counts, times or
//! inspects the events of a streamed run.

use std::collections::VecDeque;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{error::Elapsed, Instant};

/// Splits a response body into SSE events (`data: …\n\n`) as their bytes arrive.
pub struct SseReader {
    body: Incoming,
    buffer: String,
    ready: VecDeque<(Instant, String)>,
    ended: bool,
}

impl SseReader {
    /// Reads events from `body`.
    pub fn new(body: Incoming) -> Self {
        SseReader { body, buffer: String::new(), ready: VecDeque::new(), ended: false }
    }

    /// The next whole event and when its last bytes arrived; `Ok(None)` once the stream
    /// ended or broke, `Err` when nothing completed an event before `deadline`.
    pub async fn next(&mut self, deadline: Instant) -> Result<Option<(Instant, String)>, Elapsed> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await? {
                Some(Ok(frame)) => {
                    let now = Instant::now();
                    if let Some(data) = frame.data_ref() {
                        self.buffer.push_str(&String::from_utf8_lossy(data));
                        self.ready.extend(take_frames(&mut self.buffer).into_iter().map(|f| (now, f)));
                    }
                }
                Some(Err(_)) | None => self.ended = true,
            }
        }
    }

    /// Every remaining event, until the stream ends or `deadline` passes.
    pub async fn rest(&mut self, deadline: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some((_, event))) = self.next(deadline).await {
            out.push(event);
        }
        out
    }
}

/// Splits complete SSE frames (`…\n\n`) off the front of `buf`.
pub fn take_frames(buf: &mut String) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        out.push(buf.drain(..end + 2).collect());
    }
    out
}

/// The `"event"` of a `data: {json}` frame, or `ping` for `event: ping`.
pub fn event_name(frame: &str) -> String {
    if frame.starts_with("event: ping") {
        return "ping".to_owned();
    }
    let json = frame.trim().strip_prefix("data: ").expect("data frame");
    let v: serde_json::Value = serde_json::from_str(json).expect("frame JSON");
    v["event"].as_str().expect("event field").to_owned()
}
