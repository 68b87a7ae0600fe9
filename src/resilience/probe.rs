//! Active health probes: every upstream endpoint gets `GET <path>` every `interval`; an
//! answer below 500 within `timeout` counts as up (a 404 from Dify's web UI still proves the
//! process serves), a refused connection or a 5xx as down, and an accepted connection with no
//! answer in time as "busy" — no change, since a saturated gunicorn parks it in its backlog. Results feed [`super::health::GroupHealth`] and, through it, admission:
//! while a group cannot serve, its requests are held; when it is back, admission ramps up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::app::App;

/// How often the prober wakes to see which groups are due.
const TICK: Duration = Duration::from_millis(100);
/// Probe interval while a group has no endpoint in rotation.
const DOWN_INTERVAL: Duration = Duration::from_millis(250);

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// Answered below 500.
    Up,
    /// Refused or failed the connection, closed it, or answered 5xx.
    Down,
    /// Accepted the connection but did not answer in time. Under load gunicorn leaves new
    /// connections in its listen backlog, so this proves nothing either way: no change.
    Busy,
}

/// Probes `addr` once with `GET path`.
pub async fn probe(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> ProbeResult {
    match ask(addr, host, "GET", path, timeout).await {
        Answer::Status(status) if status < 500 => ProbeResult::Up,
        Answer::Status(_) | Answer::Refused => ProbeResult::Down,
        Answer::NoAnswer => ProbeResult::Busy,
    }
}

/// What one request to an endpoint got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A status line.
    Status(u16),
    /// The connection was refused, reset or closed without a status line.
    Refused,
    /// Connected, but no status line within the timeout.
    NoAnswer,
}

/// Sends `METHOD path` (no body) to `addr` and reads the status line.
pub async fn ask(addr: SocketAddr, host: &str, method: &str, path: &str, timeout: Duration) -> Answer {
    let connect = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await;
    let Ok(Ok(mut stream)) = connect else { return Answer::Refused };
    let exchange = async {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: dify-shaper-health\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream.read(&mut head[len..]).await.ok()?;
            if n == 0 {
                return None;
            }
            len += n;
        }
        let line = std::str::from_utf8(&head[..len]).ok()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse::<u16>().ok()
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Some(status)) => Answer::Status(status),
        Ok(None) => Answer::Refused,
        Err(_) => Answer::NoAnswer,
    }
}

/// The background prober.
pub struct Prober {
    app: Arc<App>,
}

impl Prober {
    /// A prober for `app`'s upstreams.
    pub fn new(app: Arc<App>) -> Self {
        Prober { app }
    }

    async fn round(&self, due: &mut HashMap<String, Instant>) {
        let config = self.app.config();
        let now = Instant::now();
        for group in self.app.upstreams.all() {
            let Some(spec) = config.upstreams.get(group.name()) else { continue };
            let health = &spec.health;
            if !health.enabled || due.get(group.name()).is_some_and(|t| now < *t) {
                group.admission().tick();
                continue;
            }
            // While the group is down, look more often: every quarter second of a recovery
            // noticed late is a quarter second of held requests.
            let interval = if group.health().serving() {
                health.interval.0
            } else {
                health.interval.0.min(DOWN_INTERVAL)
            };
            due.insert(group.name().to_string(), now + interval);
            let checks = group
                .endpoints()
                .iter()
                .map(|e| {
                    let host = e.server.clone();
                    let (addr, path, timeout) = (e.addr, health.path.clone(), health.timeout.0);
                    async move { (addr, probe(addr, &host, &path, timeout).await) }
                })
                .collect::<Vec<_>>();
            for (addr, result) in futures_util::future::join_all(checks).await {
                if result == ProbeResult::Busy {
                    continue;
                }
                let ok = result == ProbeResult::Up;
                if let Some(up) = group.health().probed(addr, ok, health.rise, health.fall) {
                    tracing::warn!(upstream = group.name(), %addr, up, "upstream endpoint health changed");
                }
            }
            group.sync_availability(health.ramp.0);
        }
    }
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => self.round(&mut due).await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
