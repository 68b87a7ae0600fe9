//! Simulator capacity: gunicorn's `workers × worker_connections` accepted connections, the
//! rest waiting in the listen backlog; live capacity changes; keep-alive idle close.

use crate::common::sim;

use std::time::Duration;

use dify_shaper_tools::sim::SimConfig;
use sim::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_connections_wait_in_the_backlog() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default().with_capacity(2)).await;
    let addr = sim.addr();
    let t0 = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                call(addr, "POST", "/v1/workflows/run", &[("x-sim-service-time", "1s")], WORKFLOW_BLOCKING)
                    .await
            })
        })
        .collect();
    wait_until("two runs active", Duration::from_secs(10), || sim.stats().active == 2).await;
    // Observation window: the other two connections stay un-accepted while both slots are busy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = sim.stats();
    assert_eq!(s.accepted_connections, 2, "{s:?}");
    assert_eq!(s.active, 2);
    assert_eq!(s.open_connections, 2);
    for c in calls {
        let r = c.await.expect("task");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let elapsed = t0.elapsed();
    assert!(elapsed >= Duration::from_millis(1900), "served in two waves, took {elapsed:?}");
    let s = sim.stats();
    assert_eq!(s.max_active, 2, "{s:?}");
    assert_eq!(s.accepted_connections, 4);
    assert_eq!(s.runs_by_path.get("/v1/workflows/run"), Some(&4));
    wait_until("all responses completed", Duration::from_secs(5), || sim.stats().completed == 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_capacity_admits_waiting_connections() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig::default().with_capacity(1)).await;
    let addr = sim.addr();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                call(addr, "POST", "/v1/chat-messages", &[("x-sim-service-time", "2s")], CHAT_BLOCKING).await
            })
        })
        .collect();
    wait_until("one run active", Duration::from_secs(10), || sim.stats().active == 1).await;
    sim.set_config(|c| c.workers = 3);
    assert_eq!(sim.config().capacity(), 3);
    // All three run at once, long before the first one (2 s) is done.
    wait_until("three runs active", Duration::from_millis(1500), || sim.stats().active == 3).await;
    for c in calls {
        assert_eq!(c.await.expect("task").status, 200);
    }
    assert_eq!(sim.stats().max_active, 3);
}

/// Sends a keep-alive `GET /health` on `stream` and reads the whole response.
async fn health_on(stream: &mut TcpStream) {
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: sim\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&buf).contains(r#""version":"sim"}"#) {
        let n = tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed before the response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"));
}

/// Reads until EOF (or reset) and returns when it happened.
async fn closed_at(stream: &mut TcpStream) -> Instant {
    let mut chunk = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Instant::now(),
        Ok(Ok(_)) => panic!("unexpected bytes on an idle connection"),
        Err(_) => panic!("idle connection was not closed within 10 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connection_is_closed_and_frees_its_slot() {
    let _machine = crate::common::shared().await;
    let config =
        SimConfig { keepalive_timeout: Duration::from_millis(400), ..SimConfig::default().with_capacity(1) };
    let sim = start(config).await;
    let addr = sim.addr();

    let mut a = TcpStream::connect(addr).await.expect("connect");
    health_on(&mut a).await;
    health_on(&mut a).await; // the connection is reused (keep-alive)
    let answered = Instant::now();
    // A second client waits in the backlog while `a` idles in the only slot.
    let b = tokio::spawn(async move {
        call(addr, "GET", "/health", &[], "").await;
        Instant::now()
    });
    let a_closed = closed_at(&mut a).await;
    let idle = a_closed - answered;
    assert!(idle >= Duration::from_millis(350), "closed after {idle:?}");
    let b_done = b.await.expect("task");
    assert!(b_done >= answered + Duration::from_millis(350), "b was served before a's slot was free");
    let s = sim.stats();
    assert_eq!(s.accepted_connections, 2);
    assert!(s.idle_closed >= 1, "{s:?}");

    // A connection that never sends a request is closed by the same rule.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let t = Instant::now();
    let closed = closed_at(&mut silent).await;
    assert!(closed - t >= Duration::from_millis(300), "closed after {:?}", closed - t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowdown_grows_service_time_with_load() {
    let _machine = crate::common::shared().await;
    let sim = start(SimConfig {
        service_time: dify_shaper_tools::sim::ServiceTime::Fixed(Duration::from_millis(800)),
        slowdown_per_active: Some(Duration::from_millis(100)),
        ..SimConfig::default()
    })
    .await;
    let addr = sim.addr();
    let first =
        tokio::spawn(async move { call(addr, "POST", "/v1/workflows/run", &[], WORKFLOW_BLOCKING).await });
    wait_until("first run active", Duration::from_secs(10), || sim.stats().active == 1).await;
    let second = call(addr, "POST", "/v1/workflows/run", &[], WORKFLOW_BLOCKING).await;
    let first = first.await.expect("task");
    let elapsed = |r: &Resp| r.json()["data"]["elapsed_time"].as_f64().expect("elapsed_time");
    assert!((elapsed(&first) - 0.8).abs() < 1e-9, "{}", elapsed(&first));
    assert!((elapsed(&second) - 0.9).abs() < 1e-9, "{}", elapsed(&second));

    sim.reset_stats();
    let s = sim.stats();
    assert_eq!((s.requests, s.accepted_connections, s.max_active), (0, 0, 0));
    assert!(s.by_status.is_empty() && s.runs_by_path.is_empty());
}
