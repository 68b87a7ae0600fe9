//! Closing a latency window: each answer joins its signal's window; a full (or stale) one is
//! compared with the signal's baseline, and the ratio goes to slow start or to the steady
//! state's decision.

use tokio::time::Instant;

use super::signal::{standard_error, Signal};
use super::{AdaptiveLimit, Change, Outcome, Pending, Sample};

/// A latency cut waiting for the first window at the level it landed on.
#[derive(Debug, Clone, Copy)]
pub(super) struct CutCheck {
    /// The signal whose latency was cut for.
    signal: usize,
    /// The level cut from, and the latency ratio it showed.
    from: f64,
    ratio: f64,
    /// When the cut was made (any later change voids the check).
    at: Instant,
    /// The level before a run of cuts each made on a window as slow as the one before, and
    /// how many such windows came before this cut.
    origin: f64,
    flat_before: u32,
}

impl AdaptiveLimit {
    pub(super) fn on_latency(
        &mut self,
        sample: Sample,
        now: Instant,
        pending: &(impl Pending + ?Sized),
    ) -> Option<Change> {
        // Only requests admitted under the current limit say anything about it: ones admitted
        // before the last change still carry the old queueing (after a cut, judging by them
        // would cut again and again; after growth, they hide what the growth did). Requests
        // admitted earlier that are still stuck are seen through `pending` instead. In slow
        // start the round decides (see `slow_start_round`); its windows only learn baselines.
        if !self.slow_start && self.last_change_at.is_some_and(|at| sample.started < at) {
            return None;
        }
        if self.signals.len() <= sample.signal {
            self.signals.resize_with(sample.signal + 1, Signal::default);
        }
        // A client that left before the header says only that the answer took *at least*
        // that long: past the no-load latency that is queueing seen early, below it nothing.
        // Counted as it stood, a client that waited here until just before its timeout and
        // left a moment after admission read as an answer faster than any run; such answers
        // lowered the baseline by a fifth, and the next batch on time looked like a backlog.
        if sample.outcome == Outcome::Abandoned
            && self.signals[sample.signal].lowest_mean.is_none_or(|low| sample.latency.as_secs_f64() <= low)
        {
            return None;
        }
        let mut change = None;
        if self.slow_start {
            change = self.slow_start_answer(&sample, now);
            if change.is_some() {
                return change;
            }
        }
        let settings = &self.settings;
        let window_samples = if self.slow_start {
            (self.limit.floor() as usize).clamp(settings.slow_start_min_window, settings.window_samples)
        } else {
            settings.window_samples
        };
        let signal = &mut self.signals[sample.signal];
        signal.window.push(sample.latency.as_secs_f64());
        let opened = *signal.opened.get_or_insert(now);
        let full = signal.window.len() >= window_samples;
        let stale =
            signal.window.len() * 2 >= window_samples && now.duration_since(opened) >= settings.window_max;
        if !(full || stale) {
            return change;
        }
        let completed = signal.window.iter().sum::<f64>() / signal.window.len() as f64;
        let (stuck, stuck_count) = pending.older_than(completed);
        let mean = (signal.window.iter().sum::<f64>() + stuck) / (signal.window.len() + stuck_count) as f64;
        let n = signal.window.len() as f64;
        let own_error = standard_error(&signal.window, completed);
        let window_spread = own_error * n.sqrt() / completed.max(1e-9);
        // How much single answers spread by nature, learned from windows without queueing (a
        // queue spreads them by itself, evenly from window to window, which is no noise at
        // all); it says how far a window mean can stray by chance.
        let natural = signal.spread.unwrap_or(window_spread);
        signal.lowest_mean = Some(signal.lowest_mean.map_or(completed, |low| low.min(completed)));
        let noise = 2.0 * (natural * completed / n.sqrt()).max(own_error);
        signal.window.clear();
        signal.opened = None;
        // The baseline learns from finished requests only; requests still stuck say how much
        // worse than that the present is, not what "no load" looks like. It keeps each
        // window's upper bound (mean + two standard errors): the lowest of many noisy means
        // sits far below a typical one, and would make natural variation look like queueing.
        signal.remember(now, completed + noise, settings.baseline_horizon);
        let baseline = signal.baseline().unwrap_or(completed).max(1e-6);
        // Below the absolute floor a rise is jitter, not a wait (see the module docs).
        let ratio = (mean - settings.queue_slack.as_secs_f64()).max(baseline) / baseline;
        self.last_ratio = Some(ratio);
        self.judged_at = Some(now);
        if ratio <= 1.0 + settings.queue_floor || signal.spread.is_none() {
            signal.spread = Some(signal.spread.map_or(window_spread, |s| 0.8 * s + 0.2 * window_spread));
        }
        let noisy = signal.spread.is_some_and(|spread| spread > (settings.tolerance - 1.0) / 3.0);
        let relative_noise = 2.0 * natural / n.sqrt();
        if let Some(rebased) = self.check_cut(sample.signal, ratio, relative_noise, (completed, noise), now) {
            return Some(rebased);
        }
        let before = self.limit;
        if self.slow_start {
            change = if noisy { self.slow_start_window(ratio, now) } else { change };
        } else {
            self.record_level(now);
            change = self.decide(ratio, relative_noise, now);
            self.demand = 0;
        }
        if change == Some(Change::Latency) && self.limit < before {
            self.note_cut(sample.signal, before, ratio, now);
        }
        self.flat_run = None;
        change
    }

