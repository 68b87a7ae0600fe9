//! More fixtures: the simulator as a child process (so a restart action can signal it, as
//! it would gunicorn or a container), an SSE reader, admin API calls and a bounded poll.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;

use super::{fetch, free_port, request, send};

/// `dify-shaper sim` as a child process; SIGHUP restarts it with its `--boot-delay`.
pub struct SimProcess {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
}

impl SimProcess {
    /// Starts a simulator with `args` (e.g. `--service-time 500ms --boot-delay 3s`) and
    /// waits until it accepts connections.
    pub async fn start(args: &[&str]) -> SimProcess {
        let addr = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_dify-shaper"))
            .arg("sim")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the simulator");
        let sim = SimProcess { child, addr };
        wait_for(Duration::from_secs(30), "the simulator to listen", || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        sim
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes its pid to `path` (for `pid_file` actions).
    pub fn write_pid(&self, path: &Path) {
        std::fs::write(path, self.pid().to_string()).expect("write pid file");
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it is true; panics naming `what` after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(limit, Duration::from_millis(50), what, check).await;
}

/// Polls `check` every `every` until it is true; panics naming `what` after `limit`. The one
/// bounded polling loop of the harness.
pub async fn poll_until<F, Fut>(limit: Duration, every: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

/// `GET /status` of an admin listener, as JSON.
pub async fn status(admin: SocketAddr) -> serde_json::Value {
    let (_, _, body) = super::get(admin, "/status").await;
    super::json(&body)
}

/// Polls `/status` until `pred` holds for upstream `name`'s maintenance view; returns it.
pub async fn wait_maintenance(
    admin: SocketAddr,
    name: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let view = status(admin).await["upstreams"][name]["maintenance"].clone();
        if pred(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}: {view:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST` to the admin API, with an optional bearer token.
pub async fn admin_post(
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (http::StatusCode, serde_json::Value) {
    let mut builder = request("POST", admin, path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let (status, _, body) = fetch(admin, builder.body(Full::new(Bytes::new())).expect("request")).await;
    (status, super::json(&body))
}

/// Posts a streaming workflow run taking `service` (simulator header) with `events` node
/// events, and returns its SSE events once it ends (bounded: 60 s).
pub async fn stream_events(addr: SocketAddr, service: &str, events: usize) -> Vec<String> {
    let req = request("POST", addr, "/v1/workflows/run")
        .header("content-type", "application/json")
        .header("x-sim-service-time", service)
        .header("x-sim-events", events.to_string())
        .body(Full::new(Bytes::from_static(br#"{"inputs":{},"response_mode":"streaming","user":"u"}"#)))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(60), send(addr, req))
        .await
        .expect("stream head within 60 s")
        .expect("stream response");
    assert_eq!(response.status(), 200, "stream refused");
    super::sse::SseReader::new(response.into_body()).rest(Instant::now() + Duration::from_secs(60)).await
}

/// Runs `dify-shaper ctl ARGS` (bounded: 90 s) and returns (exit code, stdout, stderr).
pub async fn ctl(args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dify-shaper"));
    cmd.arg("ctl").args(args).env_remove("DIFY_SHAPER_ADMIN").env_remove("DIFY_SHAPER_ADMIN_TOKEN");
    cmd.kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("ctl ends within 90 s")
        .expect("run ctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
