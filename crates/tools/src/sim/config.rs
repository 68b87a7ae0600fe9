//! [`SimConfig`]: the knobs of the simulated Dify API container (gunicorn capacity, DB pool,
//! per-app limit, boot time, keep-alive, streaming shape, CPU contention).

use std::time::Duration;

use super::service_time::ServiceTime;

/// Configuration of a [`Simulator`](super::Simulator).
///
/// Defaults model Dify's `api` container out of the box: gunicorn with one gevent worker
/// (`SERVER_WORKER_AMOUNT=1`) and 10 `worker_connections`, a 1024 listen backlog, runs taking
/// a fixed 50 ms, no DB or per-app limit, 2 s keep-alive, 5 stream events, pings every 10 s.
///
/// Capacity, limits and timings can be changed on a running simulator with
/// [`Simulator::set_config`](super::Simulator::set_config); they apply to new connections and
/// requests. `backlog` only applies when the listener is (re)bound.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// gunicorn worker processes.
    pub workers: usize,
    /// gevent `worker_connections` per worker. At most `workers * worker_connections`
    /// connections are accepted at once; further ones wait un-accepted in the listen backlog.
    /// `0` means nothing is ever accepted (a hung backend).
    pub worker_connections: usize,
    /// Listen backlog passed to `listen(2)` (the kernel caps it at `net.core.somaxconn`).
    pub backlog: u32,
    /// How long a run (workflow / chat / completion) takes, before contention slowdown.
    pub service_time: ServiceTime,
    /// PostgreSQL connection limit: when this many requests already hold a DB connection,
    /// further ones fail at once with the HTTP 500 Dify answers then (its generic envelope,
    /// [`super::DIFY_UNHANDLED_ERROR`]). `None` = unlimited.
    pub db_connections: Option<usize>,
    /// Dify's `APP_MAX_ACTIVE_REQUESTS` per app key (`Authorization: Bearer app-…`): beyond
    /// this many concurrent runs of one app, answer 429 without doing the work. `None` =
    /// unlimited.
    pub app_max_active_requests: Option<usize>,
    /// Time between a restart and the port accepting connections again (migrations at boot).
    /// [`Simulator::start`](super::Simulator::start) serves immediately; the CLI uses this
    /// delay for restarts triggered by SIGHUP.
    pub boot_delay: Duration,
    /// gunicorn `keepalive`: a connection with no request in flight for this long is closed
    /// (this includes a fresh connection that has not sent a full request head yet).
    pub keepalive_timeout: Duration,
    /// Number of node (workflow) or answer-chunk (chat/completion) events in a streaming run.
    pub stream_events: usize,
    /// Interval of `event: ping` keepalive frames in a streaming run; zero disables pings.
    pub ping_interval: Duration,
    /// Extra service time per other run already active when a run starts (models CPU/LLM
    /// contention: latency grows with load). `None` = no slowdown.
    pub slowdown_per_active: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            workers: 1,
            worker_connections: 10,
            backlog: 1024,
            service_time: ServiceTime::default(),
            db_connections: None,
            app_max_active_requests: None,
            boot_delay: Duration::ZERO,
            keepalive_timeout: Duration::from_secs(2),
            stream_events: 5,
            ping_interval: Duration::from_secs(10),
            slowdown_per_active: None,
        }
    }
}

impl SimConfig {
    /// Connections served at once: `workers * worker_connections` (saturating).
    pub fn capacity(&self) -> usize {
        self.workers.saturating_mul(self.worker_connections)
    }

    /// Sets `workers` and `worker_connections` so that [`capacity`](Self::capacity) is `c`
    /// (one worker with `c` connections). Builder-style helper for tests.
    pub fn with_capacity(mut self, c: usize) -> Self {
        self.workers = 1;
        self.worker_connections = c;
        self
    }

    /// Builder-style setter for [`service_time`](Self::service_time).
    pub fn with_service_time(mut self, service_time: ServiceTime) -> Self {
        self.service_time = service_time;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_dify() {
        let c = SimConfig::default();
        assert_eq!(c.capacity(), 10);
        assert_eq!(c.backlog, 1024);
        assert_eq!(c.keepalive_timeout, Duration::from_secs(2));
        assert_eq!(c.service_time, ServiceTime::Fixed(Duration::from_millis(50)));
        assert_eq!(c.ping_interval, Duration::from_secs(10));
        assert_eq!(c.stream_events, 5);
    }

    #[test]
    fn capacity_saturates() {
        let c = SimConfig { workers: usize::MAX, worker_connections: 2, ..SimConfig::default() };
        assert_eq!(c.capacity(), usize::MAX);
        assert_eq!(SimConfig::default().with_capacity(3).capacity(), 3);
    }
}
