//! [`Shared`]: the state every task of one simulator sees (config, stats, limits, the run
//! log, and the count of held connection slots that gates `accept()`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use super::config::SimConfig;
use super::limits::Limits;
use super::run_log::RunLog;
use super::stats::Stats;

/// State shared by the accept loop, connections, runs and the [`Simulator`](super::Simulator)
/// handle. Survives restarts (stats and config carry over).
pub(crate) struct Shared {
    config: RwLock<SimConfig>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) limits: Arc<Limits>,
    /// Work started, per request id, when a run log is set.
    pub(crate) run_log: RunLog,
    /// Connection slots held (gunicorn `worker_connections` in use). Every change, and every
    /// config change, notifies the accept loop.
    open: watch::Sender<usize>,
    /// Requests being handled or answered, over all connections: a response counts until its
    /// body is written, so a graceful restart can wait for answers already handed over.
    requests: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(config: SimConfig) -> Arc<Self> {
        Arc::new(Shared {
            config: RwLock::new(config),
            stats: Arc::default(),
            limits: Arc::default(),
            run_log: RunLog::default(),
            open: watch::Sender::new(0),
            requests: AtomicUsize::new(0),
        })
    }

    /// Counts a request in flight (see `requests`); [`Self::request_done`] ends it.
    pub(crate) fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends a request counted by [`Self::request_started`].
    pub(crate) fn request_done(&self) {
        self.requests.fetch_sub(1, Ordering::SeqCst);
    }

    /// Requests being handled or answered over all connections.
    pub(crate) fn requests_in_flight(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// A copy of the current config (cheap: no heap data).
    pub(crate) fn config(&self) -> SimConfig {
        self.config.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Changes the config and wakes the accept loop (capacity may have grown).
    pub(crate) fn update_config(&self, f: impl FnOnce(&mut SimConfig)) {
        {
            let mut c = self.config.write().unwrap_or_else(PoisonError::into_inner);
            f(&mut c);
        }
        self.open.send_modify(|_| {});
    }

    /// Connection slots held right now.
    pub(crate) fn open_connections(&self) -> usize {
        *self.open.borrow()
    }

    /// Watches the count of held slots (also woken by config changes).
    pub(crate) fn watch_open(&self) -> watch::Receiver<usize> {
        self.open.subscribe()
    }

    /// Takes one connection slot, released when the guard drops.
    pub(crate) fn take_slot(self: &Arc<Self>) -> SlotGuard {
        self.open.send_modify(|n| *n += 1);
        SlotGuard { shared: self.clone() }
    }
}

/// One of the `workers * worker_connections` slots. A connection holds it while open, and a
/// run whose client left keeps it until the run ends (like a busy gevent greenlet).
pub(crate) struct SlotGuard {
    shared: Arc<Shared>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.shared.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}
