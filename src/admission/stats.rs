//! Small running statistics admission keeps: an exponentially weighted mean.

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
}
