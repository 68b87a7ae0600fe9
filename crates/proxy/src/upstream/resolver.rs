//! DNS refresh for upstream hostnames: resolves every configured `host:port` once at start-up
//! and then every `server.resolve_interval`, as a pingora background service.
//!
//! A server whose lookup fails keeps its previous addresses (a DNS blip must not take a
//! healthy backend out of rotation); the error is recorded for `/status`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{Endpoint, UpstreamState};
use crate::app::App;
use crate::config::ServerAddr;

/// Resolves every group once, blocking; used before the server starts so the first
/// requests find their upstreams.
pub fn resolve_all_blocking(app: &App) {
    for group in app.upstreams.all() {
        let servers = group.servers();
        let previous = group.endpoints();
        let results = servers
            .iter()
            .map(|s| (s, (s.host.as_str(), s.port).to_socket_addrs().map(Iterator::collect)))
            .collect::<Vec<_>>();
        apply(&group, &previous, results);
    }
}

/// Resolves every group once without blocking the runtime.
pub async fn resolve_all(app: &App) {
    for group in app.upstreams.all() {
        let servers = group.servers();
        let previous = group.endpoints();
        let mut results = Vec::with_capacity(servers.len());
        for server in servers.iter() {
            let looked_up =
                tokio::net::lookup_host((server.host.as_str(), server.port)).await.map(Iterator::collect);
            results.push((server, looked_up));
        }
        apply(&group, &previous, results);
    }
}

type Lookup<'a> = (&'a ServerAddr, std::io::Result<Vec<SocketAddr>>);

fn apply(group: &UpstreamState, previous: &[Endpoint], results: Vec<Lookup<'_>>) {
    let mut endpoints = Vec::new();
    let mut errors = Vec::new();
    for (server, looked_up) in results {
        let label: Arc<str> = server.to_string().into();
        match looked_up {
            Ok(addrs) if !addrs.is_empty() => {
                // Prefer IPv4 when a name has both: Dify's compose network is IPv4 and a
                // `localhost` entry resolving to ::1 first would be refused.
                let mut addrs: Vec<SocketAddr> = addrs;
                addrs.sort_by_key(|a| a.is_ipv6());
                addrs.dedup();
                endpoints.extend(addrs.into_iter().map(|addr| Endpoint { addr, server: Arc::clone(&label) }));
            }
            Ok(_) => errors.push(format!("{label}: no addresses")),
            Err(e) => {
                errors.push(format!("{label}: {e}"));
                endpoints.extend(previous.iter().filter(|e| e.server == label).cloned());
            }
        }
    }
    if !errors.is_empty() {
        tracing::warn!(upstream = group.name(), errors = %errors.join("; "), "upstream resolution failed");
    }
    group.set_endpoints(endpoints, (!errors.is_empty()).then(|| errors.join("; ")));
}

/// The background refresher.
pub struct Resolver {
    app: Arc<App>,
}

impl Resolver {
    /// A refresher for `app`'s upstreams.
    pub fn new(app: Arc<App>) -> Self {
        Resolver { app }
    }
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let interval = self.app.config().server.resolve_interval.0;
            tokio::select! {
                _ = tokio::time::sleep(interval) => resolve_all(&self.app).await,
                () = self.app.resolve_requested() => resolve_all(&self.app).await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
