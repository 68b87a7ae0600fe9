//! Counters of what reached the simulated backend: the live [`Stats`] (behind one mutex),
//! its [`SimStats`] snapshot, the per-`X-Request-Id` tally, and the [`ActiveGuard`] that
//! tracks concurrently processing requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// At most this many distinct `X-Request-Id` values are tallied (until
/// [`reset_stats`](super::Simulator::reset_stats)); later new ids are not recorded, so long
/// benchmarks through a proxy that generates ids cannot grow memory without bound.
pub const MAX_TRACKED_REQUEST_IDS: usize = 200_000;

/// At most this many distinct paths are counted in `requests_by_path`; further new paths
/// are counted under `"(other)"`.
pub const MAX_TRACKED_PATHS: usize = 10_000;

/// A snapshot of the simulator's counters (see [`Simulator::stats`](super::Simulator::stats)).
///
/// Counters accumulate since start or the last [`reset_stats`](super::Simulator::reset_stats);
/// `active` and `open_connections` are gauges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Connections taken from the listen backlog with `accept()`.
    pub accepted_connections: u64,
    /// Connection slots held right now (open connections plus runs that outlive theirs).
    pub open_connections: u64,
    /// Connections closed by the keep-alive idle timeout.
    pub idle_closed: u64,
    /// Requests whose head was parsed and handed to a handler (every path).
    pub requests: u64,
    /// Requests per path (query string excluded), every path (see [`MAX_TRACKED_PATHS`]).
    pub requests_by_path: BTreeMap<String, u64>,
    /// Responses whose body was produced to the end (a stream cut short does not count).
    pub completed: u64,
    /// Responses by status code, counted when the handler answers (a 200 stream counts when
    /// its head is sent).
    pub by_status: BTreeMap<u16, u64>,
    /// Runs that started work (passed the DB and per-app checks), per path.
    pub runs_by_path: BTreeMap<String, u64>,
    /// Runs that finished their work after their client had gone (connection closed, stream
    /// receiver dropped or write failed). Such a run still used its slot to the end.
    pub abandoned: u64,
    /// Runs cut by [`stop`](super::Simulator::stop)/restart (the "container" was killed).
    pub killed: u64,
    /// Requests processing right now (runs, uploads, parameters/info that passed the DB
    /// check).
    pub active: u64,
    /// Peak of `active`.
    pub max_active: u64,
    /// Request-body bytes received by `/v1/files/upload`, counted as chunks arrive.
    pub upload_bytes: u64,
    /// Requests answered by fault injection (`X-Sim-Fail`).
    pub faults_injected: u64,
}

#[derive(Default)]
struct Inner {
    snap: SimStats,
    by_request_id: HashMap<String, u64>,
}

/// Live counters shared by all tasks of one simulator.
#[derive(Default)]
pub(crate) struct Stats {
    inner: Mutex<Inner>,
}

impl Stats {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the counters; `open_connections` is filled in by the caller.
    pub(crate) fn snapshot(&self) -> SimStats {
        self.lock().snap.clone()
    }

    /// Clears counters (not gauges); `max_active` restarts from the current `active`.
    pub(crate) fn reset(&self) {
        let mut g = self.lock();
        let active = g.snap.active;
        g.snap = SimStats { active, max_active: active, ..SimStats::default() };
        g.by_request_id.clear();
    }

    /// How many requests carrying `X-Request-Id: id` reached a handler.
    pub(crate) fn count_for_request_id(&self, id: &str) -> u64 {
        self.lock().by_request_id.get(id).copied().unwrap_or(0)
    }

    /// Records a request reaching a handler; returns how many times its request id has been
    /// seen, this one included (1 when it has no id).
    pub(crate) fn on_request(&self, path: &str, request_id: Option<&str>) -> u64 {
        let mut g = self.lock();
        g.snap.requests += 1;
        bump(&mut g.snap.requests_by_path, path);
        let Some(id) = request_id else { return 1 };
        if let Some(n) = g.by_request_id.get_mut(id) {
            *n += 1;
            return *n;
        }
        if g.by_request_id.len() < MAX_TRACKED_REQUEST_IDS {
            g.by_request_id.insert(id.to_owned(), 1);
        }
        1
    }

    pub(crate) fn on_status(&self, status: u16) {
        *self.lock().snap.by_status.entry(status).or_insert(0) += 1;
    }

    pub(crate) fn on_run_started(&self, path: &str) {
        bump(&mut self.lock().snap.runs_by_path, path);
    }

    pub(crate) fn on_accept(&self) {
        self.lock().snap.accepted_connections += 1;
    }

    pub(crate) fn on_idle_close(&self) {
        self.lock().snap.idle_closed += 1;
    }

    pub(crate) fn on_completed(&self) {
        self.lock().snap.completed += 1;
    }

    pub(crate) fn on_abandoned(&self) {
        self.lock().snap.abandoned += 1;
    }

    pub(crate) fn on_killed(&self) {
        self.lock().snap.killed += 1;
    }

    pub(crate) fn on_fault(&self) {
        self.lock().snap.faults_injected += 1;
    }

    pub(crate) fn add_upload_bytes(&self, n: u64) {
        self.lock().snap.upload_bytes += n;
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            let key = if map.len() < MAX_TRACKED_PATHS { key } else { "(other)" };
            *map.entry(key.to_owned()).or_insert(0) += 1;
        }
    }
}

/// Counts one request in `active` for as long as it lives.
pub(crate) struct ActiveGuard {
    stats: Arc<Stats>,
    /// `active` right after this request was counted (itself included).
    pub(crate) active_at_start: u64,
}

impl ActiveGuard {
    pub(crate) fn new(stats: Arc<Stats>) -> Self {
        let active_at_start = {
            let mut g = stats.lock();
            g.snap.active += 1;
            g.snap.max_active = g.snap.max_active.max(g.snap.active);
            g.snap.active
        };
        ActiveGuard { stats, active_at_start }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut g = self.stats.lock();
        g.snap.active = g.snap.active.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_tallied() {
        let s = Stats::default();
        assert_eq!(s.on_request("/a", Some("x")), 1);
        assert_eq!(s.on_request("/a", Some("x")), 2);
        assert_eq!(s.on_request("/b", None), 1);
        assert_eq!(s.count_for_request_id("x"), 2);
        assert_eq!(s.count_for_request_id("y"), 0);
        let snap = s.snapshot();
        assert_eq!(snap.requests, 3);
        assert_eq!(snap.requests_by_path.get("/a"), Some(&2));
    }

    #[test]
    fn active_guard_tracks_peak_and_reset_keeps_gauge() {
        let s = Arc::new(Stats::default());
        let a = ActiveGuard::new(s.clone());
        let b = ActiveGuard::new(s.clone());
        assert_eq!(b.active_at_start, 2);
        drop(a);
        let snap = s.snapshot();
        assert_eq!((snap.active, snap.max_active), (1, 2));
        s.reset();
        let snap = s.snapshot();
        assert_eq!((snap.active, snap.max_active), (1, 1));
        drop(b);
        assert_eq!(s.snapshot().active, 0);
    }
}
