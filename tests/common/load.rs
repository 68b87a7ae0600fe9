//! A small open-loop load generator for tests: requests start on schedule whatever happens to
//! earlier ones (as real clients do), each on its own connection, each with a client timeout
//! after which the client gives up and closes its connection. Bounded in count and time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use super::request;

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent, relative to the start of the run.
    pub sent_at: Duration,
    /// Status, if a complete response arrived in time.
    pub status: Option<u16>,
    /// Dify envelope code of a non-2xx answer.
    pub code: Option<String>,
    /// Latency of a complete response.
    pub latency: Option<Duration>,
    /// The client gave up at its timeout.
    pub timed_out: bool,
    /// A connection error before any response.
    pub error: Option<String>,
}

/// All outcomes of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// One entry per request, in sending order.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Requests sent.
    pub fn sent(&self) -> usize {
        self.outcomes.len()
    }

    /// Responses with a 2xx status.
    pub fn ok(&self) -> usize {
        self.outcomes.iter().filter(|o| o.status.is_some_and(|s| (200..300).contains(&s))).count()
    }

    /// 2xx responses to requests sent within `[from, to)`.
    pub fn ok_sent_between(&self, from: Duration, to: Duration) -> usize {
        self.outcomes
            .iter()
            .filter(|o| {
                o.sent_at >= from && o.sent_at < to && o.status.is_some_and(|s| (200..300).contains(&s))
            })
            .count()
    }

    /// Count by status (0 = client timeout, 1 = connection error).
    pub fn by_status(&self) -> BTreeMap<u16, usize> {
        let mut map = BTreeMap::new();
        for o in &self.outcomes {
            let key = match (o.status, o.timed_out) {
                (Some(s), _) => s,
                (None, true) => 0,
                (None, false) => 1,
            };
            *map.entry(key).or_default() += 1;
        }
        map
    }

    /// Latency percentile of 2xx responses.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut latencies: Vec<Duration> = self
            .outcomes
            .iter()
            .filter(|o| o.status.is_some_and(|s| (200..300).contains(&s)))
            .filter_map(|o| o.latency)
            .collect();
        latencies.sort();
        let index = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(index).copied()
    }
}

/// A request to send: path, JSON body, headers.
#[derive(Debug, Clone)]
pub struct Shot {
    /// Path.
    pub path: String,
    /// JSON body (POST) or empty (GET).
    pub body: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
}

impl Shot {
    /// A blocking workflow run for app `key`.
    pub fn workflow(key: &str) -> Shot {
        Shot {
            path: "/v1/workflows/run".into(),
            body: r#"{"inputs":{},"response_mode":"blocking","user":"load"}"#.into(),
            headers: vec![("authorization".into(), format!("Bearer {key}"))],
        }
    }
}

/// Sends `shot` to `addr` at `rate` per second for `duration`, each request giving up after
/// `client_timeout`. Returns when every request has ended.
pub async fn open_loop(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    client_timeout: Duration,
    shot: Shot,
) -> Report {
    let start = Instant::now();
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        let shot = shot.clone();
        tasks.push(tokio::spawn(async move { one(addr, shot, client_timeout, start).await }));
    }
    let mut report = Report::default();
    for task in tasks {
        if let Ok(outcome) = task.await {
            report.outcomes.push(outcome);
        }
    }
    report
}

async fn one(addr: SocketAddr, shot: Shot, client_timeout: Duration, start: Instant) -> Outcome {
    let sent = Instant::now();
    let sent_at = sent.duration_since(start);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let method = if shot.body.is_empty() { "GET" } else { "POST" };
        let mut builder = request(method, addr, &shot.path).header("content-type", "application/json");
        for (k, v) in &shot.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let req = builder.body(Full::new(Bytes::from(shot.body.clone()))).map_err(|e| e.to_string())?;
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(client_timeout, exchange).await {
        Ok(Ok((status, body))) => {
            let code = (!(200..300).contains(&status))
                .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
                .flatten()
                .and_then(|v| v["code"].as_str().map(str::to_string));
            Outcome {
                sent_at,
                status: Some(status),
                code,
                latency: Some(sent.elapsed()),
                timed_out: false,
                error: None,
            }
        }
        Ok(Err(e)) => {
            Outcome { sent_at, status: None, code: None, latency: None, timed_out: false, error: Some(e) }
        }
        Err(_) => Outcome { sent_at, status: None, code: None, latency: None, timed_out: true, error: None },
    }
}
