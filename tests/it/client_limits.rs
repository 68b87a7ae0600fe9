//! The client-side limits of `[server]`: a request header that arrives too slowly is cut at
//! `request_header_timeout` (408, or a quiet close when nothing came), one too large or with
//! a line too long gets 431, an idle kept-alive connection is closed at `keepalive_timeout`,
//! a stalled body at `body_read_timeout` (408), and connections beyond `max_connections` or
//! `max_connections_per_ip` get a 503 `too_many_connections` — each in Dify's envelope,
//! counted in `/metrics`, never reaching the backend. And 10,000 slowloris sockets against
//! the default config leave a normal request served, with the proxy's memory bounded.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::fixtures::poll_until;
use common::*;
use dify_shaper_tools::sim::{SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn sim() -> Simulator {
    Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("simulator")
}

fn config(upstream: SocketAddr, server: &str) -> String {
    format!(
        r#"
[server]
{server}

[upstreams.api]
servers = ["{upstream}"]

[[routes]]
prefix = "/"
upstream = "api"
"#
    )
}

/// Reads until the peer closes (or `limit`): everything it sent, and whether it closed.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// The status and the envelope's `code` of a raw HTTP/1 answer.
fn status_and_code(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, code)
}

/// One whole request on a fresh connection; its raw answer.
async fn raw_request(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_to_close(&mut stream, Duration::from_secs(10)).await.0
}

fn get_with(header_line: &str) -> Vec<u8> {
    format!("GET /v1/parameters HTTP/1.1\r\nhost: x\r\n{header_line}\r\nconnection: close\r\n\r\n")
        .into_bytes()
}

