//! Property tests of one upstream's admission on a paused clock, under arbitrary sequences of
//! arrivals (tenants, classes, stated deadlines), completions with every outcome (so the
//! learned limit moves), released permits, clients that leave while queued, time passing
//! (queue timeouts, orphaned runs, the slow-start ramp), limit and capacity changes, holds,
//! outages and shutdown:
//!
//! - every arrival ends exactly once — admitted, refused or withdrawn — and admission's own
//!   books agree: waiting + admitted + abandoned + refused (by reason) = arrivals, each
//!   client's refusal is one counted refusal;
//! - whenever a request is admitted, in flight is within the limit in force;
//! - in flight is exactly the permits held plus the slots kept for orphaned runs, and the
//!   queue exactly the clients still waiting;
//! - no request waits while its class has room (work conservation);
//! - once holds end and permits are released, every waiter gets its answer and nothing stays
//!   in flight.
//!
//! A second property checks that a class that is never queued (stop-task calls) passes at
//! once whatever the limit, queue, hold or outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Admission, Permit, Refusal, Ticket};
use crate::admission::limit::{LimitSettings, Outcome};
use crate::admission::policy::{AdmissionPolicy, ClassPolicy};

#[derive(Debug, Clone)]
enum Op {
    Arrive { tenant: u64, class: usize, deadline_ms: Option<u64>, streams: bool },
    Complete { pick: usize, outcome: Outcome, first_byte_ms: Option<u64>, header: bool },
    Release { pick: usize },
    Withdraw { pick: usize },
    Advance { ms: u64 },
    Limits { min: usize, span: usize },
    Share(f64),
    Hold { ms: Option<u64>, ramp_ms: u64 },
    Available { up: bool, ramp_ms: u64 },
    Tick,
    Shutdown,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Success),
        2 => Just(Outcome::Overload),
        1 => Just(Outcome::Refused),
        1 => Just(Outcome::Throttled),
        1 => Just(Outcome::Timeout),
        2 => Just(Outcome::Abandoned),
        1 => Just(Outcome::Ignore),
    ]
}

fn op(classes: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u64..4, 0..classes, prop::option::weighted(0.3, 0u64..20_000), any::<bool>())
            .prop_map(|(tenant, class, deadline_ms, streams)| Op::Arrive { tenant, class, deadline_ms, streams }),
        5 => (any::<usize>(), outcome(), prop::option::of(0u64..5000), any::<bool>())
            .prop_map(|(pick, outcome, first_byte_ms, header)| Op::Complete { pick, outcome, first_byte_ms, header }),
        2 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Withdraw { pick }),
        4 => prop_oneof![0u64..500, 0u64..15_000].prop_map(|ms| Op::Advance { ms }),
        1 => (Just(1usize), 0usize..6).prop_map(|(min, span)| Op::Limits { min, span }),
        1 => prop_oneof![Just(1.0), 0.0f64..=1.0].prop_map(Op::Share),
        1 => (prop::option::of(0u64..20_000), 0u64..10_000).prop_map(|(ms, ramp_ms)| Op::Hold { ms, ramp_ms }),
        1 => (prop::bool::weighted(0.6), 0u64..10_000).prop_map(|(up, ramp_ms)| Op::Available { up, ramp_ms }),
        1 => Just(Op::Tick),
        1 => Just(Op::Shutdown),
    ]
}

fn class(weight: u32, timeout_s: u64, queued: bool, interactive: bool) -> ClassPolicy {
    ClassPolicy {
        name: format!("c{weight}"),
        weight,
        queue_timeout: Duration::from_secs(timeout_s),
        queued,
        interactive,
    }
}

/// A policy with one to three queued classes (the first interactive). The lowest limit is 1:
/// above it a capacity share during a ramp panics (see
/// `a_shared_capacity_below_min_limit_during_a_ramp_does_not_panic`).
fn policy() -> impl Strategy<Value = AdmissionPolicy> {
    (
        prop::collection::vec((1u32..5, 1u64..20), 1..4),
        (Just(1usize), 0usize..6, 0usize..8),
        0usize..8,
        0.0f64..=0.5,
        0u64..5000,
        prop::bool::weighted(0.9),
    )
        .prop_map(|(classes, (min, span, initial), max_queue, reserve, lifo_ms, enabled)| {
            AdmissionPolicy {
                enabled,
                limit: LimitSettings { initial, min, max: min + span, ..LimitSettings::default() },
                max_queue,
                classes: classes.iter().enumerate().map(|(i, (w, t))| class(*w, *t, true, i == 0)).collect(),
                interactive_reserve: reserve,
                lifo_after: Duration::from_millis(lifo_ms),
            }
        })
}

/// Lets every task that can run, run (the clock is paused and never moves by itself here).
async fn settle() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

/// The test's side of one upstream's admission: the waiters' tasks, the permits held, and
/// how each arrival ended.
#[derive(Default)]
struct Clients {
    waiting: Vec<JoinHandle<Result<Permit, Refusal>>>,
    permits: Vec<Permit>,
    arrivals: u64,
    admitted: u64,
    refused: u64,
    withdrawn: u64,
}

