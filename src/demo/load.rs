//! The demo's open-loop load generator: request `i` is sent at `start + i / rate` whatever
//! earlier requests are doing (real clients do not wait for each other), each on a fresh
//! connection, each client giving up after its patience. The count is fixed in advance, so a
//! run always ends by `start + duration + patience`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::stats::{Kind, Outcome};

/// A blocking workflow run, the request a Dify app's API client sends most.
const PATH: &str = "/v1/workflows/run";
const BODY: &str = r#"{"inputs":{},"response_mode":"blocking","user":"dify-shaper-demo"}"#;
/// An app key: dify-shaper treats each key as a tenant (the demo has one).
const APP_KEY: &str = "Bearer app-dify-shaper-demo01";
/// Answers bigger than this are not read further (a run's JSON is well under 1 KiB).
const MAX_BODY: usize = 64 * 1024;

/// The schedule of one side.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Requests per second.
    pub rate: f64,
    /// Requests to send.
    pub count: usize,
    /// A client gives up after this long without a full answer.
    pub patience: Duration,
}

/// Counters the progress line reads while a run goes on.
#[derive(Debug, Default)]
pub struct Live {
    /// Requests sent so far.
    pub sent: AtomicUsize,
    /// Requests that ended with a 2xx.
    pub ok: AtomicUsize,
    /// Requests that ended otherwise.
    pub failed: AtomicUsize,
}

impl Live {
    /// Requests sent that have not ended yet.
    pub fn waiting(&self) -> usize {
        let ended = self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.sent.load(Ordering::Relaxed).saturating_sub(ended)
    }
}

/// Sends `plan` to `addr` from `start` on; returns every outcome once the last request ended.
pub async fn run(addr: SocketAddr, plan: Plan, start: Instant, live: Arc<Live>) -> Vec<Outcome> {
    let mut tasks = Vec::with_capacity(plan.count);
    for i in 0..plan.count {
        // Behind schedule (a busy machine), requests go out at once rather than being dropped.
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / plan.rate)).await;
        live.sent.fetch_add(1, Ordering::Relaxed);
        let live = Arc::clone(&live);
        tasks.push(tokio::spawn(async move {
            let outcome = one(addr, plan.patience, start).await;
            let counter = if outcome.kind == Kind::Ok { &live.ok } else { &live.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            outcome
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        // A task only fails to join when it panicked; count it as a connection error rather
        // than lose it from the totals.
        let outcome = task.await.unwrap_or(Outcome {
            sent_at: Duration::ZERO,
            kind: Kind::Refused,
            latency: Duration::ZERO,
        });
        outcomes.push(outcome);
    }
    outcomes
}

/// One request on its own connection, bounded by `patience`.
async fn one(addr: SocketAddr, patience: Duration, start: Instant) -> Outcome {
    let sent = Instant::now();
    let answer = tokio::time::timeout(patience, exchange(addr)).await;
    let latency = sent.elapsed();
    let kind = match &answer {
        Ok(Ok((status, body))) => Kind::of(Some((*status, body)), false),
        Ok(Err(_)) => Kind::of(None, false),
        Err(_) => Kind::of(None, true),
    };
    // Dropping the connection on timeout closes it, as a client that gives up does.
    Outcome { sent_at: sent.duration_since(start), kind, latency }
}

/// Connects, sends the run, reads the whole answer.
async fn exchange(addr: SocketAddr) -> Result<(u16, Bytes), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::post(PATH)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, APP_KEY)
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{ServiceTime, SimConfig, Simulator};

    #[tokio::test]
    async fn sends_on_schedule_and_classifies_what_comes_back() {
        let config = SimConfig {
            db_connections: Some(1),
            service_time: ServiceTime::Fixed(Duration::from_millis(300)),
            ..SimConfig::default()
        };
        let sim = Simulator::start(([127, 0, 0, 1], 0).into(), config).await.expect("sim");
        let live = Arc::new(Live::default());
        // Two runs 50 ms apart on one DB connection: the second one gets Dify's 500.
        let plan = Plan { rate: 20.0, count: 2, patience: Duration::from_secs(5) };
        let outcomes = run(sim.addr(), plan, Instant::now(), Arc::clone(&live)).await;
        let kinds: Vec<Kind> = outcomes.iter().map(|o| o.kind).collect();
        assert_eq!(kinds, [Kind::Ok, Kind::TooManyClients]);
        assert_eq!((live.sent.load(Ordering::Relaxed), live.ok.load(Ordering::Relaxed)), (2, 1));
        assert_eq!(live.waiting(), 0);
        assert!(outcomes[1].sent_at >= Duration::from_millis(45), "{:?}", outcomes[1]);
        assert!(outcomes[0].latency >= Duration::from_millis(300), "{:?}", outcomes[0]);

        // A client with less patience than the run gives up.
        let plan = Plan { rate: 10.0, count: 1, patience: Duration::from_millis(100) };
        let outcomes = run(sim.addr(), plan, Instant::now(), Arc::new(Live::default())).await;
        assert_eq!(outcomes[0].kind, Kind::TimedOut);

        // Nothing listens any more: refused.
        let addr = sim.addr();
        sim.stop().await;
        let plan = Plan { rate: 10.0, count: 1, patience: Duration::from_secs(2) };
        let outcomes = run(addr, plan, Instant::now(), Arc::new(Live::default())).await;
        assert_eq!(outcomes[0].kind, Kind::Refused);
    }
}
