//! Admission controller on a paused clock: fast path, queueing, timeouts, withdrawal of a
//! waiter whose client left, the wait limit (learned patience, stated deadlines), fairness,
//! bypass, eviction and the interactive reserve.

use std::time::Duration;

use super::*;
use crate::admission::limit::{Change, LimitSettings, Outcome};
use crate::admission::policy::ClassPolicy;

fn class(name: &str, weight: u32, timeout_s: u64, queued: bool, interactive: bool) -> ClassPolicy {
    ClassPolicy {
        name: name.into(),
        weight,
        queue_timeout: Duration::from_secs(timeout_s),
        queued,
        interactive,
    }
}

/// Classes: 0 interactive, 1 run, 2 control (bypass). A fixed limit of `limit`.
fn gate(limit: usize, max_queue: usize) -> Arc<Admission> {
    let fixed = LimitSettings { initial: limit, min: limit, max: limit, ..LimitSettings::default() };
    Admission::new(
        "api",
        AdmissionPolicy {
            limit: fixed,
            max_queue,
            classes: vec![
                class("interactive", 4, 10, true, true),
                class("run", 1, 30, true, false),
                class("control", 1, 1, false, false),
            ],
            ..AdmissionPolicy::default()
        },
    )
}

/// Classes: 0 interactive, 1 run. The limit learned within `limit`'s bounds.
fn learning_gate(limit: LimitSettings) -> Arc<Admission> {
    Admission::new(
        "api",
        AdmissionPolicy {
            limit,
            max_queue: 100,
            classes: vec![class("interactive", 4, 10, true, true), class("run", 1, 30, true, false)],
            ..AdmissionPolicy::default()
        },
    )
}

fn ticket(tenant: u64, class: usize) -> Ticket {
    Ticket { tenant, tenant_label: format!("t{tenant}"), class, deadline: None, since: None, streams: false }
}

