//! A granted slot ([`Permit`]) and its release: the sample that teaches the limiter, and the
//! slot an abandoned run keeps until the backend would typically have finished it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{log_change, Admission, Awaiting};
use crate::admission::limit::{Outcome, Pending, Sample};
use crate::admission::refusal::Refusal;

impl Admission {
    /// Notes that the request `id` got its response header (it no longer counts as possibly
    /// stuck in the backend's backlog).
    pub(super) fn header_received(&self, id: u64) {
        self.lock().awaiting_header.remove(&id);
    }

    /// Ends request `id`'s hold on its slot and feeds the limiter its `sample`. Returns how
    /// much longer the slot stays taken when the client left before the backend answered
    /// (see [`Permit::complete`]); the caller frees it with [`Admission::release_orphan`].
    pub(super) fn release(
        &self,
        id: u64,
        class: usize,
        sample: Option<(bool, Option<Duration>, Outcome, Instant, usize)>,
    ) -> Option<Duration> {
        let now = Instant::now();
        let mut st = self.lock();
        let attempt = st.awaiting_header.remove(&id);
        let orphan_for = match (sample, attempt) {
            (Some((_, _, Outcome::Abandoned, _, _)), Some(attempt)) => {
                Some(st.expected_first_byte(class).saturating_sub(now.duration_since(attempt.since)))
                    .filter(|left| !left.is_zero())
            }
            _ => None,
        };
        if let Some((streamed, first_byte, outcome, started, in_flight)) = sample {
            if let (Outcome::Success, Some(latency)) = (outcome, first_byte) {
                if let Some(e) = st.first_byte.get_mut(class) {
                    e.add(latency.as_secs_f64());
                }
            }
            let latency = first_byte.unwrap_or_else(|| now.duration_since(started));
            let before = st.limit.limit();
            // The level an overload answer blames is the highest the request saw, not only
            // the one it was admitted at: admitted as the 8th just before a 9th, it can reach
            // the backend second and be the one refused. A good answer proves only the level
            // it was admitted at.
            let in_flight = match outcome {
                Outcome::Overload | Outcome::Refused | Outcome::Timeout => in_flight.max(st.in_flight),
                _ => in_flight,
            };
            let in_flight = super::state::group_level(in_flight, st.replicas);
            let duration = now.duration_since(started);
            // One latency signal per class and response kind.
            let signal = class * 2 + usize::from(streamed);
            let sample = Sample { signal, started, latency, duration, outcome, in_flight };
            let st = &mut *st;
            // Only requests of the same kind: a blocking run still waiting for its header is
            // not a stream stuck in the backlog.
            let pending = Stuck { awaiting: &st.awaiting_header, class, streams: streamed, now };
            let change = st.limit.on_sample_with_pending(sample, now, &pending);
            if let Some(change) = change {
                log_change(&self.name, change, before, st.limit.limit(), st.limit.last_ratio());
            }
        }
        if orphan_for.is_some() {
            st.orphaned += 1;
        } else {
            st.free_slot(class, now);
        }
        orphan_for
    }

    /// Frees a slot kept for a run whose client left (see [`Permit::complete`]).
    pub(super) fn release_orphan(&self, class: usize) {
        let now = Instant::now();
        let mut st = self.lock();
        st.orphaned = st.orphaned.saturating_sub(1);
        st.free_slot(class, now);
    }
}

/// The requests of one class and response kind still waiting for their header, as the
/// limiter asks for them (see [`Pending`]).
struct Stuck<'a> {
    awaiting: &'a HashMap<u64, Awaiting>,
    class: usize,
    streams: bool,
    now: Instant,
}

impl Pending for Stuck<'_> {
    fn ages(&self) -> impl Iterator<Item = f64> + '_ {
        self.awaiting
            .values()
            .filter(|a| a.class == self.class && a.streams == self.streams)
            .map(|a| self.now.duration_since(a.since).as_secs_f64())
    }
}

/// Holds a slot for a run the backend is still working on after its client left, until the
/// class's typical time to the answer has passed; dropped (timer fired or task cancelled), it
/// frees the slot, so a shutdown cannot leak it.
struct OrphanSlot {
    admission: Arc<Admission>,
    class: usize,
}

impl Drop for OrphanSlot {
    fn drop(&mut self) {
        self.admission.release_orphan(self.class);
    }
}

/// A slot with the upstream. Hold it for the whole request (a stream holds it to its end);
/// report the outcome with [`Permit::complete`]. Dropping it without that releases the slot
/// without teaching the limiter anything.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    id: u64,
    class: usize,
    admitted: Instant,
    waited: Duration,
    in_flight: usize,
    released: bool,
}

impl Permit {
    pub(super) fn new(
        admission: Arc<Admission>,
        id: u64,
        class: usize,
        admitted: Instant,
        waited: Duration,
        in_flight: usize,
    ) -> Self {
        Permit { admission, id, class, admitted, waited, in_flight, released: false }
    }

    /// Call when an attempt to reach the backend starts (after any hold while it was down):
    /// the request's wait for its header is timed from here, not from admission.
    pub fn attempt_started(&self) {
        let mut st = self.admission.lock();
        if let Some(entry) = st.awaiting_header.get_mut(&self.id) {
            entry.since = Instant::now();
        }
    }

    /// Call when the response header arrived.
    pub fn header_received(&self) {
        self.admission.header_received(self.id);
    }

    /// Whether the backend's 5xx answer to this request says "overloaded" rather than "this
    /// request failed" (see [`crate::admission::limit::AdaptiveLimit::overload_counts`]); if so it is
    /// the caller answers with [`Refusal::BackendOverloaded`] instead of the 5xx (or replays
    /// the request, when it provably ran nothing).
    pub fn overloaded_answer(&self) -> Option<Refusal> {
        let st = self.admission.lock();
        let level = self.in_flight.max(st.in_flight);
        st.limit.overload_counts(level).then_some(Refusal::BackendOverloaded)
    }

    /// Counts this request as refused with `refusal` (answered by the proxy instead of the
    /// backend's answer).
    pub fn count_refusal(&self, refusal: Refusal) {
        self.admission.lock().count_shed(refusal);
    }

    /// Time spent in the queue.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// When the slot was granted.
    pub fn admitted_at(&self) -> Instant {
        self.admitted
    }

    /// Releases the slot and feeds the limiter: `streamed` says whether the answer was an event
    /// stream (its header comes when a worker picks the run up, a blocking run's only when it
    /// is done: each kind is its own latency signal), `first_byte` the time from admission to
    /// the response header.
    ///
    /// When the client left before the backend answered (`Outcome::Abandoned`), the backend
    /// has not noticed: gunicorn finds out only when it writes the answer, so the run keeps
    /// its worker and its database connection to the end. The slot then stays taken until
    /// the class's typical time to the answer has passed since the attempt started; freeing
    /// it at once let the next request in on top of the orphan — past a database limit, a
    /// 500 "too many clients".
    pub fn complete(mut self, streamed: bool, first_byte: Option<Duration>, outcome: Outcome) {
        self.released = true;
        let sample = Some((streamed, first_byte, outcome, self.admitted, self.in_flight));
        let Some(left) = self.admission.release(self.id, self.class, sample) else {
            return;
        };
        let slot = OrphanSlot { admission: Arc::clone(&self.admission), class: self.class };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(left).await;
                    drop(slot);
                });
            }
            // No runtime to time it (only outside the proxy): free it now.
            Err(_) => drop(slot),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.admission.release(self.id, self.class, None);
        }
    }
}
