//! Small running statistics admission keeps: an exponentially weighted mean and the learned
//! client patience.

use std::collections::VecDeque;
use std::time::Duration;

/// Exponentially weighted moving average.
#[derive(Debug, Clone, Copy)]
pub struct Ewma {
    value: Option<f64>,
    alpha: f64,
}

impl Ewma {
    /// An empty average; `alpha` is the weight of each new value.
    pub fn new(alpha: f64) -> Self {
        Ewma { value: None, alpha }
    }

    /// Adds a value.
    pub fn add(&mut self, x: f64) {
        self.value = Some(self.value.map_or(x, |v| v + self.alpha * (x - v)));
    }

    /// The average, if any value was added.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// How long clients wait before they give up, learned from queued requests whose client
/// disconnected: the 25th percentile of the last 32 such waits (once 5 are known). A low
/// percentile, because the cost of admitting a request whose client leaves is wasted backend
/// work, while the cost of refusing a patient one is a fast 503 it can retry.
#[derive(Debug, Default)]
pub struct Patience {
    waits: VecDeque<f64>,
}

const PATIENCE_SAMPLES: usize = 32;
const PATIENCE_MIN_SAMPLES: usize = 5;

impl Patience {
    /// Records that a client left after waiting `waited`.
    pub fn record(&mut self, waited: Duration) {
        if self.waits.len() == PATIENCE_SAMPLES {
            self.waits.pop_front();
        }
        self.waits.push_back(waited.as_secs_f64());
    }

    /// The estimate, once enough clients were seen leaving.
    pub fn estimate(&self) -> Option<Duration> {
        if self.waits.len() < PATIENCE_MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<f64> = self.waits.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 4).map(|s| Duration::from_secs_f64(*s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_tracks_values() {
        let mut e = Ewma::new(0.5);
        assert_eq!(e.get(), None);
        e.add(10.0);
        e.add(20.0);
        assert_eq!(e.get(), Some(15.0));
    }

    #[test]
    fn patience_is_a_low_percentile_of_observed_abandonment() {
        let mut p = Patience::default();
        for s in [5.0, 5.1, 4.9] {
            p.record(Duration::from_secs_f64(s));
        }
        assert_eq!(p.estimate(), None, "too few samples");
        for s in [5.2, 30.0, 5.0, 4.8, 5.05] {
            p.record(Duration::from_secs_f64(s));
        }
        let estimate = p.estimate().map(|d| d.as_secs_f64()).unwrap_or_default();
        assert!((4.8..=5.0).contains(&estimate), "{estimate}");
    }
}
