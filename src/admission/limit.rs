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
//!   stream's length.
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

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use errors::ErrorShares;
use goodput::Goodput;
use served::Served;
use stall::Stall;

mod errors;
mod goodput;
mod served;
mod stall;

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
    /// Growth per round trip in slow start, as a fraction of the limit (at least +1); it is
    /// also the most the limit can overshoot the capacity by while slow start finds it.
    pub slow_start_growth: f64,
    /// With requests waiting, a step up pays when goodput rose by at least this share of what
    /// the step would give a backend that scaled linearly (0.5: half of it).
    pub throughput_gain: f64,
    /// How long the goodput measured at a level is remembered.
    pub level_memory: Duration,
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
    /// With requests waiting here, the least latency ratio above 1 that is cut (the window's
    /// own noise may ask for more, up to `tolerance`).
    pub queue_floor: f64,
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
            increase_ratio: 0.25,
            slow_start_growth: 0.15,
            throughput_gain: 0.5,
            level_memory: Duration::from_secs(120),
            window_samples: 20,
            window_max: Duration::from_secs(60),
            baseline_horizon: Duration::from_secs(600),
            probe_interval: Duration::from_secs(5),
            probe_interval_max: Duration::from_secs(60),
            slow_start_min_window: 4,
            queue_slack: Duration::from_millis(10),
            queue_floor: 0.04,
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
    /// Dify refused the request before running anything (its generic 500: PostgreSQL's
    /// connection limit met in the API-key check) and it was queued again: overload, but a
    /// cheap one — nothing ran, and its client still gets an answer. It cuts the limit only
    /// once refusals are a steady share of the level's answers (see
    /// [`AdaptiveLimit::on_sample`]).
    Refused,
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
    /// How long it occupied the backend: from admission to its end (a stream to its last
    /// event). Goodput is measured from it.
    pub duration: Duration,
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
    /// Grown by one because requests waited here while no answer came back for a while.
    Stall,
}

/// With requests waiting, the share of a linear backend's step a level must serve (by
/// Little's law) for the limit to grow past it.
const GROW_GAIN: f64 = 0.6;

/// Share of a level's answers that Dify may refuse (and the proxy replay) before the limit
/// is cut for it.
const REFUSED_SHARE: f64 = 0.1;

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
    /// How much single answers spread (standard deviation over mean) in the last window:
    /// past a third of the tolerance, one late answer says nothing about queueing.
    spread: Option<f64>,
    /// The lowest window mean seen (slow start compares single answers with it: the
    /// baseline's upper bound would hide the first few percent of a backlog).
    lowest_mean: Option<f64>,
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
                self.errors.note(sample.in_flight, false, now);
                self.goodput.add(now, false);
                if self.errors.steady_share(sample.in_flight, REFUSED_SHARE) {
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

    /// Whether a 5xx answered at `in_flight` in flight says "overloaded": the levels below it
    /// answered (almost) clean, or this level fails clearly more often than they do. A share of
    /// 5xx that lower levels show as well is the requests' own failing (a broken workflow
    /// answers 500 at any load) and must not cut the limit. With nothing known below, the share
    /// over all levels stands in; with nothing known at all, it counts (except for a request
    /// alone in flight).
    pub fn overload_counts(&self, in_flight: usize) -> bool {
        self.errors.overload_counts(in_flight)
    }

    fn on_overload(&mut self, sample: Sample, now: Instant) -> Option<Change> {
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

    fn on_latency(&mut self, sample: Sample, now: Instant, pending: &[Duration]) -> Option<Change> {
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
        let stuck: Vec<f64> =
            pending.iter().map(Duration::as_secs_f64).filter(|age| *age > completed).collect();
        let mean = (signal.window.iter().sum::<f64>() + stuck.iter().sum::<f64>())
            / (signal.window.len() + stuck.len()) as f64;
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
        if self.slow_start {
            let noisy = signal.spread.is_some_and(|spread| spread > (settings.tolerance - 1.0) / 3.0);
            return if noisy { self.slow_start_window(ratio, now) } else { change };
        }
        self.record_level(now);
        change = self.decide(ratio, 2.0 * natural / n.sqrt(), now);
        self.demand = 0;
        change
    }

    /// Slow start, step by step: the answers of the requests admitted above the last proven
    /// level (the *marginal* ones, which a worker-bound backend would park in its backlog
    /// first) decide each step. Their mean within the signal's own noise of its baseline
    /// proves the level, and the limit grows by `slow_start_growth` from it; above it, the
    /// step went past the capacity and slow start ends where latency puts the capacity. One
    /// answer alone cannot tell a backlog of 5 % from jitter, and growing from single answers
    /// on time let the limit climb to 1.5 times a capacity of 20 within a tolerance.
    fn slow_start_answer(&mut self, sample: &Sample, now: Instant) -> Option<Change> {
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
            if next >= self.limit {
                return None;
            }
            self.limit = next;
            self.last_cut = Some(now);
            self.changed(now);
            self.last_change = Some(Change::Latency);
            return Some(Change::Latency);
        }
        self.proven = level;
        self.slow_start_step(level, now)
    }

    /// Grows from the proven `level` by `slow_start_growth`, when it is used up.
    fn slow_start_step(&mut self, level: usize, now: Instant) -> Option<Change> {
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
    fn slow_start_window(&mut self, ratio: f64, now: Instant) -> Option<Change> {
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

    /// One latency window closed with `ratio` (its mean over the baseline), whose own
    /// relative noise (two standard errors of the mean) is `noise`.
    fn decide(&mut self, ratio: f64, noise: f64, now: Instant) -> Option<Change> {
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
        if let Some(ceiling) = self.ceiling.filter(|c| self.limit >= *c) {
            let clean = ratio <= 1.0 + s.queue_floor;
            let passed = self.ceiling_failed || paid == Some(true) || serves_well == Some(true) || clean;
            if !passed {
                return None;
            }
            self.ceiling = None;
            // Past a failing level creep on rather than jump: the next overload shows only as
            // a burst of 500s, as large as the jump. Past one that queued and now shows no
            // queueing at all, the capacity grew: grow as from a cold start.
            self.knee = if self.ceiling_failed || !clean { Some(ceiling) } else { None };
            self.probe_wait = s.probe_interval;
        }
        // Far from any queueing, grow by a fraction (a capacity increase is found in a few
        // windows); with a little queueing already, creep by one.
        if serves_well == Some(true) {
            // Each step still adds nearly a linear backend's share: no knee here.
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
    fn set_unpaid_ceiling(&mut self, level: usize, now: Instant) {
        let s = &self.settings;
        let repeated = !self.ceiling_failed && self.ceiling.is_some_and(|c| c as usize == level);
        self.probe_wait = if repeated { s.probe_interval * 2 } else { s.probe_interval };
        self.ceiling = Some(level as f64);
        self.ceiling_failed = false;
        self.probe_after = Some(now + self.probe_wait);
    }

    fn cut_to(&mut self, next: f64, change: Change, now: Instant) -> Change {
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