#[tokio::test(start_paused = true)]
async fn admits_up_to_the_limit_then_queues_until_a_slot_frees() {
    let gate = gate(2, 100);
    let a = gate.acquire(ticket(1, 1)).await.expect("first");
    let _b = gate.acquire(ticket(1, 1)).await.expect("second");
    let waiting = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.acquire(ticket(1, 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((gate.in_flight(), gate.queued()), (2, 1));
    drop(a);
    let third = waiting.await.expect("join").expect("admitted after the release");
    assert_eq!(third.waited(), Duration::from_millis(100));
    assert_eq!((gate.in_flight(), gate.queued()), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_times_out_with_a_refusal() {
    let gate = gate(1, 100);
    let _held = gate.acquire(ticket(1, 0)).await.expect("first");
    let started = Instant::now();
    let refused = gate.acquire(ticket(1, 0)).await.map(|_| ());
    assert_eq!(refused, Err(Refusal::Timeout));
    assert_eq!(started.elapsed(), Duration::from_secs(10), "interactive queue_timeout");
    assert_eq!(gate.queued(), 0);
    assert_eq!(gate.status().shed.get("queue_timeout"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_client_left_never_gets_a_slot() {
    let gate = gate(1, 100);
    let held = gate.acquire(ticket(1, 1)).await.expect("first");
    let waiter = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.acquire(ticket(2, 1)).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    waiter.abort(); // the client disconnected: the acquire future is dropped
    let _ = waiter.await;
    assert_eq!(gate.queued(), 0);
    drop(held);
    assert_eq!(gate.in_flight(), 0, "nobody was admitted for the departed client");
    let status = gate.status();
    assert_eq!(status.abandoned, 1);
    assert_eq!(status.admitted, 1);
}

#[tokio::test(start_paused = true)]
async fn learned_patience_sheds_requests_whose_clients_will_be_gone() {
    let gate = gate(1, 100);
    let held = gate.acquire(ticket(1, 1)).await.expect("first");
    // Five clients give up after 5 s in the queue: patience ≈ 5 s.
    for _ in 0..5 {
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.acquire(ticket(2, 1)).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        waiter.abort();
        let _ = waiter.await;
    }
    assert!(gate.status().patience_ms.is_some_and(|p| (4900.0..=5100.0).contains(&p)));
    // A request that has already waited past that is shed when its turn comes.
    let late = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.acquire(ticket(3, 1)).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    drop(held);
    assert_eq!(late.await.expect("join"), Err(Refusal::Impatient));
}

#[tokio::test(start_paused = true)]
async fn clients_that_leave_before_older_waiters_teach_no_patience() {
    let gate = gate(1, 100);
    let held = gate.acquire(ticket(1, 1)).await.expect("first");
    let spawn = |tenant| {
        let gate = Arc::clone(&gate);
        tokio::spawn(async move { gate.acquire(ticket(tenant, 1)).await.map(drop) })
    };
    // One waiter that stays, then ten that give up after 200 ms each (aborts, not the wait).
    let patient = spawn(2);
    tokio::time::sleep(Duration::from_millis(10)).await;
    for tenant in 10..20 {
        let early = spawn(tenant);
        tokio::time::sleep(Duration::from_millis(200)).await;
        early.abort();
        let _ = early.await;
    }
    assert_eq!(gate.status().abandoned, 10);
    assert_eq!(gate.status().patience_ms, None, "no client left because of its wait");
    // The patient one is admitted in turn, however long that takes (up to its class's 30 s).
    tokio::time::sleep(Duration::from_secs(20)).await;
    drop(held);
    assert_eq!(patient.await.expect("join"), Ok(()));
    // Oldest-first departures are what a client's timeout looks like: they teach patience.
    let held = gate.acquire(ticket(1, 1)).await.expect("again");
    for tenant in 30..33 {
        let waiter = spawn(tenant);
        tokio::time::sleep(Duration::from_secs(3)).await;
        waiter.abort();
        let _ = waiter.await;
    }
    assert!(gate.status().patience_ms.is_some_and(|p| (2900.0..=3100.0).contains(&p)));
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_flooding_tenant_does_not_starve_another() {
    let gate = gate(1, 1000);
    let held = gate.acquire(ticket(1, 1)).await.expect("first");
    let mut flood = Vec::new();
    for _ in 0..50 {
        let gate = Arc::clone(&gate);
        flood.push(tokio::spawn(async move { gate.acquire(ticket(1, 1)).await.map(drop) }));
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let other = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move {
            let permit = gate.acquire(ticket(2, 1)).await?;
            Ok::<_, Refusal>(permit.waited())
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(held); // one slot frees: tenant 1's oldest goes first (its turn), then tenant 2
    let waited = other.await.expect("join").expect("admitted");
    assert!(waited <= Duration::from_millis(20), "tenant 2 waited {waited:?} behind a 50-request flood");
    for f in flood {
        let _ = f.await;
    }
}

#[tokio::test(start_paused = true)]
async fn control_requests_bypass_the_limit() {
    let gate = gate(1, 100);
    let _run = gate.acquire(ticket(1, 1)).await.expect("run");
    let stop = tokio::time::timeout(Duration::from_millis(1), gate.acquire(ticket(1, 2))).await;
    assert!(matches!(stop, Ok(Ok(_))), "a stop call is never queued");
    assert_eq!(gate.in_flight(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_evicts_from_the_heaviest_tenant() {
    let gate = gate(1, 3);
    let _held = gate.acquire(ticket(1, 1)).await.expect("first");
    let mut flood = Vec::new();
    for _ in 0..3 {
        let gate = Arc::clone(&gate);
        flood.push(tokio::spawn(async move { gate.acquire(ticket(1, 1)).await.map(|_| ()) }));
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gate.queued(), 3);
    let light = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.acquire(ticket(2, 1)).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gate.queued(), 3, "the newcomer got a place");
    let mut results = Vec::new();
    for f in flood {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), f).await {
            results.push(r.expect("join"));
        }
    }
    assert_eq!(results, vec![Err(Refusal::Evicted)], "one flood request was evicted at once");
    light.abort();
    // The flood tenant itself gets no room by eviction.
    let refused = gate.acquire(ticket(1, 1)).await.map(|_| ());
    assert_eq!(refused, Err(Refusal::QueueFull));
}

#[tokio::test(start_paused = true)]
async fn runs_leave_headroom_for_interactive_calls() {
    let gate = gate(10, 100);
    let _cheap = gate.acquire(ticket(9, 0)).await.expect("interactive marks itself active");
    let mut runs = Vec::new();
    for _ in 0..8 {
        runs.push(gate.acquire(ticket(1, 1)).await.expect("run within the cap"));
    }
    assert_eq!(gate.in_flight(), 9);
    let tenth_run = tokio::time::timeout(Duration::from_millis(50), gate.acquire(ticket(1, 1))).await;
    assert!(tenth_run.is_err(), "runs are capped at limit − reserve while interactive is active");
    let cheap = tokio::time::timeout(Duration::from_millis(1), gate.acquire(ticket(9, 0))).await;
    assert!(matches!(cheap, Ok(Ok(_))), "an interactive call gets the reserved slot at once");
}

#[tokio::test(start_paused = true)]
async fn a_control_call_such_as_a_health_probe_reserves_nothing() {
    let gate = gate(4, 100);
    drop(gate.acquire(ticket(9, 2)).await.expect("a probe passes"));
    let mut runs = Vec::new();
    for _ in 0..4 {
        let run = tokio::time::timeout(Duration::from_millis(1), gate.acquire(ticket(1, 1))).await;
        runs.push(run.expect("not queued").expect("admitted"));
    }
    assert_eq!(gate.in_flight(), 4, "runs have the whole limit: no interactive reserve");
}

#[tokio::test(start_paused = true)]
async fn a_maintenance_hold_keeps_requests_past_their_queue_timeout_and_releases_them() {
    let gate = gate(4, 100);
    let t0 = Instant::now();
    gate.set_hold(Some(t0 + Duration::from_secs(120)), Duration::ZERO);
    assert!(gate.held() && gate.status().effective_limit == 0);
    let waiter = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.acquire(ticket(1, 1)).await }
    });
    // The run class times out after 30 s in the queue; the hold outlasts it.
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!((gate.queued(), gate.in_flight()), (1, 0), "still held, not refused");
    let stop = gate.acquire(ticket(1, 2)).await.expect("unqueued classes pass a hold");
    drop(stop);
    gate.set_hold(None, Duration::ZERO);
    let admitted = waiter.await.expect("join").expect("released when the hold ends");
    assert_eq!(admitted.waited(), Duration::from_secs(50));
}

#[tokio::test(start_paused = true)]
async fn a_hold_that_outlives_its_deadline_answers_unavailable() {
    let gate = gate(4, 100);
    gate.set_hold(Some(Instant::now() + Duration::from_secs(60)), Duration::ZERO);
    let started = Instant::now();
    let refused = gate.acquire(ticket(1, 1)).await.map(|_| ());
    assert_eq!(refused, Err(Refusal::Unavailable));
    assert_eq!(started.elapsed(), Duration::from_secs(60), "waited for the whole hold");
}

#[tokio::test(start_paused = true)]
async fn requests_released_late_get_a_fresh_queue_timeout_and_disabled_admission_still_holds() {
    let gate = gate(1, 100);
    let policy = gate.lock().policy.clone();
    gate.reconfigure(AdmissionPolicy { enabled: false, ..policy });
    gate.set_hold(Some(Instant::now() + Duration::from_secs(40)), Duration::ZERO);
    let waiters: Vec<_> = (0..3)
        .map(|t| {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.acquire(ticket(t, 1)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(gate.queued(), 3, "held although admission is disabled");
    gate.set_hold(None, Duration::ZERO);
    for waiter in waiters {
        waiter.await.expect("join").expect("disabled admission releases everyone at once");
    }
}

#[tokio::test(start_paused = true)]
async fn a_capacity_share_scales_the_limit() {
    let gate = gate(4, 100);
    gate.set_capacity_share(0.5);
    let _a = gate.acquire(ticket(1, 1)).await.expect("1");
    let _b = gate.acquire(ticket(1, 1)).await.expect("2");
    let third = tokio::time::timeout(Duration::from_secs(1), gate.acquire(ticket(1, 1))).await;
    assert!(third.is_err(), "half of 4 is 2");
    gate.set_capacity_share(1.0);
    let _c = gate.acquire(ticket(1, 1)).await.expect("room again");
}

#[tokio::test(start_paused = true)]
async fn shed_all_answers_waiters_and_refuses_later_waits_but_keeps_admitting_what_fits() {
    let gate = gate(2, 100);
    let first = gate.acquire(ticket(1, 1)).await.expect("first");
    let _second = gate.acquire(ticket(2, 1)).await.expect("second");
    let waiters: Vec<_> = (0..3)
        .map(|t| {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.acquire(ticket(10 + t, 1)).await.map(|_| ()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gate.queued(), 3);
    assert_eq!(gate.shed_all(Refusal::ShuttingDown), 3);
    for waiter in waiters {
        assert_eq!(waiter.await.expect("join"), Err(Refusal::ShuttingDown));
    }
    // Would wait: refused at once.
    assert_eq!(gate.acquire(ticket(3, 1)).await.map(|_| ()), Err(Refusal::ShuttingDown));
    // Fits under the limit: still served (it can finish within the grace).
    drop(first);
    let fits = gate.acquire(ticket(4, 1)).await.expect("admitted while closing");
    assert_eq!((gate.in_flight(), gate.queued()), (2, 0));
    drop(fits);
    assert_eq!(gate.status().shed.get("shutting_down"), Some(&4));
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_client_left_keeps_its_slot_until_it_would_have_finished() {
    let gate = gate(1, 100);
    // Runs of this class answer after 2 s.
    for _ in 0..3 {
        let permit = gate.acquire(ticket(1, 1)).await.expect("admitted");
        permit.attempt_started();
        tokio::time::sleep(Duration::from_secs(2)).await;
        permit.header_received();
        permit.complete(false, Some(Duration::from_secs(2)), Outcome::Success);
    }
    let orphan = gate.acquire(ticket(1, 1)).await.expect("admitted");
    orphan.attempt_started();
    let next = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.acquire(ticket(2, 1)).await.map(|p| p.waited()) }
    });
    // The client gives up after 0.5 s; the backend keeps working on the run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    orphan.complete(false, Some(Duration::from_millis(500)), Outcome::Abandoned);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = gate.status();
    assert_eq!((status.in_flight, status.orphaned, status.queued), (1, 1, 1), "the slot is still taken");
    let waited = next.await.expect("join").expect("admitted once the run would have finished");
    assert_eq!(waited, Duration::from_secs(2), "2 s after the orphan's attempt started, not at 0.5 s");
    assert_eq!(gate.status().orphaned, 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_leaving_before_anything_is_known_frees_its_slot_at_once() {
    let gate = gate(1, 100);
    let permit = gate.acquire(ticket(1, 1)).await.expect("admitted");
    permit.attempt_started();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // No run of this class has answered yet: there is no estimate to hold the slot for.
    permit.complete(false, Some(Duration::from_millis(500)), Outcome::Abandoned);
    assert_eq!((gate.in_flight(), gate.status().orphaned), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_overload_blames_the_highest_level_the_request_saw() {
    let gate = gate(2, 100);
    let first = gate.acquire(ticket(1, 1)).await.expect("admitted as the 1st");
    let _second = gate.acquire(ticket(2, 1)).await.expect("admitted as the 2nd");
    // The second reached the backend first; the first was refused with 2 in flight.
    first.complete(false, Some(Duration::from_millis(5)), Outcome::Overload);
    assert_eq!(gate.status().ceiling, Some(2), "the failing level is 2, not the 1 it was admitted at");
}

/// A client that waits `patience` for its permit, then leaves (drops the wait).
fn impatient_client(
    gate: &Arc<Admission>,
    tenant: u64,
    class: usize,
    patience: Duration,
) -> tokio::task::JoinHandle<Result<Result<Permit, Refusal>, tokio::time::error::Elapsed>> {
    let gate = Arc::clone(gate);
    tokio::spawn(async move { tokio::time::timeout(patience, gate.acquire(ticket(tenant, class))).await })
}

#[tokio::test(start_paused = true)]
async fn waiters_queued_before_patience_was_learned_are_refused_before_their_clients_leave() {
    let gate = gate(1, 100);
    let _held = gate.acquire(ticket(1, 1)).await.expect("first");
    let patience = Duration::from_secs(5);
    // Three clients, then twenty more a little later, all giving up after 5 s; the run class
    // would let them wait 30 s. Nothing is known about patience when they queue.
    let mut first = Vec::new();
    for tenant in 0..3 {
        first.push(impatient_client(&gate, 10 + tenant, 1, patience));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut later = Vec::new();
    for tenant in 0..20 {
        later.push(impatient_client(&gate, 100 + tenant, 1, patience));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for client in first {
        assert!(client.await.expect("join").is_err(), "the first clients time out: nothing was known yet");
    }
    assert!(
        gate.status().patience_ms.is_some_and(|p| (4900.0..=5100.0).contains(&p)),
        "{:?}",
        gate.status().patience_ms
    );
    // Every later one is answered 503 before it would have given up.
    for client in later {
        match client.await.expect("join") {
            Ok(Err(refusal)) => assert_eq!(refusal, Refusal::Impatient),
            Ok(Ok(_)) => panic!("admitted while the only slot is held"),
            Err(_) => panic!("a client timed out in the queue after patience was known"),
        }
    }
    assert_eq!(gate.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stated_deadline_is_met_with_a_refusal_and_never_jumps_the_queue() {
    let gate = gate(1, 100);
    let held = gate.acquire(ticket(1, 1)).await.expect("first");
    let patient = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.acquire(ticket(2, 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let hurried = tokio::spawn({
        let gate = Arc::clone(&gate);
        let ticket = Ticket { deadline: Some(Duration::from_secs(2)), ..ticket(2, 1) };
        async move {
            let started = Instant::now();
            (gate.acquire(ticket).await.map(drop), started.elapsed())
        }
    });
    let (result, after) = hurried.await.expect("join");
    assert_eq!(result, Err(Refusal::Impatient));
    assert!(after < Duration::from_secs(2), "answered after {after:?}, past the client's 2 s");
    assert!(after >= Duration::from_millis(1800), "answered after {after:?}, far earlier than needed");
    // A long stated deadline does not overtake the request queued before it.
    let relaxed = tokio::spawn({
        let gate = Arc::clone(&gate);
        let ticket = Ticket { deadline: Some(Duration::from_secs(3600)), ..ticket(3, 1) };
        async move { gate.acquire(ticket).await.map(|p| p.waited()) }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(held);
    let permit = patient.await.expect("join").expect("the earlier waiter is admitted first");
    assert!(
        permit.waited() >= Duration::from_millis(1800),
        "the earlier waiter waited {:?}",
        permit.waited()
    );
    assert_eq!(gate.queued(), 1, "the long-deadline request still waits its turn");
    drop(relaxed);
}

#[tokio::test(start_paused = true)]
async fn a_request_held_for_maintenance_is_answered_before_its_client_gives_up() {
    let gate = gate(1, 100);
    let held = gate.acquire(ticket(1, 1)).await.expect("first");
    // A maintenance hold of 40 s. Without anything known of its client, a request waits
    // through it (the hold extends the queue timeout)…
    gate.set_hold(Some(Instant::now() + Duration::from_secs(40)), Duration::ZERO);
    drop(held);
    let through = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.acquire(ticket(2, 1)).await.map(|p| p.waited()) }
    });
    // …but one whose client said it waits 5 s is answered before then: a 503 it can retry
    // beats a silent timeout.
    let hurried = tokio::spawn({
        let gate = Arc::clone(&gate);
        let ticket = Ticket { deadline: Some(Duration::from_secs(5)), ..ticket(3, 1) };
        async move {
            let started = Instant::now();
            (gate.acquire(ticket).await.map(drop), started.elapsed())
        }
    });
    let (result, after) = hurried.await.expect("join");
    assert_eq!(result, Err(Refusal::Unavailable));
    assert!(after < Duration::from_secs(5) && after >= Duration::from_millis(4500), "after {after:?}");
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(gate.queued(), 1, "held past its 30 s queue timeout");
    gate.set_hold(None, Duration::ZERO);
    let waited = through.await.expect("join").expect("admitted once the hold ends");
    assert!(waited >= Duration::from_secs(35), "waited {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_said_it_waits_longer_than_others_is_not_shed_at_their_patience() {
    let gate = gate(1, 100);
    let held = gate.acquire(ticket(1, 1)).await.expect("first");
    // Others give up after 5 s: the learned patience.
    for tenant in 0..3 {
        let _ = impatient_client(&gate, 10 + tenant, 1, Duration::from_secs(5)).await;
    }
    // This client says it waits 20 s; its turn comes after 8 s.
    let patient = tokio::spawn({
        let gate = Arc::clone(&gate);
        let ticket = Ticket { deadline: Some(Duration::from_secs(20)), ..ticket(2, 1) };
        async move { gate.acquire(ticket).await.map(|p| p.waited()) }
    });
    tokio::time::sleep(Duration::from_secs(8)).await;
    drop(held);
    let waited = patient.await.expect("join").expect("admitted: what it said beats others' patience");
    assert!(waited >= Duration::from_secs(8), "waited {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn requests_held_through_an_outage_are_served_oldest_first() {
    let gate = gate(1, 100);
    gate.set_available(false, Duration::ZERO);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for tenant in 1..=4u64 {
        waiters.push(tokio::spawn({
            let (gate, order) = (Arc::clone(&gate), Arc::clone(&order));
            async move {
                let permit = gate.acquire(ticket(9, 1)).await.expect("served after the outage");
                order.lock().expect("order").push(tenant);
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(permit);
            }
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The queue has stood for 4 s (past lifo_after): without the outage, newest first.
    gate.set_available(true, Duration::ZERO);
    for w in waiters {
        w.await.expect("join");
    }
    assert_eq!(*order.lock().expect("order"), vec![1, 2, 3, 4], "the held backlog drains in order");
}

#[tokio::test(start_paused = true)]
async fn a_queue_no_answer_moves_gets_a_stall_probe_before_its_timeout() {
    let gate = learning_gate(LimitSettings { initial: 1, min: 1, max: 10, ..LimitSettings::default() });
    // One-second runs, one at a time.
    for _ in 0..10 {
        let permit = gate.acquire(ticket(1, 1)).await.expect("a free slot");
        tokio::time::sleep(Duration::from_secs(1)).await;
        permit.complete(false, Some(Duration::from_secs(1)), Outcome::Success);
    }
    // Then runs that take minutes fill the limit, and another waits behind them.
    let limit = gate.limit();
    let mut long = Vec::new();
    for _ in 0..limit {
        long.push(gate.acquire(ticket(1, 1)).await.expect("a free slot"));
    }
    let waiting = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.acquire(ticket(2, 1)).await }
    });
    // The prober's 100 ms timer, for at most the run class's queue timeout and a little.
    for _ in 0..350 {
        if waiting.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.tick();
    }
    let second = waiting.await.expect("join").expect("admitted by a stall probe, not refused");
    let gap = 1.0 / limit as f64;
    let expected = Duration::from_secs_f64((12.0 * gap).max(5.0));
    assert!(
        second.waited() >= expected && second.waited() <= expected + Duration::from_millis(200),
        "waited {:?}: twelve typical gaps ({gap} s) without an answer, at least 5 s",
        second.waited()
    );
    assert_eq!(gate.limit(), limit + 1);
    assert_eq!(gate.status().last_change, Some(Change::Stall));
}

/// Blocking runs and streams of one class, as Dify's clients mix them: a blocking run's header
/// comes when the run is done (1 s here), a stream's when a worker picks it up (5 ms). Blocking
/// runs still running are not streams stuck in the backlog: with demand above the limit and
/// nothing slow anywhere, the limit must not be cut for them.
#[tokio::test(start_paused = true)]
async fn blocking_runs_in_flight_do_not_count_as_stuck_streams() {
    let gate = learning_gate(LimitSettings { initial: 4, min: 1, max: 4, ..LimitSettings::default() });
    let stream = |gate: &Arc<Admission>| {
        let gate = Arc::clone(gate);
        tokio::spawn(async move {
            let permit = gate.acquire(Ticket { streams: true, ..ticket(1, 1) }).await?;
            permit.attempt_started();
            tokio::time::sleep(Duration::from_millis(5)).await;
            permit.header_received();
            permit.complete(true, Some(Duration::from_millis(5)), Outcome::Success);
            Ok::<(), Refusal>(())
        })
    };
    // Out of slow start (whose windows only learn baselines): one overload answer at 4.
    let full: Vec<Permit> = [gate.acquire(ticket(3, 1)).await, gate.acquire(ticket(3, 1)).await]
        .into_iter()
        .map(|p| p.expect("admitted"))
        .collect();
    let (_third, fourth) = (gate.acquire(ticket(3, 1)).await, gate.acquire(ticket(3, 1)).await);
    fourth.expect("admitted").complete(false, Some(Duration::from_millis(5)), Outcome::Overload);
    drop((full, _third));
    let after_overload = gate.limit();
    for _ in 0..20 {
        // Two blocking runs, and a slot for the streams (the limit is 3 after the overload).
        let mut blocking = Vec::new();
        for _ in 0..2 {
            let permit = gate.acquire(ticket(2, 1)).await.expect("blocking admitted");
            permit.attempt_started();
            blocking.push(permit);
        }
        for _ in 0..10 {
            // Two streams at once: one takes the last slot, the other waits for it.
            let (a, b) = (stream(&gate), stream(&gate));
            for stream in [a.await, b.await] {
                let limit = gate.limit();
                stream.expect("join").unwrap_or_else(|r| panic!("stream refused ({r:?}) at limit {limit}"));
            }
            tokio::time::sleep(Duration::from_millis(90)).await;
        }
        for permit in blocking {
            permit.header_received();
            permit.complete(false, Some(Duration::from_secs(1)), Outcome::Success);
        }
    }
    assert!(
        gate.limit() >= after_overload,
        "cut from {after_overload} to {}: nothing waits in the backend",
        gate.limit()
    );
}
