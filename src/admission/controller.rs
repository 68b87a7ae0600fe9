//! `Admission`: one upstream's gate — the adaptive limit, the fair queue and the bookkeeping
//! that ties them to requests. `acquire` returns a [`Permit`] (hold it for the whole request,
//! streams included) or a [`Refusal`]; dropping the `acquire` future (the client left) takes
//! the request out of the queue, so it never reaches the backend.
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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::limit::{AdaptiveLimit, Change, Outcome, Sample};
use super::patience::{client_wait, Patience};
use super::policy::AdmissionPolicy;
use super::queue::{Entry, FairQueue, TenantId};
use super::refusal::Refusal;
use super::stats::Ewma;

/// Interactive traffic counts as active for this long after its last request.
const INTERACTIVE_ACTIVE_FOR: Duration = Duration::from_secs(10);
/// Most tenant labels remembered for `/status`.
const MAX_LABELS: usize = 4096;

/// What is being admitted.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The tenant (hashed app key).
    pub tenant: TenantId,
    /// The tenant as it may be shown (`app-…abcd`).
    pub tenant_label: String,
    /// Class index (see [`AdmissionPolicy::classes`]).
    pub class: usize,
    /// How long its client said it waits for the answer, if it said (clamped by the caller);
    /// it only ever shortens the wait.
    pub deadline: Option<Duration>,
    /// When the request first asked for a slot, if before now: a request replayed after the
    /// backend refused it queues again, and its wait counts from its arrival.
    pub since: Option<Instant>,
    /// Whether the client asked for a stream: its header comes when a worker picks it up, a
    /// blocking run's only when the run is done, so each is judged among its own kind.
    pub streams: bool,
}

#[derive(Debug)]
enum Decision {
    Admit { in_flight: usize },
    Shed(Refusal),
}

/// What the queue holds for a waiter: how to wake it, and what its client said it waits (so a
/// dequeue judges it by the same limit as its own deadline does).
#[derive(Debug)]
struct Queued {
    wake: oneshot::Sender<Decision>,
    client_deadline: Option<Duration>,
    streams: bool,
}

