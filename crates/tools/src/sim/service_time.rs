//! How long a simulated run takes: [`ServiceTime`] distributions, their sampling and their
//! CLI syntax (`"50ms"`, `"uniform:10s..20s"`, `"exp:15s"`, `"lognormal:15s,0.3"`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

/// Upper bound for any sampled service time, so heavy tails (or a huge mean) never produce an
/// absurd or overflowing `Duration`.
pub const MAX_SAMPLE: Duration = Duration::from_secs(24 * 3600);

/// The distribution of a run's service time (the time Dify spends on a workflow/chat run
/// before the last byte of the answer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ServiceTime {
    /// Always the same duration. CLI: `"50ms"` or `"fixed:50ms"`.
    Fixed(Duration),
    /// Uniform between `min` and `max` (inclusive). CLI: `"uniform:10s..20s"`.
    Uniform {
        /// Shortest service time.
        min: Duration,
        /// Longest service time.
        max: Duration,
    },
    /// Exponential with the given mean (memoryless, long tail). CLI: `"exp:15s"`.
    Exponential {
        /// Mean service time.
        mean: Duration,
    },
    /// Log-normal: `median * exp(sigma * Z)` with `Z` standard normal; the typical shape of
    /// LLM latencies. CLI: `"lognormal:15s,0.3"`.
    LogNormal {
        /// Median service time.
        median: Duration,
        /// Standard deviation of the underlying normal (0 = fixed at `median`).
        sigma: f64,
    },
}

impl Default for ServiceTime {
    /// A fixed 50 ms.
    fn default() -> Self {
        ServiceTime::Fixed(Duration::from_millis(50))
    }
}

impl ServiceTime {
    /// Draws one service time. Results are clamped to `[0, MAX_SAMPLE]`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let d = match *self {
            ServiceTime::Fixed(d) => d,
            ServiceTime::Uniform { min, max } => {
                if max <= min {
                    min
                } else {
                    rng.gen_range(min..=max)
                }
            }
            ServiceTime::Exponential { mean } => {
                // u in [0, 1) so 1 - u in (0, 1] and -ln(1 - u) in [0, inf).
                let u: f64 = rng.gen();
                secs(mean.as_secs_f64() * -(1.0 - u).ln())
            }
            ServiceTime::LogNormal { median, sigma } => {
                secs(median.as_secs_f64() * (sigma * standard_normal(rng)).exp())
            }
        };
        d.min(MAX_SAMPLE)
    }

    /// The mean of the distribution (useful to size tests and benches).
    pub fn mean(&self) -> Duration {
        match *self {
            ServiceTime::Fixed(d) => d,
            ServiceTime::Uniform { min, max } => {
                if max <= min {
                    min
                } else {
                    min + (max - min) / 2
                }
            }
            ServiceTime::Exponential { mean } => mean,
            ServiceTime::LogNormal { median, sigma } => {
                secs(median.as_secs_f64() * (sigma * sigma / 2.0).exp())
            }
        }
    }
}

/// Converts seconds to a `Duration`, mapping NaN/negative to zero and overflow to `MAX_SAMPLE`.
fn secs(s: f64) -> Duration {
    if s.is_nan() || s <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(s).unwrap_or(MAX_SAMPLE)
    }
}

/// A standard normal variate (Box–Muller; `rand` 0.8 has no normal distribution without
/// `rand_distr`).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Why a service-time string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service time {input:?}: {reason} (expected e.g. \"50ms\", \"uniform:10s..20s\", \"exp:15s\", \"lognormal:15s,0.3\")")]
pub struct ParseServiceTimeError {
    input: String,
    reason: String,
}

impl FromStr for ServiceTime {
    type Err = ParseServiceTimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseServiceTimeError { input: s.to_owned(), reason: reason.to_owned() };
        let dur = |v: &str| humantime::parse_duration(v.trim()).map_err(|e| err(&format!("{v:?}: {e}")));
        let s_trim = s.trim();
        let Some((kind, rest)) = s_trim.split_once(':') else {
            return Ok(ServiceTime::Fixed(dur(s_trim)?));
        };
        match kind.trim().to_ascii_lowercase().as_str() {
            "fixed" => Ok(ServiceTime::Fixed(dur(rest)?)),
            "uniform" => {
                let (a, b) = rest.split_once("..").ok_or_else(|| err("uniform needs MIN..MAX"))?;
                let (min, max) = (dur(a)?, dur(b)?);
                if min > max {
                    return Err(err("uniform MIN is greater than MAX"));
                }
                Ok(ServiceTime::Uniform { min, max })
            }
            "exp" | "exponential" => Ok(ServiceTime::Exponential { mean: dur(rest)? }),
            "lognormal" | "lognorm" => {
                let (m, sg) = rest.split_once(',').ok_or_else(|| err("lognormal needs MEDIAN,SIGMA"))?;
                let sigma: f64 = sg.trim().parse().map_err(|_| err("SIGMA is not a number"))?;
                if !sigma.is_finite() || sigma < 0.0 {
                    return Err(err("SIGMA must be finite and >= 0"));
                }
                Ok(ServiceTime::LogNormal { median: dur(m)?, sigma })
            }
            other => Err(err(&format!("unknown distribution {other:?}"))),
        }
    }
}

