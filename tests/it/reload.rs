//! Config reload on SIGHUP and `POST /reload`. Real proxy processes on 127.0.0.1,
//! an in-process simulator; configs are switched by rewriting the proxy's config file.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::fixtures::{admin_post, status, wait_for};
use common::load::{open_loop, workflow};
use common::*;
use dify_shaper_tools::sim::{ServiceTime, SimConfig, Simulator};
use nix::sys::signal::Signal;
use tokio::time::Instant;

/// Learned limits start here, low, so a limit that was learned is told apart from a reset.
const INITIAL_LIMIT: u64 = 2;

/// Two valid configs: `b` differs in the run class's `queue_timeout` and one route.
fn config(sim: SocketAddr, b: bool) -> String {
    let (timeout, extra_route) = if b {
        ("25s", "[[routes]]\nprefix = \"/v1/chat-messages\"\nupstream = \"api\"\nclass = \"run\"\n")
    } else {
        ("20s", "")
    };
    format!(
        r#"[upstreams.api]
servers = ["{sim}"]

[upstreams.api.admission]
initial_limit = {INITIAL_LIMIT}

[classes.run]
queue_timeout = "{timeout}"

[[routes]]
prefix = "/"
upstream = "api"

[[routes]]
prefix = "/v1/workflows/run"
upstream = "api"
class = "run"

{extra_route}"#
    )
}

async fn simulator() -> Simulator {
    let config = SimConfig {
        workers: 1,
        worker_connections: 64,
        service_time: ServiceTime::Fixed(Duration::from_millis(100)),
        ..SimConfig::default()
    };
    Simulator::start("127.0.0.1:0".parse().expect("addr"), config).await.expect("simulator")
}

fn reloads(status: &serde_json::Value) -> (u64, u64) {
    (status["reload"]["ok"].as_u64().unwrap_or(0), status["reload"]["failed"].as_u64().unwrap_or(0))
}

