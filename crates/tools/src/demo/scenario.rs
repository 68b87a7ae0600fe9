//! The demo's flags ([`DemoArgs`]) and the [`Scenario`] they describe: the simulated backend,
//! the load, and when the backend restarts. Every number the demo prints comes from here.

use std::time::Duration;

use crate::sim::{ServiceTime, SimConfig};

/// gevent connections of the simulated worker: more than the DB pool, so overload reaches
/// PostgreSQL (500 "too many clients") rather than only the listen backlog.
const WORKER_CONNECTIONS: usize = 6;
/// PostgreSQL connections: with ~1 s runs, the backend's real capacity is this many runs/s.
const DB_CONNECTIONS: usize = 4;
/// Runs take 0.8–1.2 s: a spread, so direct requests do not fall into lock-step with the pool.
const RUN_MIN: Duration = Duration::from_millis(800);
const RUN_MAX: Duration = Duration::from_millis(1200);
/// A graceful restart lets in-flight runs (at most `RUN_MAX`) finish, like `docker restart`.
const RESTART_GRACE: Duration = Duration::from_secs(5);
/// Most requests one side may send: keeps a mistyped `--rate` from exhausting sockets.
pub const MAX_REQUESTS: usize = 5_000;

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Flags of `dify-shaper demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long requests are sent (default 20s; 8s with --quick).
    #[arg(long, value_parser = duration, value_name = "DUR")]
    pub duration: Option<Duration>,
    /// Requests per second, to each side (default: twice what the backend can serve, 8).
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// Do not restart the backend during the run.
    #[arg(long)]
    pub no_restart: bool,
    /// A shorter run (~15 s in all): 8 s of load, clients giving up after 5 s, 2 s boot.
    #[arg(long)]
    pub quick: bool,
}

/// Everything one demo run does, derived from [`DemoArgs`].
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The simulated Dify API (both sides get an identical one).
    pub backend: SimConfig,
    /// Requests per second sent to each side.
    pub rate: f64,
    /// How long requests are sent.
    pub duration: Duration,
    /// A client gives up (closes its connection) after this long without a full answer.
    pub patience: Duration,
    /// When the backend restarts, and its boot delay; `None` with `--no-restart`.
    pub restart: Option<Restart>,
}

/// A graceful backend restart during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// Time since the first request.
    pub at: Duration,
    /// In-flight requests get this long to finish before the rest is killed.
    pub grace: Duration,
    /// The port stays closed this long (migrations at boot).
    pub boot: Duration,
}

impl Scenario {
    /// The scenario `args` ask for, or why they make no sense.
    pub fn from_args(args: &DemoArgs) -> Result<Scenario, String> {
        let backend = SimConfig {
            workers: 1,
            worker_connections: WORKER_CONNECTIONS,
            db_connections: Some(DB_CONNECTIONS),
            service_time: ServiceTime::Uniform { min: RUN_MIN, max: RUN_MAX },
            ..SimConfig::default()
        };
        let (default_duration, patience, boot) = if args.quick {
            (Duration::from_secs(8), Duration::from_secs(5), Duration::from_secs(2))
        } else {
            (Duration::from_secs(20), Duration::from_secs(10), Duration::from_secs(3))
        };
        let duration = args.duration.unwrap_or(default_duration);
        let rate = args.rate.unwrap_or(2.0 * capacity_per_sec(&backend));
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("--rate must be a positive number of requests per second, not {rate}"));
        }
        if duration < Duration::from_secs(1) || duration > Duration::from_secs(600) {
            return Err("--duration must be between 1s and 10m".into());
        }
        let total = requests(rate, duration);
        if total == 0 || total > MAX_REQUESTS {
            return Err(format!(
                "--rate × --duration makes {total} requests per side; the demo sends 1 to {MAX_REQUESTS}"
            ));
        }
        // Two fifths in: the backend is already overloaded, and there is load after the boot.
        let restart =
            (!args.no_restart).then(|| Restart { at: duration.mul_f64(0.4), grace: RESTART_GRACE, boot });
        Ok(Scenario { backend, rate, duration, patience, restart })
    }

    /// Requests each side sends.
    pub fn requests(&self) -> usize {
        requests(self.rate, self.duration)
    }

    /// Runs per second the backend can complete (DB connections over the mean run time).
    pub fn capacity_per_sec(&self) -> f64 {
        capacity_per_sec(&self.backend)
    }

    /// The longest a run can take: the last request's client gives up `patience` after it
    /// was sent.
    pub fn longest(&self) -> Duration {
        self.duration + self.patience
    }
}

fn requests(rate: f64, duration: Duration) -> usize {
    (rate * duration.as_secs_f64()).round() as usize
}

fn capacity_per_sec(backend: &SimConfig) -> f64 {
    let concurrent = backend.db_connections.unwrap_or(usize::MAX).min(backend.capacity());
    concurrent as f64 / backend.service_time.mean().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> DemoArgs {
        DemoArgs { duration: None, rate: None, no_restart: false, quick: false }
    }

    #[test]
    fn defaults_overload_the_backend_twice_and_restart_it() {
        let s = Scenario::from_args(&args()).expect("valid");
        assert!((s.capacity_per_sec() - 4.0).abs() < 1e-9);
        assert!((s.rate - 8.0).abs() < 1e-9);
        assert_eq!(s.requests(), 160);
        assert_eq!(s.restart.map(|r| r.at), Some(Duration::from_secs(8)));
        assert!(s.longest() <= Duration::from_secs(30), "must fit the 60 s budget with start-up");
    }

    #[test]
    fn quick_is_shorter_and_flags_win() {
        let quick = Scenario::from_args(&DemoArgs { quick: true, ..args() }).expect("valid");
        assert!(quick.longest() <= Duration::from_secs(13));
        let custom = Scenario::from_args(&DemoArgs {
            quick: true,
            duration: Some(Duration::from_secs(4)),
            rate: Some(5.0),
            no_restart: true,
        })
        .expect("valid");
        assert_eq!(custom.requests(), 20);
        assert_eq!(custom.restart, None);
    }

    #[test]
    fn nonsense_is_refused() {
        for rate in [0.0, -1.0, f64::NAN, 1e6] {
            assert!(Scenario::from_args(&DemoArgs { rate: Some(rate), ..args() }).is_err(), "{rate}");
        }
        let long = DemoArgs { duration: Some(Duration::from_secs(3600)), ..args() };
        assert!(Scenario::from_args(&long).is_err());
    }
}
