//! Safe retries. A 503, Dify's 429, Dify's generic unhandled-error 500 or a reset before the
//! backend read the request proves the run was not processed, so even a POST is retried; any
//! other 500 or a close after processing is not;
//! and retries stay within the budget when the backend answers 503 to everything.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use dify_shaper_tools::sim::{SimConfig, Simulator};

const RUN: &str = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;

async fn setup() -> (Simulator, ProxyProcess) {
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    (sim, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_answered_503_or_429_is_retried_and_then_served() {
    let _machine = crate::common::shared().await;
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
    let _machine = crate::common::shared().await;
    let (sim, proxy) = setup().await;
    let headers = [("x-request-id", "failed-500"), ("x-sim-fail", "500"), ("x-sim-fail-first", "1")];
    let (code, _, _) = post_json(proxy.addr, "/v1/workflows/run", RUN, &headers).await;
    assert_eq!(code, 500, "the backend's own 500 is passed on");
    assert_eq!(sim.count_for_request_id("failed-500"), 1, "never run twice");
    // The backend read the request, then closed without answering (a worker that died
    // mid-run): it may have run, so a POST is not replayed.
    let headers = [("x-request-id", "closed-1"), ("x-sim-fail", "close"), ("x-sim-fail-first", "1")];
    let (code, _, body) = post_json(proxy.addr, "/v1/workflows/run", RUN, &headers).await;
    assert_eq!(code, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(sim.count_for_request_id("closed-1"), 1, "a close after reading is not retried for POST");
}

/// A backend that resets the first connection carrying a POST without reading it (SO_LINGER
/// 0: what a closing listener does to the connections in its backlog), and answers every other
/// request (health probes included). Returns its address and how many POSTs it saw.
async fn resets_first_post() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let posts = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&posts);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                // Look at the method without consuming anything: the reset must find the
                // request unread.
                let mut method = [0u8; 4];
                loop {
                    match stream.peek(&mut method).await {
                        Ok(4) => break,
                        Ok(0) | Err(_) => return,
                        Ok(_) => tokio::task::yield_now().await,
                    }
                }
                if &method == b"POST" && count.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Linger 0: close with a reset (it never blocks, unlike a non-zero linger).
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
                    return;
                }
                answer_once(stream).await;
            });
        }
    });
    (addr, posts)
}

/// Reads one request (head and `Content-Length` body) and answers 200 with a small JSON body.
async fn answer_once(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                break;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let body = r#"{"result":"served"}"#;
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_reset_before_the_backend_read_it_is_replayed() {
    let _machine = crate::common::shared().await;
    // A TCP reset with the request unread (a restarting gunicorn closing its backlog): the
    // backend cannot have run it, so even a POST is replayed, and served.
    let (backend, posts) = resets_first_post().await;
    let config = format!(
        "[upstreams.api]\nservers = [\"{backend}\"]\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n"
    );
    let proxy = ProxyProcess::start(&config).await;
    let (code, _, body) = post_json(proxy.addr, "/v1/workflows/run", RUN, &[]).await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["result"], "served");
    assert_eq!(posts.load(Ordering::SeqCst), 2, "one reset attempt, one served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dify_unhandled_error_alone_in_flight_is_replayed_and_a_persistent_one_passes_after_the_retries() {
    let _machine = crate::common::shared().await;
    let (sim, proxy) = setup().await;
    // Alone in flight the limiter cannot blame the level for a 500, but Dify's generic
    // unhandled-error answer (its answer when PostgreSQL refuses a connection) ran nothing.
    let headers =
        [("x-request-id", "unhandled-once"), ("x-sim-fail", "unhandled"), ("x-sim-fail-first", "1")];
    let (code, _, body) = post_json(proxy.addr, "/v1/workflows/run", RUN, &headers).await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(sim.count_for_request_id("unhandled-once"), 2, "one refused attempt, one served");
    // The same answer to every attempt: replayed up to `max_retries` (2), then passed on as
    // Dify gave it — the request's own failure, not a busy backend to turn into a 503.
    let headers = [("x-request-id", "unhandled-always"), ("x-sim-fail", "unhandled")];
    let (code, _, body) = post_json(proxy.addr, "/v1/workflows/run", RUN, &headers).await;
    assert_eq!(code, 500, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, dify_shaper_tools::sim::DIFY_UNHANDLED_ERROR.as_bytes());
    assert_eq!(sim.count_for_request_id("unhandled-always"), 3, "the first attempt and two retries");
    // Any other 500 still passes at once: it may have run.
    let headers = [("x-request-id", "own-500"), ("x-sim-fail", "500"), ("x-sim-fail-first", "1")];
    let (code, _, _) = post_json(proxy.addr, "/v1/workflows/run", RUN, &headers).await;
    assert_eq!(code, 500);
    assert_eq!(sim.count_for_request_id("own-500"), 1, "never run twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_everything_fails() {
    let _machine = crate::common::shared().await;
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
    let _machine = crate::common::shared().await;
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
    let _machine = crate::common::shared().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_for_lack_of_database_connections_is_replayed_never_answered_500() {
    let _machine = crate::common::shared().await;
    // PostgreSQL takes 2 connections and the proxy starts at a limit of 6: its first burst
    // meets the database's limit, and those requests get the 500 Dify answers then (its
    // generic envelope, raised in the API-key check: nothing ran).
    let config = SimConfig {
        worker_connections: 16,
        db_connections: Some(2),
        service_time: dify_shaper_tools::sim::ServiceTime::Fixed(std::time::Duration::from_millis(400)),
        ..SimConfig::default()
    };
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), config).await.expect("sim");
    let proxy = ProxyProcess::start(&format!(
        "[upstreams.api]\nservers = [\"{}\"]\n[upstreams.api.admission]\ninitial_limit = 6\n\
         [upstreams.api.health]\nenabled = false\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n",
        sim.addr()
    ))
    .await;
    let addr = proxy.addr;
    let burst: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(async move {
                let id = format!("db-refused-{i}");
                let headers = [("x-request-id", id.as_str())];
                post_json(addr, "/v1/workflows/run", RUN, &headers).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for answer in burst {
        let (status, _, body) = answer.await.expect("task");
        if status == 503 {
            assert_eq!(json(&body)["code"], "server_busy", "{}", String::from_utf8_lossy(&body));
        }
        statuses.push(status.as_u16());
    }
    let stats = sim.stats();
    let ok = statuses.iter().filter(|s| **s == 200).count() as u64;
    let attempts = stats.requests_by_path.get("/v1/workflows/run").copied().unwrap_or(0);
    let runs = stats.runs_by_path.get("/v1/workflows/run").copied().unwrap_or(0);
    eprintln!("statuses {statuses:?}; backend: {attempts} attempts, {runs} runs, {:?}", stats.by_status);
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "no 500 reaches a client: {statuses:?}");
    assert!(stats.by_status.get(&500).is_some_and(|n| *n > 0), "the burst met the database limit");
    assert!(attempts > 6, "refused requests were replayed: {attempts} attempts for 6 requests");
    assert_eq!(runs, ok, "every run answered once, none run twice");
}
