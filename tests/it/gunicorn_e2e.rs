//! End-to-end against a real backend — gunicorn with gevent workers serving
//! a Dify-shaped app (`e2e/app.py`) whose runs each hold a real PostgreSQL connection — with
//! and without dify-shaper in front. What earlier issues promised against the simulator is
//! checked here against the real thing: overload past the workers, PostgreSQL's
//! `max_connections`, restarts, unbuffered SSE and fairness between apps.
//!
//! Tools come from `e2e/setup.sh` (`make test` runs it); without them every test fails saying
//! so. The tests take turns (they measure on 2 shared cores); each prints one summary line per
//! run (`cargo test --test it gunicorn_e2e:: -- --nocapture`).

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use chrono::{Timelike, Utc};
use common::e2e::{Gunicorn, Postgres};
use common::fixtures::wait_maintenance;
use common::load::{open_loop, workflow, Report, Shot};
use common::*;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

/// A blocking run of app `key` taking `service` seconds in the app (holding a PG connection).
fn run(key: &str, service: f64) -> Shot {
    let mut shot = workflow(key);
    shot.headers.push(("x-service-time".into(), service.to_string()));
    shot
}

/// Routes everything to gunicorn at `backend` as the `run` class, probing Dify's `/health`;
/// `extra` is appended (a `[[maintenance]]` entry).
fn proxy_config(backend: SocketAddr, extra: &str) -> String {
    format!(
        "[upstreams.api]\nservers = [\"{backend}\"]\n[upstreams.api.health]\npath = \"/health\"\n\
         interval = \"250ms\"\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n\n{extra}"
    )
}

fn is_ok(status: Option<u16>) -> bool {
    status.is_some_and(|s| (200..300).contains(&s))
}

