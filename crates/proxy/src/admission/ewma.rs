//! Small running statistics admission keeps: an exponentially weighted mean, with the mean
//! deviation around it.

/// Exponentially weighted moving average, and the average deviation from it (as TCP estimates
/// a round trip and its variation, RFC 6298).
#[derive(Debug, Clone, Copy)]
pub struct Ewma {
    value: Option<f64>,
    deviation: f64,
    alpha: f64,
}

impl Ewma {
    /// An empty average; `alpha` is the weight of each new value.
    pub fn new(alpha: f64) -> Self {
        Ewma { value: None, deviation: 0.0, alpha }
    }

    /// Adds a value.
    pub fn add(&mut self, x: f64) {
        self.value = Some(match self.value {
            None => {
                // Nothing is known of the spread yet: half the first value, as RFC 6298 starts,
                // errs on the side of a waiter refused in time.
                self.deviation = x.abs() / 2.0;
                x
            }
            Some(v) => {
                // The deviation from the mean as it stood before this value (RFC 6298's order).
                self.deviation += self.alpha * ((x - v).abs() - self.deviation);
                v + self.alpha * (x - v)
            }
        });
    }

    /// The average, if any value was added.
    pub fn get(&self) -> Option<f64> {
        self.value
    }

    /// The average plus twice the average deviation: a value most answers stay under (for
    /// normally spread values about the 95th percentile), if any value was added.
    pub fn high(&self) -> Option<f64> {
        self.value.map(|v| v + 2.0 * self.deviation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_tracks_values() {
        let mut e = Ewma::new(0.5);
        assert_eq!(e.get(), None);
        assert_eq!(e.high(), None);
        e.add(10.0);
        e.add(20.0);
        assert_eq!(e.get(), Some(15.0));
    }

    #[test]
    fn the_high_estimate_grows_with_the_spread() {
        let (mut steady, mut spread) = (Ewma::new(0.1), Ewma::new(0.1));
        for i in 0..200 {
            steady.add(2.0);
            spread.add(if i % 2 == 0 { 1.0 } else { 3.0 });
        }
        let high = |e: &Ewma| e.high().unwrap_or_default();
        assert!((high(&steady) - 2.0).abs() < 0.01, "no spread: {}", high(&steady));
        assert!((3.5..=4.5).contains(&high(&spread)), "±1 around 2: {}", high(&spread));
    }
}
