//! Safe retries. A 503 or Dify's 429 proves the run was not processed, so even
//! a POST is retried; a 500 after processing is not; and retries stay within the budget when
//! the backend answers 503 to everything.

mod common;

use common::*;
use dify_shaper::sim::{SimConfig, Simulator};

const RUN: &str = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;

async fn setup() -> (Simulator, ProxyProcess) {
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    (sim, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_answered_503_or_429_is_retried_and_then_served() {
    let (sim, proxy) = setup().await;
    for (status, id) in [("503", "busy-503"), ("429", "busy-429")] {
        let headers = [("x-request-id", id), ("x-sim-fail", status), ("x-sim-fail-first", "1")];
        let (code, _, body) = post_json(proxy.addr, "/v1/workflows/run", RUN, &headers).await;
        assert_eq!(code, 200, "{status}: {}", String::from_utf8_lossy(&body));
        assert_eq!(sim.count_for_request_id(id), 2, "{status}: one refused attempt, one served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_failed_after_processing_is_not_retried() {
    let (sim, proxy) = setup().await;
    let headers = [("x-request-id", "failed-500"), ("x-sim-fail", "500"), ("x-sim-fail-first", "1")];
    let (code, _, _) = post_json(proxy.addr, "/v1/workflows/run", RUN, &headers).await;
    assert_eq!(code, 500, "the backend's own 500 is passed on");
    assert_eq!(sim.count_for_request_id("failed-500"), 1, "never run twice");
    let headers = [("x-request-id", "reset-1"), ("x-sim-fail", "reset"), ("x-sim-fail-first", "1")];
    let (code, _, body) = post_json(proxy.addr, "/v1/workflows/run", RUN, &headers).await;
    assert_eq!(code, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(sim.count_for_request_id("reset-1"), 1, "a reset after sending is not retried for POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_everything_fails() {
    let (sim, proxy) = setup().await;
    let requests = 60u64;
    for i in 0..requests {
        let id = format!("always-{i}");
        let headers = [("x-request-id", id.as_str()), ("x-sim-fail", "503")];
        let (code, _, _) = post_json(proxy.addr, "/v1/workflows/run", RUN, &headers).await;
        assert_eq!(code, 503);
    }
    let attempts: u64 = (0..requests).map(|i| sim.count_for_request_id(&format!("always-{i}"))).sum();
    let retries = attempts - requests;
    eprintln!("{requests} requests, {attempts} upstream attempts ({retries} retries)");
    // Budget: 3 per 10 s window plus 20 % of requests.
    assert!(retries as f64 <= 3.0 + 0.2 * requests as f64, "{retries} retries for {requests} requests");
    assert!(retries > 0, "no retry at all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_keep_alive_connection_after_a_backend_restart_is_retried_transparently() {
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    let config = format!(
        "[upstreams.api]\nservers = [\"{}\"]\nkeepalive = \"60s\"\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n",
        sim.addr()
    );
    let proxy = ProxyProcess::start(&config).await;
    // Fill the pool with a few keep-alive connections, then restart the backend under them.
    for i in 0..3 {
        let id = format!("before-{i}");
        assert_eq!(
            post_json(proxy.addr, "/v1/workflows/run", RUN, &[("x-request-id", id.as_str())]).await.0,
            200
        );
    }
    sim.restart(std::time::Duration::ZERO).await;
    sim.wait_serving().await;
    for i in 0..3 {
        let id = format!("after-{i}");
        let (code, _, body) =
            post_json(proxy.addr, "/v1/workflows/run", RUN, &[("x-request-id", id.as_str())]).await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(sim.count_for_request_id(&id), 1, "{id} ran exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_and_opted_in_routes_are_retried_after_possible_processing() {
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    let config = format!(
        "[upstreams.api]\nservers = [\"{}\"]\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"api\"\n\
         [[routes]]\nprefix = \"/v1/completion-messages\"\nupstream = \"api\"\nclass = \"run\"\nretry_after_processing = true\n",
        sim.addr()
    );
    let proxy = ProxyProcess::start(&config).await;
    // A GET that met a 502, then a reset: retried, served.
    for (fault, id) in [("502", "get-502"), ("reset", "get-reset")] {
        let req = request("GET", proxy.addr, "/v1/parameters")
            .header("x-request-id", id)
            .header("x-sim-fail", fault)
            .header("x-sim-fail-first", "1")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let (code, _, body) = fetch(proxy.addr, req).await;
        assert_eq!(code, 200, "{fault}: {}", String::from_utf8_lossy(&body));
        assert_eq!(sim.count_for_request_id(id), 2, "{fault}");
    }
    // A POST on a route that opted in: retried after a 500.
    let headers = [("x-request-id", "optin-500"), ("x-sim-fail", "500"), ("x-sim-fail-first", "1")];
    let body = r#"{"inputs":{},"query":"q","response_mode":"blocking","user":"u"}"#;
    let (code, _, _) = post_json(proxy.addr, "/v1/completion-messages", body, &headers).await;
    assert_eq!(code, 200);
    assert_eq!(sim.count_for_request_id("optin-500"), 2);
    // The same on a route that did not opt in: not retried.
    let headers = [("x-request-id", "plain-500"), ("x-sim-fail", "500"), ("x-sim-fail-first", "1")];
    let (code, _, _) = post_json(proxy.addr, "/v1/workflows/run", RUN, &headers).await;
    assert_eq!(code, 500);
    assert_eq!(sim.count_for_request_id("plain-500"), 1);
}
