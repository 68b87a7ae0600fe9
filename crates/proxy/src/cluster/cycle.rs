//! The exchange service: five times a second, every upstream's maintenance controller reports
//! to the group through Redis ([`super::lease`]) and acts on the answer — follow, take over,
//! release, hand back the lease.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::lease::RedisGroup;
use crate::app::App;
use crate::maintenance::group::GroupLink;

/// Time between exchanges.
pub const EXCHANGE: Duration = Duration::from_millis(200);

/// The background service exchanging every upstream's maintenance with the group.
pub struct CycleSync {
    app: Arc<App>,
    group: Arc<RedisGroup>,
}

impl CycleSync {
    /// The exchange of `app`'s upstreams through `group`.
    pub fn new(app: Arc<App>, group: Arc<RedisGroup>) -> CycleSync {
        CycleSync { app, group }
    }

    async fn round(&self) {
        for upstream in self.app.upstreams.all() {
            let maintenance = upstream.maintenance();
            maintenance.join(Arc::clone(&self.group) as Arc<dyn GroupLink>);
            let report = maintenance.report(&upstream, &self.group.node);
            let update = if self.group.link.is_up() {
                self.group.exchange(upstream.name(), &report).await
            } else {
                None
            };
            maintenance.update(&upstream, &self.group.node, update);
        }
    }
}

#[async_trait]
impl BackgroundService for CycleSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(EXCHANGE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.round().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
