//! Open-loop load for tests, sent by the crate's generator (`dify_shaper_tools::loadgen`): requests
//! start on schedule whatever happens to earlier ones (as real clients do), each on its own
//! connection, each with a client timeout after which the client gives up and closes its
//! connection. Bounded in count and time. This file keeps the tests' view of the outcomes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use dify_shaper_tools::demo::stats::percentile;
use dify_shaper_tools::loadgen::{exchange, open_loop as schedule, Exchange, Failure};
use tokio::time::Instant;

pub use dify_shaper_tools::loadgen::Shot;

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
        percentile(&latencies, p)
    }
}

/// A blocking workflow run for app `key`.
pub fn workflow(key: &str) -> Shot {
    Shot::workflow(key, "blocking", "load")
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
    let exchanges = schedule(rate, total, start, |_| {
        let shot = shot.clone();
        async move { exchange(addr, &shot, client_timeout, start).await }
    })
    .await;
    Report { outcomes: exchanges.into_iter().flatten().map(Outcome::from).collect() }
}

impl From<Exchange> for Outcome {
    fn from(exchange: Exchange) -> Outcome {
        let sent_at = exchange.sent_at;
        let none =
            Outcome { sent_at, status: None, code: None, latency: None, timed_out: false, error: None };
        match exchange.result {
            Ok(answer) if answer.complete => Outcome {
                status: Some(answer.status),
                code: (!answer.is_success()).then(|| answer.envelope_code()).flatten(),
                latency: Some(exchange.took),
                ..none
            },
            Ok(answer) => Outcome { error: Some(format!("{} body cut short", answer.status)), ..none },
            Err(Failure::TimedOut) => Outcome { timed_out: true, ..none },
            Err(failure) => Outcome { error: Some(format!("{failure:?}")), ..none },
        }
    }
}
