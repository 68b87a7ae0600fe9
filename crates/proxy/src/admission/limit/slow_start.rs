//! Slow start: from the safe initial limit, grow per round trip by proving each level with
//! the answers admitted at it, and end where latency puts the capacity (see the parent
//! module's docs).

use std::time::Duration;

use tokio::time::Instant;

use super::{served, AdaptiveLimit, Change, Sample};

/// How many typical durations after slow start ends the level that queued is probed again.
const PROBE_ROUND_TRIPS: f64 = 4.0;

impl AdaptiveLimit {
    /// Slow start, step by step: the answers of the requests admitted above the last proven
    /// level (the *marginal* ones, which a worker-bound backend would park in its backlog
    /// first) decide each step. Their mean within the signal's own noise of its baseline
    /// proves the level, and the limit grows by `slow_start_growth` from it; above it, the
    /// step went past the capacity and slow start ends where latency puts the capacity. One
    /// answer alone cannot tell a backlog of 5 % from jitter, and growing from single answers
    /// on time let the limit climb to 1.5 times a capacity of 20 within a tolerance.
    pub(super) fn slow_start_answer(&mut self, sample: &Sample, now: Instant) -> Option<Change> {
        let s = &self.settings;
        let signal = self.signals.get(sample.signal);
        // Until a first window at the initial (safe) limit says what "on time" is, and for
        // answers that spread widely by nature (judged by window means instead, see
        // `slow_start_window`), single answers decide nothing.
        let (Some(spread), Some(baseline)) =
            (signal.and_then(|sig| sig.spread), signal.and_then(|sig| sig.lowest_mean))
        else {
            return None;
        };
        if spread > (s.tolerance - 1.0) / 3.0 {
            return None;
        }
        let level = self.limit.floor() as usize;
        if level <= self.proven {
            return self.slow_start_step(level, now);
        }
        // Only answers admitted with the whole new level in flight: those admitted on the way
        // up to it (the 23rd of a step from 22 to 26) waited behind fewer, and came first.
        if sample.in_flight < level {
            return None;
        }
        self.marginal.0 += 1;
        self.marginal.1 += sample.latency.as_secs_f64() / baseline.max(1e-9);
        let (count, sum) = self.marginal;
        // Enough answers that their mean can tell a backlog of a few percent: as many as the
        // step added and at least a quarter of the level, up to 8 (one answer suffices for a
        // step of one at a small level, where one step is a large share anyway).
        if count < level.saturating_sub(self.proven).max(level / 4).clamp(1, 8) {
            return None;
        }
        self.marginal = (0, 0.0);
        let ratio = sum / count as f64;
        // Within the noise of a mean of `count` answers, and the absolute jitter floor.
        let allowed = 1.0
            + s.queue_floor.max(2.0 * spread / (count as f64).sqrt())
            + s.queue_slack.as_secs_f64() / baseline.max(1e-9);
        // Latency rose, yet by Little's law the step served most of what a linear backend
        // would add over the proven level (which ran within the noise of the baseline): a
        // shared CPU or pool, not a backlog. The step is proven all the same.
        let serves = self.served.pays(level, ratio, s.throughput_gain).unwrap_or_else(|| {
            served::pays_over(level, ratio, self.proven, self.proven as f64, s.throughput_gain)
        });
        self.served.note(level, ratio, now);
        if ratio > allowed && !serves {
            // Past the capacity: where latency puts it, never below the last proven level.
            let next = (level as f64 / ratio)
                .round()
                .max(self.proven as f64)
                .max(self.limit * 0.5)
                .max(s.min as f64);
            self.slow_start = false;
            self.knee = Some(next);
            // The level that queued is a ceiling, probed again after a few round trips rather
            // than grown back into at once: near the capacity one step moves the level by less
            // than the ratio's own noise, and growth by a quarter from the cut put 1.25 times
            // the capacity in flight.
            self.set_unpaid_ceiling(level, now);
            let soon = (PROBE_ROUND_TRIPS * self.typical_duration).clamp(0.0, 3600.0);
            self.probe_after = Some(now + Duration::from_secs_f64(soon).min(self.settings.probe_interval));
            if next >= self.limit {
                return None;
            }
            let from = self.limit;
            self.limit = next;
            self.last_cut = Some(now);
            self.changed(now);
            self.note_cut(sample.signal, from, ratio, now);
            self.last_change = Some(Change::Latency);
            return Some(Change::Latency);
        }
        self.proven = level;
        self.slow_start_step(level, now)
    }

    /// Grows from the proven `level` by `slow_start_growth`, when it is used up.
    pub(super) fn slow_start_step(&mut self, level: usize, now: Instant) -> Option<Change> {
        let s = &self.settings;
        let used = (self.demand as f64) >= self.limit.floor();
        let next = (level as f64 * (1.0 + s.slow_start_growth)).max(level as f64 + 1.0).min(s.max as f64);
        if !used || next <= self.limit {
            return None;
        }
        self.limit = next;
        self.marginal = (0, 0.0);
        self.last_change_at = Some(now);
        self.last_change = Some(Change::Grow);
        Some(Change::Grow)
    }

    /// Slow start for a signal whose answers spread widely: by window means, as in steady
    /// state but growing by `slow_start_growth` per window.
    pub(super) fn slow_start_window(&mut self, ratio: f64, now: Instant) -> Option<Change> {
        let s = &self.settings;
        if ratio > s.tolerance {
            let used = (self.demand as f64).min(self.limit).max(s.min as f64);
            let next = (used / ratio).round().max(self.limit * 0.5).max(s.min as f64);
            self.demand = 0;
            return Some(self.cut_to(next, Change::Latency, now));
        }
        let used = (self.demand as f64) >= self.limit.floor();
        self.demand = 0;
        if ratio >= s.grow_below || !used {
            return None;
        }
        let next = (self.limit + (self.limit * s.slow_start_growth).max(1.0)).min(s.max as f64);
        if next <= self.limit {
            return None;
        }
        self.limit = next;
        self.last_change_at = Some(now);
        self.last_change = Some(Change::Grow);
        Some(Change::Grow)
    }
}
