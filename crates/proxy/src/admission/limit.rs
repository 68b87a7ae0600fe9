//! The adaptive concurrency limit of one upstream: how many requests may be in flight to it,
//! learned from what the backend does, with no capacity given by the operator. Pure and
//! clock-injected (every call takes `now`), so scenario tests run deterministically.
//!
//! # Signals
//!
//! * **Overload outcomes** — a 5xx from the backend (PostgreSQL's connection limit reaches
//!   the client as Dify's 500), Dify's 429 `too_many_requests`, a failed connect or a timeout
//!   (a refused connect, or a connection cut before the answer, is a restart, not overload).
//!   A 5xx only counts when it comes *with the level* ([`AdaptiveLimit::overload_counts`]): a
//!   share of errors that lower levels show as well is the requests' own failing (a broken
//!   workflow answers 500 at any load), and cutting for it would sink the limit for nothing.
//!   One that counts cuts the limit at once, AIMD-style: to `backoff × limit`, and for
//!   5xx/connect failures no higher than the in-flight count that failed minus one, but never
//!   below half the limit in one step. Each further refusal of the same round (requests
//!   admitted before that cut) takes one more step, down to half the limit the round began
//!   at: a database holding 2 of 6 refuses 4. The failing level is remembered as a
//!   **ceiling**: the limit grows freely up to just below it, and probes past it only every
//!   `probe_interval` (doubling after each failed probe, up to `probe_interval_max`).
//!
//! * **Goodput** — what clients get is good answers per second, counted against the clock at
//!   each level the limit has held under full demand (from one typical duration after it was
//!   set, averaged over `LEVEL_SPAN`, forgotten after `level_memory`). While requests wait
//!   here (a standing queue), goodput decides what latency cannot: a latency cut is skipped
//!   when the level it lands on delivered clearly less (a CPU-bound gevent worker slows every
//!   request a little as concurrency grows, yet serves more of them), and, inside the
//!   tolerance, when this level delivers more than it by the measure so far; a step that
//!   clearly did not pay goes back down. With a precise latency signal, Little's law gives
//!   the same answer sooner (see the `served` module): the backend holds the level in flight, so it
//!   serves `level / ratio` in baseline units; a rise that still serves `throughput_gain` of a
//!   linear step over the best level below is kept — even past the tolerance — and growth
//!   goes on while a step serves three fifths of one.
//!
//! * **Latency** — gunicorn queues excess connections in its listen backlog, so past capacity
//!   every request waits longer before it is served. Each *signal* (a traffic class × blocking
//!   or streaming) keeps its own window of latencies and its own baseline: the lowest window
//!   mean seen over the last `baseline_horizon`. When a window closes, the ratio of its mean
//!   to the baseline says how much queueing there is. Above `tolerance` the limit drops to
//!   `in_flight / ratio` (in a worker-bound backend latency ≈ service × in_flight /
//!   capacity, so this lands on the capacity); with requests waiting here and a precise
//!   signal (answers that vary little by nature), any rise beyond the window's own noise is
//!   cut the same way, unless goodput says the level pays — that settles the limit at the
//!   capacity rather than inside the tolerance above it, where a request waits in gunicorn's
//!   backlog out of fairness's reach; a level that queued is probed again after
//!   `probe_interval` (twice that when it failed again). Below `grow_below` the limit may
//!   grow. Comparing each class only with itself is what keeps 15-second workflows, whose
//!   durations vary naturally, from looking like overload next to 50 ms API calls; means over
//!   a window of `window_samples` absorb the natural variation, and only requests admitted
//!   after the last change of the limit count towards a window. Streaming runs are measured
//!   by their time to the response header (when a worker picked them up), not by the
//!   stream's length. A cut is checked by the first window at the level it landed on:
//!   queueing falls with the level, a backend that slowed as a whole (a model provider
//!   answering a third slower) does not. When two cuts in a row (three on a noisy signal)
//!   left latency as high and the higher level delivered no less, the old baseline is
//!   forgotten and the limit goes back to where the cuts began (`Change::Rebase`); read as
//!   queueing, such a slowdown cut the limit to one for as long as the old baseline was
//!   remembered.
//!
//! * **Slow start** — until the first cut, nothing is known but that the initial limit is
//!   safe, so the limit grows by `slow_start_growth` from each level proven by its answers:
//!   the mean latency of answers admitted with the whole level in flight (the ones a
//!   worker-bound backend would park in its backlog first) within the signal's own noise of
//!   its lowest window mean. Past the capacity, slow start ends where latency puts it. Each
//!   step is proven before the next, so a precise signal never has more than about
//!   `1 + slow_start_growth` times the capacity in flight (×1.5 per round, without proof,
//!   put 2–2.5 times the capacity into gunicorn's backlog for a round trip); answers that
//!   spread widely by nature are judged by window means instead. The first cut ends slow
//!   start for good.
//!
//! * **Noise** — a window mean less than `queue_slack` above the baseline is not queueing,
//!   and the baseline keeps each window's upper confidence bound (mean + two standard
//!   errors), not its mean: for 15-second workflows whose durations spread by a third, the
//!   lowest of many noisy window means sits well below a typical one.
//!
//! * **Stall** — a standing queue that no answer moves (long runs behind a limit learned on
//!   short ones) gets a probe: after twelve typical gaps between answers without one, the
//!   limit grows by one, the wait doubling while the silence lasts (see the `stall` module).
//!
//! * **Utilisation** — the limit only grows when it was actually reached (in-flight at the
//!   limit, or requests waiting), so an idle period cannot inflate it. Growth is
//!   multiplicative (`increase_ratio` per window, at least one) far from where queueing last
//!   began (the *knee*), and by one near it.
//!
//! This combines Envoy's gradient controller and Netflix concurrency-limits' Gradient2 (a
//! latency gradient against a no-load baseline) with AIMD on explicit overload, BBR's view of
//! the operating point (the most delivered at the least queueing) for the goodput, and a
//! CUBIC-like ceiling memory for the flat-latency database case.
//!
//! This file holds the limit's state and its entry points (answers, stalls); the parts are
//! `window` (closing a latency window against its `signal`'s baseline, and checking the
//! last cut), `slow_start`, `decide` (the steady state), `overload` (cuts on overload
//! outcomes), and the measures they consult: `goodput`, `served` (Little's law), `errors`
//! (refusal shares) and `stall`.

