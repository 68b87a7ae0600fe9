//! One maintenance cycle for two dify-shaper replicas sharing a real `redis-server`, in front
//! of one simulator run as its own process (a `command` action logs each run to a file and
//! restarts it with SIGHUP, 2 s boot with the port closed): a scheduled cycle under load runs
//! the action once and fails nothing through either replica; the lease holder SIGKILLed while
//! draining, or while its action runs, is taken over by the other, which runs the action only
//! if it had not begun; Redis killed mid-cycle: both replicas finish on their own.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{Timelike, Utc};
use common::fixtures::{admin_post, poll_until, status, wait_maintenance, SimProcess};
use common::load::{open_loop, workflow, Report};
use common::redis::RedisServer;
use common::*;

struct Setup {
    sim: SimProcess,
    runs: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let sim = SimProcess::start(&[
            "--worker-connections",
            "4",
            "--service-time",
            "300ms",
            "--boot-delay",
            "2s",
        ])
        .await;
        let dir = tempfile::tempdir().expect("dir");
        let runs = dir.path().join("runs");
        Setup { sim, runs, _dir: dir }
    }

    /// A replica's config: upstream `api` at the simulator, `[cluster]` on `redis` as `node`,
    /// and a `[[maintenance]]` whose action logs its run, waits 2 s and restarts the simulator.
    fn config(&self, redis: &str, node: &str, schedule: Option<&str>) -> String {
        let schedule =
            schedule.map_or_else(String::new, |s| format!("schedule = \"{s}\"\ntimezone = \"UTC\"\n"));
        format!(
            "[upstreams.api]\nservers = [\"{}\"]\n[upstreams.api.health]\ninterval = \"250ms\"\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n\
             [cluster]\nredis = \"{redis}\"\nnode = \"{node}\"\ncall_timeout = \"50ms\"\n\
             [[maintenance]]\nupstream = \"api\"\n{schedule}drain_timeout = \"20s\"\nrestart_timeout = \"15s\"\n\
             recover_timeout = \"30s\"\nramp = \"1s\"\n\
             action = {{ kind = \"command\", command = \"echo {node} >> {}; sleep 2; kill -HUP {}\" }}\n\
             [maintenance.health]\nsuccesses = 2\ninterval = \"200ms\"\n",
            self.sim.addr,
            self.runs.display(),
            self.sim.pid(),
        )
    }

    /// The replicas that ran the action, one line per run.
    fn runs(&self) -> Vec<String> {
        read_lines(&self.runs)
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

async fn wait_joined(admin: SocketAddr, nodes: usize) {
    poll_until(Duration::from_secs(10), Duration::from_millis(50), "the replica joins the group", || async {
        let s = status(admin).await;
        s["cluster"]["state"] == "shared"
            && s["upstreams"]["api"]["maintenance"]["group"]["replicas"].as_array().map_or(0, Vec::len)
                == nodes
    })
    .await;
}

async fn maintenance(admin: SocketAddr) -> serde_json::Value {
    status(admin).await["upstreams"]["api"]["maintenance"].clone()
}

/// Waits until the replica is back to serving after a cycle, and returns its view.
async fn wait_cycle_done(admin: SocketAddr, cycles: u64, limit: Duration) -> serde_json::Value {
    wait_maintenance(admin, "api", limit, "the cycle to end", |v| {
        v["phase"] == "serving" && v["cycles"].as_u64() >= Some(cycles) && v["last_cycle"].is_object()
    })
    .await
}

/// `rate` blocking runs a second to `addr` for `seconds`; clients wait up to 60 s.
fn load(addr: SocketAddr, rate: f64, seconds: u64) -> tokio::task::JoinHandle<Report> {
    let mut shot = workflow("app-groupcycle00000000000000");
    shot.headers.push(("x-sim-service-time".into(), "300ms".into()));
    tokio::spawn(open_loop(addr, rate, Duration::from_secs(seconds), Duration::from_secs(60), shot))
}

fn failures(report: &Report) -> Vec<String> {
    report
        .outcomes
        .iter()
        .filter(|o| o.status != Some(200))
        .map(|o| format!("{:?} {:?} {:?}", o.status, o.code, o.error))
        .collect()
}

/// "through a: N requests, F failed; through b: …" for the two replicas' loads.
fn through_both(ra: &Report, rb: &Report) -> String {
    format!(
        "through a: {} requests, {} failed; through b: {} requests, {} failed",
        ra.sent(),
        failures(ra).len(),
        rb.sent(),
        failures(rb).len()
    )
}

fn assert_none_failed(ra: &Report, rb: &Report) {
    let (fa, fb) = (failures(ra), failures(rb));
    assert!(fa.is_empty() && fb.is_empty(), "a: {fa:?}\nb: {fb:?}");
}

/// A 6-field cron expression (UTC) for `secs` seconds from now.
fn cron_in(secs: i64) -> String {
    let at = Utc::now() + chrono::Duration::seconds(secs);
    format!("{} {} {} * * *", at.second(), at.minute(), at.hour())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_cycle_runs_its_action_once_for_two_replicas_under_load() {
    let _machine = common::exclusive().await;
    let setup = Setup::start().await;
    let redis = RedisServer::start().await;
    let cron = cron_in(7);
    let a = ProxyProcess::start(&setup.config(&redis.url(), "a", Some(&cron))).await;
    let b = ProxyProcess::start(&setup.config(&redis.url(), "b", Some(&cron))).await;
    wait_joined(a.admin, 2).await;
    wait_joined(b.admin, 2).await;

    let (la, lb) = (load(a.addr, 3.0, 16), load(b.addr, 3.0, 16));
    // Both replicas hold together while the holder drains and restarts.
    let held =
        poll_until(Duration::from_secs(20), Duration::from_millis(50), "both replicas hold", || async {
            let (va, vb) = (maintenance(a.admin).await, maintenance(b.admin).await);
            va["held"] == true && vb["held"] == true
        });
    held.await;
    let (ra, rb) = (la.await.expect("load a"), lb.await.expect("load b"));
    let (va, vb) = (
        wait_cycle_done(a.admin, 1, Duration::from_secs(40)).await,
        wait_cycle_done(b.admin, 1, Duration::from_secs(40)).await,
    );
    let runs = setup.runs();
    let restarted = |v: &serde_json::Value| v["history"].to_string().contains("\"to\":\"restarting\"");
    let holder = if restarted(&va) { "a" } else { "b" };
    println!(
        "scheduled cycle, two replicas: action ran {} time(s) ({runs:?}); {}; holder {holder}",
        runs.len(),
        through_both(&ra, &rb)
    );
    assert_eq!(runs.len(), 1, "the action ran once for the group: {runs:?}");
    assert_none_failed(&ra, &rb);
    for view in [&va, &vb] {
        assert_eq!(view["last_cycle"]["trigger"], "schedule", "{view:#}");
        assert_eq!(view["last_cycle"]["outcome"], "ok", "{view:#}");
        assert_eq!(view["group"]["role"], "alone", "the lease is handed back: {view:#}");
    }
    // Only the holder restarted; the other followed (held, then released with the holder).
    assert!(restarted(&va) != restarted(&vb), "exactly one replica ran the restart phase");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_cycle_is_taken_over_and_the_action_runs_once() {
    let _machine = common::exclusive().await;
    let setup = Setup::start().await;
    let redis = RedisServer::start().await;
    let b = ProxyProcess::start(&setup.config(&redis.url(), "b", None)).await;

    // 1. Killed while draining: a 6 s request in flight keeps the group draining.
    let a = ProxyProcess::start(&setup.config(&redis.url(), "a", None)).await;
    wait_joined(b.admin, 2).await;
    wait_joined(a.admin, 2).await;
    let lb = load(b.addr, 3.0, 18);
    let mut slow = workflow("app-groupcycle00000000000000");
    slow.headers.push(("x-sim-service-time".into(), "6s".into()));
    let long =
        tokio::spawn(open_loop(a.addr, 1.0, Duration::from_millis(500), Duration::from_secs(30), slow));
    poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        "the slow request is in flight",
        || async { maintenance(a.admin).await["in_flight"].as_u64() >= Some(1) },
    )
    .await;
    let (code, view) = admin_post(a.admin, "/upstreams/api/restart", None).await;
    assert_eq!(code, 202, "{view:#}");
    assert_eq!(view["group"]["role"], "holder", "{view:#}");
    wait_maintenance(b.admin, "api", Duration::from_secs(5), "b to follow", |v| {
        v["group"]["role"] == "follower" && v["held"] == true
    })
    .await;
    a.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = tokio::time::Instant::now();
    let took = wait_maintenance(b.admin, "api", Duration::from_secs(10), "b to take over", |v| {
        v["group"]["role"] == "holder"
    })
    .await;
    let takeover = killed.elapsed();
    assert_eq!(took["group"]["takeovers"], 1, "{took:#}");
    let vb = wait_cycle_done(b.admin, 1, Duration::from_secs(40)).await;
    let rb = lb.await.expect("load b");
    let _ = long.await;
    let runs = setup.runs();
    println!(
        "holder SIGKILLed while draining: b took over after {takeover:?}; action ran {} time(s) ({runs:?}); \
         through b: {} requests, {} failed",
        runs.len(),
        rb.sent(),
        failures(&rb).len()
    );
    assert_eq!(
        runs,
        vec!["b".to_string()],
        "the action had not begun: the replica taking over runs it, once"
    );
    assert!(failures(&rb).is_empty(), "{:?}", failures(&rb));
    assert_eq!(vb["last_cycle"]["outcome"], "ok", "{vb:#}");
    drop(a);

    // 2. Killed while its action runs: the replica taking over must not run it again.
    let a2 = ProxyProcess::start(&setup.config(&redis.url(), "a2", None)).await;
    wait_joined(a2.admin, 2).await;
    wait_joined(b.admin, 2).await;
    let lb = load(b.addr, 3.0, 16);
    let (code, view) = admin_post(a2.admin, "/upstreams/api/restart", None).await;
    assert_eq!(code, 202, "{view:#}");
    wait_maintenance(a2.admin, "api", Duration::from_secs(10), "a2 to run its action", |v| {
        v["phase"] == "restarting"
    })
    .await;
    poll_until(Duration::from_secs(5), Duration::from_millis(20), "the action logs its run", || async {
        setup.runs().len() == 2
    })
    .await;
    a2.signal(nix::sys::signal::Signal::SIGKILL);
    let took = wait_maintenance(b.admin, "api", Duration::from_secs(10), "b to take over", |v| {
        v["group"]["role"] == "holder"
    })
    .await;
    assert_eq!(took["group"]["takeovers"], 2, "{took:#}");
    let vb = wait_cycle_done(b.admin, 2, Duration::from_secs(40)).await;
    let rb = lb.await.expect("load b");
    let runs = setup.runs();
    println!(
        "holder SIGKILLed while its action ran: action ran {} time(s) in two cycles ({runs:?}); through b: {} requests, {} failed",
        runs.len(),
        rb.sent(),
        failures(&rb).len()
    );
    assert_eq!(runs, vec!["b".to_string(), "a2".to_string()], "the action that began is not run again");
    assert!(failures(&rb).is_empty(), "{:?}", failures(&rb));
    assert_eq!(vb["last_cycle"]["outcome"], "ok", "{vb:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_mid_cycle_each_replica_finishes_on_its_own() {
    let _machine = common::exclusive().await;
    let setup = Setup::start().await;
    let mut redis = RedisServer::start().await;
    let a = ProxyProcess::start(&setup.config(&redis.url(), "a", None)).await;
    let b = ProxyProcess::start(&setup.config(&redis.url(), "b", None)).await;
    wait_joined(a.admin, 2).await;
    wait_joined(b.admin, 2).await;
    let (la, lb) = (load(a.addr, 2.0, 16), load(b.addr, 2.0, 16));
    let (code, view) = admin_post(a.admin, "/upstreams/api/restart", None).await;
    assert_eq!(code, 202, "{view:#}");
    wait_maintenance(b.admin, "api", Duration::from_secs(5), "b to follow", |v| {
        v["group"]["role"] == "follower"
    })
    .await;
    wait_maintenance(a.admin, "api", Duration::from_secs(10), "a to run its action", |v| {
        v["phase"] == "restarting"
    })
    .await;
    redis.kill();
    let gone = tokio::time::Instant::now();
    let (va, vb) = (
        wait_cycle_done(a.admin, 1, Duration::from_secs(40)).await,
        wait_cycle_done(b.admin, 1, Duration::from_secs(40)).await,
    );
    let released = gone.elapsed();
    let (ra, rb) = (la.await.expect("load a"), lb.await.expect("load b"));
    let runs = setup.runs();
    println!(
        "Redis killed while the holder's action ran: both serving {released:?} later; action ran {} time(s); {}",
        runs.len(),
        through_both(&ra, &rb)
    );
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_none_failed(&ra, &rb);
    assert_eq!(va["last_cycle"]["outcome"], "ok", "{va:#}");
    assert_eq!(vb["last_cycle"]["outcome"], "ok", "the follower saw the restart and released: {vb:#}");
    // Redis back: the holder hands back the lease, and the group can start a cycle again.
    redis.start_again().await;
    wait_joined(a.admin, 2).await;
    wait_maintenance(a.admin, "api", Duration::from_secs(5), "the lease handed back", |v| {
        v["group"]["role"] == "alone"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_cycle_takes_each_server_out_of_every_replicas_rotation() {
    let _machine = common::exclusive().await;
    let args = ["--worker-connections", "4", "--service-time", "300ms", "--boot-delay", "2s"];
    let (s1, s2) = (SimProcess::start(&args).await, SimProcess::start(&args).await);
    let dir = tempfile::tempdir().expect("dir");
    for sim in [&s1, &s2] {
        sim.write_pid(&dir.path().join(format!("sim-{}.pid", sim.addr.port())));
    }
    let runs = dir.path().join("runs");
    let redis = RedisServer::start().await;
    let config = |node: &str| {
        format!(
            "[upstreams.api]\nservers = [\"{}\", \"{}\"]\n[upstreams.api.health]\ninterval = \"250ms\"\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n\
             [cluster]\nredis = \"{}\"\nnode = \"{node}\"\ncall_timeout = \"50ms\"\n\
             [[maintenance]]\nupstream = \"api\"\nmode = \"rolling\"\ndrain_timeout = \"10s\"\n\
             restart_timeout = \"5s\"\nrecover_timeout = \"30s\"\n\
             action = {{ kind = \"command\", command = \"echo {{server}} >> {}; kill -HUP $(cat {}/sim-{{port}}.pid)\" }}\n\
             [maintenance.health]\nsuccesses = 2\ninterval = \"200ms\"\n",
            s1.addr,
            s2.addr,
            redis.url(),
            runs.display(),
            dir.path().display()
        )
    };
    let a = ProxyProcess::start(&config("a")).await;
    let b = ProxyProcess::start(&config("b")).await;
    wait_joined(a.admin, 2).await;
    wait_joined(b.admin, 2).await;
    let (la, lb) = (load(a.addr, 3.0, 16), load(b.addr, 3.0, 16));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, view) = admin_post(a.admin, "/upstreams/api/restart", None).await;
    assert_eq!(code, 202, "{view:#}");
    // While a server restarts, the follower keeps it out of rotation too.
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        "b to drain the server being restarted",
        || async {
            let api = status(b.admin).await["upstreams"]["api"].clone();
            let view = &api["maintenance"];
            let target = view["group"]["cycle"]["target"].as_str().unwrap_or("-").to_string();
            let drained: Vec<String> = api["health"].as_array().map_or(vec![], |h| {
                h.iter()
                    .filter(|e| e["drained"] == true)
                    .filter_map(|e| e["addr"].as_str().map(str::to_string))
                    .collect()
            });
            view["group"]["role"] == "follower" && drained == vec![target]
        },
    )
    .await;
    let va = wait_cycle_done(a.admin, 1, Duration::from_secs(60)).await;
    let (ra, rb) = (la.await.expect("load a"), lb.await.expect("load b"));
    let restarted = read_lines(&runs);
    let longest = ra.percentile(1.0).max(rb.percentile(1.0)).unwrap_or_default();
    println!(
        "rolling cycle, two replicas, two servers: action ran for {restarted:?}; {}; longest {longest:?}",
        through_both(&ra, &rb)
    );
    assert_eq!(restarted.len(), 2, "each server restarted once: {restarted:?}");
    assert_none_failed(&ra, &rb);
    assert_eq!(va["last_cycle"]["outcome"], "ok", "{va:#}");
    // Nobody is held for a server's 2 s boot: the other server carries the load.
    assert!(longest < Duration::from_millis(1800), "someone waited: {longest:?}");
}
