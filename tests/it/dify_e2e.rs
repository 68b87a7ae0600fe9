//! End-to-end against the real Dify API (Dify 1.12.1's own api/, unmodified, under gunicorn +
//! gevent with PostgreSQL and Redis: `../shared/dify/realdify`), each scenario direct and
//! through dify-shaper with its embedded defaults, side by side on the same run. dify-shaper
//! must be invisible except for what it exists to do: nothing stock Dify finishes may fail,
//! nothing Dify records may change.
//!
//! Skipped with one line when `../shared/dify` is absent. One table row per scenario is
//! printed (`cargo test --test it dify_e2e:: -- --nocapture`). Also here: a run longer than the
//! old 600 s limit against the simulator, which runs beside the real-Dify scenarios.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::fixtures::ctl;
use common::realdify::RealDify;
use common::*;
use dify_shaper_tools::demo::stats::percentile;
use dify_shaper_tools::loadgen::{exchange, open_loop, Exchange, Shot};
use dify_shaper_tools::sim::{SimConfig, Simulator};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// A run request for the apps of the kit (input `text`).
fn run(key: &str, path: &str, mode: &str, user: &str) -> Shot {
    let body =
        serde_json::json!({"inputs": {"text": "hello from the e2e"}, "response_mode": mode, "user": user});
    Shot {
        method: http::Method::POST,
        path: path.into(),
        headers: vec![("authorization".into(), format!("Bearer {key}"))],
        body: Bytes::from(body.to_string()),
    }
}

/// Values that differ between two identical runs (ids, clocks); replaced before comparing.
/// `sys.timestamp` is the run's start in whole seconds: two runs a moment apart straddle a
/// second now and then.
const VOLATILE: &[&str] = &[
    "id",
    "task_id",
    "workflow_run_id",
    "created_at",
    "finished_at",
    "elapsed_time",
    "sys.workflow_run_id",
    "sys.timestamp",
];

fn normalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if VOLATILE.contains(&key.as_str()) && !value.is_null() {
                    *value = Value::String("…".into());
                } else {
                    normalize(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// A stream's frames: `ping` for Dify's keep-alives, else the data JSON (normalized).
fn sse_frames(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            if block.starts_with("event: ping") {
                return Value::String("ping".into());
            }
            let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or(block);
            let mut value: Value = serde_json::from_str(data).unwrap_or(Value::String(data.to_string()));
            normalize(&mut value);
            value
        })
        .collect()
}

fn event_names(frames: &[Value]) -> Vec<String> {
    frames.iter().filter(|f| f.is_object()).map(|f| f["event"].as_str().unwrap_or("?").to_string()).collect()
}

/// A stream answered 200 whose last event is `workflow_finished`.
fn stream_finished(exchange: &Exchange) -> bool {
    let Ok(answer) = &exchange.result else { return false };
    answer.status == 200
        && answer.complete
        && event_names(&sse_frames(&answer.body)).last().is_some_and(|e| e == "workflow_finished")
}

fn blocking_ok(exchange: &Exchange) -> bool {
    exchange.result.as_ref().is_ok_and(|a| a.status == 200 && a.complete)
}

fn run_id(exchange: &Exchange) -> Option<String> {
    let answer = exchange.result.as_ref().ok()?;
    let value: Value = serde_json::from_slice(&answer.body).ok()?;
    value["workflow_run_id"].as_str().map(str::to_string)
}

fn describe(exchange: &Exchange) -> String {
    match &exchange.result {
        Ok(a) => {
            format!("{} {}", a.status, String::from_utf8_lossy(&a.body).chars().take(300).collect::<String>())
        }
        Err(e) => format!("{e:?}"),
    }
}

/// One row of the side-by-side table.
struct Row<'a> {
    scenario: &'a str,
    direct: (usize, usize),
    shaped: (usize, usize),
}

fn print_table(rows: &[Row<'_>]) {
    eprintln!(
        "\n| scenario (real Dify 1.12.1) | direct ok | direct failed | dify-shaper ok | dify-shaper failed |"
    );
    eprintln!("|---|---:|---:|---:|---:|");
    for r in rows {
        eprintln!("| {} | {} | {} | {} | {} |", r.scenario, r.direct.0, r.direct.1, r.shaped.0, r.shaped.1);
    }
}

fn tally(exchanges: &[Exchange], ok: impl Fn(&Exchange) -> bool) -> (usize, usize) {
    let good = exchanges.iter().filter(|e| ok(e)).count();
    (good, exchanges.len() - good)
}

/// A local server that answers every GET after `delay` (changeable while it runs): the URL a
/// `key-http` app calls, so a real Dify run waits on I/O as long as a model call would.
struct SlowServer {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
}

impl SlowServer {
    async fn start() -> SlowServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_ms);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let delay = Duration::from_millis(delay.load(Ordering::Relaxed));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    tokio::time::sleep(delay).await;
                    let body = format!("waited {} ms", delay.as_millis());
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        SlowServer { addr, delay_ms }
    }

    fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