/// An admitted request still waiting for its response header.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    class: usize,
    /// Whether its client asked for a stream (see [`Ticket::streams`]).
    streams: bool,
    /// When its current attempt to reach the backend started.
    since: Instant,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Counters {
    admitted: u64,
    queued: u64,
    abandoned: u64,
    shed: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
struct State {
    policy: AdmissionPolicy,
    limit: AdaptiveLimit,
    queue: FairQueue<Queued>,
    in_flight: usize,
    in_flight_by_class: Vec<usize>,
    next_id: u64,
    standing_since: Option<Instant>,
    interactive_seen: Option<Instant>,
    patience: Patience,
    first_byte: Vec<Ewma>,
    departure_interval: Ewma,
    last_departure: Option<Instant>,
    waits: Ewma,
    max_wait: Duration,
    counters: Counters,
    labels: HashMap<TenantId, String>,
    /// Admitted requests still waiting for their response header, by id.
    awaiting_header: HashMap<u64, Awaiting>,
    /// Slots still held for runs whose client left while the backend worked on them (see
    /// [`Permit::complete`]); counted in `in_flight` too.
    orphaned: usize,
    /// Whether the upstream can serve at all; while not, nothing is admitted (held).
    available: bool,
    /// A deliberate hold (maintenance): nothing is admitted, and held requests wait up to
    /// this deadline instead of their class's queue timeout.
    hold_until: Option<Instant>,
    /// When the gate last opened (health came back or a hold ended): requests held across
    /// it get their full queue timeout again from then, like fresh arrivals.
    opened_at: Option<Instant>,
    /// Share of the learned limit in force (below 1 while some replicas are drained).
    capacity_share: f64,
    /// Slow start after the upstream came back: (since, over).
    ramp: Option<(Instant, Duration)>,
    /// Requests held through the last closed gate still wait (served oldest first).
    draining_held: bool,
    /// Set by [`Admission::shed_all`]: requests that would wait are refused with this.
    closing: Option<Refusal>,
    /// Reused buffers for `release` (pending ages) and `dispatch` (per-class caps), so the
    /// per-request path does not allocate.
    scratch_pending: Vec<Duration>,
    scratch_caps: Vec<usize>,
}

/// One upstream's admission gate.
#[derive(Debug)]
pub struct Admission {
    name: String,
    state: Mutex<State>,
    /// Wakes every waiter to re-read its wait limit (the learned patience changed).
    limits_changed: tokio::sync::Notify,
}

impl Admission {
    /// A gate for upstream `name`.
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
                ramp: None,
                draining_held: false,
                closing: None,
                scratch_pending: Vec::new(),
                scratch_caps: Vec::new(),
                policy,
            }),
            limits_changed: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving with the state as is
        // rather than failing every later request.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
            st.limit.note_demand(demand);
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

    /// A snapshot for `/status`.
    pub fn status(&self) -> AdmissionStatus {
        let st = self.lock();
        let now = Instant::now();
        let classes = st
            .policy
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| ClassStatus {
                name: c.name.clone(),
                in_flight: st.in_flight_by_class.get(i).copied().unwrap_or(0),
                queued: st.queue.class_len(i),
                cap: st.cap(i, now),
                expected_first_byte_ms: st.first_byte.get(i).and_then(Ewma::get).map(|s| s * 1e3),
            })
            .collect();
        let top_tenants = st
            .queue
            .top_tenants(10)
            .into_iter()
            .map(|(t, queued)| TenantStatus {
                tenant: st.labels.get(&t).cloned().unwrap_or_else(|| format!("{t:016x}")),
                queued,
            })
            .collect();
        AdmissionStatus {
            upstream: self.name.clone(),
            enabled: st.policy.enabled,
            available: st.available,
            held: st.hold_until.is_some(),
            effective_limit: st.effective_limit(now),
            limit: st.limit.limit(),
            ceiling: st.limit.ceiling(),
            latency_ratio: st.limit.last_ratio(),
            last_change: st.limit.last_change(),
            in_flight: st.in_flight,
            orphaned: st.orphaned,
            queued: st.queue.len(),
            standing_queue: st.standing_since.is_some_and(|t| now.duration_since(t) >= st.policy.lifo_after),
            classes,
            top_tenants,
            admitted: st.counters.admitted,
            queued_total: st.counters.queued,
            abandoned: st.counters.abandoned,
            shed: st.counters.shed.clone(),
            wait_avg_ms: st.waits.get().map_or(0.0, |w| w * 1e3),
            wait_max_ms: st.max_wait.as_secs_f64() * 1e3,
            patience_ms: st.patience.overall().map(|p| p.as_secs_f64() * 1e3),
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
        st.gate_changed(&self.name, was_open, ramp, now);
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
        st.gate_changed(&self.name, was_open, ramp, now);
    }

    /// Scales the learned limit to the share of the backend that serves (e.g. ½ while one
    /// of two replicas is drained for a rolling restart), so the rest is not overloaded.
    pub fn set_capacity_share(&self, share: f64) {
        let mut st = self.lock();
        st.capacity_share = share.clamp(0.0, 1.0);
        st.dispatch(Instant::now());
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
        // A queue held through a closed gate stands from when the gate opened.
        let standing = st.standing_since.map(|since| st.opened_at.map_or(since, |open| open.max(since)));
        if let Some(since) = standing.filter(|_| st.policy.enabled && st.is_open() && !ramping) {
            let before = st.limit.limit();
            let in_flight = st.in_flight;
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

    /// Notes that the request `id` got its response header (it no longer counts as possibly
    /// stuck in the backend's backlog).
    fn header_received(&self, id: u64) {
        self.lock().awaiting_header.remove(&id);
    }

    /// Ends request `id`'s hold on its slot and feeds the limiter its `sample`. Returns how
    /// much longer the slot stays taken when the client left before the backend answered
    /// (see [`Permit::complete`]); the caller frees it with [`Admission::release_orphan`].
    fn release(
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
            let mut pending = std::mem::take(&mut st.scratch_pending);
            pending.clear();
            // Only requests of the same kind: a blocking run still waiting for its header is
            // not a stream stuck in the backlog.
            pending.extend(
                st.awaiting_header
                    .values()
                    .filter(|a| a.class == class && a.streams == streamed)
                    .map(|a| now.duration_since(a.since)),
            );
            // The level an overload answer blames is the highest the request saw, not only
            // the one it was admitted at: admitted as the 8th just before a 9th, it can reach
            // the backend second and be the one refused. A good answer proves only the level
            // it was admitted at.
            let in_flight = match outcome {
                Outcome::Overload | Outcome::Refused | Outcome::Timeout => in_flight.max(st.in_flight),
                _ => in_flight,
            };
            let duration = now.duration_since(started);
            // One latency signal per class and response kind.
            let signal = class * 2 + usize::from(streamed);
            let sample = Sample { signal, started, latency, duration, outcome, in_flight };
            let change = st.limit.on_sample_with_pending(sample, now, &pending);
            st.scratch_pending = pending;
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
    fn release_orphan(&self, class: usize) {
        let now = Instant::now();
        let mut st = self.lock();
        st.orphaned = st.orphaned.saturating_sub(1);
        st.free_slot(class, now);
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

fn log_change(upstream: &str, change: Change, before: usize, after: usize, ratio: Option<f64>) {
    if before != after {
        tracing::info!(upstream, ?change, before, after, latency_ratio = ?ratio, "concurrency limit changed");
    }
}

impl State {
    /// Whether requests may be admitted: the backend can serve and nothing holds them.
    fn is_open(&self) -> bool {
        self.available && self.hold_until.is_none()
    }

    /// After `available` or the hold changed: starts the slow start when the gate opened,
    /// and admits what now fits.
    fn gate_changed(&mut self, upstream: &str, was_open: bool, ramp: Duration, now: Instant) {
        let open = self.is_open();
        if open && !was_open {
            self.ramp = Some((now, ramp));
            self.opened_at = Some(now);
            self.draining_held = !self.queue.is_empty();
            tracing::info!(upstream, ramp = ?ramp, queued = self.queue.len(), "admission open again: releasing held requests");
        } else if !open && was_open {
            tracing::warn!(upstream, hold_until = ?self.hold_until.map(|t| t.duration_since(now)), "admission closed: holding requests");
        }
        self.dispatch(now);
    }

    /// How many may be in flight for `class`: the limit, less a reserve for interactive
    /// classes while they are active (so cheap calls never wait for a long run to end).
    /// The limit in force now: zero while the upstream cannot serve, ramping up from half
    /// the learned limit to all of it after it came back (so a held queue is not released onto
    /// a cold backend all at once).
    fn effective_limit(&self, now: Instant) -> usize {
        if !self.is_open() {
            return 0;
        }
        let limit = ((self.limit.limit() as f64 * self.capacity_share).ceil() as usize).max(1);
        match self.ramp {
            Some((since, over)) if !over.is_zero() && now.duration_since(since) < over => {
                // Start at half the learned limit: enough to drain a held queue promptly,
                // little enough to spare a backend whose caches and pools are still cold.
                let share = 0.5 + 0.5 * now.duration_since(since).as_secs_f64() / over.as_secs_f64();
                ((limit as f64 * share).ceil() as usize).clamp(self.policy.limit.min.max(1), limit)
            }
            _ => limit,
        }
    }

    fn cap(&self, class: usize, now: Instant) -> usize {
        let limit = self.effective_limit(now);
        let Some(policy) = self.policy.classes.get(class) else {
            return limit;
        };
        let interactive_active =
            self.interactive_seen.is_some_and(|t| now.duration_since(t) < INTERACTIVE_ACTIVE_FOR);
        if policy.interactive || !interactive_active || limit <= 2 {
            return limit;
        }
        let reserve = ((limit as f64 * self.policy.interactive_reserve).ceil() as usize).max(1);
        limit.saturating_sub(reserve).max(1)
    }

    fn take_slot(&mut self, id: u64, class: usize, streams: bool, waited: Duration, now: Instant) -> usize {
        self.awaiting_header.insert(id, Awaiting { class, streams, since: now });
        self.in_flight += 1;
        if let Some(n) = self.in_flight_by_class.get_mut(class) {
            *n += 1;
        }
        self.counters.admitted += 1;
        self.waits.add(waited.as_secs_f64());
        self.max_wait = self.max_wait.max(waited);
        self.in_flight
    }

    fn count_shed(&mut self, refusal: Refusal) {
        *self.counters.shed.entry(refusal.as_str()).or_default() += 1;
    }

    /// The expected time until a request of `tenant` arriving now is admitted, if known. Slots
    /// go round robin over the tenants waiting in the class, so a newcomer waits for its own
    /// tenant's line (all of it under FIFO, none of it under LIFO) times the number of tenants
    /// taking turns — a flooding app's backlog does not count against a quiet app.
    fn expected_wait(&self, tenant: TenantId, class: usize, now: Instant) -> Option<Duration> {
        let interval = self.departure_interval.get()?;
        let lifo = self.standing_since.is_some_and(|t| now.duration_since(t) >= self.policy.lifo_after);
        let own_line = if lifo { 0 } else { self.queue.tenant_class_len(tenant, class) };
        let mine_waiting = self.queue.tenant_class_len(tenant, class) > 0;
        let turns_per_round = self.queue.class_tenants(class) + usize::from(!mine_waiting);
        Some(Duration::from_secs_f64(interval * ((own_line + 1) * turns_per_round.max(1)) as f64))
    }

    /// Typical time from admission to the response header for `class`.
    fn expected_first_byte(&self, class: usize) -> Duration {
        self.first_byte.get(class).and_then(Ewma::get).map_or(Duration::ZERO, Duration::from_secs_f64)
    }

    /// Time from admission to the response header that `class`'s answers rarely exceed: what a
    /// waiter needs left of its client's patience when it is admitted. The typical time alone
    /// let every answer slower than average reach a client that had already given up.
    fn answer_within(&self, class: usize) -> Duration {
        self.first_byte.get(class).and_then(Ewma::high).map_or(Duration::ZERO, Duration::from_secs_f64)
    }

    fn refuse_on_arrival(
        &self,
        ticket: &Ticket,
        class: usize,
        timeout: Duration,
        now: Instant,
    ) -> Option<Refusal> {
        let wait = self.expected_wait(ticket.tenant, class, now)?;
        if wait > timeout {
            return Some(Refusal::WouldExceedDeadline);
        }
        let client = client_wait(ticket.deadline, self.patience.estimate(class), self.answer_within(class))?;
        (wait > client).then_some(Refusal::Impatient)
    }

    /// When a waiter queued at `enqueued` runs out of time, and what it is told then: its
    /// class's `timeout` (counted from the gate's opening for a request held through a closed
    /// gate, and extended while a hold lasts), or, sooner, what its client is expected to
    /// wait (never extended: a 503 it can retry beats a silent timeout).
    fn waiter_deadline(
        &self,
        enqueued: Instant,
        class: usize,
        client_deadline: Option<Duration>,
        timeout: Duration,
        now: Instant,
    ) -> (Instant, Refusal) {
        let base = enqueued + timeout;
        let queue = match self.hold_until.filter(|until| *until > now) {
            Some(until) => until.max(base),
            None => self.opened_at.filter(|t| *t > enqueued).map_or(base, |t| (t + timeout).max(base)),
        };
        let client = client_wait(client_deadline, self.patience.estimate(class), self.answer_within(class))
            .map(|wait| enqueued + wait);
        match client {
            Some(client) if client < queue => (client, Refusal::Impatient),
            _ => (queue, Refusal::Timeout),
        }
    }

    /// A request stopped occupying the backend: one slot less in flight, a departure for the
    /// wait estimate, and the next waiter's turn.
    fn free_slot(&mut self, class: usize, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(n) = self.in_flight_by_class.get_mut(class) {
            *n = n.saturating_sub(1);
        }
        if let Some(last) = self.last_departure.replace(now) {
            self.departure_interval.add(now.duration_since(last).as_secs_f64());
        }
        self.dispatch(now);
    }

    /// Admits waiters while there is room.
    fn dispatch(&mut self, now: Instant) {
        loop {
            if self.queue.is_empty() {
                self.standing_since = None;
                return;
            }
            // Disabled admission has no limit, but a hold still holds.
            if !self.is_open() || (self.policy.enabled && self.in_flight >= self.effective_limit(now)) {
                return;
            }
            // Requests held through a closed gate go first, oldest first: the backlog of a
            // restart drains in order, so its longest wait is the hold plus the drain, not the
            // hold plus the time until the queue next empties.
            if self.draining_held {
                self.draining_held =
                    self.opened_at.is_some_and(|t| self.queue.oldest().is_some_and(|o| o < t));
            }
            let lifo = !self.draining_held
                && self.standing_since.is_some_and(|t| now.duration_since(t) >= self.policy.lifo_after);
            let mut caps = std::mem::take(&mut self.scratch_caps);
            caps.clear();
            caps.extend((0..self.policy.classes.len().max(1)).map(|c| self.cap(c, now)));
            let in_flight = self.in_flight;
            let enabled = self.policy.enabled;
            let popped = self.queue.pop(lifo, |c| !enabled || caps.get(c).is_none_or(|cap| in_flight < *cap));
            self.scratch_caps = caps;
            let Some(entry) = popped else {
                return;
            };
            let waited = now.duration_since(entry.enqueued);
            // A request held through a closed gate is still connected (a client that leaves
            // withdraws it), so its long wait says nothing about its patience.
            let held_through = self.opened_at.is_some_and(|t| t > entry.enqueued);
            let client = client_wait(
                entry.payload.client_deadline,
                self.patience.estimate(entry.class),
                self.answer_within(entry.class),
            );
            if let Some(client) = client.filter(|_| !held_through) {
                if waited > client {
                    // Its client has most likely given up, or will before the answer comes.
                    let _ = entry.payload.wake.send(Decision::Shed(Refusal::Impatient));
                    self.count_shed(Refusal::Impatient);
                    continue;
                }
            }
            let in_flight = in_flight + 1;
            if entry.payload.wake.send(Decision::Admit { in_flight }).is_ok() {
                self.take_slot(entry.id, entry.class, entry.payload.streams, waited, now);
            }
        }
    }
}

/// A queued request's side of the wait. Dropped before a decision arrived = the client left.
struct Waiting {
    admission: Arc<Admission>,
    id: u64,
    tenant: TenantId,
    class: usize,
    enqueued: Instant,
    rx: Option<oneshot::Receiver<Decision>>,
    /// What running out of time means: the class's queue timeout, or its client's limit.
    expiry: Refusal,
    /// How long the client said it waits, if it said.
    client_deadline: Option<Duration>,
}

impl Waiting {
    /// When this waiter runs out of time now (see [`State::waiter_deadline`]); notes what it
    /// will be told then.
    fn deadline(&mut self, timeout: Duration) -> Instant {
        let st = self.admission.lock();
        let (deadline, expiry) =
            st.waiter_deadline(self.enqueued, self.class, self.client_deadline, timeout, Instant::now());
        self.expiry = expiry;
        deadline
    }

    fn resolve(&mut self, decision: Decision) -> Result<Permit, Refusal> {
        self.rx = None;
        match decision {
            Decision::Admit { in_flight } => {
                let now = Instant::now();
                let waited = now.duration_since(self.enqueued);
                Ok(Permit::new(Arc::clone(&self.admission), self.id, self.class, now, waited, in_flight))
            }
            Decision::Shed(refusal) => Err(refusal),
        }
    }

    /// The queue timeout fired: withdraw, unless a decision raced in.
    fn time_out(&mut self) -> Result<Permit, Refusal> {
        let removed = {
            let mut st = self.admission.lock();
            let removed = st.queue.remove(self.id, self.tenant, self.class).is_some();
            if !st.is_open() {
                self.expiry = Refusal::Unavailable;
            }
            if removed {
                st.count_shed(self.expiry);
            }
            removed
        };
        if removed {
            self.rx = None;
            return Err(self.expiry);
        }
        match self.rx.as_mut().map(oneshot::Receiver::try_recv) {
            Some(Ok(decision)) => self.resolve(decision),
            _ => {
                self.rx = None;
                Err(self.expiry)
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let now = Instant::now();
        let mut st = self.admission.lock();
        if st.queue.remove(self.id, self.tenant, self.class).is_some() {
            st.counters.abandoned += 1;
            let before = st.patience.estimate(self.class);
            st.patience.record(self.class, now.duration_since(self.enqueued));
            let changed = st.patience.estimate(self.class) != before;
            if st.queue.is_empty() {
                st.standing_since = None;
            }
            drop(st);
            if changed {
                self.admission.limits_changed.notify_waiters();
            }
            return;
        }
        drop(st);
        // Admitted just as the client left: give the slot back (no latency sample).
        if let Ok(Decision::Admit { .. }) = rx.try_recv() {
            // No sample, so the slot is freed at once (never kept as an orphan).
            let _ = self.admission.release(self.id, self.class, None);
        }
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
    fn new(
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
    /// request failed" (see [`super::limit::AdaptiveLimit::overload_counts`]); if so it is
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

/// `/status` view of one upstream's admission.
#[derive(Debug, Clone, Serialize)]
pub struct AdmissionStatus {
    /// Upstream name.
    pub upstream: String,
    /// Whether admission is on.
    pub enabled: bool,
    /// Whether the upstream can serve (false: requests are held).
    pub available: bool,
    /// Whether a maintenance hold is in place.
    pub held: bool,
    /// The limit in force now (0 while held, lower than `limit` while ramping up).
    pub effective_limit: usize,
    /// The learned concurrency limit.
    pub limit: usize,
    /// The remembered failing in-flight level, if any.
    pub ceiling: Option<usize>,
    /// The latest latency ratio (window mean / baseline).
    pub latency_ratio: Option<f64>,
    /// Why the limit last changed.
    pub last_change: Option<Change>,
    /// Requests in flight (orphaned runs included).
    pub in_flight: usize,
    /// Slots kept for runs whose client left before the backend answered, until such a run
    /// would typically have finished.
    pub orphaned: usize,
    /// Requests waiting.
    pub queued: usize,
    /// Whether the queue is standing (served newest first).
    pub standing_queue: bool,
    /// Per class.
    pub classes: Vec<ClassStatus>,
    /// Tenants with the most waiting requests.
    pub top_tenants: Vec<TenantStatus>,
    /// Requests admitted since start.
    pub admitted: u64,
    /// Requests that had to wait since start.
    pub queued_total: u64,
    /// Queued requests whose client left.
    pub abandoned: u64,
    /// Refusals by reason.
    pub shed: BTreeMap<&'static str, u64>,
    /// Average queue wait of admitted requests (EWMA), ms.
    pub wait_avg_ms: f64,
    /// Longest queue wait of an admitted request, ms.
    pub wait_max_ms: f64,
    /// Learned client patience, ms.
    pub patience_ms: Option<f64>,
}

/// Per-class counts.
#[derive(Debug, Clone, Serialize)]
pub struct ClassStatus {
    /// Class name.
    pub name: String,
    /// In flight.
    pub in_flight: usize,
    /// Waiting.
    pub queued: usize,
    /// Current in-flight cap for the class.
    pub cap: usize,
    /// Typical time from admission to the response header, ms.
    pub expected_first_byte_ms: Option<f64>,
}

/// A tenant's queue share.
#[derive(Debug, Clone, Serialize)]
pub struct TenantStatus {
    /// Redacted tenant label.
    pub tenant: String,
    /// Waiting requests.
    pub queued: usize,
}

#[cfg(test)]
mod tests;
