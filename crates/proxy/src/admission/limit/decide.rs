//! The steady state: what a closed latency window decides — cut where latency puts the
//! capacity, keep a level that pays in answers, grow by a fraction far from the knee and by
//! one near it, probe a remembered ceiling now and then (see the parent module's docs).

use tokio::time::Instant;

use super::{AdaptiveLimit, Change};

/// With requests waiting, the share of a linear backend's step a level must serve (by
/// Little's law) for the limit to grow past it.
const GROW_GAIN: f64 = 0.6;

impl AdaptiveLimit {
    /// One latency window closed with `ratio` (its mean over the baseline), whose own
    /// relative noise (two standard errors of the mean) is `noise`.
    pub(super) fn decide(&mut self, ratio: f64, noise: f64, now: Instant) -> Option<Change> {
        let s = &self.settings;
        let level = self.limit.floor() as usize;
        let used = self.demand as f64 >= self.limit.floor();
        // Requests wait here: then what the clients get is goodput, and any queueing in the
        // backend is a wait they would rather spend in our fair queue.
        let standing = used && self.demand > level;
        if standing {
            // The level above, measured, delivered clearly more than this one: go back to it,
            // whatever latency says (a CPU-bound worker slows every request a little as
            // concurrency grows, yet serves more of them).
            let above = self.goodput.measured_above(level);
            if let Some(high) = above.filter(|high| self.paid(*high, level) == Some(true)) {
                if self.ceiling.is_none_or(|c| (high as f64) < c) {
                    self.limit = high as f64;
                    self.changed(now);
                    self.last_change = Some(Change::Grow);
                    return Some(Change::Grow);
                }
            }
        }
        // With a standing queue any queueing that stands out of the window's own noise is
        // worth removing — it is what settles the limit *at* the capacity, not a step or two
        // above it inside the tolerance; without one, only more than the tolerance is.
        // A window too noisy to tell (15-second workflows spread by a third: two standard
        // errors of a 20-answer mean are ±13 %) keeps the tolerance: cutting on its noise
        // walked the limit down to 1, far below the capacity.
        let precise = noise <= (s.tolerance - 1.0) / 3.0;
        // With requests waiting and a precise signal, Little's law says what this level serves
        // against what a lower one served (see the `served` module): the latency it costs is
        // worth it while it serves most of what a linear backend would add, and far from
        // saturation growth need not creep. With no lower level to compare with, a rise
        // inside the tolerance may as well be a shared CPU as a backlog: it is kept.
        let (serves, serves_well) = if standing && precise {
            (self.served.pays(level, ratio, s.throughput_gain), self.served.pays(level, ratio, GROW_GAIN))
        } else {
            (None, None)
        };
        if standing && precise {
            self.served.note(level, ratio, now);
        }
        let threshold = if serves.is_some() { 1.0 + noise.max(s.queue_floor) } else { s.tolerance };
        if ratio > threshold {
            let used_level = (self.demand as f64).min(self.limit).max(s.min as f64);
            let next = (used_level / ratio).round().max(self.limit * 0.5).max(s.min as f64);
            // The level the cut lands on (or the best measured below it) delivered clearly
            // less than this one: the latency buys answers, keep it.
            let worse_below = standing
                && self
                    .best_at_or_below(next as usize)
                    .is_some_and(|low| self.paid(level, low) == Some(true));
            // Inside the tolerance the cut is a bet that the step bought nothing; the goodput
            // measured so far, noise and all, decides it. A real Dify worker slows a few
            // percent with each request added (its CPU is shared) yet serves more of them:
            // cut at the first few percent, it was held at a third of what direct access got.
            let seems_to_pay = ratio <= s.tolerance
                && self.best_at_or_below(next as usize).is_some_and(|low| {
                    self.goodput.delivered_more(level, low, s.throughput_gain) == Some(true)
                });
            let worse_below = worse_below || seems_to_pay || serves == Some(true);
            if next < self.limit && !worse_below {
                if standing && threshold < s.tolerance {
                    // Queueing one step past the capacity: probe it again later, not at once.
                    self.set_unpaid_ceiling(level, now);
                }
                return Some(self.cut_to(next, Change::Latency, now));
            }
            if !worse_below {
                return None;
            }
        }
        let below = if standing { self.best_below(level) } else { None };
        let paid = below.and_then(|low| self.paid(level, low));
        if let (Some(low), Some(false)) = (below, paid) {
            // The step up bought queueing, not answers (measured over enough answers to
            // tell): back down, and probe this level again later. With a precise latency
            // signal the cut above already did this; this is how it happens when latency
            // is too noisy to tell one step.
            self.set_unpaid_ceiling(level, now);
            return Some(self.cut_to(low as f64, Change::Latency, now));
        }
        if !used {
            return None;
        }
        // Flat latency, or rising latency that still buys answers (a CPU-bound worker).
        // A level that serves `throughput_gain` of a linear step is kept (the cut above is
        // skipped); growing past it takes `GROW_GAIN`: the first window after a step sees the
        // backlog only partly built, and one request past a capacity of 8 then looks like
        // 0.57 of a step.
        let growing = ratio < s.grow_below || paid == Some(true) || serves_well == Some(true);
        if !growing {
            return None;
        }
        // At or past the ceiling and still growing: the probe passed (capacity grew). A
        // level that only queued before must show it pays, or no queueing at all: one step
        // past a capacity of 20 raises latency by 5 %, well inside `grow_below`.
        let probed = self.ceiling.is_some_and(|c| self.limit >= c);
        if let Some(ceiling) = self.ceiling.filter(|_| probed) {
            let clean = ratio <= 1.0 + s.queue_floor;
            let passed = self.ceiling_failed || paid == Some(true) || serves_well == Some(true) || clean;
            if !passed {
                return None;
            }
            self.ceiling = None;
            // Past a failing level creep on rather than jump: the next overload shows only as
            // a burst of 500s, as large as the jump. Past one that only queued creep too, until
            // two more steps show none: one request past a capacity of 20 adds 5 %, inside a
            // window's noise, and growing by a quarter from there put 1.3 times the capacity
            // in flight.
            self.knee = Some(ceiling);
            self.probe_wait = s.probe_interval;
        }
        // Far from any queueing, grow by a fraction (a capacity increase is found in a few
        // windows); with a little queueing already, creep by one.
        if serves_well == Some(true) && !probed {
            // Each step still adds nearly a linear backend's share: no knee here. Not on the
            // probe of a level that queued: one step there moves the level by less than the
            // ratio's own noise.
            self.knee = None;
        }
        let near_knee = self.knee.is_some_and(|k| self.limit * (1.0 + s.increase_ratio) > k);
        let far = (ratio < 1.0 + (s.grow_below - 1.0) / 2.0 || serves_well == Some(true)) && !near_knee;
        let step = if far { (self.limit * s.increase_ratio).max(1.0) } else { 1.0 };
        // Well past the old knee without queueing: capacity grew, forget it.
        if self.knee.is_some_and(|k| self.limit > k + 2.0) {
            self.knee = None;
        }
        let mut next = (self.limit + step).min(s.max as f64);
        if let Some(ceiling) = self.ceiling {
            if next >= ceiling - 1.0 {
                let probing = self.probe_after.is_none_or(|t| now >= t);
                if !probing {
                    next = next.min((ceiling - 1.0).max(self.limit));
                } else if self.limit >= ceiling - 1.0 {
                    // A probe: one past the ceiling. If it pays (or no overload follows), the
                    // ceiling was wrong (capacity grew) and is forgotten.
                    next = self.limit + 1.0;
                    self.probe_after = Some(now + self.probe_wait);
                }
            }
        }
        if next > self.limit {
            self.limit = next.min(s.max as f64);
            self.changed(now);
            self.last_change = Some(Change::Grow);
            return Some(Change::Grow);
        }
        None
    }

    /// Remembers `level` as one that bought queueing rather than answers. It is probed again
    /// after `probe_interval`, or twice that when the last probe failed at the same level: a
    /// probe costs a request's wait in gunicorn's backlog, and rarer probes would find a
    /// capacity increase later.
    pub(super) fn set_unpaid_ceiling(&mut self, level: usize, now: Instant) {
        let s = &self.settings;
        let repeated = !self.ceiling_failed && self.ceiling.is_some_and(|c| c as usize == level);
        self.probe_wait = if repeated { s.probe_interval * 2 } else { s.probe_interval };
        self.ceiling = Some(level as f64);
        self.ceiling_failed = false;
        self.probe_after = Some(now + self.probe_wait);
    }

    pub(super) fn cut_to(&mut self, next: f64, change: Change, now: Instant) -> Change {
        self.limit = next;
        self.slow_start = false;
        // Where queueing began: growth slows to +1 near it instead of overshooting.
        self.knee = Some(next);
        self.last_cut = Some(now);
        self.changed(now);
        self.last_change = Some(change);
        change
    }
}
