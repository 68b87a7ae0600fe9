//! The adaptive concurrency limit of one upstream: how many requests may be in flight to it,
//! learned from what the backend does, with no capacity given by the operator. Pure and
//! clock-injected (every call takes `now`), so scenario tests run deterministically.
//!
//! # Signals
//!
//! * **Overload outcomes** — a 5xx from the backend (PostgreSQL's "too many clients" surfaces
//!   as Dify's 500), Dify's 429 `too_many_requests`, a failed connect or a timeout (a refused
//!   connect, or a connection cut before the answer, is a restart, not overload). They
//!   cut the limit at once, AIMD-style: to `backoff × limit`, and for 5xx/connect failures no
//!   higher than the in-flight count that failed minus one (that level is known to be too
//!   much), but never below half the limit in one step. One cut per round trip: outcomes of
//!   requests that started before the last cut are not counted again (TCP's "one reduction per
//!   window"). The failing level is remembered as a **ceiling**: the limit grows freely up to
//!   just below it, and probes past it only every `probe_interval` (doubling after each failed
//!   probe, up to `probe_interval_max`). A flat-latency, DB-limited backend therefore settles
//!   one below its real limit and pays one failure per probe instead of a sawtooth of them.
//!
//! * **Latency** — gunicorn queues excess connections in its listen backlog, so past capacity
//!   every request waits longer before it is served. Each *signal* (a traffic class × blocking
//!   or streaming) keeps its own window of latencies and its own baseline: the lowest window
//!   mean seen over the last `baseline_horizon`. When a window closes, the ratio of its mean
//!   to the baseline says how much queueing there is (by Little's law the mean, unlike the
//!   median, rises as soon as any request queues). Above `tolerance` the limit
//!   drops to `in_flight / ratio` (in a worker-bound backend latency ≈ service × in_flight /
//!   capacity, so this lands on the capacity); below `grow_below` it may grow. Comparing each
//!   class only with itself is what keeps 15-second workflows, whose durations vary naturally,
//!   from looking like overload next to 50 ms API calls; means over a window of
//!   `window_samples` absorb the natural variation, and only requests admitted after the last
//!   change of the limit count towards a window (in slow start, every request does).
//!   Streaming runs are measured by their time to the response header (when a worker picked
//!   them up), not by the stream's length.
//!
//! * **Slow start** — until the first cut, nothing is known but that the initial limit is
//!   safe, so the limit grows by `increase_ratio` per *round trip* while latency stays flat
//!   (TCP's slow start, gentler): a window then closes after one round of the limit's worth
//!   of samples (at least `slow_start_min_window`) instead of `window_samples`, counting
//!   requests admitted just before the last step too. Without it a cold proxy in front of
//!   2-second runs needs ten seconds per growth step, and clients wait in its queue while the
//!   backend idles. The first latency or overload cut ends slow start for good; it does not
//!   come back after an idle spell (the limit learned then still holds).
//!
//! * **Noise** — a window mean less than `queue_slack` above the baseline is not queueing:
//!   for fast requests (a stream's response header after half a millisecond) a jitter of a
//!   few hundred microseconds is a large *ratio* but no wait at all. And the baseline keeps
//!   each window's upper confidence bound (mean + two standard errors), not its mean: for
//!   15-second workflows whose durations spread by a third, the lowest of many noisy window
//!   means sits well below a typical one, and natural variation then looked like queueing
//!   (the limit sank to half the capacity). Queueing shifts a whole window; it still shows.
//!
//! * **Utilisation** — the limit only grows when it was actually reached (in-flight at the
//!   limit, or requests waiting), so an idle period cannot inflate it. Growth is
//!   multiplicative (`increase_ratio` per window, at least one), so a capacity increase is
//!   followed within a few windows — except near the level where queueing last began (the
//!   *knee*), where it creeps by one, so the limit hovers at the capacity instead of
//!   oscillating between it and 1.5× it. Growing two past the knee without queueing forgets it.
//!
//! This combines Envoy's gradient controller and Netflix concurrency-limits' Gradient2 (a
//! latency gradient against a no-load baseline) with AIMD on explicit overload, plus the
//! CUBIC-like ceiling memory that the flat-latency DB case needs.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Tuning of the algorithm. The defaults work for Dify; none is a capacity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitSettings {
    /// Limit before anything is learned. Keep it at or below the backend's real capacity: the
    /// first windows measure the no-load latency every later window is compared with (the
    /// overload signal works regardless). Growth from here is quick (see `increase_ratio`).
    pub initial: usize,
    /// Lowest limit.
    pub min: usize,
    /// Highest limit.
    pub max: usize,
    /// Multiplicative decrease on an overload outcome (0.5..1).
    pub backoff: f64,
    /// Latency ratio above which the limit is cut.
    pub tolerance: f64,
    /// Latency ratio below which the limit may grow.
    pub grow_below: f64,
    /// Growth per window when allowed, as a fraction of the limit (at least +1).
    pub increase_ratio: f64,
    /// Samples that close a latency window.
    pub window_samples: usize,
    /// A window with at least half its samples also closes after this long.
    pub window_max: Duration,
    /// How far back the baseline (lowest window mean) looks.
    pub baseline_horizon: Duration,
    /// First wait before probing past a remembered ceiling.
    pub probe_interval: Duration,
    /// Longest wait between probes past the ceiling.
    pub probe_interval_max: Duration,
    /// Smallest window during slow start (there a window is one round: `limit` samples).
    pub slow_start_min_window: usize,
    /// A latency rise smaller than this above the baseline is noise, not queueing.
    pub queue_slack: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            initial: 4,
            min: 1,
            max: 1000,
            backoff: 0.9,
            tolerance: 1.3,
            grow_below: 1.1,
            increase_ratio: 0.5,
            window_samples: 20,
            window_max: Duration::from_secs(60),
            baseline_horizon: Duration::from_secs(600),
            probe_interval: Duration::from_secs(5),
            probe_interval_max: Duration::from_secs(60),
            slow_start_min_window: 4,
            queue_slack: Duration::from_millis(10),
        }
    }
}