async fn one(addr: SocketAddr, shot: &Shot, patience: Duration) -> Exchange {
    exchange(addr, shot, patience, Instant::now()).await
}

/// Sends `shot` (with a per-request `user` suffix off) at `rate` for `duration`, running
/// `during` after `after`; returns every exchange.
async fn load_with<F, Fut>(
    target: SocketAddr,
    shot: Shot,
    rate: f64,
    duration: Duration,
    after: Duration,
    during: F,
) -> Vec<Exchange>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let count = (rate * duration.as_secs_f64()).round() as usize;
    let load =
        tokio::spawn(shots(target, rate, count, start, Duration::from_secs(150), move |_| shot.clone()));
    tokio::time::sleep(after).await;
    during().await;
    load.await.expect("load")
}

/// Sends `count` requests to `target` at `rate` a second from `start`, the `i`-th being
/// `shot_for(i)`, each on its own connection and given up after `patience`; every exchange,
/// in send order.
async fn shots(
    target: SocketAddr,
    rate: f64,
    count: usize,
    start: Instant,
    patience: Duration,
    mut shot_for: impl FnMut(usize) -> Shot,
) -> Vec<Exchange> {
    open_loop(rate, count, start, |i| {
        let shot = shot_for(i);
        async move { exchange(target, &shot, patience, start).await }
    })
    .await
    .into_iter()
    .flatten()
    .collect()
}

fn proxy_for(dify: &RealDify) -> String {
    format!("http://{}", dify.api)
}

/// What one side of a load run got.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    ok: usize,
    /// 500s answered at or after `late_from` (the first seconds are the limiter's to learn).
    late_500s: usize,
    all_500s: usize,
    busy_503s: usize,
    timeouts: usize,
    other: Vec<String>,
}

