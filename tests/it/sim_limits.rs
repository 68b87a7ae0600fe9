//! Dify's overload answers in the simulator: the PostgreSQL connection limit (500), the
//! per-app `APP_MAX_ACTIVE_REQUESTS` (429), and injected faults for retry tests.

use crate::common::sim;

use std::time::Duration;

use dify_shaper_tools::sim::SimConfig;
use serde_json::json;
use sim::*;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_pool_exhaustion_fails_fast_with_500() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig { db_connections: Some(2), ..SimConfig::default() }).await;
    let addr = sim.addr();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                call(addr, "POST", "/v1/workflows/run", &[("x-sim-service-time", "2s")], WORKFLOW_BLOCKING)
                    .await
            })
        })
        .collect();
    wait_until("two runs hold DB connections", Duration::from_secs(10), || sim.stats().active == 2).await;
    for _ in 0..2 {
        let t = Instant::now();
        let r = call(addr, "POST", "/v1/workflows/run", &[], WORKFLOW_BLOCKING).await;
        assert!(t.elapsed() < Duration::from_millis(800), "latency stays flat: {:?}", t.elapsed());
        assert_eq!(r.status, 500);
        assert_eq!(r.header("content-type"), Some("application/json"));
        // Dify's generic envelope, byte for byte: PostgreSQL's connection limit strikes in
        // the API-key check, outside the endpoint's own error handling.
        assert_eq!(r.body, dify_shaper_tools::sim::DIFY_UNHANDLED_ERROR.as_bytes());
        assert_eq!(r.json(), json!({"code": "unknown", "message": "Internal Server Error", "status": 500}));
    }
    for s in slow {
        assert_eq!(s.await.expect("task").status, 200);
    }
    let s = sim.stats();
    assert_eq!(s.by_status.get(&200), Some(&2), "{s:?}");
    assert_eq!(s.by_status.get(&500), Some(&2));
    assert_eq!(s.runs_by_path.get("/v1/workflows/run"), Some(&2));
    assert_eq!(s.requests_by_path.get("/v1/workflows/run"), Some(&4));
    // Connections are released: a new run gets one again.
    let r = call(addr, "POST", "/v1/workflows/run", &[], WORKFLOW_BLOCKING).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_max_active_requests_answers_429_per_app() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig { app_max_active_requests: Some(1), ..SimConfig::default() }).await;
    let addr = sim.addr();
    let first = tokio::spawn(async move {
        call(
            addr,
            "POST",
            "/v1/chat-messages",
            &[("authorization", "Bearer app-a"), ("x-sim-service-time", "2s")],
            CHAT_BLOCKING,
        )
        .await
    });
    wait_until("app-a run active", Duration::from_secs(10), || sim.stats().active == 1).await;
    let t = Instant::now();
    let r =
        call(addr, "POST", "/v1/chat-messages", &[("authorization", "Bearer app-a")], CHAT_BLOCKING).await;
    assert!(t.elapsed() < Duration::from_millis(800));
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json(),
        json!({
            "code": "too_many_requests",
            "message": "Too many requests. Please try again later.",
            "status": 429
        })
    );
    // Another app is not affected.
    let other = call(
        addr,
        "POST",
        "/v1/workflows/run",
        &[("authorization", "Bearer app-b"), ("x-sim-service-time", "10ms")],
        WORKFLOW_BLOCKING,
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(first.await.expect("task").status, 200);
    // The rejected request did no work.
    assert_eq!(sim.stats().runs_by_path.get("/v1/chat-messages"), Some(&1));
    // The slot is free again.
    let again =
        call(addr, "POST", "/v1/chat-messages", &[("authorization", "Bearer app-a")], CHAT_BLOCKING).await;
    assert_eq!(again.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_hit_only_the_first_attempts() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default()).await;
    let addr = sim.addr();
    let headers = [("x-request-id", "retry-me"), ("x-sim-fail", "503"), ("x-sim-fail-first", "2")];
    for _ in 0..2 {
        let r = call(addr, "POST", "/v1/workflows/run", &headers, WORKFLOW_BLOCKING).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["code"], "service_unavailable");
    }
    let r = call(addr, "POST", "/v1/workflows/run", &headers, WORKFLOW_BLOCKING).await;
    assert_eq!(r.status, 200);
    assert_eq!(sim.count_for_request_id("retry-me"), 3);
    assert_eq!(sim.count_for_request_id("never-sent"), 0);

    let reset = try_call(addr, "GET", "/health", &[("x-sim-fail", "reset")], "").await;
    assert!(reset.is_err(), "expected a dropped connection, got {reset:?}");
    assert_eq!(sim.stats().faults_injected, 3);
}
