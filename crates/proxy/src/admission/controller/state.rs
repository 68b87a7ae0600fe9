//! The admission state of one upstream, behind [`Admission`]'s lock: the limit, the fair queue,
//! the in-flight counts, what is held and why, and the estimates the queue is judged by.
//! Every method takes the time as an argument and none waits: the caller holds the lock for
//! a few hundred nanoseconds of bookkeeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ticket::Ticket;
use crate::admission::ewma::Ewma;
use crate::admission::limit::{AdaptiveLimit, Change};
use crate::admission::patience::{client_wait, Patience};
use crate::admission::policy::AdmissionPolicy;
use crate::admission::queue::{FairQueue, TenantId};
use crate::admission::refusal::Refusal;

/// Interactive traffic counts as active for this long after its last request.
const INTERACTIVE_ACTIVE_FOR: Duration = Duration::from_secs(10);

/// How a waiter's wait ended, sent to it by whoever decided.
#[derive(Debug)]
pub(super) enum Decision {
    Admit { in_flight: usize },
    Shed(Refusal),
}

/// What the queue holds for a waiter: how to wake it, and what its client said it waits (so a
/// dequeue judges it by the same limit as its own deadline does).
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) wake: oneshot::Sender<Decision>,
    pub(super) client_deadline: Option<Duration>,
    pub(super) streams: bool,
}

/// An admitted request still waiting for its response header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Awaiting {
    pub(super) class: usize,
    /// Whether its client asked for a stream (see [`Ticket::streams`]).
    pub(super) streams: bool,
    /// When its current attempt to reach the backend started.
    pub(super) since: Instant,
}

#[derive(Debug, Default, Clone, Serialize)]
pub(super) struct Counters {
    pub(super) admitted: u64,
    pub(super) queued: u64,
    pub(super) abandoned: u64,
    pub(super) shed: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) policy: AdmissionPolicy,
    pub(super) limit: AdaptiveLimit,
    pub(super) queue: FairQueue<Queued>,
    pub(super) in_flight: usize,
    pub(super) in_flight_by_class: Vec<usize>,
    pub(super) next_id: u64,
    pub(super) standing_since: Option<Instant>,
    pub(super) interactive_seen: Option<Instant>,
    pub(super) patience: Patience,
    pub(super) first_byte: Vec<Ewma>,
    pub(super) departure_interval: Ewma,
    pub(super) last_departure: Option<Instant>,
    pub(super) waits: Ewma,
    pub(super) max_wait: Duration,
    pub(super) counters: Counters,
    pub(super) labels: HashMap<TenantId, String>,
    /// Admitted requests still waiting for their response header, by id.
    pub(super) awaiting_header: HashMap<u64, Awaiting>,
    /// Slots still held for runs whose client left while the backend worked on them (see
    /// [`Permit::complete`]); counted in `in_flight` too.
    pub(super) orphaned: usize,
    /// Whether the upstream can serve at all; while not, nothing is admitted (held).
    pub(super) available: bool,
    /// A deliberate hold (maintenance): nothing is admitted, and held requests wait up to
    /// this deadline instead of their class's queue timeout.
    pub(super) hold_until: Option<Instant>,
    /// When admission last opened (health came back or a hold ended): requests held across
    /// it get their full queue timeout again from then, like fresh arrivals.
    pub(super) opened_at: Option<Instant>,
    /// Share of the learned limit in force (below 1 while some replicas are drained).
    pub(super) capacity_share: f64,
    /// This replica's place among the dify-shaper replicas in front of the same upstream:
    /// (index by name, count). The learned limit is the group's; this replica admits its part
    /// of it, and scales what it observes (in flight, demand) by the count to learn it.
    pub(super) replicas: (usize, usize),
    /// The lowest limit any of those replicas has learned (they learn it each on its own;
    /// the lowest is the one proven safe for all): what the parts are split from.
    pub(super) group_limit: Option<usize>,
    /// Slow start after the upstream came back: (since, over).
    pub(super) ramp: Option<(Instant, Duration)>,
    /// Requests held through the last closing still wait (served oldest first).
    pub(super) draining_held: bool,
    /// Set by [`Admission::shed_all`]: requests that would wait are refused with this.
    pub(super) closing: Option<Refusal>,
    /// A reused buffer for `dispatch` (per-class caps), so the per-request path does not
    /// allocate.
    pub(super) scratch_caps: Vec<usize>,
}

/// One upstream's admission.
#[derive(Debug)]
pub struct Admission {
    pub(super) name: String,
    pub(super) state: Mutex<State>,
    /// Wakes every waiter to re-read its wait limit (the learned patience changed).
    pub(super) limits_changed: tokio::sync::Notify,
}

impl Admission {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving with the state as is
        // rather than failing every later request.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(super) fn log_change(upstream: &str, change: Change, before: usize, after: usize, ratio: Option<f64>) {
    if before != after {
        tracing::info!(upstream, ?change, before, after, latency_ratio = ?ratio, "concurrency limit changed");
    }
}

impl State {
    /// Whether requests may be admitted: the backend can serve and nothing holds them.
    pub(super) fn is_open(&self) -> bool {
        self.available && self.hold_until.is_none()
    }

