//! Two dify-shaper replicas sharing state through a real `redis-server` (`[cluster]`): a
//! tenant's rate limit holds across both (side by side with the same two replicas without
//! Redis, which each allow the whole limit); Redis killed and restarted under load fails no
//! request, and each replica falls back and rejoins within about a second; `check` refuses a
//! Redis it cannot reach or log in to; keys are namespaced, expire and hold no app key. And
//! two replicas behind HAProxy (Debian's, as an operator would run it): one killed under
//! load fails only the requests in flight on it.

use crate::common;

use std::time::Duration;

use common::fixtures::{poll_until, status};
use common::load::{open_loop, workflow, Report};
use common::redis::RedisServer;
use common::*;
use dify_shaper_tools::sim::{SimConfig, Simulator};
use tokio::time::Instant;

/// The rate limit the tests configure: 5 requests a second, bursts of 5.
const RATE: f64 = 5.0;
const BURST: f64 = 5.0;
const APP_KEY: &str = "app-clusterflood0000000000";

async fn sim() -> Simulator {
    Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("simulator")
}

fn config(upstream: std::net::SocketAddr, redis: Option<&str>, node: &str) -> String {
    let cluster = redis.map_or_else(String::new, |url| {
        format!("[cluster]\nredis = \"{url}\"\nnode = \"{node}\"\ncall_timeout = \"50ms\"\n")
    });
    format!(
        r#"
[upstreams.api]
servers = ["{upstream}"]

[[routes]]
prefix = "/"
upstream = "api"

[tenants.rate_limit]
rate = {RATE}
burst = {BURST}

{cluster}
"#
    )
}

async fn wait_shared(proxy: &ProxyProcess, nodes: usize) {
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "the replica joins the cluster",
        || async {
            let s = status(proxy.admin).await;
            s["cluster"]["state"] == "shared" && s["cluster"]["nodes"].as_array().map_or(0, Vec::len) == nodes
        },
    )
    .await;
}

