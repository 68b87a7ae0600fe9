//! Process-wide shared state: the current config (swapped whole on reload) and the state that
//! outlives any one config (upstream groups; later admission and maintenance), keyed by name.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::config::{Config, Overrides};
use crate::upstream::Upstreams;

/// Everything the proxy hooks, the admin API and background services share.
#[derive(Debug)]
pub struct App {
    config: ArcSwap<Config>,
    /// Upstream groups (resolution, selection, counters).
    pub upstreams: Upstreams,
    /// The CLI overrides, re-applied on every reload.
    pub overrides: Overrides,
    started: Instant,
}

impl App {
    /// Builds the shared state for a first config.
    pub fn new(config: Config, overrides: Overrides) -> Arc<App> {
        let upstreams = Upstreams::default();
        upstreams.sync(&config);
        Arc::new(App {
            config: ArcSwap::from_pointee(config),
            upstreams,
            overrides,
            started: Instant::now(),
        })
    }

    /// The config in force now; a request keeps the snapshot it started with.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Installs a new config (already validated) and syncs run-time state with it.
    pub fn install(&self, config: Config) {
        self.upstreams.sync(&config);
        self.config.store(Arc::new(config));
    }

    /// Time since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}
