//! The background prober: probes every upstream endpoint on its group's `interval` (faster
//! while the group has no endpoint in rotation) and hands each round's results to the group
//! ([`UpstreamState::probed`](crate::upstream::UpstreamState::probed)), which owns its health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::Instant;

use super::probe::{probe, ProbeResult};
use crate::app::App;

/// How often the prober wakes to see which groups are due.
const TICK: Duration = Duration::from_millis(100);
/// Probe interval while a group has no endpoint in rotation.
const DOWN_INTERVAL: Duration = Duration::from_millis(250);

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
            // A busy endpoint (all its workers taken) says nothing about its health.
            let results: Vec<_> = futures_util::future::join_all(checks)
                .await
                .into_iter()
                .filter(|(_, result)| *result != ProbeResult::Busy)
                .map(|(addr, result)| (addr, result == ProbeResult::Up))
                .collect();
            group.probed(&results, health);
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
