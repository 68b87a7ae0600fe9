//! `Admission`: one upstream's admission — the adaptive limit, the fair queue and the
//! bookkeeping that ties them to requests. `acquire` returns a [`Permit`] (hold it for the
//! whole request, streams included) or a [`Refusal`]; dropping the `acquire` future (the client
//! left) takes the request out of the queue, so it never reaches the backend.
//!
//! Composition, in the order a request meets it:
//! 1. bypass: classes with `queued = false` (stop-task calls) and disabled admission pass at
//!    once — counted in flight, never held;
//! 2. fast path: nothing waiting and in-flight below the class's cap → admitted;
//! 3. refused at once when the estimated wait exceeds how long the request may wait (its
//!    class's `queue_timeout`, its client's stated deadline, the learned patience of its
//!    class's clients: a fast 503 beats a slow timeout);
//! 4. queued (a full queue evicts from the heaviest tenant, see [`super::queue`]); a waiter
//!    is woken when a slot frees, or answered 503 when its time runs out (see
//!    [`super::patience`]), before its client gives up. Every waiter re-reads its deadline
//!    when the learned patience changes, so those queued before it was known (the oldest of a
//!    newest-first queue among them) are refused in time too.
//!
//! A slot is freed when the request ends, except when its client left before the backend
//! answered: the backend is still running it, so the slot stays taken for the class's typical
//! time to the answer (an *orphaned* run, see [`Permit::complete`]).
//!
//! A single `std::sync::Mutex` guards the state: every critical section is a few hundred
//! nanoseconds of bookkeeping and is never held across an `.await`.
//!
//! This file holds the operations on admission (`acquire`, holds, capacity share, shutdown);
//! the parts are `state` (the state behind the lock, and the decisions taken on it),
//! `waiting` (a queued request's wait), `permit` (a granted slot and its release),
//! `status` (the `/status` view) and `ticket` (what a request brings).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ewma::Ewma;
use super::limit::AdaptiveLimit;
use super::patience::Patience;
use super::policy::AdmissionPolicy;
use super::queue::{Entry, FairQueue};
use super::refusal::Refusal;
use state::{log_change, Counters, Decision, Queued, State};
use waiting::Waiting;

mod permit;
mod state;
mod status;
mod ticket;
mod waiting;

pub use permit::Permit;
pub use state::Admission;
pub use status::{AdmissionStatus, ClassStatus, TenantStatus};
pub use ticket::Ticket;

/// Most tenant labels remembered for `/status`.
const MAX_LABELS: usize = 4096;

impl Admission {
    /// Admission for upstream `name`.
    pub fn new(name: &str, policy: AdmissionPolicy) -> Arc<Admission> {
        let classes = policy.classes.len().max(1);
        let weights: Vec<u32> = policy.classes.iter().map(|c| c.weight).collect();
        Arc::new(Admission {
            name: name.to_string(),
            state: Mutex::new(State {
                limit: AdaptiveLimit::new(policy.limit.clone()),
                queue: FairQueue::new(&weights),
                in_flight: 0,
                in_flight_by_class: vec![0; classes],
                next_id: 0,
                standing_since: None,
                interactive_seen: None,
                patience: Patience::default(),
                first_byte: vec![Ewma::new(0.1); classes],
                departure_interval: Ewma::new(0.1),
                last_departure: None,
                waits: Ewma::new(0.1),
                max_wait: Duration::ZERO,
                counters: Counters::default(),
                labels: HashMap::new(),
                awaiting_header: HashMap::new(),
                orphaned: 0,
                available: true,
                hold_until: None,
                opened_at: None,
                capacity_share: 1.0,
                replicas: (0, 1),
                group_limit: None,
                ramp: None,
                draining_held: false,
                closing: None,
                scratch_caps: Vec::new(),
                policy,
            }),
            limits_changed: tokio::sync::Notify::new(),
        })
    }

    /// Applies a new policy (config reload); the learned limit and the queue are kept.
    pub fn reconfigure(&self, policy: AdmissionPolicy) {
        let mut st = self.lock();
        let classes = policy.classes.len().max(1);
        let weights: Vec<u32> = policy.classes.iter().map(|c| c.weight).collect();
        st.queue.set_weights(&weights);
        if st.in_flight_by_class.len() < classes {
            st.in_flight_by_class.resize(classes, 0);
            st.first_byte.resize(classes, Ewma::new(0.1));
        }
        st.limit.set_settings(policy.limit.clone());
        st.policy = policy;
        st.dispatch(Instant::now());
    }

