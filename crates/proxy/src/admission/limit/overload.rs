//! Overload outcomes (a 5xx that comes with the level, Dify's 429, a timeout): AIMD cuts,
//! one step more per refusal of the same round, and the failing level remembered as a
//! ceiling (see the parent module's docs).

use tokio::time::Instant;

use super::{AdaptiveLimit, Change, Outcome, Sample};

impl AdaptiveLimit {
    /// Whether a 5xx answered at `in_flight` in flight says "overloaded": the levels below it
    /// answered (almost) clean, or this level fails clearly more often than they do. A share of
    /// 5xx that lower levels show as well is the requests' own failing (a broken workflow
    /// answers 500 at any load) and must not cut the limit. With nothing known below, the share
    /// over all levels stands in; with nothing known at all, it counts (except for a request
    /// alone in flight).
    pub fn overload_counts(&self, in_flight: usize) -> bool {
        self.errors.overload_counts(in_flight)
    }

    pub(super) fn on_overload(&mut self, sample: Sample, now: Instant) -> Option<Change> {
        let floor = self.settings.min as f64;
        if self.last_cut.is_some_and(|cut| sample.started < cut) {
            // Of the same round as the last cut: each further refusal of the burst says the
            // backend took one request fewer (a database holding 2 of 6 refuses 4), down to
            // half the limit the round started with. A 429 is an app's limit, not a level.
            let bottom = self.burst_floor.unwrap_or(self.limit).max(floor);
            if sample.outcome == Outcome::Throttled || self.limit - 1.0 < bottom {
                return None;
            }
            self.limit -= 1.0;
            self.changed(now);
            self.last_change = Some(Change::Overload);
            return Some(Change::Overload);
        }
        self.burst_floor = Some(self.limit * 0.5);
        let mut next = self.limit * self.settings.backoff;
        if sample.outcome != Outcome::Throttled {
            // That level failed: go below it, but never more than halve in one step.
            let below_failing = (sample.in_flight as f64 - 1.0).max(self.limit * 0.5);
            next = next.min(below_failing);
            let failing = sample.in_flight as f64;
            let repeated = self.ceiling_failed && self.ceiling.is_some_and(|c| failing <= c + 1.0);
            self.ceiling = Some(failing);
            self.ceiling_failed = true;
            self.probe_wait = if repeated {
                (self.probe_wait * 2).min(self.settings.probe_interval_max)
            } else {
                self.settings.probe_interval
            };
            self.probe_after = Some(now + self.probe_wait);
        }
        self.record_level(now);
        self.limit = next.max(floor);
        self.slow_start = false;
        self.last_cut = Some(now);
        self.changed(now);
        self.last_change = Some(Change::Overload);
        Some(Change::Overload)
    }
}
