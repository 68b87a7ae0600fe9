//! The proxy is transparent for Dify traffic. Each test starts its own simulator and
//! proxy on ephemeral 127.0.0.1 ports.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use dify_shaper_tools::sim::{SimConfig, Simulator};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

async fn sim() -> Simulator {
    Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("simulator")
}

const WORKFLOW_BLOCKING: &str = r#"{"inputs":{"q":"hi"},"response_mode":"blocking","user":"u1"}"#;
const WORKFLOW_STREAMING: &str = r#"{"inputs":{"q":"hi"},"response_mode":"streaming","user":"u1"}"#;
const CHAT_STREAMING: &str = r#"{"inputs":{},"query":"hello","response_mode":"streaming","user":"u1"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_and_streaming_responses_are_byte_identical() {
    let _machine = crate::common::shared().await;
    let sim = sim().await;
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    let cases = [
        ("/v1/workflows/run", WORKFLOW_BLOCKING),
        ("/v1/chat-messages", r#"{"inputs":{},"query":"hello","response_mode":"blocking","user":"u1"}"#),
        ("/v1/workflows/run", WORKFLOW_STREAMING),
        ("/v1/chat-messages", CHAT_STREAMING),
    ];
    for (i, (path, body)) in cases.into_iter().enumerate() {
        let id = format!("identical-{i}");
        let headers = [
            ("x-request-id", id.as_str()),
            ("authorization", "Bearer app-identical0000000000"),
            ("x-sim-service-time", "300ms"),
        ];
        let direct = post_json(sim.addr(), path, body, &headers).await;
        let proxied = post_json(proxy.addr, path, body, &headers).await;
        assert_eq!(direct.0, 200, "{path}: {:?}", direct.2);
        assert_eq!(proxied.0, direct.0, "{path}");
        assert_eq!(proxied.1.get("content-type"), direct.1.get("content-type"), "{path}");
        assert!(!proxied.2.is_empty());
        assert_eq!(proxied.2, direct.2, "{path} body differs through the proxy");
        assert_eq!(proxied.1.get("x-request-id").map(|v| v.as_bytes()), Some(id.as_bytes()));
        assert!(proxied.1.get("content-encoding").is_none(), "never compressed");
    }
}

