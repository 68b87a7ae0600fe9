//! The background service that ticks every upstream's maintenance controller
//! ([`super::controller::Maintenance::step`]) ten times a second, with the config in force.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::app::App;
use crate::config::Config;
use crate::maintenance::actions::docker::Preview;
use crate::maintenance::actions::Target;

/// How long start-up waits for the Docker engine to say which containers an action means.
const PREVIEW_TIMEOUT: Duration = Duration::from_secs(10);

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
        tokio::spawn(preview_docker_actions(self.app.config()));
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

/// Logs which containers each `docker` action would restart, and warns when it would restart
/// none or the engine cannot be asked: at start-up, not at the scheduled hour.
async fn preview_docker_actions(config: Arc<Config>) {
    for spec in config.maintenance.values() {
        let Some(action) = &spec.action else { continue };
        let target = Target { upstream: spec.upstream.clone(), server: None };
        match action.preview(&target, PREVIEW_TIMEOUT).await {
            None => {}
            Some(Preview::Containers(containers)) => {
                tracing::info!(upstream = %spec.upstream, containers = %containers.join(", "), "maintenance: the docker action restarts these containers")
            }
            Some(Preview::NoMatch(e) | Preview::Unknown(e)) => {
                tracing::warn!(upstream = %spec.upstream, error = %e, "maintenance: the docker action cannot restart anything as configured")
            }
        }
    }
}
