//! Slow start: from the safe initial limit, grow per round trip by proving each level with
//! the answers admitted at it, and end where latency puts the capacity (see the parent
//! module's docs).

use std::time::Duration;

use tokio::time::Instant;

use super::{served, AdaptiveLimit, Change, Sample};

/// What one batch of marginal answers says of the level in flight.
enum Verdict {
    /// Served on time: grow from it.
    Proven,
    /// In doubt: measure it again on answers admitted from now.
    Again,
    /// Past the capacity, by `ratio`; slow start ends no lower than `below`.
    Past { ratio: f64, below: usize },
}

/// Slow start's doubt about the level in flight, from its first late batch on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Doubt {
    /// When the first late batch was judged.
    since: Instant,
    /// The ratio of a late batch this step could explain, waiting for a second one.
    rise: Option<f64>,
}

impl Doubt {
    /// A batch at `level` came back late (`ratio` times the baseline, over `allowed`): hold
    /// the level and measure it again, or take it as past the capacity.
    ///
    /// A step from a level proven on time can add at most its own size of queueing (a
    /// worker-bound backend serves at least the `proven` level at once), so a rise well past
    /// `level / proven` is not this step's backlog but the whole backend slowing for a while
    /// (a load generator and the proxy starting on the same few cores slow every answer).
    /// Cutting on it ended slow start far below the capacity, and the climb back waited for a
    /// probe interval: such a level is held instead (no growth, no cut). A rise the step can
    /// explain ends slow start when a second batch shows it too: answers admitted as a
    /// slowdown passes come back only partly slowed, which looks like a backlog once. Doubt
    /// lasts `longest` at most; then the slowdown is the backend's own, and what was proven
    /// before it no longer holds.
    fn late_batch(
        &mut self,
        level: usize,
        proven: usize,
        ratio: f64,
        allowed: f64,
        longest: Duration,
        now: Instant,
    ) -> Verdict {
        if now.duration_since(self.since) >= longest {
            let ratio = self.rise.map_or(ratio, |first| (first + ratio) / 2.0);
            return Verdict::Past { ratio, below: 0 };
        }
        let explained = level as f64 / proven.max(1) as f64 * allowed;
        if ratio > explained {
            self.rise = None;
            return Verdict::Again;
        }
        match self.rise.replace(ratio) {
            None => Verdict::Again,
            Some(first) => Verdict::Past { ratio: (first + ratio) / 2.0, below: proven },
        }
    }
}

/// How many typical durations slow start holds a level whose answers slowed more than its
/// step explains, before taking the slowdown as the backend's own.
const HOLD_ROUND_TRIPS: f64 = 6.0;

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
        if sample.in_flight < level || self.batch_from.is_some_and(|from| sample.started < from) {
            return None;
        }
        self.marginal.0 += 1;
        self.marginal.1 += sample.latency.as_secs_f64() / baseline.max(1e-9);
        let (count, sum) = self.marginal;
        // Enough answers that their mean can tell a backlog of a few percent: as many as the
        // step added and at least a quarter of the level, up to 8 (one answer suffices for a
        // step of one at a small level, where one step is a large share anyway).
        // A level in doubt is measured again on a whole round: answers admitted in one burst
        // come back in waves, and a small batch can fall inside one.
        let needed = if self.doubt.is_some() {
            level
        } else {
            level.saturating_sub(self.proven).max(level / 4).clamp(1, 8)
        };
        if count < needed {
            return None;
        }
        self.marginal = (0, 0.0);
        let batch = sum / count as f64;
        // Within the noise of a mean of `count` answers, and the absolute jitter floor.
        let allowed = 1.0
            + s.queue_floor.max(2.0 * spread / (count as f64).sqrt())
            + s.queue_slack.as_secs_f64() / baseline.max(1e-9);
        // Latency rose, yet by Little's law the step served most of what a linear backend
        // would add over the proven level (which ran within the noise of the baseline): a
        // shared CPU or pool, not a backlog. The step is proven all the same.
        let serves = self.served.pays(level, batch, s.throughput_gain).unwrap_or_else(|| {
            served::pays_over(level, batch, self.proven, self.proven as f64, s.throughput_gain)
        });
        self.served.note(level, batch, now);
        let longest = Duration::from_secs_f64((HOLD_ROUND_TRIPS * self.typical_duration).clamp(0.0, 3600.0));
        let on_time = batch <= allowed || serves;
        let verdict = if on_time {
            Verdict::Proven
        } else {
            let doubt = self.doubt.get_or_insert(Doubt { since: now, rise: None });
            doubt.late_batch(level, self.proven, batch, allowed, longest, now)
        };
        match verdict {
            Verdict::Again => {
                self.batch_from = Some(now);
                None
            }
            Verdict::Proven => {
                self.doubt = None;
                self.batch_from = None;
                self.proven = level;
                self.slow_start_step(level, now)
            }
            Verdict::Past { ratio, below } => {
                self.doubt = None;
                self.batch_from = None;
                self.slow_start_cut(sample.signal, level, ratio, below, now)
            }
        }
    }

    /// Slow start ends: `level` queued, answers `ratio` times the baseline; the limit goes
    /// where latency puts the capacity, never below the level proven `below` it.
    fn slow_start_cut(
        &mut self,
        signal: usize,
        level: usize,
        ratio: f64,
        below: usize,
        now: Instant,
    ) -> Option<Change> {
        let next = (level as f64 / ratio)
            .round()
            .max(below as f64)
            .max(self.limit * 0.5)
            .max(self.settings.min as f64);
        self.slow_start = false;
        self.knee = Some(next);
        // The level that queued is probed again later, not grown back into at once.
        self.set_unpaid_ceiling(level, now);
        if next >= self.limit {
            return None;
        }
        let from = self.limit;
        self.limit = next;
        self.last_cut = Some(now);
        self.changed(now);
        self.note_cut(signal, from, ratio, now);
        self.last_change = Some(Change::Latency);
        Some(Change::Latency)
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
