//! The background service that ticks every upstream's maintenance controller
//! ([`super::controller::Maintenance::step`]) ten times a second, with the config in force.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::app::App;

/// How often deadlines, schedules and finished tasks are looked at: fine enough that a
/// drained upstream is released within a tenth of a second of its health gate passing.
const TICK: Duration = Duration::from_millis(100);

/// Drives maintenance for every upstream.
pub struct MaintenanceService {
    app: Arc<App>,
}

impl MaintenanceService {
    /// A service over `app`'s upstreams.
    pub fn new(app: Arc<App>) -> Self {
        MaintenanceService { app }
    }
}

#[async_trait]
impl BackgroundService for MaintenanceService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let config = self.app.config();
                    for group in self.app.upstreams.all() {
                        group.maintenance().step(&group, &config);
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