fn tally_load(exchanges: &[Exchange], late_from: Duration) -> Tally {
    let mut t = Tally { sent: exchanges.len(), ..Tally::default() };
    for e in exchanges {
        match &e.result {
            _ if blocking_ok(e) => t.ok += 1,
            Ok(a) if a.status == 500 => {
                t.all_500s += 1;
                t.late_500s += usize::from(e.sent_at >= late_from);
            }
            Ok(a) if a.status == 503 => t.busy_503s += 1,
            Err(dify_shaper_tools::loadgen::Failure::TimedOut) => {
                t.timeouts += 1;
                t.other.push(format!("timed out, sent at {:?}", e.sent_at));
            }
            _ => t.other.push(describe(e)),
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_dify_at_its_database_limit() {
    let Some(kit) = RealDify::kit() else { return };
    let _machine = crate::common::exclusive().await;
    // The seed's second failure: 4 gunicorn workers × 10 gevent connections, each with its own
    // SQLAlchemy pool, against PostgreSQL's max_connections = 20. Runs wait 1 s on a model-like
    // call; 30 requests/s for 15 s after a warm-up; clients give up after 10 s. Direct, Dify answers the excess
    // with its generic 500 (PostgreSQL refused the API-key check's connection).
    let dify = RealDify::start_with(kit, &[("DIFY_WORKERS", "4"), ("DIFY_PG_MAX_CONNECTIONS", "20")]).await;
    let slow = SlowServer::start().await;
    slow.set_delay(Duration::from_secs(1));
    let key = dify.key_http(&format!("http://{}/model", slow.addr)).await;
    let proxy = ProxyProcess::start_with_args(None, &["--upstream", &proxy_for(&dify)]).await;
    let (rate, duration, patience) = (30.0, Duration::from_secs(15), Duration::from_secs(10));
    // The same traffic for 45 s first, not counted: in production the proxy has been learning
    // for hours when the peak comes (and Dify's pools are as full as that traffic leaves them).
    // From its initial limit of 4, slow start needs about 25 s of 1 s runs to reach the level
    // Dify serves here; after 20 s the measured window still showed the climb, not the limit.
    // Requests of the measured window are told apart by their end user.
    let warmup = Duration::from_secs(45);
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    // The first run after an install compiles the workflow engine's lazily imported modules
    // (no bytecode yet): for almost a minute the workers answer nothing, and whichever side
    // went first met that instead of the database limit. One run, answered, primes them.
    let primer = run(&key, "/v1/workflows/run", "blocking", &format!("primer-{nonce}"));
    let primed = one(dify.api, &primer, Duration::from_secs(180)).await;
    assert!(blocking_ok(&primed), "the priming run failed: {}", describe(&primed));
    let mut sides = Vec::new();
    let warm_count = (rate * warmup.as_secs_f64()).round() as usize;
    let mut queued_timeouts = 0;
    for (name, target) in [("direct", dify.api), ("dify-shaper", proxy.addr)] {
        let user = format!("dblimit-{name}-{nonce}");
        let shot = run(&key, "/v1/workflows/run", "blocking", &user);
        let warm = run(&key, "/v1/workflows/run", "blocking", &format!("warmup-{name}-{nonce}"));
        let start = Instant::now();
        let count = warm_count + (rate * duration.as_secs_f64()).round() as usize;
        let mut exchanges: Vec<Exchange> = shots(target, rate, count, start, patience, |i| {
            let mut shot = if i < warm_count { warm.clone() } else { shot.clone() };
            // The access log tells a client that left while queued from one Dify kept waiting.
            shot.headers.push(("x-request-id".into(), format!("dblimit-{i:05}")));
            shot
        })
        .await;
        let measured = exchanges.split_off(warm_count.min(exchanges.len()));
        let warmed = tally_load(&exchanges, warmup);
        eprintln!(
            "database limit ({name}, the warm-up): sent {}, ok {}, 500 {}, 503 {}, client timeouts {}",
            warmed.sent, warmed.ok, warmed.all_500s, warmed.busy_503s, warmed.timeouts
        );
        let tally = tally_load(&measured, warmup);
        // Dify's pools keep PostgreSQL full after a load: a restart lets psql in, and gives
        // the other side the same start.
        dify.restart_api().await;
        let recorded = dify.runs_of(&user).await;
        eprintln!(
            "database limit ({name}, after {warmup:?} of warm-up): sent {}, ok {}, 500 {} ({} after the \
             warm-up), 503 {}, client timeouts {}, other {:?}; Dify recorded {recorded} runs",
            tally.sent,
            tally.ok,
            tally.all_500s,
            tally.late_500s,
            tally.busy_503s,
            tally.timeouts,
            tally.other
        );
        if target == proxy.addr {
            let status = common::fixtures::status(proxy.admin).await;
            eprintln!("dify-shaper admission after the load: {}", status["upstreams"]);
            let log = proxy.logs();
            let changes: Vec<&str> =
                log.lines().filter(|l| l.contains("concurrency limit changed")).collect();
            eprintln!("limit changes: {changes:#?}");
            let gone: Vec<&str> =
                log.lines().filter(|l| l.contains(" 499 ") || l.contains("status=499")).take(5).collect();
            eprintln!("dify-shaper: clients that left: {gone:#?}");
            // How it answered, by status, retries and reason: a 503 `server_busy` without an
            // upstream error was refused in time from the queue; one with `HTTPStatus` was
            // an overload answer from Dify that could not be replayed.
            let mut why = std::collections::BTreeMap::<String, usize>::new();
            for line in log.lines().filter(|l| l.contains("dify_shaper::access") && l.contains("id=dblimit-"))
            {
                let status = line.split(" status=").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("?");
                let retries = line.split(" retries=").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("?");
                let error =
                    line.split(" error=").nth(1).map_or("", |e| e.get(..e.len().min(60)).unwrap_or(e));
                *why.entry(format!("{status} retries={retries} {error}")).or_default() += 1;
            }
            eprintln!("dify-shaper answers (warm-up included): {why:#?}");
            // Measured requests whose client gave up while still in our queue (`server=-`):
            // the failure admission exists to replace with a 503 in time.
            queued_timeouts = log
                .lines()
                .filter(|l| l.contains("status=499") && l.contains("server=-"))
                .filter(|l| {
                    l.split("id=dblimit-")
                        .nth(1)
                        .and_then(|rest| rest.get(..5))
                        .and_then(|n| n.parse::<usize>().ok())
                        .is_some_and(|i| i >= warm_count)
                })
                .count();
        }
        assert!(recorded as usize <= tally.sent, "{name}: more runs than requests: a run was made twice");
        sides.push((tally, recorded, warmed.all_500s));
    }
    let ((direct, _, direct_warm_500s), (shaped, shaped_runs, _)) = (&sides[0], &sides[1]);
    print_table(&[Row {
        scenario:
            "PostgreSQL max_connections 20, 4 workers, 30/s of 1 s runs for 15 s, clients give up after 10 s",
        direct: (direct.ok, direct.sent - direct.ok),
        shaped: (shaped.ok, shaped.sent - shaped.ok),
    }]);
    // Direct access meets the database limit with Dify's 500s — in the measured window, or
    // only in the warm-up when its backlog of requests whose clients had given up left it
    // serving almost nothing after (on slower days here: 0 of 450, Dify starting 14 of them).
    assert!(direct.all_500s + direct_warm_500s > 0, "direct access never met the database limit: {direct:?}");
    // What holds: no 500 reaches a client (Dify's refusals ran nothing and are queued again,
    // any other overload answer is a 503), no client times out in our queue, hardly more
    // clients time out than direct and fewer go without a usable or honest answer (near its
    // database limit Dify keeps a few requests it accepted past the clients' 10 s — a
    // worker's request waits for one of its own pool's connections: direct 0-8 a run,
    // through dify-shaper 0-2 in seven runs), nothing runs twice, and at least three fifths
    // of direct's successes. Not yet: as many successes as direct in every run (the counts
    // are printed above; 0.85-1.14 of direct's over nine runs on a 2-core machine): the limit
    // settles at 20-30 in flight where direct keeps 40, cut now and then by latency that
    // Dify's shared CPU and pool waits raise with concurrency.
    assert_eq!(shaped.late_500s, 0, "500s reached clients after the warm-up: {shaped:?}");
    assert_eq!(queued_timeouts, 0, "clients timed out in dify-shaper's queue: {shaped:?}");
    assert!(
        shaped.timeouts <= direct.timeouts + 2,
        "more clients timed out through dify-shaper than direct: {shaped:?} vs {direct:?}"
    );
    assert!(
        shaped.timeouts + shaped.all_500s < (direct.timeouts + direct.all_500s).max(1),
        "as many clients went without an answer or got a 500 through dify-shaper as direct: {shaped:?} vs {direct:?}"
    );
    assert!(
        shaped.ok * 5 >= direct.ok * 3,
        "dify-shaper served {} against direct's {}: less than three fifths",
        shaped.ok,
        direct.ok
    );
    assert!(*shaped_runs as usize >= shaped.ok, "Dify recorded fewer runs than answers");
}

/// The given share of `exchanges`' latencies (sending to the end), of the ok ones.
fn ok_percentile(exchanges: &[Exchange], share: f64) -> Duration {
    let mut took: Vec<Duration> = exchanges.iter().filter(|e| blocking_ok(e)).map(|e| e.took).collect();
    took.sort_unstable();
    percentile(&took, share).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_dify_that_copes_loses_nothing_through_dify_shaper() {
    let Some(kit) = RealDify::kit() else { return };
    let _machine = crate::common::exclusive().await;
    // One gevent worker (the kit's default, 1 × 10 connections, as stock Dify ships) and the
    // echo workflow, at a rate it serves straight with no failure: a backend that copes.
    // Through dify-shaper, started cold (from its initial limit, learning on this traffic),
    // nothing may fail and no client may time out: on a CPU-bound worker latency rises with
    // every request in flight, and a limiter that trades throughput for that latency keeps a
    // standing queue its clients time out in.
    let dify = RealDify::start(kit).await;
    let key = dify.key().await;
    let proxy = ProxyProcess::start_with_args(None, &["--upstream", &proxy_for(&dify)]).await;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let primer = run(&key, "/v1/workflows/run", "blocking", &format!("primer-{nonce}"));
    let primed = one(dify.api, &primer, Duration::from_secs(180)).await;
    assert!(blocking_ok(&primed), "the priming run failed: {}", describe(&primed));
    // Before each side, rounds of 5 s at half the rate (not counted) until one is served
    // whole and quick: a worker fresh from its boot may serve a fraction of its rate for a
    // while (once in five fresh starts here, for over 20 s), and runs whose clients gave up
    // still run in Dify after the side before.
    let warm = run(&key, "/v1/workflows/run", "blocking", &format!("warmup-{nonce}"));
    // A backend that copes is one direct access serves whole with its p99 under a second. How
    // fast the worker is depends on the machine and the hour, and one worker is noisy: on one
    // day here 18/s left direct access with 80 of 360 clients timed out (p50 2.7 s), and in
    // one run 13/s was served with p99 3.2 s where 15/s had 1.9 s and 11/s 1.1 s. Where direct
    // does not cope, the rate steps down by a sixth and direct runs again (at most five rates,
    // down to 9/s), and dify-shaper gets the rate direct coped with. Nearer saturation (direct
    // whole but p99 1.3 s at 15/s) dify-shaper is not yet as good: its limit settles at 2-3
    // and a few clients time out in its queue.
    let mut rate = COPES_RATE;
    let mut tried = Vec::new();
    let direct = loop {
        let (direct, p99) = copes_side(&dify, &key, &warm, dify.api, "direct", rate).await;
        if direct.ok == direct.sent && p99 < Duration::from_secs(1) {
            break direct;
        }
        tried.push((rate, direct.ok, direct.sent, p99));
        assert!(
            tried.len() < 5,
            "direct access never coped (rate, ok, sent, p99 per try), so this is not the scenario: {tried:?}"
        );
        rate = (rate * 5.0 / 6.0).round();
    };
    let (shaped, _) = copes_side(&dify, &key, &warm, proxy.addr, "dify-shaper", rate).await;
    let status = common::fixtures::status(proxy.admin).await;
    let admission = &status["upstreams"]["api"]["admission"];
    eprintln!(
        "dify-shaper after the load: limit {}, ceiling {}, latency ratio {}, last change {}, shed {}",
        admission["limit"],
        admission["ceiling"],
        admission["latency_ratio"],
        admission["last_change"],
        admission["shed"]
    );
    let scenario = format!(
        "one worker × 10 connections, the echo workflow at {rate}/s for 20 s, clients give up after 5 s \
         (rates direct did not cope with first: {tried:?})"
    );
    print_table(&[Row {
        scenario: &scenario,
        direct: (direct.ok, direct.sent - direct.ok),
        shaped: (shaped.ok, shaped.sent - shaped.ok),
    }]);
    assert_eq!(
        shaped.ok, shaped.sent,
        "a backend that copes at {rate}/s failed requests through dify-shaper: {shaped:?}"
    );
}

/// One side of the copes scenario: warms the worker, then sends the echo workflow to `target`
/// at `rate` for 20 s with clients that give up after 5 s; the tally and the ok answers' p99.
async fn copes_side(
    dify: &RealDify,
    key: &str,
    warm: &Shot,
    target: SocketAddr,
    name: &str,
    rate: f64,
) -> (Tally, Duration) {
    let (duration, patience) = (Duration::from_secs(20), Duration::from_secs(5));
    warm_until_quick(dify.api, warm, rate / 2.0).await;
    let user = format!("copes-{name}-{}", uuid::Uuid::new_v4().simple());
    let shot = run(key, "/v1/workflows/run", "blocking", &user);
    let count = (rate * duration.as_secs_f64()).round() as usize;
    let exchanges = shots(target, rate, count, Instant::now(), patience, |_| shot.clone()).await;
    let tally = tally_load(&exchanges, Duration::ZERO);
    let (p50, p99) = (ok_percentile(&exchanges, 0.5), ok_percentile(&exchanges, 0.99));
    eprintln!(
        "a backend that copes ({name}, {rate}/s): sent {}, ok {}, 500 {}, 503 {}, client timeouts {}, other {:?}; \
         ok p50 {p50:?}, p99 {p99:?}",
        tally.sent, tally.ok, tally.all_500s, tally.busy_503s, tally.timeouts, tally.other
    );
    (tally, p99)
}

/// Sends `shot` to `api` at `rate` in rounds of 5 s until a round is answered whole with its
/// p99 under a second (at most 12 rounds: a worker that never gets there fails the test).
async fn warm_until_quick(api: SocketAddr, shot: &Shot, rate: f64) {
    let mut rounds = Vec::new();
    for _ in 0..12 {
        let count = (rate * 5.0).round() as usize;
        let exchanges =
            shots(api, rate, count, Instant::now(), Duration::from_secs(5), |_| shot.clone()).await;
        let (ok, p99) =
            (exchanges.iter().filter(|e| blocking_ok(e)).count(), ok_percentile(&exchanges, 0.99));
        if ok == count && p99 < Duration::from_secs(1) {
            return;
        }
        let failed = exchanges.iter().find(|e| !blocking_ok(e)).map(describe);
        eprintln!("warming Dify at {rate}/s: {ok} of {count} ok, p99 {p99:?}, first failure {failed:?}");
        rounds.push((ok, count, p99, failed));
    }
    panic!("Dify never served {rate}/s whole and quick (ok, sent, p99, a failure per round): {rounds:?}");
}

/// Echo runs a second for the scenario of a backend that copes. One warm gevent worker
/// serves about 25 a second on a 2-core machine shared with PostgreSQL, Redis, the proxy and
/// the load (p99 under 100 ms at 16/s, 0.2-0.8 s at 20/s, once 4.8 s); 18/s is where
/// latency already rises with each run in flight, yet direct access loses nothing.
const COPES_RATE: f64 = 18.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_dify_direct_and_through_dify_shaper() {
    let Some(kit) = RealDify::kit() else { return };
    let _machine = crate::common::exclusive().await;
    let dify = RealDify::start(kit).await;
    let slow = SlowServer::start().await;
    let echo_key = dify.key().await;
    let http_key = dify.key_http(&format!("http://{}/model", slow.addr)).await;
    let proxy = ProxyProcess::start_with_args(None, &["--upstream", &proxy_for(&dify)]).await;
    let (direct, shaped) = (dify.api, proxy.addr);
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let mut rows = Vec::new();
    let quick = Duration::from_secs(60);

    // 1. The same answers: blocking JSON and the stream's events, in order.
    let user = format!("same-{nonce}");
    let blocking = run(&echo_key, "/v1/workflows/run", "blocking", &user);
    let (d, s) = (one(direct, &blocking, quick).await, one(shaped, &blocking, quick).await);
    assert!(blocking_ok(&d) && blocking_ok(&s), "direct: {}\nshaped: {}", describe(&d), describe(&s));
    let body = |e: &Exchange| {
        let mut v: Value = serde_json::from_slice(&e.result.as_ref().expect("answer").body).expect("json");
        normalize(&mut v);
        v
    };
    assert_eq!(body(&d), body(&s), "the blocking answer changed through the proxy");
    let streaming = run(&echo_key, "/v1/workflows/run", "streaming", &user);
    let (d_stream, s_stream) = (one(direct, &streaming, quick).await, one(shaped, &streaming, quick).await);
    assert!(
        stream_finished(&d_stream) && stream_finished(&s_stream),
        "{}\n{}",
        describe(&d_stream),
        describe(&s_stream)
    );
    let frames = |e: &Exchange| sse_frames(&e.result.as_ref().expect("answer").body);
    let (d_frames, s_frames) = (frames(&d_stream), frames(&s_stream));
    assert_eq!(event_names(&d_frames), event_names(&s_frames), "events differ");
    // Dify's keep-alive `ping` comes every 10 s of a run, so how many a stream carries is
    // timing (a cold worker on a busy machine): the events themselves must match.
    let events = |frames: &[Value]| frames.iter().filter(|f| f.is_object()).cloned().collect::<Vec<_>>();
    let (d_events, s_events) = (events(&d_frames), events(&s_frames));
    if let Some((d, s)) = d_events.iter().zip(&s_events).find(|(d, s)| d != s) {
        panic!("event contents differ:\ndirect: {d}\nshaped: {s}");
    }
    eprintln!("same answers: blocking JSON equal; stream events {:?}", event_names(&s_frames));
    rows.push(Row {
        scenario: "blocking + streaming run: same status, JSON, events",
        direct: (usize::from(blocking_ok(&d)) + usize::from(stream_finished(&d_stream)), 0),
        shaped: (usize::from(blocking_ok(&s)) + usize::from(stream_finished(&s_stream)), 0),
    });

    // 2. Dify's own errors pass through byte for byte.
    let bad_key = run("app-doesnotexist0000000000", "/v1/workflows/run", "blocking", &user);
    let mut missing_input = run(&echo_key, "/v1/workflows/run", "blocking", &user);
    missing_input.body =
        Bytes::from(serde_json::json!({"inputs": {}, "response_mode": "blocking", "user": user}).to_string());
    let not_found = Shot {
        method: http::Method::GET,
        path: "/v1/no-such-route".into(),
        body: Bytes::new(),
        ..blocking.clone()
    };
    let cases =
        [("401 bad key", bad_key, 401), ("400 missing input", missing_input, 400), ("404", not_found, 404)];
    for (what, shot, status) in &cases {
        let (d, s) = (one(direct, shot, quick).await, one(shaped, shot, quick).await);
        let (da, sa) = (d.result.as_ref().expect("direct answer"), s.result.as_ref().expect("shaped answer"));
        assert_eq!(da.status, *status, "{what} direct: {}", describe(&d));
        assert_eq!(sa.status, da.status, "{what}: status changed");
        assert_eq!(sa.body, da.body, "{what}: body changed");
        eprintln!("{what}: same status and body ({} bytes)", sa.body.len());
    }
    rows.push(Row {
        scenario: "Dify's 401 / 400 / 404, byte for byte",
        direct: (cases.len(), 0),
        shaped: (cases.len(), 0),
    });

    // 3. `realdify restart-api` (a real boot) under steady blocking load: through the proxy
    // every request is answered 200 and runs exactly once.
    let mut sides = [(0, 0); 2];
    for (side, target) in [direct, shaped].into_iter().enumerate() {
        let name = ["direct", "dify-shaper"][side];
        let user = format!("restart-{side}-{nonce}");
        let shot = run(&echo_key, "/v1/workflows/run", "blocking", &user);
        let exchanges = load_with(target, shot, 4.0, Duration::from_secs(30), Duration::from_secs(5), || {
            dify.restart_api()
        })
        .await;
        sides[side] = tally(&exchanges, blocking_ok);
        let ids: std::collections::BTreeSet<String> = exchanges.iter().filter_map(run_id).collect();
        let recorded = dify.runs_of(&user).await;
        eprintln!(
            "restart-api under blocking load, {name}: {} ok, {} failed of {}; {} distinct run ids; Dify recorded {recorded} runs",
            sides[side].0,
            sides[side].1,
            exchanges.len(),
            ids.len(),
        );
        if target == shaped {
            let failures: Vec<String> = exchanges.iter().filter(|e| !blocking_ok(e)).map(describe).collect();
            assert!(failures.is_empty(), "through dify-shaper: {failures:?}\n{}", proxy.logs());
            assert_eq!(ids.len(), exchanges.len(), "a run id answered twice");
            assert_eq!(recorded, exchanges.len() as u64, "Dify ran a request twice (or lost one)");
        }
    }
    rows.push(Row {
        scenario: "restart-api under blocking load (4/s for 30 s)",
        direct: sides[0],
        shaped: sides[1],
    });

    // 4. Drain, restart, resume under streaming load (runs that wait 1 s on a model-like
    // call): every stream ends with `workflow_finished`. Direct has no drain: the restart alone.
    slow.set_delay(Duration::from_secs(1));
    let admin = proxy.admin.to_string();
    for (side, target) in [direct, shaped].into_iter().enumerate() {
        let name = ["direct", "dify-shaper"][side];
        let user = format!("drain-{side}-{nonce}");
        let shot = run(&http_key, "/v1/workflows/run", "streaming", &user);
        let exchanges =
            load_with(target, shot, 2.0, Duration::from_secs(30), Duration::from_secs(5), || async {
                if target == shaped {
                    let (code, out, err) = ctl(&["drain", "api", "--admin", &admin, "--wait"]).await;
                    assert_eq!(code, 0, "ctl drain: {out}{err}");
                    dify.restart_api().await;
                    let (code, out, err) = ctl(&["resume", "api", "--admin", &admin, "--wait"]).await;
                    assert_eq!(code, 0, "ctl resume: {out}{err}");
                } else {
                    dify.restart_api().await;
                }
            })
            .await;
        sides[side] = tally(&exchanges, stream_finished);
        let recorded = dify.runs_of(&user).await;
        eprintln!(
            "drain, restart-api, resume under streaming load, {name}: {} streams finished, {} failed of {}; Dify recorded {recorded} runs",
            sides[side].0,
            sides[side].1,
            exchanges.len()
        );
        if target == shaped {
            let failures: Vec<String> =
                exchanges.iter().filter(|e| !stream_finished(e)).map(describe).collect();
            assert!(failures.is_empty(), "streams cut through dify-shaper: {failures:?}\n{}", proxy.logs());
            assert_eq!(recorded, exchanges.len() as u64, "Dify ran a request twice (or lost one)");
        }
    }
    rows.push(Row {
        scenario: "streaming load (2/s for 30 s, runs wait 1 s on a model-like call): ctl drain --wait, restart-api, ctl resume --wait (direct: restart-api alone)",
        direct: sides[0],
        shaped: sides[1],
    });

    // 5. A blocking run longer than the old 60 s interactive limit, on both run paths.
    slow.set_delay(Duration::ZERO);
    let probe = one(direct, &run(&http_key, "/v1/workflows/run", "blocking", &user), quick).await;
    let probe: Value = serde_json::from_slice(&probe.result.as_ref().expect("answer").body).expect("json");
    let workflow_id = probe["data"]["workflow_id"].as_str().expect("workflow_id").to_string();
    slow.set_delay(Duration::from_secs(65));
    let by_id = format!("/v1/workflows/{workflow_id}/run");
    let long = Duration::from_secs(150);
    let shots = [
        (direct, run(&http_key, "/v1/workflows/run", "blocking", &user)),
        (direct, run(&http_key, &by_id, "blocking", &user)),
        (shaped, run(&http_key, "/v1/workflows/run", "blocking", &user)),
        (shaped, run(&http_key, &by_id, "blocking", &user)),
    ];
    let started = Instant::now();
    let runs = futures_util::future::join_all(shots.iter().map(|(addr, shot)| one(*addr, shot, long))).await;
    let took = started.elapsed();
    for (exchange, (addr, shot)) in runs.iter().zip(&shots) {
        assert!(
            blocking_ok(exchange),
            "{} {}: {}\n{}",
            if *addr == direct { "direct" } else { "shaped" },
            shot.path,
            describe(exchange),
            proxy.logs()
        );
        let answer: Value =
            serde_json::from_slice(&exchange.result.as_ref().expect("answer").body).expect("json");
        assert_eq!(answer["data"]["outputs"]["result"], "waited 65000 ms", "{answer}");
    }
    assert!(took >= Duration::from_secs(65), "the runs did not wait on the model call: {took:?}");
    eprintln!("blocking runs of 65 s on /v1/workflows/run and {by_id}: all 4 answered 200 after {took:?}");
    rows.push(Row {
        scenario: "65 s blocking run, /v1/workflows/run and /v1/workflows/{id}/run",
        direct: tally(&runs[..2], blocking_ok),
        shaped: tally(&runs[2..], blocking_ok),
    });

    // 6. The client IP Dify records (a console login stores `last_login_ip` through
    // `extract_remote_ip`), as Dify's nginx forwards it, and as a bare client sends it.
    let mut logins = [(0, 0); 2];
    for forwarded in [Some("203.0.113.7"), None] {
        let mut recorded = Vec::new();
        for (side, target) in [direct, shaped].into_iter().enumerate() {
            let login = serde_json::json!({"email": "admin@example.com", "password": "RGlmeVRlc3QxMjM0", "remember_me": true});
            let headers =
                forwarded.map(|ip| ("x-forwarded-for".to_string(), ip.to_string())).into_iter().collect();
            let shot = Shot {
                method: http::Method::POST,
                path: "/console/api/login".into(),
                headers,
                body: Bytes::from(login.to_string()),
            };
            let e = one(target, &shot, quick).await;
            assert!(blocking_ok(&e), "login: {}", describe(&e));
            logins[side].0 += 1;
            recorded.push(
                dify.query("SELECT last_login_ip FROM accounts WHERE email = 'admin@example.com'").await,
            );
        }
        eprintln!(
            "client IP Dify records, X-Forwarded-For {forwarded:?}: direct {:?}, through dify-shaper {:?}",
            recorded[0], recorded[1]
        );
        assert_eq!(recorded[0], recorded[1], "Dify records another client IP through the proxy");
    }
    rows.push(Row {
        scenario: "client IP Dify records (login with and without X-Forwarded-For)",
        direct: logins[0],
        shaped: logins[1],
    });

    print_table(&rows);
    drop(proxy);
}

/// A blocking run longer than the old `run` class limit (600 s), against the simulator on a
/// long-running route, through the embedded defaults: answered, not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_run_past_600_seconds_is_not_cut() {
    // No share of the machine: one request idles ten minutes, loading nothing a measurement
    // would see, and a share held that long would keep every measuring test waiting.
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    let mut shot = run("app-longlonglonglong0001", "/v1/workflows/run", "blocking", "long");
    shot.headers.push(("x-sim-service-time".into(), "610s".into()));
    let started = Instant::now();
    let answer = one(proxy.addr, &shot, Duration::from_secs(700)).await;
    let took = started.elapsed();
    assert!(blocking_ok(&answer), "after {took:?}: {}\n{}", describe(&answer), proxy.logs());
    assert!(took >= Duration::from_secs(610), "answered after {took:?}, before the run's 610 s");
    eprintln!("a 610 s blocking run through the embedded defaults: 200 after {took:?}");
}
