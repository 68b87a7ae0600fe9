//! How long a waiter may stay in the queue: the rule that makes "served or refused before its
//! client gives up" the queue's invariant, and the client patience it learns.
//!
//! A waiter's time runs out at the earliest of its class's `queue_timeout` (extended while a
//! hold keeps it waiting on purpose) and what its client is expected to wait
//! ([`client_wait`]): the deadline the client stated (`X-Request-Timeout`, see
//! [`crate::proxy::admit`]), else the patience learned from clients of its class that left
//! while queued (of any class while its own has too few), less the time from admission to the
//! answer that the class's answers rarely exceed — a request admitted just before its client
//! leaves is wasted backend work, and the client never sees the answer. A hold does not
//! extend the client's limit: a 503 it can retry beats a silent timeout.
//!
//! Patience is learned per class because a console call and a 15-second workflow have very
//! different clients, and quickly (from three departures), because until it is known every
//! waiter of a standing queue can only time out silently. Only a departure of the oldest
//! waiter of its class counts: a client that leaves while an earlier one still waits left for
//! another reason than the wait (see [`crate::admission::controller`]). When it changes, every waiter
//! re-reads its limit (see [`crate::admission::Admission`]), so the ones queued before it
//! was known are refused in time too.

use std::collections::VecDeque;
use std::time::Duration;

/// A client's limit is met this much early (a share of it, at least [`MIN_MARGIN`]): the 503
/// must reach the client before it gives up, not at the same instant.
const MARGIN: f64 = 0.05;
const MIN_MARGIN: Duration = Duration::from_millis(50);

/// Departures kept per class (and overall).
const SAMPLES: usize = 32;
/// Departures before an estimate is made.
const MIN_SAMPLES: usize = 3;

/// Waits of clients that left the queue, oldest first; the estimate is a low percentile.
#[derive(Debug, Default, Clone)]
struct Waits(VecDeque<f64>);

impl Waits {
    fn record(&mut self, waited: f64) {
        if self.0.len() == SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back(waited);
    }

    /// The 25th percentile, once [`MIN_SAMPLES`] are known. A low percentile, because the
    /// cost of admitting a request whose client leaves is wasted backend work, while the cost
    /// of refusing a patient one is a fast 503 it can retry.
    fn estimate(&self) -> Option<Duration> {
        if self.0.len() < MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<f64> = self.0.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 4).map(|s| Duration::from_secs_f64(*s))
    }
}

/// How long clients wait before they give up, learned from queued requests whose client
/// disconnected, per class and overall.
#[derive(Debug, Default)]
pub struct Patience {
    overall: Waits,
    by_class: Vec<Waits>,
}

impl Patience {
    /// Records that a client of `class` left after waiting `waited`.
    pub fn record(&mut self, class: usize, waited: Duration) {
        if self.by_class.len() <= class {
            self.by_class.resize(class + 1, Waits::default());
        }
        let waited = waited.as_secs_f64();
        self.by_class[class].record(waited);
        self.overall.record(waited);
    }

    /// The patience of `class`'s clients: its own once known, else that of all clients.
    pub fn estimate(&self, class: usize) -> Option<Duration> {
        self.by_class.get(class).and_then(Waits::estimate).or_else(|| self.overall.estimate())
    }

    /// The patience of all clients (for `/status`).
    pub fn overall(&self) -> Option<Duration> {
        self.overall.estimate()
    }
}

/// How long a client is expected to wait for its permit, if anything is known: the deadline it
/// stated, else the learned patience of its class's clients — less `to_answer` (the time from
/// admission to the answer that the class's answers rarely exceed) and a small margin. What a
/// client says of itself beats a statistic of others. The queue refuses it then (see
/// [`crate::admission::Admission`]), or at its class's `queue_timeout` if that comes first: a
/// stated deadline never lengthens the wait past the class's limit, and never moves a request
/// ahead of others.
pub fn client_wait(
    client_deadline: Option<Duration>,
    patience: Option<Duration>,
    to_answer: Duration,
) -> Option<Duration> {
    let limit = client_deadline.or(patience)?;
    Some(limit.saturating_sub(to_answer).saturating_sub(limit.mul_f64(MARGIN).max(MIN_MARGIN)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn patience_is_a_low_percentile_of_observed_departures() {
        let mut p = Patience::default();
        p.record(0, secs(5.0));
        p.record(0, secs(5.1));
        assert_eq!(p.estimate(0), None, "too few samples");
        for s in [4.9, 5.2, 30.0, 5.0, 4.8, 5.05] {
            p.record(0, secs(s));
        }
        let estimate = p.estimate(0).map(|d| d.as_secs_f64()).unwrap_or_default();
        assert!((4.8..=5.0).contains(&estimate), "{estimate}");
    }

    #[test]
    fn each_class_has_its_own_patience_with_the_overall_one_as_fallback() {
        let mut p = Patience::default();
        for _ in 0..3 {
            p.record(1, secs(5.0));
        }
        assert_eq!(p.estimate(1), Some(secs(5.0)));
        assert_eq!(p.estimate(0), Some(secs(5.0)), "class 0 knows nothing: the overall estimate");
        for _ in 0..3 {
            p.record(0, secs(60.0));
        }
        assert_eq!(p.estimate(0), Some(secs(60.0)), "class 0's clients wait longer");
        assert_eq!(p.estimate(1), Some(secs(5.0)));
        assert_eq!(p.estimate(7), p.overall());
    }

    #[test]
    fn a_stated_deadline_or_else_patience_less_the_time_to_the_answer() {
        assert_eq!(client_wait(None, None, secs(2.0)), None);
        // 10 s stated, 2 s to the answer, 5 % (0.5 s) early.
        assert_eq!(client_wait(Some(secs(10.0)), None, secs(2.0)), Some(secs(7.5)));
        assert_eq!(client_wait(Some(secs(10.0)), Some(secs(5.0)), secs(2.0)), Some(secs(7.5)), "stated wins");
        assert_eq!(client_wait(None, Some(secs(5.0)), Duration::ZERO), Some(secs(4.75)));
        // Short limits are met at least 50 ms early; a limit shorter than the answer is now.
        assert_eq!(client_wait(Some(secs(0.5)), None, Duration::ZERO), Some(secs(0.45)));
        assert_eq!(client_wait(Some(secs(1.0)), None, secs(2.0)), Some(Duration::ZERO));
    }
}
