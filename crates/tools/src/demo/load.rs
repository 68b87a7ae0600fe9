//! The demo's load: one side's plan, the live counters its progress line reads, and each
//! answer judged the demo's way ([`Kind`]). The sending is [`crate::loadgen`]'s: open-loop,
//! a fresh connection per request, each client giving up after its patience, a count fixed in
//! advance so a run always ends by `start + duration + patience`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::stats::{Kind, Observation};
use crate::loadgen::{exchange, open_loop, Exchange, Failure, Shot};

/// A blocking workflow run, the request a Dify app's API client sends most, from one app
/// (dify-shaper treats each app key as a tenant; the demo has one).
fn workflow_run() -> Shot {
    Shot::workflow("app-dify-shaper-demo01", "blocking", "dify-shaper-demo")
}

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
pub async fn run(addr: SocketAddr, plan: Plan, start: Instant, live: Arc<Live>) -> Vec<Observation> {
    let shot = Arc::new(workflow_run());
    let outcomes = open_loop(plan.rate, plan.count, start, |_| {
        live.sent.fetch_add(1, Ordering::Relaxed);
        let (live, shot) = (Arc::clone(&live), Arc::clone(&shot));
        async move {
            let outcome = one(addr, &shot, plan.patience, start).await;
            let counter = if outcome.kind == Kind::Ok { &live.ok } else { &live.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            outcome
        }
    })
    .await;
    // A task only fails to join when it panicked; count it as a connection error rather than
    // lose it from the totals.
    let lost = Observation { sent_at: Duration::ZERO, kind: Kind::Refused, latency: Duration::ZERO };
    outcomes.into_iter().map(|o| o.unwrap_or(lost)).collect()
}

/// One request on its own connection, bounded by `patience`, judged the demo's way.
async fn one(addr: SocketAddr, shot: &Shot, patience: Duration, start: Instant) -> Observation {
    judge(&exchange(addr, shot, patience, start).await)
}

/// What the demo makes of an exchange.
fn judge(exchange: &Exchange) -> Observation {
    let kind = match &exchange.result {
        Ok(answer) if answer.complete => Kind::of(Some((answer.status, &answer.body)), false),
        // A body cut short: the connection broke, as when the backend's port closed.
        Ok(_) => Kind::of(None, false),
        Err(failure) => Kind::of(None, *failure == Failure::TimedOut),
    };
    Observation { sent_at: exchange.sent_at, kind, latency: exchange.took }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::loadgen::Answer;

    fn exchange(result: Result<(u16, &'static str, bool), Failure>) -> Exchange {
        let answer = |(status, body, complete): (u16, &'static str, bool)| Answer {
            status,
            head: Duration::from_millis(5),
            first_frame: None,
            body: Bytes::from_static(body.as_bytes()),
            complete,
        };
        Exchange { sent_at: Duration::from_secs(1), took: Duration::from_secs(2), result: result.map(answer) }
    }

    #[test]
    fn answers_are_judged_the_demos_way() {
        let kind = |result| judge(&exchange(result)).kind;
        assert_eq!(kind(Ok((200, "{}", true))), Kind::Ok);
        let pg = r#"{"code":"internal_server_error","message":"FATAL: sorry, too many clients already"}"#;
        assert_eq!(kind(Ok((500, pg, true))), Kind::TooManyClients);
        assert_eq!(kind(Ok((503, r#"{"code":"server_busy"}"#, true))), Kind::Busy);
        assert_eq!(kind(Ok((200, "{", false))), Kind::Refused, "a body cut short");
        assert_eq!(kind(Err(Failure::TimedOut)), Kind::TimedOut);
        assert_eq!(kind(Err(Failure::Reset)), Kind::Refused);
        let outcome = judge(&exchange(Ok((200, "{}", true))));
        assert_eq!((outcome.sent_at, outcome.latency), (Duration::from_secs(1), Duration::from_secs(2)));
    }

    #[test]
    fn waiting_counts_what_was_sent_and_has_not_ended() {
        let live = Live::default();
        live.sent.store(5, Ordering::Relaxed);
        live.ok.store(2, Ordering::Relaxed);
        live.failed.store(1, Ordering::Relaxed);
        assert_eq!(live.waiting(), 2);
    }
}
