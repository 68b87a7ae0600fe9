//! One latency signal (a class and response kind): its open window, the lowest window means
//! over the baseline horizon, and how much single answers spread by nature.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Slots the baseline horizon is divided into: each keeps the lowest window mean that closed
/// in it, so the horizon spans its full length at any request rate with bounded memory (a
/// cap on *entries* shrank it to seconds on fast traffic, and the no-load windows it needs
/// fell out).
pub(super) const BASELINE_SLOTS: u32 = 60;

#[derive(Debug, Default)]
pub(super) struct Signal {
    pub(super) window: Vec<f64>,
    pub(super) opened: Option<Instant>,
    /// (slot start, lowest window mean in the slot), oldest first.
    pub(super) means: VecDeque<(Instant, f64)>,
    /// How much single answers spread (standard deviation over mean) in the last window:
    /// past a third of the tolerance, one late answer says nothing about queueing.
    pub(super) spread: Option<f64>,
    /// The lowest window mean seen (slow start compares single answers with it: the
    /// baseline's upper bound would hide the first few percent of a backlog).
    pub(super) lowest_mean: Option<f64>,
}

impl Signal {
    pub(super) fn baseline(&self) -> Option<f64> {
        self.means.iter().map(|m| m.1).fold(None, |m, x| Some(m.map_or(x, |m: f64| m.min(x))))
    }

    /// Forgets the baseline learned so far and starts again from `mean` (the upper bound of
    /// the window that showed the backend slower at every level).
    pub(super) fn rebase(&mut self, now: Instant, mean: f64, lowest: f64) {
        self.means.clear();
        self.means.push_back((now, mean));
        self.lowest_mean = Some(lowest);
    }

    pub(super) fn remember(&mut self, now: Instant, mean: f64, horizon: Duration) {
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

/// The standard error of the mean of `samples` (whose mean is `mean`).
pub(super) fn standard_error(samples: &[f64], mean: f64) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let variance = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (variance / n).sqrt()
}