impl fmt::Display for ServiceTime {
    /// Formats in the syntax accepted by [`FromStr`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use humantime::format_duration as h;
        match *self {
            ServiceTime::Fixed(d) => write!(f, "{}", h(d)),
            ServiceTime::Uniform { min, max } => write!(f, "uniform:{}..{}", h(min), h(max)),
            ServiceTime::Exponential { mean } => write!(f, "exp:{}", h(mean)),
            ServiceTime::LogNormal { median, sigma } => {
                write!(f, "lognormal:{},{sigma}", h(median))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_all_forms() {
        assert_eq!("50ms".parse(), Ok(ServiceTime::Fixed(ms(50))));
        assert_eq!("fixed:2s".parse(), Ok(ServiceTime::Fixed(ms(2000))));
        assert_eq!("uniform:10s..20s".parse(), Ok(ServiceTime::Uniform { min: ms(10_000), max: ms(20_000) }));
        assert_eq!("exp:15s".parse(), Ok(ServiceTime::Exponential { mean: ms(15_000) }));
        assert_eq!(
            " lognormal:15s, 0.3 ".parse(),
            Ok(ServiceTime::LogNormal { median: ms(15_000), sigma: 0.3 })
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "fast",
            "uniform:20s..10s",
            "uniform:10s",
            "exp:",
            "lognormal:1s",
            "lognormal:1s,x",
            "lognormal:1s,-1",
            "weibull:1s",
        ] {
            assert!(bad.parse::<ServiceTime>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["50ms", "uniform:10s..20s", "exp:15s", "lognormal:15s,0.3"] {
            let st: ServiceTime = s.parse().expect("parses");
            assert_eq!(st.to_string().parse::<ServiceTime>(), Ok(st));
        }
    }

    #[test]
    fn fixed_and_uniform_samples_stay_in_range() {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(ServiceTime::Fixed(ms(50)).sample(&mut rng), ms(50));
        let u = ServiceTime::Uniform { min: ms(10), max: ms(20) };
        for _ in 0..1000 {
            let d = u.sample(&mut rng);
            assert!(d >= ms(10) && d <= ms(20), "{d:?}");
        }
        let degenerate = ServiceTime::Uniform { min: ms(5), max: ms(5) };
        assert_eq!(degenerate.sample(&mut rng), ms(5));
    }

    #[test]
    fn exponential_mean_is_close() {
        let mut rng = StdRng::seed_from_u64(42);
        let e = ServiceTime::Exponential { mean: ms(100) };
        let n = 20_000;
        let total: f64 = (0..n).map(|_| e.sample(&mut rng).as_secs_f64()).sum();
        let mean = total / n as f64;
        assert!((mean - 0.1).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn lognormal_median_is_close() {
        let mut rng = StdRng::seed_from_u64(1);
        let l = ServiceTime::LogNormal { median: ms(1000), sigma: 0.3 };
        let mut v: Vec<f64> = (0..20_001).map(|_| l.sample(&mut rng).as_secs_f64()).collect();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        assert!((median - 1.0).abs() < 0.03, "median {median}");
        let zero_sigma = ServiceTime::LogNormal { median: ms(300), sigma: 0.0 };
        assert_eq!(zero_sigma.sample(&mut rng), ms(300));
    }

    #[test]
    fn samples_are_clamped() {
        let mut rng = StdRng::seed_from_u64(3);
        let huge = ServiceTime::LogNormal { median: Duration::from_secs(u64::MAX / 4), sigma: 50.0 };
        for _ in 0..100 {
            assert!(huge.sample(&mut rng) <= MAX_SAMPLE);
        }
    }

    #[test]
    fn mean_of_each_distribution() {
        assert_eq!(ServiceTime::Fixed(ms(5)).mean(), ms(5));
        let u = ServiceTime::Uniform { min: ms(10), max: ms(20) };
        assert_eq!(u.mean(), ms(15));
    }
}