    /// After `available` or the hold changed: starts the slow start when admission opened,
    /// and admits what now fits.
    pub(super) fn openness_changed(&mut self, upstream: &str, was_open: bool, ramp: Duration, now: Instant) {
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
    pub(super) fn effective_limit(&self, now: Instant) -> usize {
        if !self.is_open() {
            return 0;
        }
        let learned = self.group_limit.map_or(self.limit.limit(), |g| g.min(self.limit.limit()));
        let group = ((learned as f64 * self.capacity_share).ceil() as usize).max(1);
        let limit = replica_part(group, self.replicas);
        match self.ramp {
            Some((since, over)) if !over.is_zero() && now.duration_since(since) < over => {
                // Start at half the learned limit: enough to drain a held queue promptly,
                // little enough to spare a backend whose caches and pools are still cold.
                let share = 0.5 + 0.5 * now.duration_since(since).as_secs_f64() / over.as_secs_f64();
                // Never below `min_limit`, but never above the limit itself, which a capacity
                // share or this replica's part can bring under `min_limit`.
                let floor = self.policy.limit.min.max(1).min(limit);
                ((limit as f64 * share).ceil() as usize).clamp(floor, limit)
            }
            _ => limit,
        }
    }

    pub(super) fn cap(&self, class: usize, now: Instant) -> usize {
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

    pub(super) fn take_slot(
        &mut self,
        id: u64,
        class: usize,
        streams: bool,
        waited: Duration,
        now: Instant,
    ) -> usize {
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

    pub(super) fn count_shed(&mut self, refusal: Refusal) {
        *self.counters.shed.entry(refusal.as_str()).or_default() += 1;
    }

    /// The expected time until a request of `tenant` arriving now is admitted, if known. Slots
    /// go round robin over the tenants waiting in the class, so a newcomer waits for its own
    /// tenant's line (all of it under FIFO, none of it under LIFO) times the number of tenants
    /// taking turns — a flooding app's backlog does not count against a quiet app.
    pub(super) fn expected_wait(&self, tenant: TenantId, class: usize, now: Instant) -> Option<Duration> {
        let interval = self.departure_interval.get()?;
        let lifo = self.standing_since.is_some_and(|t| now.duration_since(t) >= self.policy.lifo_after);
        let own_line = if lifo { 0 } else { self.queue.tenant_class_len(tenant, class) };
        let mine_waiting = self.queue.tenant_class_len(tenant, class) > 0;
        let turns_per_round = self.queue.class_tenants(class) + usize::from(!mine_waiting);
        Some(Duration::from_secs_f64(interval * ((own_line + 1) * turns_per_round.max(1)) as f64))
    }

    /// Typical time from admission to the response header for `class`.
    pub(super) fn expected_first_byte(&self, class: usize) -> Duration {
        self.first_byte.get(class).and_then(Ewma::get).map_or(Duration::ZERO, Duration::from_secs_f64)
    }

    /// Time from admission to the response header that `class`'s answers rarely exceed: what a
    /// waiter needs left of its client's patience when it is admitted. The typical time alone
    /// let every answer slower than average reach a client that had already given up.
    pub(super) fn answer_within(&self, class: usize) -> Duration {
        self.first_byte.get(class).and_then(Ewma::high).map_or(Duration::ZERO, Duration::from_secs_f64)
    }

    pub(super) fn refuse_on_arrival(
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
    /// class's `timeout` (counted from the opening for a request held while admission was
    /// closed, and extended while a hold lasts), or, sooner, what its client is expected to
    /// wait (never extended: a 503 it can retry beats a silent timeout).
    pub(super) fn waiter_deadline(
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
    pub(super) fn free_slot(&mut self, class: usize, now: Instant) {
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
    pub(super) fn dispatch(&mut self, now: Instant) {
        loop {
            if self.queue.is_empty() {
                self.standing_since = None;
                return;
            }
            // Disabled admission has no limit, but a hold still holds.
            if !self.is_open() || (self.policy.enabled && self.in_flight >= self.effective_limit(now)) {
                return;
            }
            // Requests held while admission was closed go first, oldest first: the backlog of a
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
            // A request held while admission was closed is still connected (a client that leaves
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

/// Replica `index` of `count`'s part of the group's `limit`: an even split whose remainder goes
/// to the first replicas by name, so the parts add up to the limit exactly (never more), and
/// never below one (a replica that admits nothing would hold its clients forever).
pub(super) fn replica_part(limit: usize, (index, count): (usize, usize)) -> usize {
    let count = count.max(1);
    (limit / count + usize::from(index % count < limit % count)).max(1)
}

/// What one replica sees, scaled to the group it is one of (`count` replicas sharing the
/// upstream evenly).
pub(super) fn group_level(level: usize, (_, count): (usize, usize)) -> usize {
    level.saturating_mul(count.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_parts_add_up_to_the_group_limit_and_never_to_zero() {
        for limit in 1..40 {
            for count in 1..6 {
                let parts: Vec<usize> = (0..count).map(|i| replica_part(limit, (i, count))).collect();
                if limit >= count {
                    assert_eq!(parts.iter().sum::<usize>(), limit, "{limit} over {count}: {parts:?}");
                } else {
                    assert!(parts.iter().all(|p| *p == 1), "{limit} over {count}: {parts:?}");
                }
                let (min, max) = (parts.iter().min().unwrap_or(&0), parts.iter().max().unwrap_or(&0));
                assert!(max - min <= 1, "{limit} over {count}: {parts:?}");
            }
        }
        assert_eq!(replica_part(7, (0, 1)), 7);
        assert_eq!(group_level(3, (1, 2)), 6);
        assert_eq!(group_level(3, (0, 0)), 3);
    }
}
