//! The shutdown drain: once pingora broadcasts shutdown, answers the admission queues, waits
//! for the requests in progress up to `server.shutdown_grace`, and ends the process as soon
//! as they are done (see the parent module for why pingora's own grace is not enough).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::Instant;

use crate::admission::Refusal;
use crate::app::App;

/// How often the in-progress count is looked at while draining.
const POLL: Duration = Duration::from_millis(50);
/// After the last request ended: time for pingora to flush and close its connections.
const LINGER: Duration = Duration::from_millis(200);

/// The background service that drains and ends the process on shutdown.
pub struct Drainer {
    app: Arc<App>,
}

impl Drainer {
    /// A drainer for `app`.
    pub fn new(app: Arc<App>) -> Self {
        Drainer { app }
    }

    /// Answers the queues, then waits until nothing is in progress or `grace` has passed
    /// since `started`; returns how many requests were still running at the end.
    pub async fn drain(&self, started: Instant, grace: Duration) -> usize {
        let shed: usize =
            self.app.upstreams.all().iter().map(|g| g.admission().shed_all(Refusal::ShuttingDown)).sum();
        let active = self.app.active.count();
        tracing::warn!(
            queued_answered = shed,
            in_progress = active,
            grace = %humantime::format_duration(grace),
            "shutting down: listeners closed, queued requests answered 503, waiting for requests in progress"
        );
        let deadline = started + grace;
        loop {
            let active = self.app.active.count();
            if active == 0 {
                return 0;
            }
            if Instant::now() >= deadline {
                return active;
            }
            tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }
}

#[async_trait]
impl BackgroundService for Drainer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // `changed` fails only when the server is gone; either way the wait is over.
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let started = Instant::now();
        let grace = self.app.restart_only().shutdown_grace();
        let cut = self.drain(started, grace).await;
        let took = started.elapsed();
        if cut == 0 {
            tracing::info!(took_ms = took.as_millis() as u64, "shutdown: every request finished; exiting");
            tokio::time::sleep(LINGER).await;
        } else {
            tracing::warn!(
                cut,
                took_ms = took.as_millis() as u64,
                "shutdown: grace over; exiting with requests still in progress (cut)"
            );
        }
        // pingora would otherwise sleep out its whole grace period first (see module docs).
        std::process::exit(0)
    }
}
