//! Periodic clean-up that keeps long-running state bounded: forgets rate-limit state of
//! tenants that have been quiet long enough to be back at full burst.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::app::App;

/// How often the clean-up runs.
const PERIOD: Duration = Duration::from_secs(60);

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
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PERIOD) => {
                    if let Some(limiter) = self.app.rate_limiter() {
                        limiter.forget_idle();
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
