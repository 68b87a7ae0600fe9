//! Retries that cannot run a workflow twice, and cannot hammer a sick backend.
//!
//! * **What may be retried** is decided by the caller from what is *known* about the attempt:
//!   a refused connect, Dify's 429 `too_many_requests`, a backend 503 and a TCP reset before
//!   any answer (the request was never read) prove the request was not processed, so even a
//!   POST is retried (its body is replayed from pingora's retry buffer). After anything that
//!   may have been processed (500/502/504, a plain close, a break mid-response) only
//!   idempotent methods are retried, and never once a response byte reached the client.
//! * **Budget** (as Envoy's and Linkerd's): retries within `window` may not exceed
//!   `min_per_window + ratio × requests`, so a backend answering 503 to everything gets at most
//!   a fraction more traffic, not `max_attempts` times as much.
//! * **Backoff**: exponential with full jitter, or the backend's `Retry-After` when it gave one
//!   (up to the cap).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// A retry budget over a sliding window of one-second buckets.
#[derive(Debug)]
pub struct RetryBudget {
    limits: Mutex<(f64, f64)>,
    window: Duration,
    buckets: Mutex<VecDeque<Bucket>>,
    /// Retries taken and refused since start (for metrics).
    granted: AtomicU64,
    denied: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    /// Retries may reach `ratio` of requests plus `min_per_window` within `window`.
    pub fn new(ratio: f64, min_per_window: f64, window: Duration) -> Self {
        RetryBudget {
            limits: Mutex::new((ratio, min_per_window)),
            window,
            buckets: Mutex::new(VecDeque::new()),
            granted: AtomicU64::new(0),
            denied: AtomicU64::new(0),
        }
    }

    /// Changes the ratio and floor (config reload); what was counted is kept.
    pub fn set_limits(&self, ratio: f64, min_per_window: f64) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = (ratio, min_per_window);
    }

    fn with_current<T>(&self, now: Instant, f: impl FnOnce(&mut VecDeque<Bucket>) -> T) -> T {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        while buckets.front().is_some_and(|b| now.duration_since(b.start) >= self.window) {
            buckets.pop_front();
        }
        if buckets.back().is_none_or(|b| now.duration_since(b.start) >= Duration::from_secs(1)) {
            buckets.push_back(Bucket { start: now, requests: 0, retries: 0 });
        }
        f(&mut buckets)
    }

    /// Counts a first attempt.
    pub fn record_request(&self, now: Instant) {
        self.with_current(now, |b| {
            if let Some(last) = b.back_mut() {
                last.requests += 1;
            }
        });
    }

    /// Retries granted and refused (budget exhausted) since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.granted.load(Ordering::Relaxed), self.denied.load(Ordering::Relaxed))
    }

    /// Takes one retry from the budget if there is room.
    pub fn try_retry(&self, now: Instant) -> bool {
        let granted = self.with_current(now, |b| {
            let requests: u64 = b.iter().map(|x| x.requests).sum();
            let retries: u64 = b.iter().map(|x| x.retries).sum();
            let (ratio, min_per_window) = *self.limits.lock().unwrap_or_else(|p| p.into_inner());
            let allowed = min_per_window + ratio * requests as f64;
            if (retries as f64) < allowed {
                if let Some(last) = b.back_mut() {
                    last.retries += 1;
                }
                true
            } else {
                false
            }
        });
        let counter = if granted { &self.granted } else { &self.denied };
        counter.fetch_add(1, Ordering::Relaxed);
        granted
    }
}

/// The wait before retry number `attempt` (1 = first retry): the backend's `Retry-After` when
/// given (capped), else a uniformly random time up to `base × 2^(attempt-1)`, capped.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(cap);
    }
    let ceiling = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(cap);
    let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
}

/// Parses a `Retry-After` given in seconds (the HTTP-date form is not used by Dify).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_caps_retries_to_a_share_of_requests() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 3.0, Duration::from_secs(10));
        let mut granted = 0;
        for i in 0..100u64 {
            let now = t0 + Duration::from_millis(i * 50);
            budget.record_request(now);
            if budget.try_retry(now) {
                granted += 1;
            }
        }
        // 100 requests within 5 s: 3 + 20 % of 100 = 23 retries at most.
        assert!((20..=23).contains(&granted), "{granted} retries granted");
        // Once the window has passed, the budget refills.
        let later = t0 + Duration::from_secs(30);
        assert!(budget.try_retry(later));
    }

    #[test]
    fn backoff_is_jittered_exponential_or_retry_after() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 1..6 {
            let d = backoff(attempt, base, cap, None);
            assert!(d <= base * (1 << (attempt - 1)).min(20), "{attempt}: {d:?}");
        }
        assert_eq!(backoff(1, base, cap, Some(Duration::from_secs(1))), Duration::from_secs(1));
        assert_eq!(backoff(1, base, cap, Some(Duration::from_secs(30))), cap);
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
