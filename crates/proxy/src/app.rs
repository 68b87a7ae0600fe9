//! Process-wide shared state: the current config (swapped whole on reload) and the state that
//! outlives any one config (upstream groups with their admission, health and maintenance,
//! keyed by name), plus what reload and shutdown need: where the config came from, the
//! settings fixed at start, the reload record and the count of requests in progress.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::admission::tenant::TenantRateLimiter;
use crate::cluster::Cluster;
use crate::config::changes::RestartOnly;
use crate::config::{Config, Overrides};
use crate::downstream::counts::ClientCounts;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::reload::{ReloadLog, ReloadSummary};
use crate::shutdown::ActiveRequests;
use crate::upstream::Upstreams;

/// Everything the proxy hooks, the admin API and background services share.
#[derive(Debug)]
pub struct App {
    config: ArcSwap<Config>,
    /// Upstream groups (resolution, selection, counters).
    pub upstreams: Upstreams,
    /// The CLI overrides, re-applied on every reload.
    pub overrides: Overrides,
    /// Requests in progress on the client listeners (the shutdown drain waits for them).
    pub active: ActiveRequests,
    /// Client connections open and client-side limits hit.
    pub clients: ClientCounts,
    /// The replicas' shared state through Redis (`[cluster]`; fixed at start).
    pub cluster: Option<Arc<Cluster>>,
    /// Starting, serving or shutting down: what `/ready` reports.
    pub lifecycle: Lifecycle,
    rate_limiter: ArcSwap<Option<Arc<TenantRateLimiter>>>,
    started: Instant,
    /// Per-request Prometheus metrics (state metrics are read at scrape time).
    pub metrics: Metrics,
    config_path: Option<PathBuf>,
    restart_only: RestartOnly,
    reloads: ReloadLog,
    resolve_now: Notify,
}

impl App {
    /// Builds the shared state for a first config loaded from the embedded defaults (a
    /// reload re-validates those).
    pub fn new(config: Config, overrides: Overrides) -> Arc<App> {
        Self::with_config_path(config, overrides, None)
    }

    /// Builds the shared state for a first config loaded from `path` (`None`: the embedded
    /// defaults); a reload reads the same file again.
    pub fn with_config_path(config: Config, overrides: Overrides, path: Option<PathBuf>) -> Arc<App> {
        let upstreams = Upstreams::default();
        upstreams.sync(&config);
        let rate_limiter = ArcSwap::from_pointee(rate_limiter_for(&config, None));
        let cluster = Cluster::new(&config.cluster);
        Arc::new(App {
            restart_only: RestartOnly::of(&config),
            config: ArcSwap::from_pointee(config),
            upstreams,
            overrides,
            active: ActiveRequests::default(),
            clients: ClientCounts::default(),
            cluster,
            lifecycle: Lifecycle::default(),
            rate_limiter,
            started: Instant::now(),
            // Fails only on a programming error in the metric definitions (a unit test
            // builds them), never because of config or traffic.
            metrics: Metrics::new().unwrap_or_else(|e| panic!("metric definitions are invalid: {e}")),
            config_path: path,
            reloads: ReloadLog::default(),
            resolve_now: Notify::new(),
        })
    }

    /// The config file a reload reads (`None`: the embedded defaults).
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The settings fixed at start (listeners, threads, shutdown grace, logging).
    pub fn restart_only(&self) -> &RestartOnly {
        &self.restart_only
    }

    /// Reload counts and the latest attempts, as plain data (for `/status` and metrics).
    pub fn reload_summary(&self) -> ReloadSummary {
        self.reloads.snapshot()
    }

    /// The reload record (locked for the length of a reload by [`crate::reload::reload`]).
    pub fn reload_log(&self) -> &ReloadLog {
        &self.reloads
    }

    /// Resolves when a new config asks for upstream names to be resolved now (the resolver
    /// waits on it besides its period), so a reload's new servers are reachable at once.
    pub async fn resolve_requested(&self) {
        self.resolve_now.notified().await;
    }

    /// The per-tenant rate limiter, when one is configured.
    pub fn rate_limiter(&self) -> Option<Arc<TenantRateLimiter>> {
        self.rate_limiter.load().as_ref().clone()
    }

    /// The config in force now; a request keeps the snapshot it started with.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Installs a new config (already validated) and syncs run-time state with it.
    pub fn install(&self, config: Config) {
        self.upstreams.sync(&config);
        let current = self.rate_limiter();
        self.rate_limiter.store(Arc::new(rate_limiter_for(&config, current)));
        self.config.store(Arc::new(config));
        // New or changed servers would otherwise wait for the next periodic resolution.
        self.resolve_now.notify_one();
    }

    /// Time since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

/// The rate limiter `config` asks for, keeping `current` (and what it counted) when the quota
/// is unchanged.
fn rate_limiter_for(
    config: &Config,
    current: Option<Arc<TenantRateLimiter>>,
) -> Option<Arc<TenantRateLimiter>> {
    let spec = config.tenants.rate_limit?;
    match current {
        Some(limiter) if limiter.quota() == (spec.rate, spec.burst) => Some(limiter),
        _ => TenantRateLimiter::new(spec.rate, spec.burst).map(Arc::new),
    }
}
