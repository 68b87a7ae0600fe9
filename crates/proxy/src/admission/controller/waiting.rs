//! A queued request's side of the wait: its deadline, re-read on every wake-up, and what
//! leaving the queue means — admitted, refused, timed out, or withdrawn because its client
//! left (which teaches the queue its clients' patience).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::permit::Permit;
use super::state::{Admission, Decision};
use crate::admission::queue::TenantId;
use crate::admission::refusal::Refusal;

/// A queued request's side of the wait. Dropped before a decision arrived = the client left.
pub(super) struct Waiting {
    pub(super) admission: Arc<Admission>,
    pub(super) id: u64,
    pub(super) tenant: TenantId,
    pub(super) class: usize,
    pub(super) enqueued: Instant,
    pub(super) rx: Option<oneshot::Receiver<Decision>>,
    /// What running out of time means: the class's queue timeout, or its client's limit.
    pub(super) expiry: Refusal,
    /// How long the client said it waits, if it said.
    pub(super) client_deadline: Option<Duration>,
}

impl Waiting {
    /// When this waiter runs out of time now (see [`State::waiter_deadline`]); notes what it
    /// will be told then.
    pub(super) fn deadline(&mut self, timeout: Duration) -> Instant {
        let st = self.admission.lock();
        let (deadline, expiry) =
            st.waiter_deadline(self.enqueued, self.class, self.client_deadline, timeout, Instant::now());
        self.expiry = expiry;
        deadline
    }

    pub(super) fn resolve(&mut self, decision: Decision) -> Result<Permit, Refusal> {
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
    pub(super) fn time_out(&mut self) -> Result<Permit, Refusal> {
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
            // A client that leaves while one of its class that came earlier still waits did
            // not leave because of the wait (a closed tab, a cancelled job): only the oldest
            // waiter's departure says how long clients wait. Counting every departure let a
            // few early aborts teach a patience so short that held requests were refused at
            // once during an outage.
            let oldest = st.queue.oldest_of_class(self.class).is_none_or(|o| o >= self.enqueued);
            let before = st.patience.estimate(self.class);
            if oldest {
                st.patience.record(self.class, now.duration_since(self.enqueued));
            }
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