/// How a request ended, as far as the limit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered normally (2xx–4xx other than 429).
    Success,
    /// A 5xx from the backend, or a failed connect: too much concurrency.
    Overload,
    /// Dify's 429 `too_many_requests`: an app limit, not proof of the in-flight level.
    Throttled,
    /// A timeout waiting for the backend.
    Timeout,
    /// The client gave up while the backend had not even sent the response header: the
    /// latency was *at least* the time waited. Counted as a latency sample — leaving these
    /// out would judge the backend only by the requests that were lucky enough to finish.
    Abandoned,
    /// Tells nothing (the proxy refused it before the backend saw it, or the client left
    /// after the response had started).
    Ignore,
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Which latency signal it belongs to (class × streaming), an index chosen by the caller.
    pub signal: usize,
    /// When it was admitted.
    pub started: Instant,
    /// Its latency signal (time to the response header).
    pub latency: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// Requests in flight to the upstream when it was admitted, itself included.
    pub in_flight: usize,
}

/// Why the limit changed (for logs and `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Cut after an overload outcome.
    Overload,
    /// Cut because latency rose past the tolerance.
    Latency,
    /// Grown because the limit was used and latency stayed low.
    Grow,
}

/// Slots the baseline horizon is divided into: each keeps the lowest window mean that closed
/// in it, so the horizon spans its full length at any request rate with bounded memory (a
/// cap on *entries* shrank it to seconds on fast traffic, and the no-load windows it needs
/// fell out).
const BASELINE_SLOTS: u32 = 60;

#[derive(Debug, Default)]
struct Signal {
    window: Vec<f64>,
    opened: Option<Instant>,
    /// (slot start, lowest window mean in the slot), oldest first.
    means: VecDeque<(Instant, f64)>,
}

impl Signal {
    fn baseline(&self) -> Option<f64> {
        self.means.iter().map(|m| m.1).fold(None, |m, x| Some(m.map_or(x, |m: f64| m.min(x))))
    }

    fn remember(&mut self, now: Instant, mean: f64, horizon: Duration) {
        let slot = horizon / BASELINE_SLOTS;
        match self.means.back_mut() {
            Some((start, low)) if now.duration_since(*start) < slot => *low = low.min(mean),
            _ => self.means.push_back((now, mean)),
        }
        while self.means.front().is_some_and(|(t, _)| now.duration_since(*t) > horizon) {
            self.means.pop_front();
        }
    }
}