async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, _, body) = try_get(admin, "/metrics").await.expect("metrics");
    let text = String::from_utf8_lossy(&body).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_header_is_cut_at_the_configured_time() {
    let _machine = common::shared().await;
    let sim = sim().await;
    let proxy = ProxyProcess::start(&config(sim.addr(), r#"request_header_timeout = "2s""#)).await;

    // A slowloris client: one header line every 300 ms, never the blank line.
    let started = Instant::now();
    let mut slow = TcpStream::connect(proxy.addr).await.expect("connect");
    slow.write_all(b"POST /v1/workflows/run HTTP/1.1\r\nhost: x\r\n").await.expect("write");
    let mut answer = Vec::new();
    let mut closed = false;
    for i in 0..40 {
        if slow.write_all(format!("x-slow-{i}: a\r\n").as_bytes()).await.is_err() {
            break;
        }
        let (bytes, eof) = read_to_close(&mut slow, Duration::from_millis(300)).await;
        answer.extend_from_slice(&bytes);
        if eof {
            closed = true;
            break;
        }
    }
    let cut_after = started.elapsed();
    assert!(closed, "the slow client was never cut off (after {cut_after:?})");
    assert!(
        cut_after >= Duration::from_millis(1900) && cut_after < Duration::from_secs(5),
        "cut after {cut_after:?}, configured 2 s"
    );
    assert_eq!(
        status_and_code(&answer),
        (408, "request_timeout".to_string()),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A connection that sends nothing is closed quietly at the same time.
    let mut idle = TcpStream::connect(proxy.addr).await.expect("connect");
    let (bytes, eof) = read_to_close(&mut idle, Duration::from_secs(6)).await;
    assert!(eof && bytes.is_empty(), "an idle connection is closed without an answer: {bytes:?}");

    assert_eq!(
        metric(proxy.admin, "dify_shaper_request_headers_refused_total{reason=\"timeout\"}").await,
        2.0
    );
    // Nothing of either reached the backend, and the proxy still serves.
    let ok = raw_request(proxy.addr, &get_with("x-ok: 1")).await;
    assert_eq!(status_and_code(&ok).0, 200, "{}", String::from_utf8_lossy(&ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_get_431_and_never_reach_the_backend() {
    let _machine = common::shared().await;
    let sim = sim().await;
    // Defaults: 8 KiB per line, 32 KiB in all.
    let proxy = ProxyProcess::start_default(sim.addr()).await;

    let long_line = format!("x-long: {}", "a".repeat(9 * 1024));
    let answer = raw_request(proxy.addr, &get_with(&long_line)).await;
    assert_eq!(
        status_and_code(&answer),
        (431, "request_header_fields_too_large".into()),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A single 100 KB line: refused once 32 KiB are in, not buffered whole.
    let huge_line = format!("x-huge: {}", "a".repeat(100 * 1024));
    let answer = raw_request(proxy.addr, &get_with(&huge_line)).await;
    assert_eq!(status_and_code(&answer), (431, "request_header_fields_too_large".into()));

    // Many lines under the per-line limit, over the total.
    let many: String = (0..8).map(|i| format!("x-part-{i}: {}\r\n", "b".repeat(5 * 1024))).collect();
    let answer = raw_request(proxy.addr, &get_with(many.trim_end())).await;
    assert_eq!(status_and_code(&answer), (431, "request_header_fields_too_large".into()));

    // Just under both limits: served.
    let fine_line = format!("x-fine: {}", "c".repeat(7 * 1024));
    let answer = raw_request(proxy.addr, &get_with(&fine_line)).await;
    assert_eq!(status_and_code(&answer).0, 200, "{}", String::from_utf8_lossy(&answer));

    assert_eq!(
        metric(proxy.admin, "dify_shaper_request_headers_refused_total{reason=\"line_too_long\"}").await,
        1.0
    );
    assert_eq!(
        metric(proxy.admin, "dify_shaper_request_headers_refused_total{reason=\"too_large\"}").await,
        2.0
    );
    let stats = sim.stats();
    assert_eq!(
        stats.requests_by_path.get("/v1/parameters"),
        Some(&1),
        "only the accepted request reached the backend: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_and_stalled_bodies_are_closed_in_time() {
    let _machine = common::shared().await;
    let sim = sim().await;
    let proxy =
        ProxyProcess::start(&config(sim.addr(), "keepalive_timeout = \"1s\"\nbody_read_timeout = \"1s\""))
            .await;

    // After an answer, the kept-alive connection is closed once idle for 1 s.
    let mut kept = TcpStream::connect(proxy.addr).await.expect("connect");
    kept.write_all(b"GET /v1/parameters HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    let started = Instant::now();
    let (bytes, eof) = read_to_close(&mut kept, Duration::from_secs(6)).await;
    assert_eq!(status_and_code(&bytes).0, 200);
    assert!(eof, "an idle kept-alive connection stays open past keepalive_timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the idle time: {:?}",
        started.elapsed()
    );

    // A body that stops arriving: 408 once the proxy reads it.
    let mut stalled = TcpStream::connect(proxy.addr).await.expect("connect");
    stalled
        .write_all(b"POST /v1/files/upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .expect("write");
    let (bytes, eof) = read_to_close(&mut stalled, Duration::from_secs(8)).await;
    assert!(eof, "a stalled body holds the connection past body_read_timeout");
    assert_eq!(
        status_and_code(&bytes),
        (408, "request_timeout".into()),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

/// Connections made to a fresh proxy before a test's own: its readiness check (it connects to
/// its listener once to report ready) and the harness's (it connects once to see it up).
const STARTUP_CONNECTIONS: f64 = 2.0;

/// Waits until the start-up connections have been taken and closed, so a test counts only
/// its own.
async fn settled(admin: SocketAddr) {
    poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        "the start-up connections gone",
        || async {
            metric(admin, "dify_shaper_client_connections_total").await >= STARTUP_CONNECTIONS
                && metric(admin, "dify_shaper_client_connections").await == 0.0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_caps_get_503_too_many_connections() {
    let _machine = common::shared().await;
    let sim = sim().await;
    // 127.0.0.1 is not a trusted proxy here, so its connections count per IP.
    let per_ip = ProxyProcess::start(&config(
        sim.addr(),
        "trusted_proxies = []\nmax_connections = 50\nmax_connections_per_ip = 3",
    ))
    .await;
    settled(per_ip.admin).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(per_ip.addr).await.expect("connect"));
    }
    // The gate counts a connection as pingora takes it: wait until all three are in.
    poll_until(Duration::from_secs(5), Duration::from_millis(20), "three connections counted", || async {
        metric(per_ip.admin, "dify_shaper_client_connections").await == 3.0
            && metric(per_ip.admin, "dify_shaper_client_connections_total").await == STARTUP_CONNECTIONS + 3.0
    })
    .await;
    let refused = raw_request(per_ip.addr, &get_with("x-n: 4")).await;
    assert_eq!(status_and_code(&refused), (503, "too_many_connections".into()));
    assert!(String::from_utf8_lossy(&refused).contains("retry-after: 1"));
    held.pop();
    poll_until(Duration::from_secs(5), Duration::from_millis(20), "a place given back", || async {
        metric(per_ip.admin, "dify_shaper_client_connections").await == 2.0
    })
    .await;
    let served = raw_request(per_ip.addr, &get_with("x-n: 5")).await;
    assert_eq!(status_and_code(&served).0, 200, "{}", String::from_utf8_lossy(&served));
    assert_eq!(
        metric(
            per_ip.admin,
            "dify_shaper_client_connections_refused_total{limit=\"max_connections_per_ip\"}"
        )
        .await,
        1.0
    );
    drop(held);

    // The total cap counts every peer, trusted ones included.
    let total = ProxyProcess::start(&config(sim.addr(), "max_connections = 2")).await;
    settled(total.admin).await;
    let _a = TcpStream::connect(total.addr).await.expect("connect");
    let _b = TcpStream::connect(total.addr).await.expect("connect");
    poll_until(Duration::from_secs(5), Duration::from_millis(20), "two connections counted", || async {
        metric(total.admin, "dify_shaper_client_connections").await == 2.0
            && metric(total.admin, "dify_shaper_client_connections_total").await == STARTUP_CONNECTIONS + 2.0
    })
    .await;
    let refused = raw_request(total.addr, &get_with("x-n: 3")).await;
    assert_eq!(status_and_code(&refused), (503, "too_many_connections".into()));
    assert_eq!(
        metric(total.admin, "dify_shaper_client_connections_refused_total{limit=\"max_connections\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_clients_are_capped_per_forwarded_address() {
    let _machine = common::shared().await;
    let sim = sim().await;
    // 127.0.0.1 is trusted by default: its connections carry many clients.
    let proxy = ProxyProcess::start(&config(sim.addr(), "max_connections_per_ip = 2")).await;
    let slow = |client: &'static str| {
        let addr = proxy.addr;
        async move {
            let request = format!(
                "POST /v1/workflows/run HTTP/1.1\r\nhost: x\r\nx-forwarded-for: {client}, 10.0.0.1\r\n\
                 x-sim-service-time: 1500ms\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
                 connection: close\r\n\r\n{{}}"
            );
            raw_request(addr, request.as_bytes()).await
        }
    };
    let first = tokio::spawn(slow("203.0.113.9"));
    let second = tokio::spawn(slow("203.0.113.9"));
    poll_until(Duration::from_secs(5), Duration::from_millis(20), "two runs in progress", || async {
        sim.stats().active == 2
    })
    .await;
    let third = slow("203.0.113.9").await;
    assert_eq!(status_and_code(&third), (503, "too_many_connections".into()));
    let other = slow("198.51.100.4").await;
    assert_eq!(status_and_code(&other).0, 200, "another client is not capped by the first");
    for run in [first, second] {
        assert_eq!(status_and_code(&run.await.expect("join")).0, 200);
    }
}

/// 10,000 slowloris sockets (each sends part of a header, then a byte every few seconds)
/// against the default config: a normal request is still served, the proxy's memory stays
/// bounded while it holds them, and every one is cut at `request_header_timeout` (here
/// shortened so the test ends; the default is 60 s). Prints the latency ratio and RSS for
/// the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_slowloris_sockets_leave_normal_requests_served() {
    const SOCKETS: usize = 10_000;
    let _machine = common::exclusive().await;
    let sim = sim().await;
    let proxy = ProxyProcess::start(&config(sim.addr(), r#"request_header_timeout = "20s""#)).await;

    async fn latency(addr: SocketAddr, n: usize) -> Vec<Duration> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let started = Instant::now();
            let answer = raw_request(addr, &get_with(&format!("x-n: {i}"))).await;
            assert_eq!(status_and_code(&answer).0, 200, "{}", String::from_utf8_lossy(&answer));
            out.push(started.elapsed());
        }
        out.sort();
        out
    }
    let idle = latency(proxy.addr, 50).await;
    let rss_idle = rss_bytes(proxy.pid());

    let opened = Instant::now();
    let mut sockets = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        let Ok(mut s) = TcpStream::connect(proxy.addr).await else { break };
        if s.write_all(b"POST /v1/workflows/run HTTP/1.1\r\nhost: x\r\n").await.is_ok() {
            sockets.push(s);
        }
    }
    assert_eq!(sockets.len(), SOCKETS, "could not open every socket");
    poll_until(Duration::from_secs(20), Duration::from_millis(100), "every socket counted", || async {
        metric(proxy.admin, "dify_shaper_client_connections").await >= SOCKETS as f64
    })
    .await;
    // Keep them trickling: one more header line each.
    for (i, s) in sockets.iter_mut().enumerate() {
        let _ = s.write_all(format!("x-drip-{i}: a\r\n").as_bytes()).await;
    }
    let loaded = latency(proxy.addr, 50).await;
    let rss_loaded = rss_bytes(proxy.pid());
    let median = |v: &[Duration]| v[v.len() / 2];
    let ratio = median(&loaded).as_secs_f64() / median(&idle).as_secs_f64();
    let per_socket = rss_loaded.saturating_sub(rss_idle) / SOCKETS as u64;
    println!(
        "slowloris: {SOCKETS} sockets; normal request median {:?} idle, {:?} with them open ({ratio:.2}x); \
         p90 {:?} / {:?}; RSS {} MiB idle, {} MiB with them (~{} bytes per socket)",
        median(&idle),
        median(&loaded),
        idle[idle.len() * 9 / 10],
        loaded[loaded.len() * 9 / 10],
        rss_idle >> 20,
        rss_loaded >> 20,
        per_socket
    );
    // Bounded memory: a held socket costs its read buffer and a task, not its header.
    assert!(per_socket < 64 * 1024, "{per_socket} bytes per slowloris socket");

    // All of them are cut at the header timeout (counted from when each connected).
    poll_until(Duration::from_secs(60), Duration::from_millis(250), "every slowloris socket cut", || async {
        metric(proxy.admin, "dify_shaper_request_headers_refused_total{reason=\"timeout\"}").await
            >= SOCKETS as f64
    })
    .await;
    assert!(opened.elapsed() >= Duration::from_secs(19), "cut before the header timeout");
    // Each is answered 408 and closed after a short linger (so the answer is not lost).
    poll_until(Duration::from_secs(30), Duration::from_millis(250), "every connection closed", || async {
        metric(proxy.admin, "dify_shaper_client_connections").await == 0.0
    })
    .await;
    for s in sockets.iter_mut().step_by(100) {
        let (bytes, eof) = read_to_close(s, Duration::from_secs(5)).await;
        assert!(eof, "a cut socket is closed");
        assert_eq!(status_and_code(&bytes), (408, "request_timeout".into()));
    }
    let after = latency(proxy.addr, 10).await;
    assert!(!after.is_empty());
}
