//! Process-wide shared state: the current config (swapped whole on reload) and the state that
//! outlives any one config (upstream groups; later admission and maintenance), keyed by name.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::admission::tenant::TenantRateLimiter;
use crate::config::{Config, Overrides};
use crate::metrics::Metrics;
use crate::upstream::Upstreams;

/// Everything the proxy hooks, the admin API and background services share.
#[derive(Debug)]
pub struct App {
    config: ArcSwap<Config>,
    /// Upstream groups (resolution, selection, counters).
    pub upstreams: Upstreams,
    /// The CLI overrides, re-applied on every reload.
    pub overrides: Overrides,
    rate_limiter: ArcSwap<Option<Arc<TenantRateLimiter>>>,
    started: Instant,
    /// Per-request Prometheus metrics (state metrics are read at scrape time).
    pub metrics: Metrics,
}

impl App {
    /// Builds the shared state for a first config.
    pub fn new(config: Config, overrides: Overrides) -> Arc<App> {
        let upstreams = Upstreams::default();
        upstreams.sync(&config);
        let rate_limiter = ArcSwap::from_pointee(rate_limiter_for(&config, None));
        Arc::new(App {
            config: ArcSwap::from_pointee(config),
            upstreams,
            overrides,
            rate_limiter,
            started: Instant::now(),
            // Fails only on a programming error in the metric definitions (a unit test
            // builds them), never because of config or traffic.
            metrics: Metrics::new().unwrap_or_else(|e| panic!("metric definitions are invalid: {e}")),
        })
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
