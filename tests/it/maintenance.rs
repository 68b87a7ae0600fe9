//! Scheduled and manual maintenance against real processes on 127.0.0.1 — the
//! simulator (in-process, or as a child process a `signal` action restarts like gunicorn)
//! and the dify-shaper binary. Schedules are a few seconds ahead (cron with seconds, UTC).
//!
//! The tests in this file run one at a time: several put load on the 2 shared cores and
//! assert on latency, with generous margins.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{Timelike, Utc};
use common::fixtures::*;
use common::load::{open_loop, workflow};
use common::*;
use dify_shaper_tools::sim::{ServiceTime, SimConfig, Simulator};
use tokio::time::Instant;

const RUN: &str = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;

/// A config routing everything to upstream `api` at `servers`, with fast probes, plus
/// `extra` (a `[[maintenance]]` entry, usually).
fn config(servers: &[SocketAddr], extra: &str) -> String {
    let servers = servers.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[upstreams.api]\nservers = [{servers}]\n[upstreams.api.health]\ninterval = \"250ms\"\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n\n{extra}"
    )
}

/// A 6-field cron expression (UTC) for `secs` seconds from now, and that instant.
fn cron_in(secs: i64) -> (String, chrono::DateTime<Utc>) {
    let at = Utc::now() + chrono::Duration::seconds(secs);
    (format!("{} {} {} * * *", at.second(), at.minute(), at.hour()), at)
}

