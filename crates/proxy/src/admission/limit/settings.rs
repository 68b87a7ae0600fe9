//! The limiter's tuning ([`LimitSettings`]): how it reads latency and goodput, how fast it
//! grows and cuts. The defaults work for Dify; none is a capacity.

use std::time::Duration;

use serde::Serialize;

use crate::config::AdmissionSpec;

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
    /// The four an operator may set come from the config's defaults.
    fn default() -> Self {
        let spec = AdmissionSpec::default();
        LimitSettings {
            initial: spec.initial_limit,
            min: spec.min_limit,
            max: spec.max_limit,
            backoff: 0.9,
            tolerance: spec.latency_tolerance,
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