/// The adaptive limit of one upstream.
#[derive(Debug)]
pub struct AdaptiveLimit {
    settings: LimitSettings,
    limit: f64,
    signals: Vec<Signal>,
    /// Highest in-flight count (plus queued demand) seen since the last latency decision.
    demand: usize,
    last_cut: Option<Instant>,
    last_change_at: Option<Instant>,
    ceiling: Option<f64>,
    knee: Option<f64>,
    probe_wait: Duration,
    probe_after: Option<Instant>,
    last_ratio: Option<f64>,
    last_change: Option<Change>,
    /// Still growing per round (no cut yet).
    slow_start: bool,
}

impl AdaptiveLimit {
    /// A limit at `settings.initial`.
    pub fn new(settings: LimitSettings) -> Self {
        let limit = settings.initial.clamp(settings.min, settings.max) as f64;
        let probe_wait = settings.probe_interval;
        AdaptiveLimit {
            settings,
            limit,
            signals: Vec::new(),
            demand: 0,
            last_cut: None,
            last_change_at: None,
            ceiling: None,
            knee: None,
            probe_wait,
            probe_after: None,
            last_ratio: None,
            last_change: None,
            slow_start: true,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        (self.limit.floor() as usize).clamp(self.settings.min, self.settings.max)
    }

    /// The settings in force.
    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// Replaces the settings (config reload), keeping what was learned.
    pub fn set_settings(&mut self, settings: LimitSettings) {
        self.limit = self.limit.clamp(settings.min as f64, settings.max as f64);
        self.settings = settings;
    }

    /// The remembered failing level, if any.
    pub fn ceiling(&self) -> Option<usize> {
        self.ceiling.map(|c| c as usize)
    }

    /// The latest latency ratio (window mean / baseline).
    pub fn last_ratio(&self) -> Option<f64> {
        self.last_ratio
    }

    /// Why the limit last changed.
    pub fn last_change(&self) -> Option<Change> {
        self.last_change
    }

    /// Records demand: requests in flight plus waiting ones. Growth needs demand at the limit.
    pub fn note_demand(&mut self, demand: usize) {
        self.demand = self.demand.max(demand);
    }

    /// Feeds one finished request; returns the change it caused, if any.
    pub fn on_sample(&mut self, sample: Sample, now: Instant) -> Option<Change> {
        self.on_sample_with_pending(sample, now, &[])
    }

    /// Like [`Self::on_sample`], with the ages of requests of the same signal that are still
    /// waiting for their response header. When a window closes, those older than the window's
    /// mean count as samples of at least their age: a backend that parks requests in its
    /// backlog shows up *before* they finish (or are abandoned), not only after.
    pub fn on_sample_with_pending(
        &mut self,
        sample: Sample,
        now: Instant,
        pending: &[Duration],
    ) -> Option<Change> {
        match sample.outcome {
            Outcome::Ignore => None,
            Outcome::Overload | Outcome::Timeout | Outcome::Throttled => self.on_overload(sample, now),
            Outcome::Success | Outcome::Abandoned => self.on_latency(sample, now, pending),
        }
    }

    fn on_overload(&mut self, sample: Sample, now: Instant) -> Option<Change> {
        if self.last_cut.is_some_and(|cut| sample.started < cut) {
            return None;
        }
        let floor = self.settings.min as f64;
        let mut next = self.limit * self.settings.backoff;
        if sample.outcome != Outcome::Throttled {
            // That level failed: go below it, but never more than halve in one step.
            let below_failing = (sample.in_flight as f64 - 1.0).max(self.limit * 0.5);
            next = next.min(below_failing);
            let failing = sample.in_flight as f64;
            let repeated = self.ceiling.is_some_and(|c| failing <= c + 1.0);
            self.ceiling = Some(failing);
            self.probe_wait = if repeated {
                (self.probe_wait * 2).min(self.settings.probe_interval_max)
            } else {
                self.settings.probe_interval
            };
            self.probe_after = Some(now + self.probe_wait);
        }
        self.limit = next.max(floor);
        self.slow_start = false;
        self.last_cut = Some(now);
        self.last_change_at = Some(now);
        self.demand = 0;
        self.reset_windows();
        self.last_change = Some(Change::Overload);
        Some(Change::Overload)
    }

    fn reset_windows(&mut self) {
        for signal in &mut self.signals {
            signal.window.clear();
            signal.opened = None;
        }
    }

    fn on_latency(&mut self, sample: Sample, now: Instant, pending: &[Duration]) -> Option<Change> {
        // Only requests admitted under the current limit say anything about it: ones admitted
        // before the last change still carry the old queueing (after a cut, judging by them
        // would cut again and again; after growth, they hide what the growth did). Requests
        // admitted earlier that are still stuck are seen through `pending` instead.
        // Slow start is the exception: every change in it is growth, and a request admitted
        // just before it shares the backend with the new level for most of its run (the ones
        // admitted *at* the new level show any queueing in the same window). Waiting for a
        // full round admitted after each step doubled the time per step — ×1.5 per two round
        // trips left a cold proxy in front of 15-second workflows at half the capacity for
        // a minute. TCP's slow start, likewise, counts every acknowledgement.
        if !self.slow_start && self.last_change_at.is_some_and(|at| sample.started < at) {
            return None;
        }
        if self.signals.len() <= sample.signal {
            self.signals.resize_with(sample.signal + 1, Signal::default);
        }
        let settings = &self.settings;
        let window_samples = if self.slow_start {
            // One round at the current limit, so the limit can grow once per round trip.
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
            return None;
        }
        let completed = signal.window.iter().sum::<f64>() / signal.window.len() as f64;
        let stuck: Vec<f64> =
            pending.iter().map(Duration::as_secs_f64).filter(|age| *age > completed).collect();
        let mean = (signal.window.iter().sum::<f64>() + stuck.iter().sum::<f64>())
            / (signal.window.len() + stuck.len()) as f64;
        let noise = 2.0 * standard_error(&signal.window, completed);
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
        let change = self.decide(ratio, now);
        self.demand = 0;
        change
    }

    fn decide(&mut self, ratio: f64, now: Instant) -> Option<Change> {
        let s = &self.settings;
        if ratio > s.tolerance {
            let used = (self.demand as f64).min(self.limit).max(s.min as f64);
            let next = (used / ratio).max(self.limit * 0.5).max(s.min as f64);
            if next < self.limit {
                self.limit = next;
                self.slow_start = false;
                // Where queueing began: growth slows to +1 near it instead of overshooting.
                self.knee = Some(next);
                self.last_cut = Some(now);
                self.last_change_at = Some(now);
                self.reset_windows();
                self.last_change = Some(Change::Latency);
                return Some(Change::Latency);
            }
            return None;
        }
        let used = self.demand as f64 >= self.limit.floor();
        if ratio >= s.grow_below || !used {
            return None;
        }
        // Far from any queueing, grow by a fraction (a capacity increase is found in a few
        // windows); with a little queueing already, creep by one.
        let near_knee = self.knee.is_some_and(|k| self.limit * (1.0 + s.increase_ratio) > k);
        // Slow start grows by the same fraction, once per round: ×1.5 rather than TCP's ×2,
        // because a DB-limited backend answers the overshoot with fast 500s — ×2 cost half a
        // round of them, ×1.5 costs one or two.
        let far = ratio < 1.0 + (s.grow_below - 1.0) / 2.0 && !near_knee;
        let step = if self.slow_start || far { (self.limit * s.increase_ratio).max(1.0) } else { 1.0 };
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
                    // A probe: one past the ceiling. If no overload follows, the ceiling
                    // was wrong (capacity grew) and is forgotten.
                    next = self.limit + 1.0;
                    if self.limit >= ceiling {
                        self.ceiling = None;
                        // Creep on from here rather than jump by half: with flat latency the
                        // next overload shows only as a burst of 500s, as large as the jump.
                        self.knee = Some(ceiling);
                        self.probe_wait = s.probe_interval;
                    }
                    self.probe_after = Some(now + self.probe_wait);
                }
            }
        }
        if next > self.limit {
            self.limit = next.min(s.max as f64);
            self.last_change_at = Some(now);
            self.reset_windows();
            self.last_change = Some(Change::Grow);
            return Some(Change::Grow);
        }
        None
    }
}

/// The standard error of the mean of `samples` (whose mean is `mean`).
fn standard_error(samples: &[f64], mean: f64) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let variance = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (variance / n).sqrt()
}

#[cfg(test)]
mod tests;
