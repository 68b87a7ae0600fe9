//! Admission against the backend's measured concurrency, fairly. Each test starts
//! its own simulator and proxy (embedded defaults: no capacity given) on 127.0.0.1, drives a
//! bounded open-loop load and checks what clients and the backend saw.

use crate::common;

use std::time::Duration;

use common::load::{open_loop, workflow, Report};
use common::*;
use dify_shaper_tools::sim::{ServiceTime, SimConfig, Simulator};
use tokio::time::Instant;

async fn sim(workers: usize, connections: usize, service: ServiceTime, db: Option<usize>) -> Simulator {
    let config = SimConfig {
        workers,
        worker_connections: connections,
        service_time: service,
        db_connections: db,
        ..SimConfig::default()
    };
    Simulator::start("127.0.0.1:0".parse().expect("addr"), config).await.expect("simulator")
}

fn ms(ms: u64) -> ServiceTime {
    ServiceTime::Fixed(Duration::from_millis(ms))
}

async fn admission_status(proxy: &ProxyProcess) -> serde_json::Value {
    let (status, _, body) = get(proxy.admin, "/status").await;
    assert_eq!(status, 200);
    json(&body)["upstreams"]["api"]["admission"].clone()
}

/// Successful responses per second completed in the steady part of the run (from 2 s after
/// the start to 2 s before the end of sending), as clients saw them.
fn goodput(report: &Report, duration: Duration) -> f64 {
    goodput_between(report, Duration::from_secs(2), duration.saturating_sub(Duration::from_secs(2)))
}

/// Successful responses per second completed between `from` and `to` after the start.
fn goodput_between(report: &Report, from: Duration, to: Duration) -> f64 {
    let done = report
        .outcomes
        .iter()
        .filter(|o| o.status.is_some_and(|s| (200..300).contains(&s)))
        .filter_map(|o| o.latency.map(|l| o.sent_at + l))
        .filter(|t| *t >= from && *t < to)
        .count();
    done as f64 / (to - from).as_secs_f64()
}