    /// Waits for a slot. Dropping the returned future before it resolves withdraws the
    /// request (its client left) and records how long that client waited.
    pub async fn acquire(self: &Arc<Self>, ticket: Ticket) -> Result<Permit, Refusal> {
        let now = Instant::now();
        let (rx, id, class, timeout, enqueued) = {
            let mut st = self.lock();
            let class = ticket.class.min(st.policy.classes.len().saturating_sub(1));
            if st.labels.len() >= MAX_LABELS {
                st.labels.clear();
            }
            st.labels.entry(ticket.tenant).or_insert_with(|| ticket.tenant_label.clone());
            let (queued, interactive, timeout) =
                st.policy.classes.get(class).map_or((true, false, Duration::from_secs(30)), |p| {
                    (p.queued, p.interactive, p.queue_timeout)
                });
            if interactive {
                st.interactive_seen = Some(now);
            }
            let demand = st.in_flight + st.queue.len() + 1;
            let group_demand = state::group_level(demand, st.replicas);
            st.limit.note_demand(group_demand);
            // A hold (maintenance or a downed backend) stops admission even when the limit
            // is disabled; only unqueued classes (stop-task calls) pass it.
            let open = st.is_open();
            if !queued
                || (open
                    && (!st.policy.enabled || (st.queue.is_empty() && st.in_flight < st.cap(class, now))))
            {
                let id = st.next_id;
                st.next_id += 1;
                let in_flight = st.take_slot(id, class, ticket.streams, Duration::ZERO, now);
                return Ok(Permit::new(Arc::clone(self), id, class, now, Duration::ZERO, in_flight));
            }
            // While the upstream is down, arrivals are held (the departure rate says nothing).
            let refusal = match st.closing {
                Some(closing) => Some(closing),
                None if open => st.refuse_on_arrival(&ticket, class, timeout, now),
                None => None,
            };
            if let Some(refusal) = refusal {
                st.count_shed(refusal);
                return Err(refusal);
            }
            if st.queue.len() >= st.policy.max_queue {
                match st.queue.evict_for(ticket.tenant) {
                    Some(victim) => {
                        let _ = victim.payload.wake.send(Decision::Shed(Refusal::Evicted));
                        st.count_shed(Refusal::Evicted);
                    }
                    None => {
                        st.count_shed(Refusal::QueueFull);
                        return Err(Refusal::QueueFull);
                    }
                }
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_id;
            st.next_id += 1;
            if st.queue.is_empty() {
                st.standing_since = Some(now);
            }
            let payload = Queued { wake: tx, client_deadline: ticket.deadline, streams: ticket.streams };
            let enqueued = ticket.since.map_or(now, |since| since.min(now));
            st.queue.push(Entry { id, tenant: ticket.tenant, class, enqueued, payload });
            st.counters.queued += 1;
            st.dispatch(now);
            (rx, id, class, timeout, enqueued)
        };
        let mut waiting = Waiting {
            admission: Arc::clone(self),
            id,
            tenant: ticket.tenant,
            class,
            enqueued,
            rx: Some(rx),
            expiry: Refusal::Timeout,
            client_deadline: ticket.deadline,
        };
        loop {
            // Registered before the deadline is read, so a change meanwhile is not missed.
            let limits_changed = self.limits_changed.notified();
            // Answer 503 just before a waiter's client would give up, instead of letting it
            // time out silently; re-read after every wake-up (a hold may have extended it, a
            // newly learned patience shortened it).
            let deadline = waiting.deadline(timeout);
            if deadline <= Instant::now() {
                return waiting.time_out();
            }
            let decision = match waiting.rx.as_mut() {
                Some(rx) => tokio::select! {
                    decision = tokio::time::timeout_at(deadline, rx) => decision,
                    () = limits_changed => continue,
                },
                None => return Err(Refusal::Evicted),
            };
            return match decision {
                Ok(Ok(decision)) => waiting.resolve(decision),
                // The sender was dropped without a decision: only on shutdown/eviction paths.
                Ok(Err(_)) => {
                    waiting.rx = None;
                    Err(Refusal::Evicted)
                }
                Err(_elapsed) => continue,
            };
        }
    }

    /// Whether the upstream can serve. Going down holds every new and queued request (they
    /// wait for their deadline); coming back starts a slow-start ramp over `ramp`.
    pub fn set_available(&self, available: bool, ramp: Duration) {
        let now = Instant::now();
        let mut st = self.lock();
        if st.available == available {
            return;
        }
        let was_open = st.is_open();
        st.available = available;
        if !available {
            tracing::warn!(upstream = %self.name, "upstream cannot serve: holding requests");
        }
        st.openness_changed(&self.name, was_open, ramp, now);
    }

    /// Holds every queued request (maintenance) until `until` at the latest, or, with `None`,
    /// ends the hold and ramps admission up over `ramp`. Requests held past their queue
    /// timeout keep waiting while the hold lasts; a hold that outlives them answers 503
    /// `upstream_unavailable` at `until`.
    pub fn set_hold(&self, until: Option<Instant>, ramp: Duration) {
        let now = Instant::now();
        let mut st = self.lock();
        if st.hold_until == until {
            return;
        }
        let was_open = st.is_open();
        st.hold_until = until;
        st.openness_changed(&self.name, was_open, ramp, now);
    }

    /// Scales the learned limit to the share of the backend that serves (e.g. ½ while one
    /// of two replicas is drained for a rolling restart), so the rest is not overloaded.
    pub fn set_capacity_share(&self, share: f64) {
        let mut st = self.lock();
        st.capacity_share = share.clamp(0.0, 1.0);
        st.dispatch(Instant::now());
    }

    /// Sets this replica's place among `count` dify-shaper replicas sharing the upstream
    /// (`index`: its rank by name) and the lowest limit any of them learned (`group_limit`):
    /// it then admits its part of that, and learns its own limit from what it sees scaled by
    /// `count`. `(0, 1, None)`: alone.
    pub fn set_replica_share(&self, index: usize, count: usize, group_limit: Option<usize>) {
        let mut st = self.lock();
        let share = (index, count.max(1));
        if st.replicas != share || st.group_limit != group_limit {
            if st.replicas != share {
                tracing::info!(upstream = %self.name, replica = index, of = share.1, "admission: this replica's part of the limit changed");
            }
            st.replicas = share;
            st.group_limit = group_limit;
            st.dispatch(Instant::now());
        }
    }

    /// Starts from `limit`, learned earlier (by this replica's previous process, or by the
    /// group), when nothing has been learned here yet; returns whether it did.
    pub fn seed_limit(&self, limit: usize) -> bool {
        let mut st = self.lock();
        if st.limit.last_change().is_some() || limit == st.limit.limit() {
            return false;
        }
        let mut settings = st.limit.settings().clone();
        settings.initial = limit.clamp(settings.min, settings.max);
        st.limit = AdaptiveLimit::new(settings);
        tracing::info!(upstream = %self.name, limit = st.limit.limit(), "admission: starting from the limit learned before");
        st.dispatch(Instant::now());
        true
    }

    /// Answers every waiting request with `refusal` and refuses, from now on, every request
    /// that would have to wait (shutdown). Requests that fit under the limit are still
    /// admitted: they can finish within the grace. Returns how many waiters were answered.
    pub fn shed_all(&self, refusal: Refusal) -> usize {
        let mut st = self.lock();
        st.closing = Some(refusal);
        let waiting = st.queue.drain();
        st.standing_since = None;
        let count = waiting.len();
        for entry in waiting {
            st.count_shed(refusal);
            let _ = entry.payload.wake.send(Decision::Shed(refusal));
        }
        count
    }

    /// Whether a hold is in place.
    pub fn held(&self) -> bool {
        self.lock().hold_until.is_some()
    }

    /// Periodic nudge: the ramp raises the effective limit with time, not only on releases,
    /// and a standing queue no answer has moved for a while gets a stall probe (see
    /// [`AdaptiveLimit::on_stall`]).
    pub fn tick(&self) {
        let mut st = self.lock();
        if st.queue.is_empty() {
            return;
        }
        let now = Instant::now();
        let ramping = st.ramp.is_some_and(|(since, over)| now.duration_since(since) < over);
        // A queue held while admission was closed stands from when it opened.
        let standing = st.standing_since.map(|since| st.opened_at.map_or(since, |open| open.max(since)));
        if let Some(since) = standing.filter(|_| st.policy.enabled && st.is_open() && !ramping) {
            let before = st.limit.limit();
            let in_flight = state::group_level(st.in_flight, st.replicas);
            if let Some(change) = st.limit.on_stall(in_flight, since, now) {
                log_change(&self.name, change, before, st.limit.limit(), st.limit.last_ratio());
            }
        }
        st.dispatch(now);
    }

    /// Seconds a refused client should wait before retrying: the expected time for the
    /// queue ahead of it to drain, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let st = self.lock();
        let interval = st.departure_interval.get().unwrap_or(1.0);
        (interval * (st.queue.len() + 1) as f64).ceil().clamp(1.0, 60.0) as u64
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().limit.limit()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Requests waiting.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
