//! Requests arriving while the backend is down are held, not failed, and
//! reach it exactly once when it is back (connect refusals are retried: nothing was sent).

use crate::common;

use std::time::Duration;

use common::*;
use dify_shaper_tools::sim::{ServiceTime, SimConfig, Simulator};
use tokio::time::Instant;

const RUN: &str = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_an_outage_are_held_and_served_once_it_is_back() {
    let _machine = crate::common::shared().await;
    let config = SimConfig {
        worker_connections: 4,
        service_time: ServiceTime::Fixed(Duration::from_millis(200)),
        ..SimConfig::default()
    };
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), config).await.expect("sim");
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    assert_eq!(post_json(proxy.addr, "/v1/workflows/run", RUN, &[]).await.0, 200);

    // The backend goes away (a restarting container), without telling the proxy.
    sim.stop().await;
    let started = Instant::now();
    let mut requests = Vec::new();
    for i in 0..10 {
        let addr = proxy.addr;
        let id = format!("held-{i}");
        requests.push(tokio::spawn(async move {
            let answer = post_json(addr, "/v1/workflows/run", RUN, &[("x-request-id", id.as_str())]).await;
            (id, answer)
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The proxy notices (a refused connect or a failed probe) and holds instead of failing.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, body) = get(proxy.admin, "/status").await;
        if json(&body)["upstreams"]["api"]["admission"]["available"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "the outage was never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ready all the same: a load balancer that dropped the proxy now would fail the very
    // requests it is holding. The backend's state is on /upstreams.
    let (ready, _, body) = get(proxy.admin, "/ready").await;
    assert_eq!(
        ready,
        200,
        "ready while holding requests for a down backend: {}",
        String::from_utf8_lossy(&body)
    );
    let (upstreams, _, _) = get(proxy.admin, "/upstreams").await;
    assert_eq!(upstreams, 503, "/upstreams says the only upstream is down");

    // Back after a 2 s boot.
    sim.restart(Duration::from_secs(2)).await;
    for request in requests {
        let (id, (status, _, body)) = request.await.expect("join");
        assert_eq!(status, 200, "{id}: {}", String::from_utf8_lossy(&body));
        assert_eq!(sim.count_for_request_id(&id), 1, "{id} reached the backend exactly once");
    }
    let outage = started.elapsed();
    assert!(outage >= Duration::from_secs(2), "answered before the backend was back? {outage:?}");
    let (ready, _, _) = get(proxy.admin, "/ready").await;
    assert_eq!(ready, 200);
    let (upstreams, _, _) = get(proxy.admin, "/upstreams").await;
    assert_eq!(upstreams, 200);
}

/// Load at ~50 % of capacity while the backend restarts gracefully (like `docker restart` of
/// gunicorn) with a 3 s boot, without telling the proxy; returns the load report and the
/// backend's run count.
async fn restart_under_load(through_proxy: bool) -> (common::load::Report, u64) {
    use common::load::{open_loop, workflow};
    let config = SimConfig {
        worker_connections: 4,
        service_time: ServiceTime::Fixed(Duration::from_millis(500)),
        ..SimConfig::default()
    };
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), config).await.expect("sim");
    let proxy = if through_proxy { Some(ProxyProcess::start_default(sim.addr()).await) } else { None };
    let target = proxy.as_ref().map_or(sim.addr(), |p| p.addr);
    // Capacity 4 × 500 ms = 8/s; offered 4/s for 16 s; clients wait up to 30 s.
    let load = tokio::spawn(open_loop(
        target,
        4.0,
        Duration::from_secs(16),
        Duration::from_secs(30),
        workflow("app-restartrestartrest1"),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    sim.restart_graceful(Duration::from_secs(10), Duration::from_secs(3)).await;
    let report = load.await.expect("load");
    let runs = sim.stats().runs_by_path.get("/v1/workflows/run").copied().unwrap_or(0);
    (report, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncoordinated_restart_under_load_costs_no_request() {
    let _machine = crate::common::shared().await;
    let (direct, _) = restart_under_load(false).await;
    let (shaped, runs) = restart_under_load(true).await;
    let longest = shaped.percentile(1.0).unwrap_or_default();
    eprintln!(
        "direct {:?}; through dify-shaper {:?}, longest {longest:?}, backend runs {runs}",
        direct.by_status(),
        shaped.by_status()
    );
    assert_eq!(shaped.ok(), shaped.sent(), "non-2xx through the proxy: {:?}", shaped.by_status());
    assert_eq!(runs, shaped.sent() as u64, "every request ran exactly once");
    assert!(longest >= Duration::from_secs(2), "someone was held through the 3 s boot: {longest:?}");
    assert!(direct.ok() < direct.sent(), "direct access saw no error: {:?}", direct.by_status());
}
