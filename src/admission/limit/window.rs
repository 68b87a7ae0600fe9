//! Closing a latency window: each answer joins its signal's window; a full (or stale) one is
//! compared with the signal's baseline, and the ratio goes to slow start or to the steady
//! state's decision.

use std::time::Duration;

use tokio::time::Instant;

use super::signal::{standard_error, Signal};
use super::{AdaptiveLimit, Change, Sample};

impl AdaptiveLimit {
    pub(super) fn on_latency(
        &mut self,
        sample: Sample,
        now: Instant,
        pending: &[Duration],
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
}