fn assert_only_success_or_busy(report: &Report) {
    for o in &report.outcomes {
        match o.status {
            Some(s) if (200..300).contains(&s) => {}
            Some(503) => assert_eq!(o.code.as_deref(), Some("server_busy"), "a 503 without the envelope"),
            Some(other) => panic!("the proxy answered {other} ({:?})", o.code),
            None => assert!(o.timed_out, "connection error through the proxy: {:?}", o.error),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_bound_overload_keeps_goodput_where_direct_access_collapses() {
    let _machine = crate::common::exclusive().await;
    // Capacity 4 connections × 500 ms = 8 runs/s; offered 16/s; clients give up after 5 s.
    let capacity = 8.0;
    let (rate, duration, patience) = (16.0, Duration::from_secs(20), Duration::from_secs(5));

    let direct_sim = sim(1, 4, ms(500), None).await;
    let direct =
        open_loop(direct_sim.addr(), rate, duration, patience, workflow("app-directdirectdirect01")).await;
    let direct_goodput = goodput(&direct, duration);

    let backend = sim(1, 4, ms(500), None).await;
    let proxy = ProxyProcess::start_default(backend.addr()).await;
    let shaped = open_loop(proxy.addr, rate, duration, patience, workflow("app-shapedshapedshaped1")).await;
    let shaped_goodput = goodput(&shaped, duration);
    let stats = backend.stats();
    let wasted = stats.abandoned as f64 / stats.completed.max(1) as f64;
    eprintln!(
        "capacity {capacity}/s, offered {rate}/s for {duration:?}: direct goodput {direct_goodput:.2}/s {:?}; \
         shaped goodput {shaped_goodput:.2}/s {:?}; backend runs {} of which abandoned {} ({:.1}%); status {}",
        direct.by_status(),
        shaped.by_status(),
        stats.completed,
        stats.abandoned,
        wasted * 100.0,
        admission_status(&proxy).await
    );
    assert!(shaped_goodput >= 0.9 * capacity, "shaped goodput {shaped_goodput:.2}/s < 90% of {capacity}/s");
    assert!(wasted < 0.05, "{:.1}% of the backend's runs were for clients that had left", wasted * 100.0);
    assert_only_success_or_busy(&shaped);
    assert!(direct_goodput < 0.6 * capacity, "direct access did not collapse: {direct_goodput:.2}/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_limited_backend_is_learned_without_500s() {
    let _machine = crate::common::exclusive().await;
    // Plenty of workers, but PostgreSQL takes 8 connections: flat latency, 500s beyond.
    let backend = sim(1, 64, ms(100), Some(8)).await;
    let proxy = ProxyProcess::start_default(backend.addr()).await;
    let (rate, duration) = (160.0, Duration::from_secs(20));
    let report =
        open_loop(proxy.addr, rate, duration, Duration::from_secs(5), workflow("app-dbdbdbdbdbdbdbdbdb01"))
            .await;
    let status = admission_status(&proxy).await;
    let after = |o: &&common::load::Outcome| o.sent_at >= Duration::from_secs(10);
    let late: Vec<_> = report.outcomes.iter().filter(after).collect();
    let errors = late.iter().filter(|o| o.status == Some(500)).count();
    let error_rate = errors as f64 / late.len().max(1) as f64;
    let limit = status["limit"].as_u64().unwrap_or(0);
    eprintln!(
        "db limit 8, offered {rate}/s: {:?}; 500s after 10 s: {errors}/{} ({:.2}%); learned limit {limit}; status {status}",
        report.by_status(),
        late.len(),
        error_rate * 100.0
    );
    assert!(error_rate < 0.01, "{:.2}% 500s after convergence", error_rate * 100.0);
    assert!((6..=10).contains(&limit), "learned limit {limit}, true limit 8 (±25%)");
    assert!(
        report.ok() as f64 >= 0.8 * 80.0 * duration.as_secs_f64() * 0.5,
        "goodput collapsed: {:?}",
        report.by_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_follows_a_capacity_increase_within_10s() {
    let _machine = crate::common::exclusive().await;
    // 1 worker × 2 connections, 200 ms runs (10/s), then 6 workers (60/s); offered 80/s.
    let backend = sim(1, 2, ms(200), None).await;
    let proxy = ProxyProcess::start_default(backend.addr()).await;
    let load = tokio::spawn(open_loop(
        proxy.addr,
        80.0,
        Duration::from_secs(22),
        Duration::from_secs(5),
        workflow("app-capacitycapacity01"),
    ));
    let start = Instant::now();
    let mut before = Vec::new();
    while start.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if start.elapsed() > Duration::from_secs(4) {
            before.push(admission_status(&proxy).await["limit"].as_u64().unwrap_or(0));
        }
    }
    backend.set_config(|c| c.workers = 6);
    let changed = Instant::now();
    let mut followed_after = None;
    while changed.elapsed() < Duration::from_secs(14) {
        let limit = admission_status(&proxy).await["limit"].as_u64().unwrap_or(0);
        if limit >= 9 {
            followed_after = Some(changed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = load.await.expect("load");
    let highest_before = before.iter().copied().max().unwrap_or(0);
    eprintln!(
        "limit before (4–8 s) {before:?}; reached ≥9 (capacity 12) after {followed_after:?}; {:?}",
        report.by_status()
    );
    assert!(highest_before <= 6, "before the change the limit reached {highest_before} (capacity 2)");
    let after = followed_after.expect("the limit never followed the capacity increase");
    assert!(after <= Duration::from_secs(10), "followed after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_slows_for_good_keeps_its_limit() {
    let _machine = crate::common::exclusive().await;
    // 2 workers × 10 connections, 250 ms runs (20 in flight, 80/s), offered 100/s; 8 s in,
    // every run takes 400 ms (a model provider answering slower): still 20 in flight, 50/s.
    // Read as queueing, each cut's window was as slow as the last, and the limit fell to 2
    // (7.8 answers/s) for as long as the old baseline was remembered. Two cuts show it is not
    // queueing; by 7 s after the change the limit is back.
    let backend = sim(2, 10, ms(250), None).await;
    let proxy = ProxyProcess::start_default(backend.addr()).await;
    let duration = Duration::from_secs(24);
    let load = tokio::spawn(open_loop(
        proxy.addr,
        100.0,
        duration,
        Duration::from_secs(10),
        workflow("app-slowerslowerslower1"),
    ));
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    backend.set_config(|c| c.service_time = ms(400));
    let mut limits = Vec::new();
    while start.elapsed() < Duration::from_secs(22) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if start.elapsed() >= Duration::from_secs(15) {
            limits.push(admission_status(&proxy).await["limit"].as_u64().unwrap_or(0));
        }
    }
    let report = load.await.expect("load");
    let slowed_goodput = goodput_between(&report, Duration::from_secs(12), Duration::from_secs(22));
    let lowest = limits.iter().copied().min().unwrap_or(0);
    eprintln!(
        "20 in flight, 250 ms then 400 ms runs, offered 100/s: limits 15–22 s {limits:?}; goodput then \
         {slowed_goodput:.1}/s of 50/s; {:?}; status {}",
        report.by_status(),
        admission_status(&proxy).await
    );
    assert!(lowest >= 14, "the limit fell to {lowest} on a backend that still serves 20 at once");
    assert!(slowed_goodput >= 40.0, "goodput {slowed_goodput:.1}/s once slower, of 50/s");
    assert_only_success_or_busy(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_app_does_not_break_a_quiet_one() {
    let _machine = crate::common::exclusive().await;
    // Capacity 8 × ~500 ms = 16/s. App A floods at 10×, app B sends at 10% of capacity.
    let service = ServiceTime::Uniform { min: Duration::from_millis(400), max: Duration::from_millis(600) };
    let backend = sim(1, 8, service, None).await;
    let proxy = ProxyProcess::start_default(backend.addr()).await;
    let quiet = workflow("app-quietquietquietq0B");
    let alone =
        open_loop(proxy.addr, 2.0, Duration::from_secs(4), Duration::from_secs(10), quiet.clone()).await;
    let unloaded = alone.percentile(0.99).expect("B alone");

    let flood = tokio::spawn(open_loop(
        proxy.addr,
        160.0,
        Duration::from_secs(14),
        Duration::from_secs(10),
        workflow("app-floodfloodflood00A"),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = open_loop(proxy.addr, 1.6, Duration::from_secs(10), Duration::from_secs(10), quiet).await;
    let flood = flood.await.expect("flood");
    let p99 = loaded.percentile(0.99).unwrap_or(Duration::MAX);
    eprintln!(
        "B alone p99 {unloaded:?}; under A's flood B {:?} p99 {p99:?}; A {:?}",
        loaded.by_status(),
        flood.by_status()
    );
    assert_eq!(
        loaded.ok(),
        loaded.sent(),
        "every request of the quiet app succeeds: {:?}",
        loaded.by_status()
    );
    // B shares the backend with A's admitted runs, and the limit lets up to its latency
    // tolerance (1.3×) of queueing into gunicorn's backlog; B's p99 of 16 is its slowest.
    // Measured 1.7–1.8× unloaded (and once 2.06× on a loaded CI machine); waiting in A's
    // queue instead would take seconds or end in 503s. 2.5× keeps that line with a margin.
    assert!(p99 * 2 <= unloaded * 5, "B's p99 {p99:?} > 2.5 × unloaded {unloaded:?}");
    assert_only_success_or_busy(&flood);
}

/// Polls `/status` until `check` holds for the api upstream's admission (bounded).
async fn wait_status(
    proxy: &ProxyProcess,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = admission_status(proxy).await;
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A backend with one slot and runs of `service_ms`, behind a proxy whose limit is pinned to
/// 1, so a second request must queue.
async fn one_slot(service_ms: u64) -> (Simulator, ProxyProcess) {
    let backend = sim(1, 1, ms(service_ms), None).await;
    let config = format!(
        "[upstreams.api]\nservers = [\"{}\"]\n[upstreams.api.admission]\ninitial_limit = 1\nmax_limit = 1\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n",
        backend.addr()
    );
    let proxy = ProxyProcess::start(&config).await;
    (backend, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_whose_client_leaves_never_reaches_the_backend() {
    let _machine = crate::common::exclusive().await;
    use tokio::io::AsyncWriteExt;
    // One slot and 2 s runs; the limit is pinned to 1 so a second request must queue.
    let (backend, proxy) = one_slot(2000).await;
    let addr = proxy.addr;
    let body = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;
    let first = tokio::spawn(async move {
        post_json(addr, "/v1/workflows/run", body, &[("x-request-id", "first")]).await
    });
    wait_status(&proxy, "the first request in flight", |s| s["in_flight"] == 1).await;

    // The second client writes its request on a raw socket, waits in the queue, and leaves.
    let mut gone = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let raw = format!(
        "POST /v1/workflows/run HTTP/1.1\r\nHost: {addr}\r\nX-Request-Id: gone\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    gone.write_all(raw.as_bytes()).await.expect("write");
    wait_status(&proxy, "the second request queued", |s| s["queued"] == 1).await;
    drop(gone);
    let status =
        wait_status(&proxy, "the departed client withdrawn", |s| s["queued"] == 0 && s["abandoned"] == 1)
            .await;
    assert_eq!(status["in_flight"], 1, "only the first request holds the slot");

    let (code, _, _) = first.await.expect("first");
    assert_eq!(code, 200);
    // The slot is free again and the queue is empty: a third request goes straight through.
    let (code, _, _) = post_json(addr, "/v1/workflows/run", body, &[("x-request-id", "third")]).await;
    assert_eq!(code, 200);
    assert_eq!(backend.count_for_request_id("first"), 1);
    assert_eq!(backend.count_for_request_id("third"), 1);
    assert_eq!(backend.count_for_request_id("gone"), 0, "the departed client's request reached the backend");
    // An ordinary access-log line (499: the client left first), not pingora's ERROR line,
    // which under overload would bury real errors.
    common::fixtures::wait_for(Duration::from_secs(5), "the departed request's access-log line", || async {
        proxy.logs().contains("id=gone ")
    })
    .await;
    let logs = proxy.logs();
    let line = logs.lines().find(|l| l.contains("id=gone ")).unwrap_or_default().to_string();
    assert!(line.contains("status=499"), "{line}");
    assert!(!logs.contains("Fail to filter request") && !logs.contains(" ERROR "), "{logs}");
}

/// A client that states its timeout (`X-Request-Timeout`) is answered 503 `server_busy` with
/// `Retry-After` before that time runs out, instead of timing out silently in the queue; a
/// malformed value is ignored, never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stated_client_timeout_is_answered_before_it_runs_out() {
    let _machine = crate::common::exclusive().await;
    let (backend, proxy) = one_slot(3000).await;
    let addr = proxy.addr;
    let body = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;
    let first = tokio::spawn(async move { post_json(addr, "/v1/workflows/run", body, &[]).await });
    wait_status(&proxy, "the first request in flight", |s| s["in_flight"] == 1).await;

    let started = Instant::now();
    let (code, headers, reply) = post_json(
        addr,
        "/v1/workflows/run",
        body,
        &[("x-request-timeout", "1.5"), ("x-request-id", "hurried")],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&reply));
    assert_eq!(json(&reply)["code"], "server_busy");
    assert!(headers.contains_key("retry-after"));
    assert!(took < Duration::from_millis(1500), "answered after {took:?}, past the stated 1.5 s");
    eprintln!("a client stating a 1.5 s timeout behind a 3 s run: 503 after {took:?}");

    // A malformed value is as if it were not sent: the request waits its turn and is served.
    let (code, _, _) = post_json(
        addr,
        "/v1/workflows/run",
        body,
        &[("x-request-timeout", "soon"), ("x-request-id", "patient")],
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(first.await.expect("first").0, 200);
    assert_eq!(backend.count_for_request_id("hurried"), 0, "a refused request reached the backend");
}