/// Floods both replicas with one app at `offered` requests a second in all (half each) for
/// `seconds`; returns the accepted (not 429) and refused counts, and the failures.
async fn flood(
    a: &ProxyProcess,
    b: &ProxyProcess,
    offered: f64,
    seconds: u64,
) -> (usize, usize, Vec<String>) {
    let duration = Duration::from_secs(seconds);
    let shot = workflow(APP_KEY);
    let (ra, rb) = tokio::join!(
        open_loop(a.addr, offered / 2.0, duration, Duration::from_secs(10), shot.clone()),
        open_loop(b.addr, offered / 2.0, duration, Duration::from_secs(10), shot),
    );
    let mut accepted = 0;
    let mut refused = 0;
    let mut failures = Vec::new();
    for report in [&ra, &rb] {
        for o in &report.outcomes {
            match o.status {
                Some(200) => accepted += 1,
                Some(429) => refused += 1,
                other => failures.push(format!("{other:?} {:?} {:?}", o.code, o.error)),
            }
        }
    }
    (accepted, refused, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_rate_limit_holds_across_two_replicas() {
    let _machine = common::exclusive().await;
    let sim = sim().await;
    let redis = RedisServer::start().await;
    let seconds = 8;
    let offered = 4.0 * RATE;

    // Side by side: the same two replicas, each on its own.
    let alone_a = ProxyProcess::start(&config(sim.addr(), None, "a")).await;
    let alone_b = ProxyProcess::start(&config(sim.addr(), None, "b")).await;
    let (alone, _, failures) = flood(&alone_a, &alone_b, offered, seconds).await;
    assert!(failures.is_empty(), "{failures:?}");
    drop((alone_a, alone_b));

    let a = ProxyProcess::start(&config(sim.addr(), Some(&redis.url()), "a")).await;
    let b = ProxyProcess::start(&config(sim.addr(), Some(&redis.url()), "b")).await;
    wait_shared(&a, 2).await;
    wait_shared(&b, 2).await;
    let (shared, refused, failures) = flood(&a, &b, offered, seconds).await;
    assert!(failures.is_empty(), "{failures:?}");

    // GCRA allows the burst at once, then one request per interval.
    let rate_of = |accepted: usize| (accepted as f64 - BURST) / seconds as f64;
    println!(
        "rate limit {RATE}/s (burst {BURST}), one app offering {offered}/s through two replicas for {seconds} s: \
         accepted {shared} ({:.2}/s, {:.2}x the limit) with Redis; {alone} ({:.2}/s, {:.2}x) without; \
         {refused} x 429 with Redis",
        rate_of(shared),
        rate_of(shared) / RATE,
        rate_of(alone),
        rate_of(alone) / RATE,
    );
    assert!(
        (rate_of(shared) / RATE - 1.0).abs() <= 0.10,
        "accepted {:.2}/s through two replicas sharing Redis, configured {RATE}/s",
        rate_of(shared)
    );
    assert!(rate_of(alone) / RATE > 1.5, "without Redis each replica allows the whole limit");
    let calls = status(a.admin).await["cluster"]["local_calls"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(calls, 0, "every request was decided through Redis");

    // What the replicas wrote: namespaced, expiring, no app key in clear.
    let client = ::redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("connect");
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query_async(&mut c).await.expect("keys");
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(key.starts_with("dify-shaper:"), "{key}");
        assert!(!key.contains(APP_KEY) && !key.contains("clusterflood"), "{key}");
        let ttl: i64 = ::redis::cmd("PTTL").arg(key).query_async(&mut c).await.expect("ttl");
        assert!(ttl > 0, "{key} never expires ({ttl})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_fails_no_request() {
    let _machine = common::exclusive().await;
    let sim = sim().await;
    let mut redis = RedisServer::start().await;
    let a = ProxyProcess::start(&config(sim.addr(), Some(&redis.url()), "a")).await;
    let b = ProxyProcess::start(&config(sim.addr(), Some(&redis.url()), "b")).await;
    wait_shared(&a, 2).await;
    wait_shared(&b, 2).await;

    // Load under the limit (so every request should pass), through both, for 12 s.
    let load = {
        let (addr_a, addr_b) = (a.addr, b.addr);
        tokio::spawn(async move {
            let shot = workflow(APP_KEY);
            let (ra, rb) = tokio::join!(
                open_loop(addr_a, RATE * 0.3, Duration::from_secs(12), Duration::from_secs(10), shot.clone()),
                open_loop(addr_b, RATE * 0.3, Duration::from_secs(12), Duration::from_secs(10), shot),
            );
            (ra, rb)
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = Instant::now();
    redis.kill();
    let mut fallback = [Duration::ZERO; 2];
    for (i, proxy) in [&a, &b].into_iter().enumerate() {
        poll_until(
            Duration::from_secs(5),
            Duration::from_millis(20),
            "fallback to local decisions",
            || async { status(proxy.admin).await["cluster"]["state"] == "local" },
        )
        .await;
        fallback[i] = killed.elapsed();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    redis.start_again().await;
    let mut rejoin = [Duration::ZERO; 2];
    for (i, proxy) in [&a, &b].into_iter().enumerate() {
        poll_until(Duration::from_secs(10), Duration::from_millis(20), "rejoin", || async {
            status(proxy.admin).await["cluster"]["state"] == "shared"
        })
        .await;
        rejoin[i] = restarted.elapsed();
    }
    let (ra, rb) = load.await.expect("load");
    let failed = |r: &Report| r.outcomes.iter().filter(|o| o.status != Some(200)).count();
    println!(
        "Redis killed under load: fallback after {:?} / {:?}; restarted: rejoined after {:?} / {:?}; \
         requests {} + {}, failed {} + {}",
        fallback[0],
        fallback[1],
        rejoin[0],
        rejoin[1],
        ra.sent(),
        rb.sent(),
        failed(&ra),
        failed(&rb)
    );
    assert_eq!(failed(&ra) + failed(&rb), 0, "a request failed for Redis");
    assert!(fallback.iter().all(|d| *d < Duration::from_millis(1500)), "fallback took {fallback:?}");
    assert!(rejoin.iter().all(|d| *d < Duration::from_secs(3)), "rejoin took {rejoin:?}");
    let s = status(a.admin).await;
    assert_eq!(s["cluster"]["rejoins"], 1, "{}", s["cluster"]);
    // Fallback and rejoin are logged once each.
    let logs = a.logs();
    assert_eq!(logs.matches("Redis unreachable").count(), 1, "{logs}");
    assert_eq!(logs.matches("Redis answers again").count(), 1, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_redis_is_down_at_start_serves_and_check_says_why() {
    let _machine = common::shared().await;
    let sim = sim().await;
    let (_hold, closed) = closed_port();
    let url = format!("redis://{closed}/0");
    // `check` refuses it, naming the key and the reason.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dify-shaper"))
        .args(["check", "--redis", &url])
        .output()
        .expect("check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("cluster.redis") && stderr.contains("cannot connect"), "{stderr}");

    // `run` warns and serves locally.
    let proxy = ProxyProcess::start(&config(sim.addr(), Some(&url), "lonely")).await;
    let (code, _, _) = fetch(
        proxy.addr,
        request("POST", proxy.addr, "/v1/workflows/run")
            .header("authorization", format!("Bearer {APP_KEY}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"inputs":{},"response_mode":"blocking","user":"u"}"#,
            )))
            .expect("request"),
    )
    .await;
    assert_eq!(code, 200);
    poll_until(Duration::from_secs(5), Duration::from_millis(50), "the warning", || async {
        proxy.logs().contains("Redis unreachable")
    })
    .await;
    assert_eq!(status(proxy.admin).await["cluster"]["state"], "local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_is_joined_with_its_ca_and_check_refuses_it_without() {
    let _machine = common::shared().await;
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("dir");
    let redis = RedisServer::start_tls(dir.path()).await;
    let check = |config: &str| {
        let path = dir.path().join("check.toml");
        std::fs::write(&path, config).expect("write config");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_dify-shaper"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("check");
        (output.status.success(), String::from_utf8_lossy(&output.stderr).to_string())
    };
    // The server's certificate is signed by a CA the system does not know: refused, saying so.
    let without = config(sim.addr(), Some(&redis.url()), "tls");
    let (ok, refused) = check(&without);
    assert!(!ok && refused.contains("cluster.redis") && refused.contains("cannot connect"), "{refused}");
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("UnknownIssuer"), "{refused}");
    // With the CA: `check` reaches it, and a replica joins through it.
    let with = format!("{without}tls_ca_file = \"{}\"\n", dir.path().join("ca.crt").display());
    let (ok, stderr) = check(&with);
    assert!(ok && stderr.contains("reachable (Redis"), "{stderr}");
    let proxy = ProxyProcess::start(&with).await;
    wait_shared(&proxy, 1).await;
    println!("TLS Redis: check without the CA: {}", refused.lines().last().unwrap_or_default());
    // A CA file with a plain redis:// URL is a mistake `check` names.
    let plain = format!(
        "{}tls_ca_file = \"{}\"\n",
        config(sim.addr(), Some("redis://127.0.0.1:1/0"), "tls"),
        dir.path().join("ca.crt").display()
    );
    let (ok, stderr) = check(&plain);
    assert!(!ok && stderr.contains("cluster.tls_ca_file"), "{stderr}");
}

/// HAProxy in front of replicas, as an operator would run it: round robin, `/ready` of each
/// replica's admin listener as the health check, a refused connection redispatched.
struct Haproxy {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(replicas: &[&ProxyProcess]) -> Haproxy {
        let addr = free_port();
        let servers: String = replicas
            .iter()
            .enumerate()
            .map(|(i, p)| format!("  server r{i} {} check port {}\n", p.addr, p.admin.port()))
            .collect();
        let cfg = format!(
            "global\n  maxconn 2000\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  \
             timeout server 60s\n  retries 2\n  option redispatch\nfrontend fe\n  bind {addr}\n  \
             default_backend shapers\nbackend shapers\n  balance roundrobin\n  option httpchk GET /ready\n  \
             default-server inter 200ms fall 2 rise 2\n{servers}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let child = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy (Debian's haproxy; e2e/setup.sh installs it)");
        poll_until(Duration::from_secs(10), Duration::from_millis(50), "haproxy serves", || async {
            matches!(try_get(addr, "/v1/parameters").await, Ok((status, _, _)) if status.as_u16() == 200)
        })
        .await;
        Haproxy { child, addr, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_of_two_killed_behind_haproxy_fails_only_its_requests_in_flight() {
    let _machine = common::exclusive().await;
    let sim = sim().await;
    let redis = RedisServer::start().await;
    let a = ProxyProcess::start(&config(sim.addr(), Some(&redis.url()), "a")).await;
    let b = ProxyProcess::start(&config(sim.addr(), Some(&redis.url()), "b")).await;
    let haproxy = Haproxy::start(&[&a, &b]).await;

    let mut shot = workflow("app-haproxykill000000000000");
    shot.headers.push(("x-sim-service-time".into(), "800ms".into()));
    // Under the rate limit: every request should succeed but for the kill.
    let load = tokio::spawn(open_loop(
        haproxy.addr,
        RATE * 0.8,
        Duration::from_secs(10),
        Duration::from_secs(10),
        shot,
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, _, body) = try_get(a.admin, "/metrics").await.expect("metrics");
    let in_flight = String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| {
            l.strip_prefix("dify_shaper_client_requests_active ").and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0) as usize;
    a.signal(nix::sys::signal::Signal::SIGKILL);
    let report = load.await.expect("load");
    let failed: Vec<_> = report.outcomes.iter().filter(|o| o.status != Some(200)).collect();
    println!(
        "one of two replicas SIGKILLed behind HAProxy: {} requests, {} failed, {in_flight} in flight on it when killed",
        report.sent(),
        failed.len()
    );
    // The requests in flight on it when it died fail (they may have run: never replayed);
    // the sample is a few ms before the kill, so allow one that started in between.
    assert!(failed.len() <= in_flight + 1, "{} failed, {in_flight} were in flight: {failed:?}", failed.len());
    assert!(
        report.ok_sent_between(Duration::from_secs(5), Duration::from_secs(10)) > 0,
        "b served after the kill"
    );
}

/// Sums the replicas' requests in flight to the backend (their admissions' count).
async fn in_flight(replicas: &[&ProxyProcess]) -> usize {
    let mut total = 0;
    for p in replicas {
        total += status(p.admin).await["upstreams"]["api"]["admission"]["in_flight"].as_u64().unwrap_or(0)
            as usize;
    }
    total
}

/// Offers `rate` a second of 400 ms runs through `replicas` (split evenly) for `seconds`,
/// sampling the replicas' summed in-flight after a warm-up; returns (ok after the warm-up per
/// second, failures, the highest in-flight sample).
async fn capacity_run(
    replicas: &[&ProxyProcess],
    rate: f64,
    seconds: u64,
    warm_up: u64,
) -> (f64, usize, usize) {
    let mut shot = workflow("app-sharedcapacity00000000000");
    shot.headers.push(("x-sim-service-time".into(), "400ms".into()));
    let loads: Vec<_> = replicas
        .iter()
        .map(|p| {
            let (addr, shot) = (p.addr, shot.clone());
            let each = rate / replicas.len() as f64;
            tokio::spawn(open_loop(addr, each, Duration::from_secs(seconds), Duration::from_secs(20), shot))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(warm_up)).await;
    let mut peak = 0;
    let sampling_ends = Instant::now() + Duration::from_secs(seconds - warm_up);
    while Instant::now() < sampling_ends {
        peak = peak.max(in_flight(replicas).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ok = 0;
    let mut failed = 0;
    for load in loads {
        let report = load.await.expect("load");
        ok += report.ok_sent_between(Duration::from_secs(warm_up), Duration::from_secs(seconds));
        failed += report.outcomes.iter().filter(|o| o.status != Some(200)).count();
    }
    (ok as f64 / (seconds - warm_up) as f64, failed, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_together_stay_within_the_backends_capacity() {
    const CAPACITY: usize = 4;
    let _machine = common::exclusive().await;
    // One gevent worker taking 4 connections: the 5th waits in the listen backlog.
    let sim = Simulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        SimConfig { workers: 1, worker_connections: CAPACITY, ..SimConfig::default() },
    )
    .await
    .expect("simulator");
    let redis = RedisServer::start().await;
    let (seconds, warm_up) = (20, 8);
    let offered = 2.0 * CAPACITY as f64 / 0.4;

    // No rate limit here: the backend's capacity is the only limit.
    let no_rate_limit =
        |text: String| text.replace(&format!("[tenants.rate_limit]\nrate = {RATE}\nburst = {BURST}\n"), "");
    let alone = ProxyProcess::start(&no_rate_limit(config(sim.addr(), None, "alone"))).await;
    let (alone_goodput, alone_failed, alone_peak) = capacity_run(&[&alone], offered, seconds, warm_up).await;
    drop(alone);

    let a = ProxyProcess::start(&no_rate_limit(config(sim.addr(), Some(&redis.url()), "a"))).await;
    let b = ProxyProcess::start(&no_rate_limit(config(sim.addr(), Some(&redis.url()), "b"))).await;
    wait_shared(&a, 2).await;
    wait_shared(&b, 2).await;
    let (goodput, failed, peak) = capacity_run(&[&a, &b], offered, seconds, warm_up).await;
    let sa = status(a.admin).await;
    let sb = status(b.admin).await;
    let view = |s: &serde_json::Value| {
        let adm = &s["upstreams"]["api"]["admission"];
        format!("limit {} effective {} replica {}", adm["limit"], adm["effective_limit"], adm["replica"])
    };
    println!(
        "backend capacity {CAPACITY} (one worker, 4 connections), offered {offered}/s of 400 ms runs for {seconds} s: \
         one replica alone {alone_goodput:.2}/s ok, peak in flight {alone_peak}, {alone_failed} failed; \
         two replicas sharing Redis {goodput:.2}/s ok, peak summed in flight {peak}, {failed} failed ({}; {})",
        view(&sa),
        view(&sb)
    );
    assert!(
        peak <= CAPACITY + 1,
        "the replicas together put {peak} in flight on a backend of capacity {CAPACITY}"
    );
    assert!(
        goodput >= alone_goodput * 0.95,
        "two replicas served {goodput:.2}/s, one alone {alone_goodput:.2}/s"
    );

    // The learned limit survives a replica's restart: it starts from what it had learned.
    let client = ::redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("connect");
    let learned =
        status(a.admin).await["upstreams"]["api"]["admission"]["limit"].as_u64().unwrap_or(0) as usize;
    drop(a);
    let stored: usize =
        ::redis::cmd("GET").arg("dify-shaper:limit:api:a").query_async(&mut c).await.expect("stored limit");
    let a = ProxyProcess::start(&no_rate_limit(config(sim.addr(), Some(&redis.url()), "a"))).await;
    wait_shared(&a, 2).await;
    let restarted =
        status(a.admin).await["upstreams"]["api"]["admission"]["limit"].as_u64().unwrap_or(0) as usize;
    println!("replica a learned {learned} (stored {stored}); restarted, it starts at {restarted}");
    assert_eq!(stored, learned);
    assert_eq!(restarted, stored, "a restarted replica starts from the limit it had learned");
}
