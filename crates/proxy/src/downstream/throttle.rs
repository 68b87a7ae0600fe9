//! Rate-limited logging: under attack a limit is hit thousands of times a second, and one
//! line per hit would bury everything else (and cost more than the hit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Lets one log line through per period and counts the ones it held back.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    start: Instant,
    /// Milliseconds since `start` at which the next line may go; 0 before the first.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    /// A throttle letting one line through per `period`.
    pub fn new(period: Duration) -> Throttle {
        Throttle { period, start: Instant::now(), next_ms: AtomicU64::new(0), held: AtomicU64::new(0) }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines held back since the last
    /// one; `None` when this one is held back.
    pub fn admit(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        let period = self.period.as_millis() as u64;
        if now >= next
            && self.next_ms.compare_exchange(next, now + period, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_rest_counted() {
        let throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.admit(), None);
        }
        // The next line (a period later) reports the five held back.
        throttle.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(throttle.admit(), Some(5));
    }
}
