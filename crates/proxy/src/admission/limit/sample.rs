//! What the limiter is fed and what it reports: a finished request ([`Sample`]) with how it
//! ended ([`Outcome`]), and why the limit changed ([`Change`]).

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

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
    /// [`super::AdaptiveLimit::on_sample`]).
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
    /// Back to the level before a latency cut, with a new baseline: latency stayed as high
    /// at the lower level, so the backend had slowed as a whole rather than queued.
    Rebase,
}

/// Requests of a sample's signal still waiting for their response header. The limiter asks
/// only when a latency window closes (one sample in `window_samples`), so the caller's walk
/// over everything in flight is not paid on every answer.
pub trait Pending {
    /// Their ages, in seconds.
    fn ages(&self) -> impl Iterator<Item = f64> + '_;

    /// The sum of the ages of those waiting longer than `than` seconds, and how many they are.
    fn older_than(&self, than: f64) -> (f64, usize) {
        self.ages().filter(|age| *age > than).fold((0.0, 0), |(sum, n), age| (sum + age, n + 1))
    }
}

impl Pending for [Duration] {
    fn ages(&self) -> impl Iterator<Item = f64> + '_ {
        self.iter().map(Duration::as_secs_f64)
    }
}