/// Non-2xx outcomes by kind: `500 internal_server_error`, `503 server_busy`, `timeout`, …
fn errors_by_kind(report: &Report) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for o in report.outcomes.iter().filter(|o| !is_ok(o.status)) {
        let kind = match (o.status, o.timed_out) {
            (Some(s), _) => format!("{s} {}", o.code.as_deref().unwrap_or("-")),
            (None, true) => "timeout".to_string(),
            (None, false) => "connection error".to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

fn non_2xx(report: &Report) -> usize {
    report.sent() - report.ok()
}

/// One line per run: sent, ok, errors by kind, p50/p99 of the successes.
fn summary(label: &str, report: &Report) -> String {
    let ms =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.0}ms", d.as_secs_f64() * 1000.0));
    format!(
        "{label}: sent {} ok {} ({:.1}%) errors {:?} p50 {} p99 {}",
        report.sent(),
        report.ok(),
        100.0 * report.ok() as f64 / report.sent().max(1) as f64,
        errors_by_kind(report),
        ms(report.percentile(0.5)),
        ms(report.percentile(0.99)),
    )
}

/// Fails on anything through the proxy but success, its own `503 server_busy` (a queued
/// request answered just before its client would give up) or a client timeout.
fn assert_only_success_or_busy(label: &str, report: &Report) {
    for o in &report.outcomes {
        match o.status {
            Some(s) if (200..300).contains(&s) => {}
            Some(503) if o.code.as_deref() == Some("server_busy") => {}
            None if o.timed_out => {}
            _ => panic!("{label}: unexpected outcome through dify-shaper: {o:?}\n{}", summary(label, report)),
        }
    }
}

/// The api upstream's admission view in `/status`.
async fn admission(proxy: &ProxyProcess) -> serde_json::Value {
    let (_, _, body) = get(proxy.admin, "/status").await;
    json(&body)["upstreams"]["api"]["admission"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_past_the_gevent_workers_keeps_goodput() {
    let _machine = crate::common::exclusive().await;
    // Capacity: 1 worker × 4 connections × 1 s runs = 4 runs/s (3.4/s measured: connect and
    // Python add ~150 ms). Offered 2× for 20 s; clients give up after 10 s. Direct, the
    // excess waits in gunicorn's listen backlog: from 10 s on every run is served after its
    // client left. Through dify-shaper it waits in the proxy's queue, and runs that reach
    // gunicorn have a client. 20 s rather than 15: below ~2 × patience both serve everyone
    // sent in the first 10 s and differ only in the tail.
    let (rate, duration, patience) = (8.0, Duration::from_secs(20), Duration::from_secs(10));
    let pg = Postgres::start(32).await;
    let direct_backend = Gunicorn::start(1, 4, &pg).await;
    let direct =
        open_loop(direct_backend.addr, rate, duration, patience, run("app-overloaddirect000001", 1.0)).await;
    // A fresh gunicorn: the old one is still working off runs nobody waits for.
    drop(direct_backend);
    let backend = Gunicorn::start(1, 4, &pg).await;
    let proxy = ProxyProcess::start(&proxy_config(backend.addr, "")).await;
    let shaped = open_loop(proxy.addr, rate, duration, patience, run("app-overloadshaped000001", 1.0)).await;
    let admission = admission(&proxy).await;
    // Successes per second over the whole run, up to the last client's deadline.
    let window = (duration + patience).as_secs_f64();
    let (direct_goodput, shaped_goodput) = (direct.ok() as f64 / window, shaped.ok() as f64 / window);
    eprintln!("{}", summary("e2e overload direct", &direct));
    eprintln!("{}", summary("e2e overload shaped", &shaped));
    eprintln!(
        "e2e overload: capacity 4/s, offered {rate}/s for {duration:?}, clients wait {patience:?}: goodput \
         direct {direct_goodput:.2}/s, shaped {shaped_goodput:.2}/s; admission {admission}"
    );
    assert_only_success_or_busy("overload shaped", &shaped);
    // The first clients to leave teach the queue how long clients wait; from then on every
    // waiter is served or refused before its client gives up.
    let mut by_sending: Vec<_> = shaped.outcomes.iter().collect();
    by_sending.sort_by_key(|o| o.sent_at);
    let late_timeouts: Vec<_> = by_sending.iter().skip(32).filter(|o| o.timed_out).collect();
    assert!(late_timeouts.is_empty(), "clients timed out after the first 32 requests: {late_timeouts:?}");
    assert!(
        shaped_goodput > direct_goodput,
        "shaped goodput {shaped_goodput:.2}/s not above direct {direct_goodput:.2}/s"
    );
    assert!(
        non_2xx(&shaped) < non_2xx(&direct),
        "shaped failures {} not below direct {}",
        non_2xx(&shaped),
        non_2xx(&direct)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_exhaustion_is_learned_without_500s() {
    let _machine = crate::common::exclusive().await;
    // PostgreSQL takes 8 connections (none reserved, the app connects as a superuser);
    // gunicorn takes 24 runs at once. Runs of 0.5 s: the database bounds it at 16 runs/s.
    // Offered 1.5× that: direct, the excess gets Dify's generic 500 (PostgreSQL refused the
    // API-key check's connection: "too many clients already" in Dify's log only).
    let (rate, duration, patience) = (24.0, Duration::from_secs(16), Duration::from_secs(10));
    let converged = Duration::from_secs(8);
    let pg = Postgres::start(8).await;
    let direct_backend = Gunicorn::start(1, 24, &pg).await;
    let direct =
        open_loop(direct_backend.addr, rate, duration, patience, run("app-exhaustdirect00000001", 0.5)).await;
    drop(direct_backend);
    let backend = Gunicorn::start(1, 24, &pg).await;
    let proxy = ProxyProcess::start(&proxy_config(backend.addr, "")).await;
    let shaped = open_loop(proxy.addr, rate, duration, patience, run("app-exhaustshaped00000001", 0.5)).await;
    let limit = admission(&proxy).await["limit"].clone();

    let too_many = direct
        .outcomes
        .iter()
        .filter(|o| o.status == Some(500) && o.code.as_deref() == Some("unknown"))
        .count();
    let late: Vec<_> = shaped.outcomes.iter().filter(|o| o.sent_at >= converged).collect();
    let late_500s = late.iter().filter(|o| o.status.is_some_and(|s| s >= 500 && s != 503)).count();
    let late_rate = late_500s as f64 / late.len().max(1) as f64;
    let secs = duration.as_secs_f64();
    let (direct_goodput, shaped_goodput) = (direct.ok() as f64 / secs, shaped.ok() as f64 / secs);
    eprintln!("{}", summary("e2e pg-exhaustion direct", &direct));
    eprintln!("{}", summary("e2e pg-exhaustion shaped", &shaped));
    eprintln!(
        "e2e pg-exhaustion: max_connections 8, 0.5 s runs (16/s), offered {rate}/s for {duration:?}: direct \
         {too_many} × 500 too many clients, goodput {direct_goodput:.2}/s; shaped 5xx after {converged:?}: \
         {late_500s}/{} ({:.2}%), goodput {shaped_goodput:.2}/s, learned limit {limit}",
        late.len(),
        100.0 * late_rate
    );
    assert!(too_many > 0, "direct access never exhausted PostgreSQL: {}", summary("direct", &direct));
    let sample = direct.outcomes.iter().find(|o| o.status == Some(500));
    assert!(sample.is_some_and(|o| o.code.as_deref() == Some("unknown")), "{sample:?}");
    assert!(late_rate < 0.02, "{:.2}% 5xx through dify-shaper after convergence", 100.0 * late_rate);
    // Measured 14.2–17.3/s shaped against 14.9/s direct over 9 runs: the proxy turns 500s into
    // later successes but does not beat direct per second here (it settles one connection
    // below PostgreSQL's limit), so "ahead of direct" would be a coin toss. What holds is that
    // shaping costs no goodput beyond run-to-run noise.
    assert!(
        shaped_goodput >= 0.9 * direct_goodput,
        "shaped goodput {shaped_goodput:.2}/s well below direct {direct_goodput:.2}/s"
    );
}

/// Half of a 1 worker × 4 connections × 0.5 s gunicorn (8 runs/s) for 16 s, through `proxy`.
fn half_load(proxy: &ProxyProcess, key: &str) -> tokio::task::JoinHandle<Report> {
    tokio::spawn(open_loop(proxy.addr, 4.0, Duration::from_secs(16), Duration::from_secs(60), run(key, 0.5)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncoordinated_gunicorn_restart_under_load_costs_no_request() {
    let _machine = crate::common::exclusive().await;
    let pg = Postgres::start(32).await;
    let mut backend = Gunicorn::start(1, 4, &pg).await;
    let proxy = ProxyProcess::start(&proxy_config(backend.addr, "")).await;
    let load = half_load(&proxy, "app-restartuncoordinated1");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // `docker restart`: SIGTERM (gunicorn finishes what it holds, port closed), a 2 s boot.
    let restarted = Instant::now();
    backend.restart(Duration::from_secs(2)).await;
    let outage = restarted.elapsed();
    let report = load.await.expect("load");
    eprintln!("{} (outage {outage:.1?})", summary("e2e uncoordinated restart shaped", &report));
    assert_eq!(report.ok(), report.sent(), "non-2xx: {}", summary("restart", &report));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_graceful_reload_under_load_costs_no_request() {
    let _machine = crate::common::exclusive().await;
    let pg = Postgres::start(32).await;
    let backend = Gunicorn::start(1, 4, &pg).await;
    let before = backend.health_pid().await.expect("worker pid");
    let at = Utc::now() + chrono::Duration::seconds(6);
    let cron = format!("{} {} {} * * *", at.second(), at.minute(), at.hour());
    let maintenance = format!(
        "[[maintenance]]\nupstream = \"api\"\nschedule = \"{cron}\"\ntimezone = \"UTC\"\ndrain_timeout = \"20s\"\n\
         restart_timeout = \"10s\"\nrecover_timeout = \"30s\"\nramp = \"2s\"\n\
         action = {{ kind = \"command\", command = \"kill -HUP $(cat {})\" }}\n\
         [maintenance.health]\npath = \"/health\"\nsuccesses = 3\ninterval = \"200ms\"\nrequest = \"GET /health\"\n",
        backend.pid_file().display()
    );
    let proxy = ProxyProcess::start(&proxy_config(backend.addr, &maintenance)).await;
    let report = half_load(&proxy, "app-restartscheduled00001").await.expect("load");
    let view = wait_maintenance(proxy.admin, "api", Duration::from_secs(60), "the cycle to end", |v| {
        v["last_cycle"].is_object() && v["phase"] == "serving"
    })
    .await;
    let after = backend.health_pid().await.expect("worker pid after");
    let phases: Vec<&str> =
        view["history"].as_array().map_or(vec![], |h| h.iter().filter_map(|r| r["to"].as_str()).collect());
    eprintln!(
        "{}; cycle {} {phases:?}; worker pid {before} -> {after}",
        summary("e2e scheduled reload shaped", &report),
        view["last_cycle"]["outcome"]
    );
    assert_eq!(report.ok(), report.sent(), "non-2xx: {}", summary("reload", &report));
    assert_eq!(view["last_cycle"]["outcome"], "ok", "{view:#}");
    assert_eq!(view["last_cycle"]["trigger"], "schedule", "{view:#}");
    assert_eq!(phases, ["draining", "restarting", "recovering", "ramping", "serving"]);
    assert_ne!(before, after, "gunicorn's workers were not replaced by the HUP");
}

/// Posts a streaming run of `events` node frames spread over `service` seconds; returns each
/// SSE frame with its arrival time since the request was sent, and the total.
async fn timed_stream(addr: SocketAddr, service: f64, events: usize) -> (Vec<(Duration, String)>, Duration) {
    let req = request("POST", addr, "/v1/workflows/run")
        .header("content-type", "application/json")
        .header("authorization", "Bearer app-streamstreamstream01")
        .header("x-service-time", service.to_string())
        .header("x-events", events.to_string())
        .body(Full::new(Bytes::from_static(br#"{"inputs":{},"response_mode":"streaming","user":"u"}"#)))
        .expect("request");
    let sent = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(30), send(addr, req))
        .await
        .expect("stream head within 30 s")
        .expect("stream response");
    assert_eq!(response.status(), 200, "stream refused");
    let mut body = response.into_body();
    let (mut buffer, mut frames) = (String::new(), Vec::new());
    let deadline = sent + Duration::from_secs(30);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        if let Some(data) = frame.data_ref() {
            buffer.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = buffer.find("\n\n") {
                frames.push((sent.elapsed(), buffer.drain(..end + 2).collect()));
            }
        }
    }
    (frames, sent.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_frames_pass_through_unbuffered() {
    let _machine = crate::common::exclusive().await;
    let pg = Postgres::start(32).await;
    let backend = Gunicorn::start(1, 4, &pg).await;
    let proxy = ProxyProcess::start(&proxy_config(backend.addr, "")).await;
    // workflow_started at once, then 5 node_finished 300 ms apart, then workflow_finished.
    let (direct, direct_total) = timed_stream(backend.addr, 1.5, 5).await;
    let (shaped, total) = timed_stream(proxy.addr, 1.5, 5).await;
    let arrivals = |frames: &[(Duration, String)]| {
        frames.iter().map(|(t, _)| format!("{}ms", t.as_millis())).collect::<Vec<_>>().join(" ")
    };
    eprintln!(
        "e2e sse: direct [{}] in {direct_total:.2?}; shaped [{}] in {total:.2?}",
        arrivals(&direct),
        arrivals(&shaped)
    );
    assert_eq!(shaped.len(), 7, "{shaped:?}");
    assert!(shaped[0].1.contains("workflow_started") && shaped[6].1.contains("workflow_finished"));
    // The run takes 1.5 s; a buffering proxy would deliver everything at the end.
    let first = shaped[0].0;
    assert!(first < Duration::from_millis(750), "workflow_started arrived after {first:?} of a 1.5 s run");
    let spread = shaped[5].0.saturating_sub(shaped[1].0);
    assert!(spread >= Duration::from_millis(800), "node frames sent 1.2 s apart arrived {spread:?} apart");
    for pair in shaped[1..6].windows(2) {
        let gap = pair[1].0.saturating_sub(pair[0].0);
        assert!(gap >= Duration::from_millis(100), "frames sent 300 ms apart arrived {gap:?} apart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_app_does_not_starve_a_quiet_one() {
    let _machine = crate::common::exclusive().await;
    // Capacity 1 worker × 8 connections × 1 s = 8 runs/s, 4/s per app's share. App A floods
    // at 10× its share, app B sends 2/s; clients wait 10 s.
    let (patience, flood_for, quiet_for) =
        (Duration::from_secs(10), Duration::from_secs(12), Duration::from_secs(10));
    let pg = Postgres::start(32).await;
    let mut results = Vec::new();
    for shaped in [false, true] {
        let backend = Gunicorn::start(1, 8, &pg).await;
        let proxy =
            if shaped { Some(ProxyProcess::start(&proxy_config(backend.addr, "")).await) } else { None };
        let target = proxy.as_ref().map_or(backend.addr, |p| p.addr);
        let flood =
            tokio::spawn(open_loop(target, 40.0, flood_for, patience, run("app-floodfloodflood0000A", 1.0)));
        // B starts once A's flood is under way.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet = open_loop(target, 2.0, quiet_for, patience, run("app-quietquietquiet0000B", 1.0)).await;
        let flood = flood.await.expect("flood");
        let label = if shaped { "shaped" } else { "direct" };
        eprintln!("{}", summary(&format!("e2e tenants {label} flood A"), &flood));
        eprintln!("{}", summary(&format!("e2e tenants {label} quiet B"), &quiet));
        if shaped {
            assert_only_success_or_busy("flood A", &flood);
        }
        results.push(quiet.ok() as f64 / quiet.sent().max(1) as f64);
    }
    let (direct, shaped) = (results[0], results[1]);
    eprintln!("e2e tenants: quiet app success direct {:.1}%, shaped {:.1}%", 100.0 * direct, 100.0 * shaped);
    assert!(shaped >= 0.95, "quiet app success through dify-shaper {:.1}% < 95%", 100.0 * shaped);
    assert!(shaped > direct, "quiet app no better through dify-shaper: {shaped:.3} vs {direct:.3}");
}