use std::time::Duration;

use tokio::time::Instant;

use errors::ErrorShares;
use goodput::Goodput;
use served::Served;
use signal::Signal;
use stall::Stall;

mod decide;
mod errors;
mod goodput;
mod overload;
mod sample;
mod served;
mod settings;
mod signal;
mod slow_start;
mod stall;
mod window;

pub use sample::{Change, Outcome, Pending, Sample};
pub use settings::LimitSettings;

/// Share of a level's answers that Dify may refuse (and the proxy replay) before the limit
/// is cut for it — unless the level still delivers at least what the best level below it did.
const REFUSED_SHARE: f64 = 0.1;

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
    /// Lowest a burst of overload answers of one round may take the limit (half of where the
    /// round started).
    burst_floor: Option<f64>,
    /// Whether the ceiling is where answers failed (probes past it back off, doubling) rather
    /// than where a step stopped paying (probed again every `probe_interval`: such a probe
    /// costs a little queueing, not errors, and is how a capacity increase is found).
    ceiling_failed: bool,
    knee: Option<f64>,
    probe_wait: Duration,
    probe_after: Option<Instant>,
    last_ratio: Option<f64>,
    /// When `last_ratio` was measured.
    judged_at: Option<Instant>,
    last_change: Option<Change>,
    /// Still growing per round (no cut yet).
    slow_start: bool,
    /// Slow start: the highest level proven to be served without queueing, and the count and
    /// latency-ratio sum of the answers from above it so far.
    proven: usize,
    marginal: (usize, f64),
    /// The last latency cut, until the cut level's first window says whether it removed
    /// queueing or the backend had slowed as a whole (see `window`).
    cut_check: Option<window::CutCheck>,
    /// Set between a window that showed the last cut changed nothing and the cut it makes:
    /// the level the run of such cuts began at, and how many windows it has.
    flat_run: Option<(f64, u32)>,
    goodput: Goodput,
    /// What each level served by Little's law (precise signals, requests waiting here).
    served: Served,
    /// Typical time a request spends in the backend (a moving average), seconds.
    typical_duration: f64,
    errors: ErrorShares,
    stall: Stall,
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
            ceiling_failed: false,
            burst_floor: None,
            knee: None,
            probe_wait,
            probe_after: None,
            last_ratio: None,
            judged_at: None,
            last_change: None,
            slow_start: true,
            proven: limit as usize,
            marginal: (0, 0.0),
            cut_check: None,
            flat_run: None,
            goodput: Goodput::default(),
            served: Served::default(),
            typical_duration: 0.0,
            errors: ErrorShares::default(),
            stall: Stall::default(),
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
        self.on_sample_with_pending(sample, now, &[] as &[Duration])
    }

    /// Like [`Self::on_sample`], with the requests of the same signal that are still waiting
    /// for their response header. When a window closes, those older than the window's mean
    /// count as samples of at least their age: a backend that parks requests in its backlog
    /// shows up *before* they finish (or are abandoned), not only after.
    pub fn on_sample_with_pending(
        &mut self,
        sample: Sample,
        now: Instant,
        pending: &(impl Pending + ?Sized),
    ) -> Option<Change> {
        self.goodput.forget(now, self.settings.level_memory);
        self.served.forget(now, self.settings.level_memory);
        self.errors.forget(now, self.settings.level_memory);
        if matches!(sample.outcome, Outcome::Success | Outcome::Overload) {
            self.typical_duration = 0.9 * self.typical_duration + 0.1 * sample.duration.as_secs_f64();
        }
        if matches!(
            sample.outcome,
            Outcome::Success | Outcome::Overload | Outcome::Refused | Outcome::Throttled
        ) {
            self.stall.answered(sample.duration, now);
        }
        match sample.outcome {
            Outcome::Ignore => None,
            Outcome::Throttled | Outcome::Timeout => self.on_overload(sample, now),
            Outcome::Overload => {
                let counts = self.overload_counts(sample.in_flight);
                self.errors.note(sample.in_flight, false, now);
                self.goodput.add(now, false);
                if counts {
                    self.on_overload(sample, now)
                } else {
                    None
                }
            }
            Outcome::Refused => {
                // Direct access keeps twice this level in flight and has a third of its
                // requests refused, yet serves more than a limit cut at the first refusal:
                // each worker's own pool spreads the connections unevenly, so refusals begin
                // well below what the database can serve. Replays make a few of them cheap.
                // Past a steady share they cut, unless this level still delivers at least
                // what the best level below it did (or has not answered enough to say):
                // then the refusals cost only their replays, and cutting would hand back
                // throughput direct access keeps. With no level below measured, they cut.
                self.errors.note(sample.in_flight, false, now);
                self.goodput.add(now, false);
                let level = self.limit.floor() as usize;
                let still_pays = self
                    .best_below(level)
                    .is_some_and(|low| self.goodput.running_matches(low, now).unwrap_or(true));
                if self.errors.steady_share(sample.in_flight, REFUSED_SHARE) && !still_pays {
                    self.on_overload(sample, now)
                } else {
                    None
                }
            }
            Outcome::Success => {
                self.errors.note(sample.in_flight, true, now);
                self.goodput.add(now, true);
                self.on_latency(sample, now, pending)
            }
            Outcome::Abandoned => self.on_latency(sample, now, pending),
        }
    }

    /// A standing queue — the limit fully used, requests waiting here since `standing_since` —
    /// that no answer has moved for a while: the limit grows by one, as a probe (see the
    /// `stall` module). Not when a latency window of this level showed queueing, and past a
    /// remembered ceiling only when its probe is due. Called periodically while the queue
    /// stands.
    pub fn on_stall(&mut self, in_flight: usize, standing_since: Instant, now: Instant) -> Option<Change> {
        let s = &self.settings;
        let next = self.limit.floor() + 1.0;
        if next > s.max as f64 || (in_flight as f64) < self.limit.floor() {
            return None;
        }
        // A window of this level's own answers showed queueing: growth waits for them too.
        let judged = self.judged_at.is_some_and(|at| self.last_change_at.is_none_or(|change| at >= change));
        if judged && self.last_ratio.is_some_and(|ratio| ratio >= s.grow_below) {
            return None;
        }
        let since = self.last_change_at.map_or(standing_since, |at| at.max(standing_since));
        let gap = self.stall.expected_gap(in_flight)?;
        if !self.stall.due(since, gap, s.probe_interval, s.probe_interval_max, now) {
            return None;
        }
        if self.ceiling.is_some_and(|c| next >= c) {
            if self.probe_after.is_some_and(|t| now < t) {
                return None;
            }
            self.probe_after = Some(now + self.probe_wait);
        }
        self.stall.probed();
        self.limit = next;
        self.changed(now);
        self.last_change = Some(Change::Stall);
        Some(Change::Stall)
    }

    /// Bookkeeping after any change of the limit: windows, rounds and delivery start afresh.
    fn changed(&mut self, now: Instant) {
        self.last_change_at = Some(now);
        self.demand = 0;
        let settle = Duration::from_secs_f64(self.typical_duration.clamp(0.0, 3600.0));
        self.goodput.restart(now + settle);
        for signal in &mut self.signals {
            signal.window.clear();
            signal.opened = None;
        }
    }

    /// Adds what the current level delivered, when it was fully used.
    fn record_level(&mut self, now: Instant) {
        let used = (self.demand as f64) >= self.limit.floor();
        if used {
            self.goodput.record(self.limit.floor() as usize, now);
        }
    }

    /// Whether the step from level `low` up to `high` paid (see [`Goodput::paid`]).
    fn paid(&self, high: usize, low: usize) -> Option<bool> {
        self.goodput.paid(high, low, self.settings.throughput_gain)
    }

    /// The measured level at or below `level` that delivered the most.
    fn best_at_or_below(&self, level: usize) -> Option<usize> {
        self.goodput.best_below(level + 1)
    }

    /// The measured level below `level` that delivered the most.
    fn best_below(&self, level: usize) -> Option<usize> {
        self.goodput.best_below(level)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
