//! Graceful shutdown (SIGTERM, and SIGQUIT after its upgrade hand-off): owns the count of
//! requests in progress and the background service that, once pingora broadcasts shutdown,
//! answers the admission queues, waits for in-flight requests and streams up to
//! `server.shutdown_grace`, and ends the process as soon as they are done.
//!
//! What pingora 0.9 does by itself (`pingora-core` `Server::run`): on SIGTERM it broadcasts
//! the shutdown watch — listeners stop accepting and close, idle keep-alive connections are
//! dropped, a response in progress finishes without keep-alive — then *sleeps*
//! `grace_period_seconds` unconditionally (default 300 s), then shuts its runtimes down with
//! `graceful_shutdown_timeout_seconds`, which cancels every task still running. So a short
//! `grace_period_seconds` cuts in-flight requests at once, and a long one holds an idle proxy
//! for the whole grace. We therefore set pingora's grace to ours plus a second as a backstop
//! ([`crate::server`]) and exit from here as soon as nothing is in progress; at our grace,
//! whatever still runs (a stream longer than the grace) is cut by exiting.
//!
//! Requests still waiting in an admission queue are answered at once with 503
//! `server_busy` and `Retry-After: 1` ([`Refusal::ShuttingDown`]): they were never sent to
//! the backend, so a retry is safe for any method, and their wait could outlast the grace.

use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Requests in progress on the client listeners (from header read to the end of the
/// response, streams included). Cheap to clone; every clone counts the same requests.
#[derive(Debug, Clone, Default)]
pub struct ActiveRequests(Arc<AtomicUsize>);

impl ActiveRequests {
    /// Counts a request until the returned guard drops.
    pub fn enter(&self) -> ActiveGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(&self.0))
    }

    /// Requests in progress now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One request in progress; dropping it ends the count (the request context owns it, so
/// every way a request ends is covered).
#[derive(Debug)]
pub struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

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
