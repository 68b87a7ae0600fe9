//! Periodic work no request triggers: every upstream's admission gets its nudge (a ramp
//! rises with time, a standing queue no answer moves gets a stall probe), and the clean-up
//! that keeps long-running state bounded forgets the rate-limit state of tenants quiet long
//! enough to be back at full burst.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::app::App;

/// How often each admission is nudged.
const NUDGE: Duration = Duration::from_millis(100);
/// How often the clean-up runs.
const CLEAN_UP: Duration = Duration::from_secs(60);

/// The background service.
pub struct Housekeeping {
    app: Arc<App>,
}

impl Housekeeping {
    /// Clean-up for `app`.
    pub fn new(app: Arc<App>) -> Self {
        Housekeeping { app }
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut nudge = tokio::time::interval(NUDGE);
        nudge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut clean_up = tokio::time::interval(CLEAN_UP);
        clean_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = nudge.tick() => {
                    for group in self.app.upstreams.all() {
                        group.admission().tick();
                    }
                }
                _ = clean_up.tick() => {
                    if let Some(limiter) = self.app.rate_limiter() {
                        limiter.forget_idle();
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