/// Reads an SSE body and returns each event's arrival time (complete `\n\n`-terminated frames).
async fn event_arrivals(addr: std::net::SocketAddr, id: &str) -> Vec<(Instant, String)> {
    let req = request("POST", addr, "/v1/workflows/run")
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .header("x-sim-service-time", "1200ms")
        .header("x-sim-events", "3")
        .body(Full::new(Bytes::from_static(WORKFLOW_STREAMING.as_bytes())))
        .expect("request");
    let response = send(addr, req).await.expect("response");
    assert_eq!(response.status(), 200);
    let mut reader = common::sse::SseReader::new(response.into_body());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut events = Vec::new();
    while let Some(event) = reader.next(deadline).await.expect("stream ends in time") {
        events.push(event);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_as_the_backend_sends_them() {
    let _machine = crate::common::shared().await;
    let sim = sim().await;
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    // The same stream, direct and through the proxy, at the same time: the sim spaces the
    // 8 events (started, 3 × node started/finished, finished) 200 ms apart.
    let (direct, proxied) =
        tokio::join!(event_arrivals(sim.addr(), "sse-direct"), event_arrivals(proxy.addr, "sse-proxied"));
    assert!(direct.len() >= 5, "direct events: {direct:?}");
    assert_eq!(direct.len(), proxied.len(), "same number of events");
    let t0_direct = direct[0].0;
    let t0_proxied = proxied[0].0;
    for (i, ((td, ed), (tp, ep))) in direct.iter().zip(&proxied).enumerate() {
        let event_name =
            |e: &str| e.split("\"event\":\"").nth(1).and_then(|s| s.split('"').next()).map(str::to_string);
        assert_eq!(event_name(ed), event_name(ep), "event {i} differs");
        let offset_direct = td.duration_since(t0_direct).as_secs_f64();
        let offset_proxied = tp.duration_since(t0_proxied).as_secs_f64();
        assert!(
            (offset_direct - offset_proxied).abs() < 0.050,
            "event {i} arrived {:.1} ms later/earlier through the proxy than direct",
            (offset_proxied - offset_direct) * 1e3
        );
    }
    let span = proxied.last().map(|(t, _)| t.duration_since(t0_proxied)).unwrap_or_default();
    assert!(span > Duration::from_millis(900), "events were coalesced: all arrived within {span:?}");
}

/// Sends `GET /sim/echo` as a client from 127.0.0.1 claiming `X-Forwarded-For: 203.0.113.7`
/// (and, to Dify, `X-Real-IP`/`CF-Connecting-IP`); returns the response's `X-Request-Id`, the
/// backend's echo, and every `X-Forwarded-For` line the backend received.
async fn echo_with_forwarded_for(proxy: &ProxyProcess) -> (String, serde_json::Value, Vec<String>) {
    let req = http::Request::builder()
        .uri("/sim/echo?x=1")
        .header("host", "dify.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-real-ip", "203.0.113.8")
        .header("cf-connecting-ip", "203.0.113.9")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (status, headers, body) = fetch(proxy.addr, req).await;
    assert_eq!(status, 200);
    let echo = json(&body);
    let xff = echo["header_list"]
        .as_array()
        .expect("header_list")
        .iter()
        .filter(|pair| pair[0] == "x-forwarded-for")
        .filter_map(|pair| pair[1].as_str().map(str::to_string))
        .collect();
    let id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).expect("x-request-id").to_string();
    (id, echo, xff)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_host_and_request_id() {
    let _machine = crate::common::shared().await;
    let sim = sim().await;
    // Default (`trusted`, loopback trusted): a proxy in front on 127.0.0.1 — Dify's nginx in
    // the sidecar setup — has its X-Forwarded-For passed through exactly, so Dify (which takes
    // the first line whole) stores the client's IP and not "client, hop".
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    let (generated, echo, xff) = echo_with_forwarded_for(&proxy).await;
    let header = |name: &str| echo["headers"][name].as_str().map(str::to_string);
    assert_eq!(xff, ["203.0.113.7"], "{echo}");
    assert_eq!(header("x-real-ip").as_deref(), Some("203.0.113.8"), "a trusted peer's headers pass");
    assert_eq!(header("host").as_deref(), Some("dify.example.com"), "{echo}");
    assert_eq!(header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(header("x-forwarded-host").as_deref(), Some("dify.example.com"));
    assert_eq!(generated.len(), 32);
    assert_eq!(header("x-request-id").as_deref(), Some(generated.as_str()), "the backend saw the same id");
    drop(proxy);

    let config = |server: &str| {
        format!(
            "[server]\n{server}\n[upstreams.api]\nservers = [\"{}\"]\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n",
            sim.addr()
        )
    };
    // Nobody trusted: the same request is a client speaking for itself, so what it claims is
    // replaced by the address it connected from, and Dify's preferred headers are dropped.
    let proxy = ProxyProcess::start(&config("trusted_proxies = []")).await;
    let (_, echo, xff) = echo_with_forwarded_for(&proxy).await;
    assert_eq!(xff, ["127.0.0.1"], "{echo}");
    assert!(echo["headers"]["x-real-ip"].is_null(), "{echo}");
    assert!(echo["headers"]["cf-connecting-ip"].is_null(), "{echo}");
    drop(proxy);

    // `append`: the classic chain, for backends that parse the list themselves.
    let proxy = ProxyProcess::start(&config("forwarding = \"append\"")).await;
    let (_, echo, xff) = echo_with_forwarded_for(&proxy).await;
    assert_eq!(xff, ["203.0.113.7, 127.0.0.1"], "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_an_upstream_unavailable_envelope() {
    let _machine = crate::common::shared().await;
    // Nothing listens: the request is held for its class's queue deadline (1 s here), then
    // answered 503 upstream_unavailable with Retry-After (requests are held while it is down).
    let (_reserved, nothing_there) = closed_port();
    let config = format!(
        "[upstreams.api]\nservers = [\"{nothing_there}\"]\n[classes.run]\nqueue_timeout = \"1s\"\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n"
    );
    let proxy = ProxyProcess::start(&config).await;
    let (status, headers, body) =
        post_json(proxy.addr, "/v1/workflows/run", WORKFLOW_BLOCKING, &[("x-request-id", "down-1")]).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers.get("content-type").map(|v| v.as_bytes()), Some(&b"application/json"[..]));
    assert_eq!(headers.get("x-request-id").map(|v| v.as_bytes()), Some(&b"down-1"[..]));
    assert!(headers.contains_key("retry-after"));
    let envelope = json(&body);
    assert_eq!(envelope["code"], "upstream_unavailable");
    assert_eq!(envelope["status"], 503);
    assert!(envelope["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_dies_mid_request_gives_a_502_envelope() {
    let _machine = crate::common::shared().await;
    // The run reached the backend, which then died: not retried (it may have run), 502.
    let sim = sim().await;
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    let addr = proxy.addr;
    let run = tokio::spawn(async move {
        post_json(
            addr,
            "/v1/workflows/run",
            WORKFLOW_BLOCKING,
            &[("x-request-id", "dies-1"), ("x-sim-service-time", "20s")],
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.count_for_request_id("dies-1") == 0 {
        assert!(Instant::now() < deadline, "the run never reached the backend");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.stop().await;
    let (status, headers, body) = run.await.expect("join");
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers.get("x-request-id").map(|v| v.as_bytes()), Some(&b"dies-1"[..]));
    assert_eq!(json(&body)["code"], "upstream_lost");
    assert_eq!(sim.count_for_request_id("dies-1"), 1, "a POST that reached the backend is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_unrouted_paths_get_envelopes() {
    let _machine = crate::common::shared().await;
    let sim = sim().await;
    let config = format!(
        "[server]\nmax_request_body = \"1KiB\"\n[upstreams.api]\nservers = [\"{}\"]\n[[routes]]\nprefix = \"/v1\"\nupstream = \"api\"\n",
        sim.addr()
    );
    let proxy = ProxyProcess::start(&config).await;
    let big = "x".repeat(4096);
    let (status, headers, body) = post_json(proxy.addr, "/v1/files/upload", &big, &[]).await;
    assert_eq!(status, 413);
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(json(&body)["code"], "payload_too_large");

    // A chunked body (no Content-Length) is counted as it streams.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![b'y'; 1024])))),
    );
    let req = request("POST", proxy.addr, "/v1/files/upload")
        .body(http_body_util::StreamBody::new(chunks))
        .expect("request");
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let response = sender.send_request(req).await.expect("response");
    assert_eq!(response.status(), 413);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(json(&body)["code"], "payload_too_large");

    let (status, _, body) = get(proxy.addr, "/console/api/ping").await;
    assert_eq!(status, 404);
    assert_eq!(json(&body)["code"], "not_found");
}

/// Sends 30 requests over one client connection; returns how many upstream connections the
/// backend accepted meanwhile.
async fn upstream_connections_for_30_requests(proxy: &ProxyProcess, sim: &Simulator) -> u64 {
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let before = sim.stats().accepted_connections;
    for i in 0..30 {
        let req = request("GET", proxy.addr, "/sim/fast").body(Full::new(Bytes::new())).expect("request");
        if let Err(e) = sender.ready().await {
            panic!("the client connection closed after {i} requests ({e}):\n{}", proxy.logs());
        }
        let response = sender.send_request(req).await.expect("one client connection serves all 30");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.expect("body");
    }
    sim.stats().accepted_connections - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keep_alive_and_upstream_connection_policy() {
    let _machine = crate::common::shared().await;
    // Every connection the backend accepts is one the proxy opened: it does not close idle
    // ones (gunicorn's `keepalive`, 2 s in the sim) during the test, so a stall cannot force a
    // legitimate new connection, and health probes (which would add their own) are off.
    let sim_config = SimConfig { keepalive_timeout: Duration::from_secs(3600), ..SimConfig::default() };
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), sim_config).await.expect("simulator");
    let config = |keepalive: &str| {
        format!(
            "[upstreams.api]\nservers = [\"{}\"]\n{keepalive}[upstreams.api.health]\nenabled = false\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"api\"\n",
            sim.addr()
        )
    };
    // Default: like Dify's nginx, a connection per request upstream (`Connection: close`),
    // so no idle connection holds a gunicorn worker slot; the client side stays keep-alive.
    let proxy = ProxyProcess::start(&config("")).await;
    assert_eq!(upstream_connections_for_30_requests(&proxy, &sim).await, 30);
    // With `keepalive` set, upstream connections are reused too: one for all 30 requests, not
    // one per worker thread. pingora's keep-alive pool is one per process, shared by all
    // worker threads, and a client connection's next request is only read once the previous
    // one has returned its upstream connection to the pool, so each request finds it idle.
    // (pingora 0.9.1 lost it now and then to a race with the pool's idle watcher on another
    // thread, cloudflare/pingora#998, logging "failed to acquire reusable stream"; fixed in
    // vendor/pingora-core.)
    let reusing = ProxyProcess::start(&config("keepalive = \"30s\"\n")).await;
    let opened = upstream_connections_for_30_requests(&reusing, &sim).await;
    let logs = reusing.logs();
    let pool_lines: Vec<&str> = logs.lines().filter(|l| l.contains("reusable")).collect();
    assert_eq!(
        opened,
        1,
        "30 sequential requests opened {opened} upstream connections:\n{}",
        pool_lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let _machine = crate::common::shared().await;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let sim = sim().await;
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", proxy.addr);
    let (mut ws, response) =
        tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(url, stream))
            .await
            .expect("handshake in time")
            .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    for i in 0..5 {
        let text = format!("hello {i}");
        ws.send(Message::Text(text.clone())).await.expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("echo in time");
        assert_eq!(echoed.expect("message").expect("ok"), Message::Text(text));
    }
    ws.send(Message::Binary(vec![1, 2, 3])).await.expect("send binary");
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("echo in time");
    assert_eq!(echoed.expect("message").expect("ok"), Message::Binary(vec![1, 2, 3]));
    ws.close(None).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_json_with_redacted_key() {
    let _machine = crate::common::shared().await;
    let sim = sim().await;
    let config = format!(
        "[log]\nformat = \"json\"\n[upstreams.api]\nservers = [\"{}\"]\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n",
        sim.addr()
    );
    let proxy = ProxyProcess::start(&config).await;
    let key = "app-SECRETsecretSECRET9f3a";
    let (status, _, _) = post_json(
        proxy.addr,
        "/v1/workflows/run?user=alice",
        WORKFLOW_BLOCKING,
        &[("authorization", &format!("Bearer {key}")), ("x-request-id", "log-1")],
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let logs = proxy.logs();
        if let Some(line) = logs.lines().find(|l| l.contains("\"id\":\"log-1\"")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no access log line:\n{logs}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let entry: serde_json::Value = serde_json::from_str(&line).expect("access log is JSON");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["route"], "/");
    assert_eq!(entry["path"], "/v1/workflows/run?user");
    assert_eq!(entry["tenant"], "app-…9f3a");
    assert!(entry["total_ms"].as_f64().is_some_and(|t| t > 0.0));
    assert!(!proxy.logs().contains("SECRETsecret"), "the app key leaked into the log");
    assert!(!proxy.logs().contains("alice"), "a query value leaked into the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_gets_the_go_ahead_before_the_body_is_sent() {
    let _machine = crate::common::shared().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = sim().await;
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!(
        "POST /v1/workflows/run HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        proxy.addr,
        WORKFLOW_BLOCKING.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    // The client sends nothing more until it hears "100 Continue" (from the backend, relayed).
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an interim response while the body is held back")
            .expect("read");
        assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 100"), "{}", String::from_utf8_lossy(&seen));
    stream.write_all(WORKFLOW_BLOCKING.as_bytes()).await.expect("write body");
    let mut rest = Vec::new();
    while !String::from_utf8_lossy(&rest).contains("workflow_run_id") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the final response")
            .expect("read");
        assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(&rest));
        rest.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&rest).contains(" 200 "), "{}", String::from_utf8_lossy(&rest));
}