    /// Remembers a latency cut from level `from`, made on `ratio`, for [`Self::check_cut`].
    pub(super) fn note_cut(&mut self, signal: usize, from: f64, ratio: f64, now: Instant) {
        let (origin, flat_before) = self.flat_run.take().unwrap_or((from, 0));
        self.cut_check = Some(CutCheck { signal, from, ratio, at: now, origin, flat_before });
    }

    /// The first window of `signal` after a latency cut, at `ratio` (within `noise` of its
    /// own; `window`: its mean and that mean's noise, in seconds): did the cut remove
    /// queueing?
    ///
    /// Past the capacity, latency grows with the level (a worker-bound backend serves the
    /// capacity, and the rest wait), so the cut level's ratio falls in proportion, to about
    /// one where the cut lands on the capacity. A backend that slowed as a whole (a model
    /// provider answering a third slower, a noisy neighbour) is as slow at the lower level.
    /// Read as queueing, that cut again and again, down to one request at a time against a
    /// backend with twenty workers, for as long as the old baseline was remembered (ten
    /// minutes). One window that kept most of the rise is not enough: the window a cut was
    /// made on may have seen its backlog only partly built, and the next one, at a level
    /// still past a capacity that just fell, as slow. When two cuts in a row changed nothing,
    /// the old baseline is forgotten, this window is the new one, and the limit goes back to
    /// where the run of cuts began.
    fn check_cut(
        &mut self,
        signal: usize,
        ratio: f64,
        noise: f64,
        window: (f64, f64),
        now: Instant,
    ) -> Option<Change> {
        let check = self.cut_check.filter(|c| c.signal == signal)?;
        self.cut_check = None;
        self.flat_run = None;
        if self.last_change_at != Some(check.at) || check.ratio <= 1.0 {
            return None;
        }
        // A noisy signal (long workflows that spread by nature) takes one window more: its
        // windows can read a backlog that is still building as slow at every level.
        let precise = noise <= (self.settings.tolerance - 1.0) / 3.0;
        let needed = if precise { 2 } else { 3 };
        let level = self.limit.floor();
        // A cut too small to show in the ratio tells nothing.
        if level > check.from * 0.9 {
            return None;
        }
        // What queueing alone would leave at this level, and the rise kept: most of it, and
        // clearly more than the window's noise (a misread backlog would hide the next one).
        let queued = (check.ratio * level / check.from).max(1.0);
        let kept = ratio - queued;
        if kept < (check.ratio - queued) / 2.0 || kept < 2.0 * noise || ratio < self.settings.grow_below {
            return None;
        }
        // Where both levels were measured, the higher one must have delivered more: past the
        // capacity a lower level serves as many, however slow its windows read.
        let gain = self.settings.throughput_gain;
        if self.goodput.delivered_more(check.from as usize, level as usize, gain) == Some(false) {
            return None;
        }
        if check.flat_before + 1 < needed {
            // The next cut, if one follows, continues the run.
            self.flat_run = Some((check.origin, check.flat_before + 1));
            return None;
        }
        if let Some(sig) = self.signals.get_mut(signal) {
            let (mean, mean_noise) = window;
            sig.rebase(now, mean + mean_noise, mean);
        }
        let origin = check.origin.min(self.settings.max as f64);
        if self.ceiling.is_some_and(|c| c <= origin) && !self.ceiling_failed {
            self.ceiling = None;
        }
        self.limit = origin;
        self.knee = Some(origin);
        self.changed(now);
        self.last_change = Some(Change::Rebase);
        Some(Change::Rebase)
    }
}