impl Clients {
    /// Collects the waiters that have their answer.
    async fn collect(&mut self) -> Result<(), TestCaseError> {
        let mut still = Vec::with_capacity(self.waiting.len());
        for handle in std::mem::take(&mut self.waiting) {
            if !handle.is_finished() {
                still.push(handle);
                continue;
            }
            match handle.await {
                Ok(Ok(permit)) => {
                    self.admitted += 1;
                    self.permits.push(permit);
                }
                Ok(Err(_)) => self.refused += 1,
                Err(e) if e.is_cancelled() => self.withdrawn += 1,
                Err(e) => return Err(TestCaseError::fail(format!("a waiter panicked: {e}"))),
            }
        }
        self.waiting = still;
        Ok(())
    }
}

/// The books: arrivals against admission's counters, in flight against the permits held,
/// the queue against the waiters.
fn check_books(admission: &Admission, clients: &Clients) -> Result<(), TestCaseError> {
    let status = admission.status();
    let shed: u64 = status.shed.values().sum();
    prop_assert_eq!(
        status.admitted + status.abandoned + shed + status.queued as u64,
        clients.arrivals,
        "every arrival is waiting, or was admitted, abandoned or refused, once: {:?}",
        status
    );
    prop_assert_eq!(clients.refused, shed, "each refusal a client got is counted once");
    prop_assert_eq!(
        clients.admitted + clients.withdrawn,
        status.admitted + status.abandoned,
        "admitted or withdrawn, from both sides"
    );
    prop_assert_eq!(
        status.in_flight,
        clients.permits.len() + status.orphaned,
        "in flight = permits held + orphaned runs"
    );
    prop_assert_eq!(status.queued, clients.waiting.len(), "the queue is the clients still waiting");
    Ok(())
}

/// No request waits while its class has room: what `dispatch` leaves behind.
fn check_work_conserving(admission: &Admission) -> Result<(), TestCaseError> {
    let st = admission.lock();
    let now = Instant::now();
    if !st.policy.enabled || !st.is_open() || st.queue.is_empty() {
        return Ok(());
    }
    for class in 0..st.policy.classes.len() {
        if st.queue.class_len(class) > 0 {
            prop_assert!(
                st.in_flight >= st.cap(class, now),
                "class {} waits with {} in flight under its cap {}",
                class,
                st.in_flight,
                st.cap(class, now)
            );
        }
    }
    Ok(())
}

