//! What each level serves by Little's law: with a standing queue the backend holds exactly the
//! level in flight, so it serves `level / latency` requests a second. Measured in units of the
//! baseline (`level / ratio`), from a window mean — far more precise than counting answers,
//! which needs hundreds of them to tell one step of a few percent from chance.
//!
//! A worker-bound backend past its capacity `c` queues the excess in gunicorn's backlog: the
//! ratio grows as `level / c` and `level / ratio` stays at `c` — a step up buys nothing, and
//! the limit goes back to the capacity. Real Dify's workers share the CPU and the database
//! pools, so latency rises a few percent per step from the start while each step still adds
//! most of a linear backend's throughput: cutting at the first few percent held it at a third
//! of what direct access served.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::goodput::linear_gain;

/// Most levels remembered (the limit's range is bounded, but a misconfigured `max` should not
/// make memory unbounded).
const MAX_LEVELS: usize = 1024;

/// Little's-law estimates by level: (requests served per baseline latency, when measured).
#[derive(Debug, Default)]
pub(super) struct Served {
    levels: BTreeMap<usize, (f64, Instant)>,
}

impl Served {
    /// Notes that `level` ran at latency `ratio` (window mean over the baseline) with requests
    /// waiting here. A new window replaces the old one: the backend may have changed since.
    pub(super) fn note(&mut self, level: usize, ratio: f64, now: Instant) {
        if ratio <= 0.0 || (self.levels.len() >= MAX_LEVELS && !self.levels.contains_key(&level)) {
            return;
        }
        self.levels.insert(level, (level as f64 / ratio, now));
    }

    /// Forgets levels not measured for `memory`.
    pub(super) fn forget(&mut self, now: Instant, memory: Duration) {
        self.levels.retain(|_, (_, at)| now.duration_since(*at) <= memory);
    }

    /// Whether `level` at latency `ratio` serves at least `gain` of what a linear backend
    /// would add over the best level measured below it. `None` with nothing measured below.
    pub(super) fn pays(&self, level: usize, ratio: f64, gain: f64) -> Option<bool> {
        let (low, served) = self.levels.range(..level).map(|(l, (s, _))| (*l, *s)).fold(
            None,
            |best: Option<(usize, f64)>, (l, s)| match best {
                Some((_, b)) if b >= s => best,
                _ => Some((l, s)),
            },
        )?;
        Some(pays_over(level, ratio, low, served, gain))
    }
}

/// Whether `level` at `ratio` serves at least `gain` of a linear backend's step over `low`,
/// which served `served` (in baseline units).
pub(super) fn pays_over(level: usize, ratio: f64, low: usize, served: f64, gain: f64) -> bool {
    let now = level as f64 / ratio.max(1e-9);
    now >= served * (1.0 + gain * linear_gain(level, low))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queueing_past_a_capacity_does_not_pay() {
        let t = Instant::now();
        let mut served = Served::default();
        // Capacity 12: at 12 no queueing, at 13 every request waits 1/12 longer.
        served.note(12, 1.0, t);
        assert_eq!(served.pays(13, 13.0 / 12.0, 0.5), Some(false));
    }

    #[test]
    fn a_few_percent_per_step_still_pays() {
        let t = Instant::now();
        let mut served = Served::default();
        served.note(6, 1.02, t);
        // 7 at 5 % more latency than 6: 16.7 % more in flight, 11 % more served.
        assert_eq!(served.pays(7, 1.02 * 1.05, 0.5), Some(true));
        assert_eq!(served.pays(7, 1.02 * 1.12, 0.5), Some(false));
        assert_eq!(served.pays(5, 1.0, 0.5), None, "nothing measured below");
    }

    #[test]
    fn old_measurements_are_forgotten() {
        let t = Instant::now();
        let mut served = Served::default();
        served.note(6, 1.0, t);
        served.forget(t + Duration::from_secs(121), Duration::from_secs(120));
        assert_eq!(served.pays(7, 1.5, 0.5), None);
    }
}