fn limit(status: &serde_json::Value) -> u64 {
    status["upstreams"]["api"]["admission"]["limit"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sighup_reloads_under_load_fail_nothing_and_keep_the_learned_limit() {
    let _machine = crate::common::exclusive().await;
    let sim = simulator().await;
    let proxy = ProxyProcess::start(&config(sim.addr(), false)).await;
    let shot = workflow("app-reloadreloadreload01");

    // Warm-up: 6 runs in flight on average against a limit of 2 teaches a higher limit.
    let warmup =
        open_loop(proxy.addr, 60.0, Duration::from_secs(6), Duration::from_secs(20), shot.clone()).await;
    let before = status(proxy.admin).await;
    let learned = limit(&before);
    eprintln!("warm-up {:?}; learned limit {learned} (initial {INITIAL_LIMIT})", warmup.by_status());
    assert!(learned > INITIAL_LIMIT, "nothing was learned during the warm-up: {before:#}");

    // Steady open-loop load while the config flips 50 times, one SIGHUP every ~100 ms.
    let load = tokio::spawn(open_loop(
        proxy.addr,
        30.0,
        Duration::from_secs(12),
        Duration::from_secs(20),
        shot.clone(),
    ));
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let mut slowest = Duration::ZERO;
    for i in 0..50u64 {
        pace.tick().await;
        proxy.write_config(&config(sim.addr(), i % 2 == 0));
        let sent = Instant::now();
        proxy.signal(Signal::SIGHUP);
        // Each signal must be handled before the next: signals sent faster are coalesced.
        wait_for(Duration::from_secs(10), &format!("reload {} to be counted", i + 1), || async {
            let now = status(proxy.admin).await;
            reloads(&now).0 > i || reloads(&now).1 > 0
        })
        .await;
        slowest = slowest.max(sent.elapsed());
        let last = status(proxy.admin).await;
        assert_eq!(reloads(&last), (i + 1, 0), "reload {} failed: {:#}", i + 1, last["reload"]);
    }
    let reload_time = started.elapsed();
    let report = load.await.expect("load task");
    let after = status(proxy.admin).await;
    let kept = limit(&after);
    eprintln!(
        "50 SIGHUP reloads in {reload_time:?} (slowest signal→counted {slowest:?}); load {:?} of {} sent; \
         limit before {learned}, after {kept}; reload {}",
        report.by_status(),
        report.sent(),
        after["reload"]
    );
    assert_eq!(report.ok(), report.sent(), "requests failed during reloads: {:?}", report.by_status());
    assert_eq!(reloads(&after), (50, 0));
    // The 50th config is `a` (i = 49 is odd): its queue timeout is in force.
    assert_eq!(after["classes"]["run"]["queue_timeout"], "20s");
    assert!(
        kept > INITIAL_LIMIT && kept + 1 >= learned,
        "the learned limit did not survive the reloads: {learned} before, {kept} after"
    );
    assert!(!proxy.logs().contains("panicked"), "{}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_and_a_listen_change_needs_a_restart() {
    let _machine = crate::common::exclusive().await;
    let sim = simulator().await;
    let (addr, admin) = (free_port(), free_port());
    let listeners = |listen: SocketAddr| format!("[server]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\n\n");
    let good = format!("{}{}", listeners(addr), config(sim.addr(), false));
    let proxy = ProxyProcess::start_listening_as_configured(&good, addr, admin).await;
    let path = proxy.config_path().display().to_string();

    // SIGHUP with a bad value: refused, counted, logged with FILE:LINE:COL; the old config serves.
    let bad = good.replace("queue_timeout = \"20s\"", "queue_timeout = \"soon\"");
    let line = bad.lines().position(|l| l.contains("\"soon\"")).expect("bad line") + 1;
    let where_ = format!("{path}:{line}:17");
    proxy.write_config(&bad);
    proxy.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "the failed reload to be counted", || async {
        reloads(&status(admin).await).1 == 1
    })
    .await;
    let now = status(admin).await;
    eprintln!("refused reload: {:#}", now["reload"]["last_failure"]);
    assert_eq!(reloads(&now), (0, 1));
    let error = now["reload"]["last_failure"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with(&where_), "error {error:?} does not point at {where_}");
    wait_for(Duration::from_secs(5), "the error in the log", || async { proxy.logs().contains(&where_) })
        .await;
    assert_eq!(now["classes"]["run"]["queue_timeout"], "20s", "the old config is not in force");
    let (code, _, body) = post_json(addr, "/v1/workflows/run", WORKFLOW, &[]).await;
    assert_eq!(code, 200, "the old config stopped serving: {}", String::from_utf8_lossy(&body));

    // POST /reload does the same and says why, in Dify's envelope.
    let (code, body) = admin_post(admin, "/reload", None).await;
    eprintln!("POST /reload with the bad file: {code} {body}");
    assert_eq!(code, 400);
    assert_eq!(body["code"], "bad_request");
    assert!(body["message"].as_str().unwrap_or_default().starts_with(&where_), "{body}");
    assert_eq!(reloads(&status(admin).await), (0, 2));

    // A valid file that also moves the listener: applied, except the listener (named).
    let moved = free_port();
    proxy.write_config(&format!("{}{}", listeners(moved), config(sim.addr(), true)));
    let (code, body) = admin_post(admin, "/reload", None).await;
    eprintln!("POST /reload with a moved listener: {code} {body:#}");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "ok");
    assert_eq!(body["changed"], serde_json::json!(["classes.run", "routes"]));
    assert_eq!(body["restart_needed"][0]["setting"], "server.listen");
    assert_eq!(body["restart_needed"][0]["running"], addr.to_string());
    let logged = format!("server.listen needs a restart, still using {addr}");
    wait_for(Duration::from_secs(5), "the restart notice in the log", || async {
        proxy.logs().contains(&logged)
    })
    .await;
    let now = status(admin).await;
    assert_eq!(reloads(&now), (1, 2));
    assert_eq!(now["classes"]["run"]["queue_timeout"], "25s");
    assert_eq!(
        now["listen"],
        serde_json::json!([addr.to_string()]),
        "/status must show the listener in force"
    );
    let (code, _, _) = post_json(addr, "/v1/chat-messages", CHAT, &[]).await;
    assert_eq!(code, 200, "the old listener stopped serving after the reload");
    assert!(tokio::net::TcpStream::connect(moved).await.is_err(), "a reload must not open {moved}");

    // Wrong method: 405 in the envelope.
    let (code, _, body) = get(admin, "/reload").await;
    assert_eq!(code, 405, "{}", String::from_utf8_lossy(&body));
}

const WORKFLOW: &str = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;
const CHAT: &str = r#"{"inputs":{},"query":"hi","response_mode":"blocking","user":"u"}"#;
