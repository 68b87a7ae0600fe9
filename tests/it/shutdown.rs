//! Graceful shutdown on SIGTERM. A real proxy process and an in-process simulator on
//! 127.0.0.1; the proxy is signalled with `kill` and its exit is timed. The admin listener
//! answers through the drain, and a taken admin address fails the start.

use crate::common;

use std::time::Duration;

use common::fixtures::{status, stream_events, wait_for};
use common::*;
use dify_shaper_tools::sim::{ServiceTime, SimConfig, Simulator};
use nix::sys::signal::Signal;
use tokio::time::Instant;

const BLOCKING: &str = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;

/// A proxy admitting exactly `limit` requests at once, with `grace`.
fn config(sim: std::net::SocketAddr, limit: usize, grace: &str) -> String {
    format!(
        r#"[server]
shutdown_grace = "{grace}"

[upstreams.api]
servers = ["{sim}"]

[upstreams.api.admission]
initial_limit = {limit}
min_limit = {limit}
max_limit = {limit}

[classes.run]
queue_timeout = "60s"

[[routes]]
prefix = "/"
upstream = "api"

[[routes]]
prefix = "/v1/workflows/run"
upstream = "api"
class = "run"
"#
    )
}

async fn simulator(service: Duration) -> Simulator {
    let config = SimConfig {
        workers: 1,
        worker_connections: 8,
        service_time: ServiceTime::Fixed(service),
        ..SimConfig::default()
    };
    Simulator::start("127.0.0.1:0".parse().expect("addr"), config).await.expect("simulator")
}

async fn admission(admin: std::net::SocketAddr) -> (u64, u64) {
    let s = status(admin).await;
    let a = &s["upstreams"]["api"]["admission"];
    (a["in_flight"].as_u64().unwrap_or(0), a["queued"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_answers_the_queue_and_exits_within_the_grace() {
    let _machine = crate::common::exclusive().await;
    let grace = Duration::from_secs(10);
    let sim = simulator(Duration::from_secs(2)).await;
    let mut proxy = ProxyProcess::start(&config(sim.addr(), 3, "10s")).await;
    let addr = proxy.addr;

    // Two blocking runs and a stream in flight (2 s each), then three queued behind them.
    let blocking: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { post_json(addr, "/v1/workflows/run", BLOCKING, &[]).await }))
        .collect();
    let stream = tokio::spawn(async move { stream_events(addr, "2s", 4).await });
    wait_for(Duration::from_secs(10), "3 requests in flight", || async {
        admission(proxy.admin).await.0 == 3
    })
    .await;
    let queued: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                let (code, headers, body) = post_json(addr, "/v1/workflows/run", BLOCKING, &[]).await;
                (code, headers, body, Instant::now())
            })
        })
        .collect();
    wait_for(Duration::from_secs(10), "3 requests queued", || async { admission(proxy.admin).await.1 == 3 })
        .await;

    let (code, _, body) = get(proxy.admin, "/ready").await;
    assert_eq!(code, 200, "/ready before SIGTERM: {}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["phase"], "serving");

    let signalled = Instant::now();
    proxy.signal(Signal::SIGTERM);

    // The queue is answered at once: 503 server_busy, Retry-After, nothing sent upstream.
    for task in queued {
        let (code, headers, body, at) = task.await.expect("queued request");
        let answered = at.duration_since(signalled);
        eprintln!("queued request answered {code} after {answered:?}: {}", String::from_utf8_lossy(&body));
        assert_eq!(code, 503);
        assert_eq!(json(&body)["code"], "server_busy");
        assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        assert!(answered < Duration::from_secs(1), "the queue waited {answered:?} after SIGTERM");
    }

    // New connections are refused while the in-flight ones finish.
    wait_for(Duration::from_secs(5), "the listener to close", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    let refused_after = signalled.elapsed();

    // The admin listener still answers while the in-flight requests run: not ready, and the
    // drain can be watched.
    let (code, _, body) = try_get(proxy.admin, "/ready")
        .await
        .unwrap_or_else(|e| panic!("admin /ready during the drain: {e}\n{}", proxy.logs()));
    assert_eq!(code, 503, "/ready during the drain: {}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["phase"], "shutting_down");
    let (code, _, body) = try_get(proxy.admin, "/status")
        .await
        .unwrap_or_else(|e| panic!("admin /status during the drain: {e}\n{}", proxy.logs()));
    assert_eq!(code, 200, "/status during the drain: {}", String::from_utf8_lossy(&body));
    let in_flight = json(&body)["upstreams"]["api"]["admission"]["in_flight"].as_u64().unwrap_or(0);
    assert!(in_flight > 0, "/status was asked after the drain, not during it");
    let (code, _, _) = try_get(proxy.admin, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("admin /metrics during the drain: {e}\n{}", proxy.logs()));
    assert_eq!(code, 200, "/metrics during the drain");

    // In flight: complete answers, the stream to its end.
    for task in blocking {
        let (code, _, body) = task.await.expect("in-flight request");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(json(&body)["data"]["status"], "succeeded");
    }
    let events = stream.await.expect("stream");
    let last = events.last().cloned().unwrap_or_default();
    assert!(last.contains("workflow_finished"), "the stream was cut: {events:?}");

    let exit = proxy.wait_exit(grace + Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    eprintln!(
        "SIGTERM with 3 in flight (2 s runs) + 3 queued, grace {grace:?}: listener closed within \
         {refused_after:?}, stream got {} events, process exited after {took:?} ({exit:?})",
        events.len()
    );
    let exit = exit.unwrap_or_else(|| panic!("the proxy did not exit:\n{}", proxy.logs()));
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took < grace, "exit took {took:?}, grace {grace:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_grace_is_cut_at_the_grace() {
    let _machine = crate::common::exclusive().await;
    let grace = Duration::from_secs(2);
    let sim = simulator(Duration::from_secs(20)).await;
    let mut proxy = ProxyProcess::start(&config(sim.addr(), 4, "2s")).await;
    let addr = proxy.addr;
    let stream = tokio::spawn(async move { stream_events(addr, "20s", 20).await });
    wait_for(Duration::from_secs(10), "the stream in flight", || async {
        admission(proxy.admin).await.0 == 1
    })
    .await;

    let signalled = Instant::now();
    proxy.signal(Signal::SIGTERM);
    let exit = proxy.wait_exit(grace + Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    let events = stream.await.expect("stream");
    eprintln!(
        "SIGTERM with a 20 s stream, grace {grace:?}: exited after {took:?} ({exit:?}); the stream got {} events",
        events.len()
    );
    let exit = exit.unwrap_or_else(|| panic!("the proxy did not exit:\n{}", proxy.logs()));
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took >= grace - Duration::from_millis(100), "exited after {took:?}, before the grace");
    assert!(took < grace + Duration::from_secs(3), "exited after {took:?}, grace {grace:?}");
    assert!(!events.iter().any(|e| e.contains("workflow_finished")), "the stream was not cut: {events:?}");
    assert!(proxy.logs().contains("grace over"), "{}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_admin_address_fails_the_start_naming_it() {
    let _machine = crate::common::exclusive().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = taken.local_addr().expect("addr");
    let (_upstream, upstream) = closed_port();
    let (exit, stderr) =
        run_expecting_exit(&config(upstream, 1, "1s"), free_port(), admin, Duration::from_secs(10)).await;
    let exit = exit.unwrap_or_else(|| panic!("still running with its admin address taken:\n{stderr}"));
    assert_eq!(exit.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on the admin address {admin}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
