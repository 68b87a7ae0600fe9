//! The process's own phase, which `/ready` reports: `starting` until every client listener
//! accepts connections, `serving` from then on, `shutting_down` once pingora broadcasts
//! shutdown (SIGTERM, SIGINT, SIGQUIT).
//!
//! Readiness is deliberately not upstream health. A load balancer or a Kubernetes Service
//! drops a target that is not ready; dropping the shaper while Dify restarts would fail the
//! very requests it exists to hold. Upstream health is in `/status`, `/upstreams` and the
//! metrics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Config loaded; the client listeners are not accepting yet.
    Starting,
    /// Accepting and holding requests.
    Serving,
    /// Listeners closed; requests in progress finish, nothing new is taken.
    ShuttingDown,
}

/// The shared phase; cheap to clone.
#[derive(Debug, Clone)]
pub struct Lifecycle(Arc<AtomicU8>);

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle(Arc::new(AtomicU8::new(Phase::Starting as u8)))
    }
}

impl Lifecycle {
    /// The phase now.
    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::ShuttingDown,
        }
    }

    /// The listeners accept: ready for traffic (never after shutdown began).
    pub fn serving(&self) {
        let _ = self.0.compare_exchange(
            Phase::Starting as u8,
            Phase::Serving as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Shutdown began; there is no way back.
    pub fn shutting_down(&self) {
        self.0.store(Phase::ShuttingDown as u8, Ordering::Release);
    }
}

/// How often a listener that does not accept yet is tried again.
const RETRY: Duration = Duration::from_millis(20);

/// The address a listener is reached at from this host (a wildcard bind through loopback).
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// The background service that moves the phase: to `serving` once each client listener
/// accepts a connection, to `shutting_down` when pingora broadcasts shutdown.
pub struct PhaseWatcher {
    lifecycle: Lifecycle,
    listen: Vec<SocketAddr>,
}

impl PhaseWatcher {
    /// A watcher that moves `lifecycle` once every address in `listen` accepts.
    pub fn new(lifecycle: Lifecycle, listen: Vec<SocketAddr>) -> Self {
        PhaseWatcher { lifecycle, listen }
    }

    async fn wait_for_listeners(&self) {
        for addr in self.listen.iter().copied().map(reachable) {
            // pingora binds the listeners as its services start, a moment before or after
            // this one; a connect that succeeds proves the socket accepts.
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[async_trait]
impl BackgroundService for PhaseWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            () = self.wait_for_listeners() => {
                self.lifecycle.serving();
                tracing::info!("ready: client listeners accept connections");
            }
            _ = shutdown.changed() => {}
        }
        // `changed` fails only when the server is gone; either way the wait is over.
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        self.lifecycle.shutting_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_move_one_way() {
        let life = Lifecycle::default();
        assert_eq!(life.phase(), Phase::Starting);
        life.serving();
        assert_eq!(life.phase(), Phase::Serving);
        life.shutting_down();
        life.serving();
        assert_eq!(life.phase(), Phase::ShuttingDown, "no way back from shutdown");
    }

    #[test]
    fn wildcard_binds_are_reached_through_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert_eq!(reachable(any), "127.0.0.1:8080".parse::<SocketAddr>().expect("addr"));
        let any6: SocketAddr = "[::]:8080".parse().expect("addr");
        assert_eq!(reachable(any6), "[::1]:8080".parse::<SocketAddr>().expect("addr"));
        let given: SocketAddr = "127.0.0.5:1".parse().expect("addr");
        assert_eq!(reachable(given), given);
    }
}
