//! A 100 MB multipart upload streams through the proxy without being held in memory.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use dify_shaper_tools::sim::{SimConfig, Simulator};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

const FILE_BYTES: usize = 100 * 1000 * 1000;
const CHUNK: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_passes_with_flat_proxy_memory() {
    let _machine = crate::common::shared().await;
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default())
        .await
        .expect("simulator");
    let proxy = ProxyProcess::start_default(sim.addr()).await;
    // Warm the proxy up (threads, pools) so the baseline is its steady state.
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/sim/fast").await.0, 200);
    }
    let baseline = rss_bytes(proxy.pid());
    assert!(baseline > 0, "cannot read the proxy's RSS");

    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (Arc::clone(&peak), Arc::clone(&done), proxy.pid());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let boundary = "----difyshaperboundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!(
        "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nu1\r\n--{boundary}--\r\n"
    );
    let total = head.len() + FILE_BYTES + tail.len();
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    let mut parts: Vec<Bytes> = vec![Bytes::from(head)];
    let mut left = FILE_BYTES;
    while left > 0 {
        let n = left.min(CHUNK);
        parts.push(chunk.slice(..n));
        left -= n;
    }
    parts.push(Bytes::from(tail));
    let body = StreamBody::new(futures_util::stream::iter(
        parts.into_iter().map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    ));
    let req = request("POST", proxy.addr, "/v1/files/upload")
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .header("content-length", total.to_string())
        .header("authorization", "Bearer app-upload00000000000")
        .body(body)
        .expect("request");
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let response = tokio::time::timeout(Duration::from_secs(120), sender.send_request(req))
        .await
        .expect("upload answered within 120 s")
        .expect("response");
    let status = response.status();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");

    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["size"].as_u64(), Some(total as u64), "the backend received every byte");
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "proxy RSS baseline {} MiB, growth during a {} MB upload: {:.1} MiB",
        baseline >> 20,
        total / 1_000_000,
        growth as f64 / (1 << 20) as f64
    );
    assert!(growth < 32 << 20, "proxy RSS grew by {} MiB", growth >> 20);
}
