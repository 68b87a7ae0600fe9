//! Test fixtures: the dify-shaper binary as a child process on ephemeral 127.0.0.1 ports,
//! and a small HTTP/1.1 client. Everything is cleaned up on drop; every wait is bounded.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub mod e2e;
pub mod fixtures;
pub mod load;
pub mod realdify;
pub mod redis;
pub mod sim;
pub mod sse;

/// The machine, as the tests share it. A test that measures side by side (load against a
/// backend, timing of a restart, real Dify or gunicorn) takes it whole: another test's
/// processes on the same two cores would be in its numbers. Every other test takes a share,
/// so none runs while such a test measures, and the light ones still run in parallel (one
/// test that only idles for minutes takes none). An
/// async lock: each test has its own runtime, and a sync test waits with the `_blocking` forms.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The whole machine, for a test that measures; held until dropped.
pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// A share of the machine, for a test that does not measure; held until dropped.
pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}

/// [`exclusive`] for a test without a runtime.
pub fn exclusive_blocking() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.blocking_write()
}

/// [`shared`] for a test without a runtime.
pub fn shared_blocking() -> tokio::sync::RwLockReadGuard<'static, ()> {
    MACHINE.blocking_read()
}

/// A port that was free a moment ago, for a child process to listen on.
///
/// Not one the OS picks: those come from the ephemeral range, where every other test's
/// `bind(0)` (a simulator, an admin listener) and every outgoing connection's source port also
/// come from, so the port could be taken between this check and the child's bind — once, CI
/// saw a request to a proxy answered by another listener. These come from below that range,
/// and never twice in one test process.
pub fn free_port() -> SocketAddr {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, last) = (10_000u16, low.saturating_sub(1).max(10_001));
    let mut given = GIVEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = rand::random::<u16>() % (last - first) + first;
        if given.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            given.insert(port);
            return listener.local_addr().expect("local addr");
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

/// A port nothing listens on, reserved for as long as the returned socket lives: it is bound
/// but never listening, so connections to it are refused, and no other test's listener can
/// take it meanwhile (a port from [`free_port`] can be reused by a parallel test).
pub fn closed_port() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind an ephemeral port");
    let addr = socket.local_addr().ok().and_then(|a| a.as_socket()).expect("local addr");
    (socket, addr)
}

/// The dify-shaper binary under test, running as a child process.
pub struct ProxyProcess {
    child: Child,
    /// Client listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts the proxy with `config` (TOML, without listen/admin: those are set on ephemeral
    /// ports) and waits until `/live` answers.
    pub async fn start(config: &str) -> ProxyProcess {
        Self::start_with_args(Some(config), &[]).await
    }

    /// Starts the proxy with the embedded defaults and `--upstream`.
    pub async fn start_default(upstream: SocketAddr) -> ProxyProcess {
        let url = format!("http://{upstream}");
        Self::start_with_args(None, &["--upstream", &url]).await
    }

    /// Starts with an optional config file and extra `run` arguments.
    pub async fn start_with_args(config: Option<&str>, extra: &[&str]) -> ProxyProcess {
        Self::spawn(config, extra, free_port(), free_port(), true).await
    }

    /// Starts with a config file that sets `server.listen = addr` and `server.admin = admin`
    /// itself (no `--listen`/`--admin` override, so a reload sees what the file says).
    pub async fn start_listening_as_configured(
        config: &str,
        addr: SocketAddr,
        admin: SocketAddr,
    ) -> ProxyProcess {
        Self::spawn(Some(config), &[], addr, admin, false).await
    }

    async fn spawn(
        config: Option<&str>,
        extra: &[&str],
        addr: SocketAddr,
        admin: SocketAddr,
        override_listeners: bool,
    ) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join("proxy.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dify-shaper"));
        cmd.arg("run");
        if override_listeners {
            cmd.arg("--listen").arg(addr.to_string()).arg("--admin").arg(admin.to_string());
        }
        if let Some(config) = config {
            let path = dir.path().join("dify-shaper.toml");
            std::fs::write(&path, config).expect("write config");
            cmd.arg("--config").arg(&path);
        }
        cmd.args(extra).env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let child = cmd.spawn().expect("spawn dify-shaper");
        let mut proxy = ProxyProcess { child, addr, admin, log_path, dir };
        proxy.wait_live().await;
        proxy
    }

    async fn wait_live(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dify-shaper exited early ({status}):\n{}", self.logs());
            }
            if let Ok(Ok((StatusCode::OK, _, _))) =
                tokio::time::timeout(Duration::from_secs(2), try_get(self.admin, "/live")).await
            {
                // The admin service is up; wait for the proxy listener too.
                if TcpStream::connect(self.addr).await.is_ok() {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "dify-shaper did not come up:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id (for RSS measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the proxy logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A scratch directory that lives as long as the proxy.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The config file the proxy was started with (a reload reads it again).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("dify-shaper.toml")
    }

    /// Replaces the config file atomically (write aside, rename), so a reload never reads
    /// half a file.
    pub fn write_config(&self, text: &str) {
        let aside = self.dir.path().join("dify-shaper.toml.new");
        std::fs::write(&aside, text).expect("write config");
        std::fs::rename(&aside, self.config_path()).expect("replace config");
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, signal).expect("send a signal to the proxy");
    }

    /// Polls until the process has exited, for at most `limit`; its exit status, if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of a process in bytes (Linux).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Opens an HTTP/1.1 connection and sends one request (the connection closes once the
/// response is read and dropped); the caller reads the body.
pub async fn send<B>(addr: SocketAddr, request: Request<B>) -> hyper::Result<hyper::Response<Incoming>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).ok();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender.send_request(request).await
}

/// A request builder with `Host` set.
pub fn request(method: &str, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path).header(http::header::HOST, addr.to_string())
}

/// Sends and collects the whole response.
pub async fn fetch(addr: SocketAddr, request: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let response = tokio::time::timeout(Duration::from_secs(60), send(addr, request))
        .await
        .expect("response within 60 s")
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
        .await
        .expect("body within 60 s")
        .expect("body")
        .to_bytes();
    (status, headers, body)
}

/// GET `path`, or the error when nothing answers (for polling a backend that is starting).
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = request("GET", addr, path).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, headers, body))
}

/// GET `path` and collect the response.
pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    fetch(addr, request("GET", addr, path).body(Full::new(Bytes::new())).expect("request")).await
}

/// POST a JSON body and collect the response.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    json: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut builder = request("POST", addr, path).header(http::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    fetch(addr, builder.body(Full::new(Bytes::from(json.to_string()))).expect("request")).await
}

/// Parses a JSON body, with the body in the panic message when it is not JSON.
pub fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Runs `dify-shaper run` with `config` on `addr` and `admin` when it is expected to fail at
/// start: waits up to `limit` for it to exit by itself. Its exit status (`None` when it still
/// ran at `limit`; it is killed then) and everything it wrote to stderr.
pub async fn run_expecting_exit(
    config: &str,
    addr: SocketAddr,
    admin: SocketAddr,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dify-shaper.toml");
    std::fs::write(&path, config).expect("write config");
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dify-shaper"))
        .arg("run")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--admin")
        .arg(admin.to_string())
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn dify-shaper");
    let deadline = tokio::time::Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (status, std::fs::read_to_string(&log_path).unwrap_or_default())
}
