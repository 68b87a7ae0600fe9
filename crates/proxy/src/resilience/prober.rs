//! The background prober: probes every upstream endpoint on its group's `interval` (faster
//! while the group has no endpoint in rotation) and hands each round's results to the group
//! ([`UpstreamState::probed`](crate::upstream::UpstreamState::probed)), which owns its health.
//!
//! An unanswered probe alone says nothing (a saturated gunicorn parks it in its backlog),
//! but an endpoint that has answered neither a probe nor a request for the group's
//! `silent_timeout` is frozen (SIGSTOP, a hung process): its unanswered probes then count as
//! failed, so it leaves rotation and new requests are held, as for a crash.

use std::collections::HashMap;
use std::net::SocketAddr;
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

/// The last sign of life of an endpoint: its answered-request count then, and when it changed
/// or a probe was answered.
#[derive(Debug, Clone, Copy)]
struct SignOfLife {
    answered: u64,
    at: Instant,
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

    async fn round(&self, due: &mut HashMap<String, Instant>, alive: &mut HashMap<SocketAddr, SignOfLife>) {
        let config = self.app.config();
        let now = Instant::now();
        // Forget endpoints no group has any more (re-resolution moved them).
        let groups = self.app.upstreams.all();
        alive.retain(|addr, _| groups.iter().any(|g| g.endpoints().iter().any(|e| e.addr == *addr)));
        for group in groups {
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
            let probed = futures_util::future::join_all(checks).await;
            let now = Instant::now();
            let results: Vec<_> = probed
                .into_iter()
                .filter_map(|(addr, result)| {
                    let answered = group.health().answered(addr);
                    let life = alive.entry(addr).or_insert(SignOfLife { answered, at: now });
                    if life.answered != answered || result == ProbeResult::Up {
                        *life = SignOfLife { answered, at: now };
                    }
                    match result {
                        ProbeResult::Up => Some((addr, true)),
                        ProbeResult::Down => Some((addr, false)),
                        ProbeResult::Busy if now.duration_since(life.at) >= health.silent_timeout.0 => {
                            if group.health().is_up(addr) {
                                tracing::warn!(
                                    upstream = group.name(),
                                    %addr,
                                    silent_for = ?now.duration_since(life.at),
                                    "upstream endpoint accepts connections but answers nothing (frozen?)"
                                );
                            }
                            Some((addr, false))
                        }
                        // A busy endpoint (all its workers taken) says nothing about its health.
                        ProbeResult::Busy => None,
                    }
                })
                .collect();
            group.probed(&results, health);
        }
    }
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due = HashMap::new();
        let mut alive = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => self.round(&mut due, &mut alive).await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
