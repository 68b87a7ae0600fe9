//! When a standing queue gets no answer at all: how long to wait before a stall probe, and
//! how that wait backs off while the backend stays silent.
//!
//! Latency and goodput both need answers. Long runs give none for minutes: behind a limit
//! learned on 1-second runs, two 65-second runs take one slot and one place in the queue, and
//! the waiting one would be refused after its queue timeout while direct access answers it.
//! So a queue that no answer has moved for a while admits one request more — a probe, judged
//! by the same latency and overload signals as any growth once its answer comes. Consecutive
//! stall probes with no answer between them wait twice as long each time, so a frozen backend
//! gets one request more per doubling interval, not a flood.

use std::time::Duration;

use tokio::time::Instant;

/// Average gaps between answers a silence must last before it counts as a stall.
const QUIET_GAPS: u32 = 12;

/// The stall clock of one upstream.
#[derive(Debug, Default)]
pub(super) struct Stall {
    /// When the backend last answered anything (any outcome).
    last_answer: Option<Instant>,
    /// How long answered requests took from admission (a moving average seeded by the first
    /// answer, so early estimates are not biased towards zero), seconds.
    duration: Option<f64>,
    /// Stall probes since the last answer.
    probes: u32,
}

impl Stall {
    /// The backend answered a request that took `duration` since admission: the queue moves,
    /// and the back-off starts afresh.
    pub(super) fn answered(&mut self, duration: Duration, now: Instant) {
        let d = duration.as_secs_f64();
        self.duration = Some(self.duration.map_or(d, |mean| 0.9 * mean + 0.1 * d));
        self.last_answer = Some(now);
        self.probes = 0;
    }

    /// How far apart answers come with `level` requests in flight in a saturated backend: the
    /// typical duration (its backlog included) divided by the level. Unknown before the first
    /// answer: the initial limit is then all there is to go by.
    pub(super) fn expected_gap(&self, level: usize) -> Option<Duration> {
        self.duration.map(|d| Duration::from_secs_f64((d / level.max(1) as f64).clamp(0.0, 3600.0)))
    }

    /// Whether a stall probe is due at `now`. `since` is the latest of: the queue began to
    /// stand, the limit last changed. `expected_gap` is how far apart answers come at this
    /// level on average. The first probe waits [`QUIET_GAPS`] of them — answers from many
    /// parallel workers come about as a Poisson stream, where a silence that long happens by
    /// chance a few times in a million answers — but at least `min` and at most half of `max`
    /// (a run's queue timeout is a minute); each further one twice the one before, up to
    /// `max`.
    pub(super) fn due(
        &self,
        since: Instant,
        expected_gap: Duration,
        min: Duration,
        max: Duration,
        now: Instant,
    ) -> bool {
        let first = expected_gap.saturating_mul(QUIET_GAPS).clamp(min, (max / 2).max(min));
        let wait = first.saturating_mul(1 << self.probes.min(16)).min(max.max(first));
        let from = self.last_answer.map_or(since, |answer| answer.max(since));
        now.duration_since(from) >= wait
    }

    /// A stall probe was made: the next one waits longer unless an answer comes first.
    pub(super) fn probed(&mut self) {
        self.probes = self.probes.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn waits_twelve_gaps_and_doubles_without_answers() {
        let t0 = Instant::now();
        let mut stall = Stall::default();
        let gap = Duration::from_secs(1);
        assert!(!stall.due(t0, gap, MIN, MAX, t0 + Duration::from_millis(11_900)));
        assert!(stall.due(t0, gap, MIN, MAX, t0 + Duration::from_secs(12)));
        stall.probed();
        let t1 = t0 + Duration::from_secs(12);
        assert!(!stall.due(t1, gap, MIN, MAX, t1 + Duration::from_millis(23_900)));
        assert!(stall.due(t1, gap, MIN, MAX, t1 + Duration::from_secs(24)));
        for _ in 0..10 {
            stall.probed();
        }
        assert!(!stall.due(t1, gap, MIN, MAX, t1 + MAX - Duration::from_millis(1)));
        assert!(stall.due(t1, gap, MIN, MAX, t1 + MAX), "the back-off is capped");
        stall.answered(Duration::from_secs(1), t1 + Duration::from_secs(1));
        assert!(
            !stall.due(t1, gap, MIN, MAX, t1 + Duration::from_millis(12_900)),
            "an answer restarts the clock"
        );
        assert!(stall.due(t1, gap, MIN, MAX, t1 + Duration::from_secs(13)));
    }

    #[test]
    fn a_long_gap_waits_at_most_half_the_longest() {
        let t0 = Instant::now();
        let stall = Stall::default();
        let gap = Duration::from_secs(65);
        assert!(!stall.due(t0, gap, MIN, MAX, t0 + Duration::from_millis(29_900)));
        assert!(stall.due(t0, gap, MIN, MAX, t0 + MAX / 2));
    }

    #[test]
    fn a_short_gap_still_waits_the_minimum() {
        let t0 = Instant::now();
        let stall = Stall::default();
        let gap = Duration::from_millis(100);
        assert!(!stall.due(t0, gap, MIN, MAX, t0 + Duration::from_millis(4_900)));
        assert!(stall.due(t0, gap, MIN, MAX, t0 + MIN));
    }
}
