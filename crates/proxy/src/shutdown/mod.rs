//! Graceful shutdown (SIGTERM, and SIGQUIT after its upgrade hand-off): owns the count of
//! requests in progress, and in [`drain`] the background service that, once pingora broadcasts shutdown,
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
//! `server_busy` and `Retry-After: 1` ([`Refusal::ShuttingDown`](crate::admission::Refusal::ShuttingDown)): they were never sent to
//! the backend, so a retry is safe for any method, and their wait could outlast the grace.

pub mod drain;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