fn completed(events: &[String]) -> bool {
    events.last().is_some_and(|e| e.contains("workflow_finished"))
        && !events.iter().any(|e| e.contains("\"event\":\"error\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_restart_under_load_costs_no_request() {
    let _machine = crate::common::exclusive().await;
    // Capacity 4 × 500 ms = 8 runs/s; a SIGHUP restarts it with a 3 s boot (port closed).
    let sim =
        SimProcess::start(&["--worker-connections", "4", "--service-time", "500ms", "--boot-delay", "3s"])
            .await;
    let (cron, at) = cron_in(8);
    let maintenance = format!(
        "[[maintenance]]\nupstream = \"api\"\nschedule = \"{cron}\"\ntimezone = \"UTC\"\ndrain_timeout = \"20s\"\n\
         restart_timeout = \"10s\"\nrecover_timeout = \"30s\"\nramp = \"2s\"\n\
         action = {{ kind = \"signal\", pid = {}, signal = \"HUP\" }}\n\
         [maintenance.health]\nsuccesses = 3\ninterval = \"200ms\"\nrequest = \"GET /console/api/setup\"\n",
        sim.pid()
    );
    let proxy = ProxyProcess::start(&config(&[sim.addr], &maintenance)).await;
    let view = status(proxy.admin).await["upstreams"]["api"]["maintenance"].clone();
    assert_eq!(view["phase"], "serving");
    assert_eq!(
        view["next_scheduled"].as_str().map(|s| s.starts_with(&at.format("%Y-%m-%dT%H:%M").to_string())),
        Some(true),
        "{view:#}"
    );

    // ~50 % load for 18 s around the scheduled time: blocking runs at 4/s, plus a 2 s stream
    // every 1.5 s.
    let load = tokio::spawn(open_loop(
        proxy.addr,
        4.0,
        Duration::from_secs(18),
        Duration::from_secs(60),
        workflow("app-maintenancemainten1"),
    ));
    let addr = proxy.addr;
    let streams: Vec<_> = (0..12)
        .map(|i| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500 * i)).await;
                stream_events(addr, "2s", 4).await
            })
        })
        .collect();
    let report = load.await.expect("load");
    let mut finished = 0;
    for stream in streams {
        let events = stream.await.expect("stream task");
        assert!(completed(&events), "a stream did not complete: {events:?}");
        finished += 1;
    }
    let view = wait_maintenance(proxy.admin, "api", Duration::from_secs(60), "the cycle to end", |v| {
        v["last_cycle"].is_object() && v["phase"] == "serving"
    })
    .await;
    let longest = report.percentile(1.0).unwrap_or_default();
    eprintln!(
        "scheduled restart: {:?}, {finished} streams completed, longest {longest:?}, history {:#}",
        report.by_status(),
        view["history"]
    );
    assert_eq!(report.ok(), report.sent(), "non-2xx during maintenance: {:?}", report.by_status());
    assert_eq!(view["last_cycle"]["outcome"], "ok", "{view:#}");
    assert_eq!(view["last_cycle"]["trigger"], "schedule");
    assert_eq!(view["cycles"], 1);
    let phases: Vec<&str> =
        view["history"].as_array().map_or(vec![], |h| h.iter().filter_map(|r| r["to"].as_str()).collect());
    assert_eq!(phases, ["draining", "restarting", "recovering", "ramping", "serving"]);
    // Held through the drain (≤ 2 s streams) and the 3 s boot, but not much longer.
    assert!(longest >= Duration::from_secs(3), "nobody was held through the boot? {longest:?}");
    assert!(longest <= Duration::from_secs(20), "held far longer than drain + boot: {longest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_action_none_an_external_restart_in_the_window_costs_no_request() {
    let _machine = crate::common::exclusive().await;
    let config_sim = SimConfig {
        worker_connections: 4,
        service_time: ServiceTime::Fixed(Duration::from_millis(500)),
        ..SimConfig::default()
    };
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), config_sim).await.expect("sim");
    // The external cron restarts the backend at `at`; dify-shaper drains from `at - 3s`.
    let (cron, at) = cron_in(9);
    let maintenance = format!(
        "[[maintenance]]\nupstream = \"api\"\nschedule = \"{cron}\"\ndrain_timeout = \"3s\"\n\
         recover_timeout = \"30s\"\nramp = \"1s\"\naction = {{ kind = \"none\", window = \"20s\" }}\n\
         [maintenance.health]\nsuccesses = 2\ninterval = \"200ms\"\n"
    );
    let proxy = ProxyProcess::start(&config(&[sim.addr()], &maintenance)).await;
    let load = tokio::spawn(open_loop(
        proxy.addr,
        4.0,
        Duration::from_secs(16),
        Duration::from_secs(60),
        workflow("app-externalexternalex1"),
    ));
    // The external cron job: at the scheduled time, a restart with a 2 s boot.
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    sim.restart(Duration::from_secs(2)).await;
    let report = load.await.expect("load");
    let view = wait_maintenance(proxy.admin, "api", Duration::from_secs(60), "the cycle to end", |v| {
        v["last_cycle"].is_object() && v["phase"] == "serving"
    })
    .await;
    eprintln!("external restart: {:?}, longest {:?}", report.by_status(), report.percentile(1.0));
    assert_eq!(report.ok(), report.sent(), "non-2xx: {:?}", report.by_status());
    assert_eq!(view["last_cycle"]["outcome"], "ok", "{view:#}");
    let runs = sim.stats().runs_by_path.get("/v1/workflows/run").copied().unwrap_or(0);
    assert_eq!(runs, report.sent() as u64, "every run reached the backend exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_two_replicas_makes_nobody_wait() {
    let _machine = crate::common::exclusive().await;
    let args = ["--worker-connections", "4", "--service-time", "500ms", "--boot-delay", "2s"];
    let a = SimProcess::start(&args).await;
    let b = SimProcess::start(&args).await;
    let dir = tempfile::tempdir().expect("dir");
    for sim in [&a, &b] {
        sim.write_pid(&dir.path().join(format!("sim-{}.pid", sim.addr.port())));
    }
    let maintenance = format!(
        "[[maintenance]]\nupstream = \"api\"\nmode = \"rolling\"\ndrain_timeout = \"10s\"\nrestart_timeout = \"5s\"\n\
         recover_timeout = \"30s\"\n\
         action = {{ kind = \"signal\", pid_file = \"{}/sim-{{port}}.pid\", signal = \"HUP\" }}\n\
         [maintenance.health]\nsuccesses = 2\ninterval = \"200ms\"\n",
        dir.path().display()
    );
    let proxy = ProxyProcess::start(&config(&[a.addr, b.addr], &maintenance)).await;
    // 5 runs/s: 30 % of both replicas, 60 % of one.
    let load = tokio::spawn(open_loop(
        proxy.addr,
        5.0,
        Duration::from_secs(16),
        Duration::from_secs(60),
        workflow("app-rollingrollingroll1"),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let admin = proxy.admin.to_string();
    let (code, out, err) = ctl(&["restart", "api", "--admin", &admin, "--wait", "--timeout", "60s"]).await;
    assert_eq!(code, 0, "ctl restart --wait failed: {out}{err}\n{}", proxy.logs());
    let report = load.await.expect("load");
    let view = status(proxy.admin).await["upstreams"]["api"]["maintenance"].clone();
    let longest = report.percentile(1.0).unwrap_or_default();
    eprintln!("rolling: {:?}, longest {longest:?}", report.by_status());
    assert_eq!(report.ok(), report.sent(), "non-2xx: {:?}", report.by_status());
    assert_eq!(view["last_cycle"]["outcome"], "ok", "{view:#}");
    let targets: Vec<&str> = view["history"]
        .as_array()
        .map_or(vec![], |h| h.iter().filter_map(|r| r["target"].as_str()).collect());
    assert!(
        targets.contains(&a.addr.to_string().as_str()) && targets.contains(&b.addr.to_string().as_str()),
        "both replicas restarted: {targets:?}"
    );
    // Normal service is 500 ms; nobody was held for a replica's 2 s boot.
    assert!(longest < Duration::from_millis(1800), "someone waited: {longest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_actions_resume_serving_and_show_in_status() {
    let _machine = crate::common::exclusive().await;
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    for (action, timeouts, expected) in [
        ("{ kind = \"command\", command = \"echo broken >&2; exit 1\" }", "", "exited with status 1: broken"),
        (
            "{ kind = \"command\", command = \"sleep 30\" }",
            "restart_timeout = \"1s\"\n",
            "timed out after 1s",
        ),
    ] {
        let maintenance = format!(
            "[[maintenance]]\nupstream = \"api\"\ndrain_timeout = \"5s\"\n{timeouts}action = {action}\n"
        );
        let proxy = ProxyProcess::start(&config(&[sim.addr()], &maintenance)).await;
        let (code, body) = admin_post(proxy.admin, "/upstreams/api/restart", None).await;
        assert_eq!(code, 202, "{body:#}");
        assert_eq!(body["cycle"], 1);
        let started = Instant::now();
        let view = wait_maintenance(proxy.admin, "api", Duration::from_secs(30), "the failed cycle", |v| {
            v["last_cycle"].is_object()
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(10), "the failure took {:?}", started.elapsed());
        assert_eq!(view["phase"], "serving", "{view:#}");
        assert_eq!(view["failures"], 1);
        assert_eq!(view["last_cycle"]["outcome"], "failed");
        let reason = view["last_cycle"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(expected), "{reason:?} should say {expected:?}");
        assert_eq!(view["held"], false);
        assert_eq!(post_json(proxy.addr, "/v1/workflows/run", RUN, &[]).await.0, 200, "serving again");
        assert!(proxy.logs().contains("maintenance failed"), "logged loudly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_drain_timeout_is_cut_by_the_restart_with_an_error_event() {
    let _machine = crate::common::exclusive().await;
    let sim = SimProcess::start(&["--boot-delay", "1s"]).await;
    let maintenance = format!(
        "[[maintenance]]\nupstream = \"api\"\ndrain_timeout = \"1s\"\nrecover_timeout = \"30s\"\nramp = \"0s\"\n\
         action = {{ kind = \"signal\", pid = {}, signal = \"HUP\" }}\n[maintenance.health]\ninterval = \"200ms\"\n",
        sim.pid()
    );
    let proxy = ProxyProcess::start(&config(&[sim.addr], &maintenance)).await;
    let addr = proxy.addr;
    let stream = tokio::spawn(async move { stream_events(addr, "10s", 5).await });
    wait_maintenance(proxy.admin, "api", Duration::from_secs(10), "the stream to be in flight", |v| {
        v["in_flight"] == 1
    })
    .await;
    let (code, body) = admin_post(proxy.admin, "/upstreams/api/restart", None).await;
    assert_eq!(code, 202, "{body:#}");
    let events = stream.await.expect("stream");
    let last = events.last().cloned().unwrap_or_default();
    assert!(last.contains("\"event\":\"error\"") && last.contains("upstream_lost"), "{events:?}");
    let view = wait_maintenance(proxy.admin, "api", Duration::from_secs(30), "the cycle to end", |v| {
        v["last_cycle"].is_object() && v["phase"] == "serving"
    })
    .await;
    let drained =
        view["history"].as_array().and_then(|h| h.iter().find(|r| r["to"] == "restarting")).cloned();
    assert_eq!(
        drained.map(|r| r["reason"].clone()),
        Some("drain timeout: 1 still in flight".into()),
        "{view:#}"
    );
    assert_eq!(view["last_cycle"]["outcome"], "ok");
    assert_eq!(post_json(proxy.addr, "/v1/workflows/run", RUN, &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drain_holds_new_requests_and_resume_releases_them() {
    let _machine = crate::common::exclusive().await;
    let sim_config =
        SimConfig { service_time: ServiceTime::Fixed(Duration::from_secs(1)), ..SimConfig::default() };
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), sim_config).await.expect("sim");
    // No [[maintenance]] entry: manual control works for every upstream.
    let proxy = ProxyProcess::start(&config(&[sim.addr()], "")).await;
    let admin = proxy.admin.to_string();
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { post_json(addr, "/v1/workflows/run", RUN, &[]).await.0 });
    wait_maintenance(proxy.admin, "api", Duration::from_secs(10), "a request in flight", |v| {
        v["in_flight"] == 1
    })
    .await;
    let (code, out, err) = ctl(&["drain", "api", "--admin", &admin, "--wait", "--timeout", "30s"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(in_flight.is_finished(), "drain --wait returned before the in-flight request ended");
    assert_eq!(in_flight.await.expect("join"), 200, "the in-flight request finished normally");
    let view = status(proxy.admin).await["upstreams"]["api"]["maintenance"].clone();
    assert_eq!((view["phase"].as_str(), view["held"].as_bool()), (Some("drained"), Some(true)), "{view:#}");

    let held = tokio::spawn(async move { post_json(addr, "/v1/workflows/run", RUN, &[]).await.0 });
    wait_maintenance(proxy.admin, "api", Duration::from_secs(10), "a held request", |v| v["queued"] == 1)
        .await;
    let (code, out, err) = ctl(&["restart", "api", "--admin", &admin]).await;
    assert_eq!(code, 1, "no restart action configured: {out}{err}");
    assert!(err.contains("no restart action"), "{err}");
    assert!(!held.is_finished(), "held while drained");
    let (code, out, err) = ctl(&["resume", "api", "--admin", &admin, "--wait", "--timeout", "30s"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(held.await.expect("join"), 200, "released after resume");
    let (code, out, _) = ctl(&["status", "api", "--admin", &admin]).await;
    assert_eq!(code, 0);
    assert!(out.contains("\"phase\""), "{out}");
    assert_eq!(sim.stats().runs_by_path.get("/v1/workflows/run").copied(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_requires_the_configured_token() {
    let _machine = crate::common::exclusive().await;
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    let proxy =
        ProxyProcess::start(&format!("[server]\nadmin_token = \"s3cret\"\n{}", config(&[sim.addr()], "")))
            .await;
    assert_eq!(get(proxy.admin, "/live").await.0, 200, "liveness stays open for health checks");
    assert_eq!(get(proxy.admin, "/status").await.0, 401);
    let (code, body) = admin_post(proxy.admin, "/upstreams/api/drain", None).await;
    assert_eq!((code, body["code"].as_str()), (http::StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let (code, _) = admin_post(proxy.admin, "/upstreams/api/drain", Some("wrong")).await;
    assert_eq!(code, 401);
    assert_eq!(status_phase(proxy.admin, "s3cret").await, "serving", "refused commands changed nothing");
    let admin = proxy.admin.to_string();
    let (code, out, err) = ctl(&["drain", "api", "--admin", &admin, "--token", "s3cret", "--wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ctl(&["resume", "api", "--admin", &admin, "--token", "s3cret", "--wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = ctl(&["status", "api", "--admin", &admin]).await;
    assert_eq!(code, 1, "no token: {err}");
}

async fn status_phase(admin: SocketAddr, token: &str) -> String {
    let req = request("GET", admin, "/status")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let (_, _, body) = fetch(admin, req).await;
    json(&body)["upstreams"]["api"]["maintenance"]["phase"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_above_the_threshold_triggers_one_drained_restart_per_window() {
    let _machine = crate::common::exclusive().await;
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    let dir = tempfile::tempdir().expect("dir");
    let cgroup = dir.path().join("memory.current");
    std::fs::write(&cgroup, "500000\n").expect("write");
    let maintenance = format!(
        "[[maintenance]]\nupstream = \"api\"\nramp = \"0s\"\naction = {{ kind = \"command\", command = \"true\" }}\n\
         [maintenance.health]\ninterval = \"100ms\"\nsuccesses = 1\n\
         [maintenance.memory]\ncgroup = \"{}\"\nthreshold = \"1MiB\"\ninterval = \"100ms\"\nmin_interval = \"1h\"\n",
        cgroup.display()
    );
    let proxy = ProxyProcess::start(&config(&[sim.addr()], &maintenance)).await;
    let view = wait_maintenance(proxy.admin, "api", Duration::from_secs(10), "a memory reading", |v| {
        v["memory"]["last_bytes"] == 500000
    })
    .await;
    assert_eq!(view["cycles"], 0, "below the threshold");
    std::fs::write(&cgroup, "5000000\n").expect("write");
    let view = wait_maintenance(proxy.admin, "api", Duration::from_secs(20), "a memory restart", |v| {
        v["last_cycle"].is_object() && v["phase"] == "serving"
    })
    .await;
    assert_eq!(
        (view["last_cycle"]["trigger"].as_str(), view["last_cycle"]["outcome"].as_str()),
        (Some("memory"), Some("ok"))
    );
    std::fs::write(&cgroup, "6000000\n").expect("write");
    let view = wait_maintenance(proxy.admin, "api", Duration::from_secs(10), "the next reading", |v| {
        v["memory"]["last_bytes"] == 6000000
    })
    .await;
    assert_eq!(view["cycles"], 1, "at most one memory restart per min_interval");
}