async fn run(policy: AdmissionPolicy, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let classes = policy.classes.len();
    let enabled = policy.enabled;
    let limit_settings = policy.limit.clone();
    let admission = Admission::new("api", policy.clone());
    let mut clients = Clients::default();
    for op in ops {
        let admitted_before = admission.status().admitted;
        match op {
            Op::Arrive { tenant, class, deadline_ms, streams } => {
                let ticket = Ticket {
                    tenant,
                    tenant_label: format!("t{tenant}"),
                    class: class.min(classes - 1),
                    deadline: deadline_ms.map(Duration::from_millis),
                    since: None,
                    streams,
                };
                let started = Arc::new(AtomicBool::new(false));
                let handle = tokio::spawn({
                    let admission = Arc::clone(&admission);
                    let started = Arc::clone(&started);
                    async move {
                        started.store(true, Ordering::SeqCst);
                        admission.acquire(ticket).await
                    }
                });
                settle().await;
                prop_assert!(started.load(Ordering::SeqCst), "the arrival ran");
                clients.arrivals += 1;
                clients.waiting.push(handle);
            }
            Op::Complete { pick, outcome, first_byte_ms, header } => {
                if !clients.permits.is_empty() {
                    let permit = clients.permits.swap_remove(pick % clients.permits.len());
                    permit.attempt_started();
                    if header {
                        permit.header_received();
                    }
                    permit.complete(pick % 2 == 0, first_byte_ms.map(Duration::from_millis), outcome);
                }
            }
            Op::Release { pick } => {
                if !clients.permits.is_empty() {
                    drop(clients.permits.swap_remove(pick % clients.permits.len()));
                }
            }
            Op::Withdraw { pick } => {
                if !clients.waiting.is_empty() {
                    clients.waiting[pick % clients.waiting.len()].abort();
                }
            }
            Op::Advance { ms } => {
                tokio::time::advance(Duration::from_millis(ms)).await;
                settle().await;
                // The periodic nudge (the ramp and interactive headroom move with time).
                admission.tick();
            }
            Op::Limits { min, span } => {
                let limit = LimitSettings { min, max: min + span, ..limit_settings.clone() };
                admission.reconfigure(AdmissionPolicy { limit, ..policy.clone() });
            }
            Op::Share(share) => admission.set_capacity_share(share),
            Op::Hold { ms, ramp_ms } => admission.set_hold(
                ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
                Duration::from_millis(ramp_ms),
            ),
            Op::Available { up, ramp_ms } => admission.set_available(up, Duration::from_millis(ramp_ms)),
            Op::Tick => admission.tick(),
            Op::Shutdown => {
                admission.shed_all(Refusal::ShuttingDown);
            }
        }
        settle().await;
        clients.collect().await?;
        if enabled && admission.status().admitted > admitted_before {
            let st = admission.lock();
            let limit = st.effective_limit(Instant::now());
            prop_assert!(
                st.in_flight <= limit,
                "admitted to {} in flight over the limit {}",
                st.in_flight,
                limit
            );
        }
        check_books(&admission, &clients)?;
        check_work_conserving(&admission)?;
    }
    // The end: holds lifted, permits released, time for every deadline and orphan to pass.
    admission.set_hold(None, Duration::ZERO);
    admission.set_available(true, Duration::ZERO);
    clients.permits.clear();
    for _ in 0..4 {
        tokio::time::advance(Duration::from_secs(3600)).await;
        settle().await;
        clients.collect().await?;
        clients.permits.clear();
        settle().await;
    }
    clients.collect().await?;
    clients.permits.clear();
    settle().await;
    prop_assert!(clients.waiting.is_empty(), "{} waiters never got an answer", clients.waiting.len());
    check_books(&admission, &clients)?;
    let status = admission.status();
    prop_assert_eq!((status.in_flight, status.orphaned, status.queued), (0, 0, 0));
    prop_assert!(admission.lock().awaiting_header.is_empty(), "a released request still awaits its header");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, TestCaseError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| TestCaseError::fail(format!("runtime: {e}")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every arrival ends once, admission's books balance, admissions stay within the limit
    /// and no request waits while its class has room.
    #[test]
    fn every_waiter_ends_once_within_the_limit(
        (policy, ops) in policy().prop_flat_map(|p| {
            let classes = p.classes.len();
            (Just(p), prop::collection::vec(op(classes), 0..80))
        }),
    ) {
        runtime()?.block_on(run(policy, ops))?;
    }

    /// A class that is never queued passes at once, whatever holds the others (a hold, an
    /// outage, a full queue, a shutdown).
    #[test]
    fn an_unqueued_class_always_passes(
        (policy, ops) in policy().prop_flat_map(|p| {
            let classes = p.classes.len();
            (Just(p), prop::collection::vec(op(classes), 0..40))
        }),
        checks in prop::collection::vec(any::<usize>(), 1..6),
    ) {
        runtime()?.block_on(async move {
            let mut policy = policy;
            policy.classes.push(class(1, 1, false, false));
            let bypass = policy.classes.len() - 1;
            let admission = Admission::new("api", policy);
            let mut held = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Arrive { tenant, class, .. } => {
                        let ticket = Ticket { tenant, tenant_label: String::new(), class, deadline: None, since: None, streams: false };
                        let admission = Arc::clone(&admission);
                        // Queued classes may wait: not awaited here.
                        held.push(tokio::spawn(async move { admission.acquire(ticket).await }));
                    }
                    Op::Hold { ms, ramp_ms } => admission.set_hold(ms.map(|ms| Instant::now() + Duration::from_millis(ms)), Duration::from_millis(ramp_ms)),
                    Op::Available { up, ramp_ms } => admission.set_available(up, Duration::from_millis(ramp_ms)),
                    Op::Share(share) => admission.set_capacity_share(share),
                    Op::Shutdown => {
                        admission.shed_all(Refusal::ShuttingDown);
                    }
                    _ => {}
                }
                settle().await;
                if checks.contains(&i) {
                    let ticket = Ticket { tenant: 9, tenant_label: String::new(), class: bypass, deadline: None, since: None, streams: false };
                    let passed = tokio::time::timeout(Duration::ZERO, admission.acquire(ticket)).await;
                    prop_assert!(matches!(passed, Ok(Ok(_))), "the unqueued class waited or was refused: {:?}", passed.map(|r| r.map(|_| ())));
                }
            }
            for handle in held {
                handle.abort();
            }
            Ok(())
        })?;
    }
}

/// While admission ramps up after an outage or a hold, a capacity share that puts the limit
/// below `min_limit` (rolling maintenance drains one of two replicas: share ½ of a limit of
/// 2 with `min_limit = 2`) once made `effective_limit` call `clamp(min_limit, limit)` with
/// min > max, which panicked on every acquire, dispatch and `/status` until the ramp ended.
#[test]
fn a_shared_capacity_below_min_limit_during_a_ramp_does_not_panic() {
    let policy = AdmissionPolicy {
        limit: LimitSettings { initial: 2, min: 2, max: 2, ..LimitSettings::default() },
        ..AdmissionPolicy::default()
    };
    let admission = Admission::new("api", policy);
    admission.set_capacity_share(0.5);
    admission.set_available(false, Duration::ZERO);
    admission.set_available(true, Duration::from_secs(10));
    let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| admission.status()));
    assert!(status.is_ok(), "effective_limit panicked during the ramp");
    assert_eq!(status.map(|s| s.effective_limit).ok(), Some(1), "half of a limit of 2");
}
