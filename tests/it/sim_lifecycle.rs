//! Simulator lifecycle: stop kills everything at once, restart keeps the port closed for the
//! boot delay, dropping the last handle stops it.

use crate::common::sim;

use std::time::Duration;

use dify_shaper_tools::sim::SimConfig;
use http_body_util::BodyExt;
use sim::*;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_refuses_connections_and_cuts_in_flight_requests() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let addr = sim.addr();
    assert!(sim.is_serving());
    assert_eq!(call(addr, "GET", "/health", &[], "").await.status, 200);

    let blocking = tokio::spawn(async move {
        try_call(addr, "POST", "/v1/workflows/run", &[("x-sim-service-time", "20s")], WORKFLOW_BLOCKING).await
    });
    let req = build(
        "POST",
        addr,
        "/v1/workflows/run",
        &[("x-sim-service-time", "20s"), ("x-sim-events", "4")],
        WORKFLOW_STREAMING,
    );
    let stream = send(addr, req).await.expect("stream head");
    assert_eq!(stream.status(), 200);
    let mut body = stream.into_body();
    let first = tokio::time::timeout(REQUEST_TIMEOUT, body.frame()).await.expect("first frame in time");
    assert!(matches!(first, Some(Ok(_))));
    wait_until("both runs active", Duration::from_secs(10), || sim.stats().active == 2).await;

    let t = Instant::now();
    sim.stop().await;
    assert!(t.elapsed() < Duration::from_secs(3), "stop took {:?}", t.elapsed());
    assert!(!sim.is_serving());
    assert!(refused(addr).await, "port still accepts after stop");

    let cut =
        tokio::time::timeout(REQUEST_TIMEOUT, blocking).await.expect("blocking call ends").expect("task");
    assert!(cut.is_err(), "in-flight request should be cut: {cut:?}");
    let rest = tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await.expect("stream ends");
    assert!(rest.is_err(), "a cut stream must not end cleanly");

    let s = sim.stats();
    assert_eq!(s.killed, 2, "{s:?}");
    assert_eq!(s.active, 0);
    assert_eq!(s.open_connections, 0);
    sim.stop().await; // idempotent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_port_closed_during_boot() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let addr = sim.addr();
    let t = Instant::now();
    sim.restart(Duration::from_millis(1500)).await;
    assert!(!sim.is_serving());
    assert!(refused(addr).await, "port must be closed while booting");
    tokio::time::timeout(Duration::from_secs(15), sim.wait_serving()).await.expect("serving again");
    let booted = t.elapsed();
    assert!(booted >= Duration::from_millis(1400), "booted after {booted:?}");
    assert!(sim.is_serving());
    assert_eq!(sim.addr(), addr);
    let r = call(addr, "GET", "/health", &[], "").await;
    assert_eq!(r.status, 200);
    // A restart while booting starts the boot over; stop cancels a boot.
    sim.restart(Duration::from_secs(60)).await;
    sim.stop().await;
    assert!(!sim.is_serving());
    assert!(refused(addr).await);
    sim.restart(Duration::ZERO).await;
    tokio::time::timeout(Duration::from_secs(15), sim.wait_serving()).await.expect("serving again");
    assert_eq!(call(addr, "GET", "/console/api/ping", &[], "").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_the_simulator() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let addr = sim.addr();
    let clone = sim.clone();
    drop(sim);
    assert_eq!(call(addr, "GET", "/health", &[], "").await.status, 200);
    // A long stream is running when the last handle goes.
    let req = build("POST", addr, "/v1/chat-messages", &[("x-sim-service-time", "30s")], CHAT_STREAMING);
    let stream = send(addr, req).await.expect("stream head");
    drop(clone);
    let mut refused_now = false;
    for _ in 0..200 {
        if refused(addr).await {
            refused_now = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused_now, "port still open after the last handle was dropped");
    let rest =
        tokio::time::timeout(REQUEST_TIMEOUT, stream.into_body().collect()).await.expect("stream ends");
    assert!(rest.is_err(), "the stream is cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_lets_an_answer_being_written_finish() {
    let _machine = crate::common::shared().await;
    // Like a run's answer handed over a moment before the restart: no run is active, but the
    // bytes are still being written. 64 MB, unread until the restart has begun, cannot all
    // sit in the socket buffers.
    const SIZE: usize = 64 << 20;
    let sim = start(SimConfig::default()).await;
    let addr = sim.addr();
    let req = build("GET", addr, &format!("/sim/bytes?n={SIZE}"), &[], "");
    let download = send(addr, req).await.expect("download head");
    assert_eq!(download.status(), 200);
    let restarting = tokio::spawn({
        let sim = sim.clone();
        async move { sim.restart_graceful(Duration::from_secs(20), Duration::from_secs(2)).await }
    });
    wait_until("the restart began", Duration::from_secs(10), || !sim.is_serving()).await;
    assert_eq!(sim.stats().active, 0, "nothing counts as a run");
    let body =
        tokio::time::timeout(REQUEST_TIMEOUT, download.into_body().collect()).await.expect("download ends");
    let received = body.map(|b| b.to_bytes().len()).unwrap_or(0);
    assert_eq!(received, SIZE, "the restart cut the answer");
    tokio::time::timeout(REQUEST_TIMEOUT, restarting).await.expect("restart returns").expect("join");
}
