//! Upstream groups at run time: which socket addresses each configured `host:port` resolves
//! to now, peer selection, and per-group counters. This state is keyed by upstream name and
//! survives config reloads ([`Upstreams::sync`]); the DNS refresher ([`resolver`]) keeps the
//! addresses current, because a recreated Dify container comes back with a new IP.

pub mod endpoint;
mod handle;
pub mod resolver;

pub use endpoint::Endpoint;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::admission::{Admission, AdmissionPolicy};
use crate::maintenance::controller::Maintenance;
use crate::resilience::health::GroupHealth;
use crate::resilience::retry::RetryBudget;

use arc_swap::ArcSwap;

use crate::config::{Config, HealthSpec, ServerAddr};

/// Run-time state of one upstream group.
#[derive(Debug)]
pub struct UpstreamState {
    name: String,
    servers: ArcSwap<Vec<ServerAddr>>,
    endpoints: ArcSwap<Vec<Endpoint>>,
    next: AtomicUsize,
    admission: Arc<Admission>,
    health: GroupHealth,
    retry_budget: RetryBudget,
    maintenance: Maintenance,
    last_resolve_error: Mutex<Option<String>>,
}

impl UpstreamState {
    fn new(name: &str, servers: Vec<ServerAddr>, policy: AdmissionPolicy) -> Self {
        UpstreamState {
            name: name.to_string(),
            servers: ArcSwap::from_pointee(servers),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            admission: Admission::new(name, policy),
            health: GroupHealth::default(),
            // Limits come from `[upstreams.NAME.retry]` in `Upstreams::sync`.
            retry_budget: RetryBudget::new(0.2, 3.0, std::time::Duration::from_secs(10)),
            maintenance: Maintenance::new(name),
            last_resolve_error: Mutex::new(None),
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configured servers.
    pub fn servers(&self) -> Arc<Vec<ServerAddr>> {
        self.servers.load_full()
    }

    /// The currently resolved endpoints.
    pub fn endpoints(&self) -> Arc<Vec<Endpoint>> {
        self.endpoints.load_full()
    }

    /// Picks the least-loaded endpoint in rotation (ties round robin) and counts a request
    /// in flight to it until the lease drops; `None` when nothing is resolved or every
    /// endpoint is down or ejected.
    pub fn pick(self: &Arc<Self>) -> Option<(Endpoint, EndpointLease)> {
        let endpoints = self.endpoints.load();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len().max(1);
        let addr = self.health.take_least_loaded_by(&endpoints, |e| e.addr, start)?.addr;
        // The first endpoint with that address, should two servers resolve to the same one.
        let endpoint = endpoints.iter().find(|e| e.addr == addr)?.clone();
        Some((endpoint, EndpointLease { group: Arc::clone(self), addr, failed: None }))
    }

    /// The resolved endpoints of configured server `server` (`host:port`), or all of them
    /// with `None`: what one step of a rolling restart covers.
    pub fn endpoints_of(&self, server: Option<&str>) -> Vec<Endpoint> {
        self.endpoints.load().iter().filter(|e| server.is_none_or(|s| *e.server == *s)).cloned().collect()
    }

    /// The group's retry budget (shared by every request to it).
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.retry_budget
    }

    /// The group's maintenance controller (drain, restart, hold, resume).
    pub fn maintenance(&self) -> &Maintenance {
        &self.maintenance
    }

    /// The group's endpoint health.
    pub fn health(&self) -> &GroupHealth {
        &self.health
    }

    /// Records one round of active probes (`(endpoint, answered well)`) under `spec`'s rise
    /// and fall, then tells admission whether the group can serve. Logs each endpoint that
    /// changed state.
    pub fn probed(&self, results: &[(std::net::SocketAddr, bool)], spec: &HealthSpec) {
        for &(addr, ok) in results {
            if let Some(up) = self.health.probed(addr, ok, spec.rise, spec.fall) {
                tracing::warn!(upstream = %self.name, %addr, up, "upstream endpoint health changed");
            }
        }
        self.sync_availability(spec.ramp.0);
    }

    /// A connect to `addr` failed: take it out of rotation and, when nothing is left, hold
    /// admission until a probe sees the group back.
    pub fn connect_failed(&self, addr: std::net::SocketAddr, ramp: std::time::Duration) {
        if self.health.connect_failed(addr) {
            tracing::warn!(upstream = %self.name, %addr, "upstream endpoint refused a connection: out of rotation");
        }
        self.sync_availability(ramp);
    }

    /// Tells admission whether the group can serve (it holds requests while it cannot, and
    /// ramps up over `ramp` when it can again).
    pub fn sync_availability(&self, ramp: std::time::Duration) {
        self.admission.set_available(self.health.serving(), ramp);
    }

    /// The group's admission (its learned limit and queue survive config reloads).
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// The last DNS error, if the last resolution of any server failed.
    pub fn last_resolve_error(&self) -> Option<String> {
        self.last_resolve_error.lock().ok().and_then(|e| e.clone())
    }

    /// Replaces the resolved endpoints and records the resolution outcome.
    pub fn set_endpoints(&self, endpoints: Vec<Endpoint>, error: Option<String>) {
        self.health.retain(&endpoints.iter().map(|e| e.addr).collect::<Vec<_>>());
        if **self.endpoints.load() != endpoints {
            tracing::info!(upstream = %self.name, endpoints = ?endpoints.iter().map(|e| e.addr).collect::<Vec<_>>(), "upstream endpoints changed");
            self.endpoints.store(Arc::new(endpoints));
        }
        if let Ok(mut slot) = self.last_resolve_error.lock() {
            *slot = error;
        }
    }
}

/// A request in flight to one endpoint; dropping it ends the count and reports the outcome
/// for outlier detection.
#[derive(Debug)]
pub struct EndpointLease {
    group: Arc<UpstreamState>,
    addr: std::net::SocketAddr,
    failed: Option<bool>,
}

impl EndpointLease {
    /// Records whether the request failed because of this endpoint (`None`: tells nothing).
    pub fn set_outcome(&mut self, failed: Option<bool>) {
        self.failed = failed;
    }
}

impl Drop for EndpointLease {
    fn drop(&mut self) {
        self.group.health.finished(self.addr, self.failed);
    }
}

/// Groups by name, looked up on every request: the names come from the config, so a fast
/// hash is safe (SipHash was most of the lookup).
type Groups = HashMap<String, Arc<UpstreamState>, foldhash::fast::RandomState>;

/// All upstream groups by name.
#[derive(Debug, Default)]
pub struct Upstreams {
    groups: ArcSwap<Groups>,
}

impl Upstreams {
    /// Makes the set of groups match `config`: new groups are added, removed ones dropped,
    /// existing ones keep their state and get the new server list.
    pub fn sync(&self, config: &Config) {
        let current = self.groups.load();
        let mut next = Groups::with_capacity_and_hasher(config.upstreams.len(), Default::default());
        for (name, spec) in &config.upstreams {
            let policy = crate::admission::AdmissionPolicy::for_upstream(config, name);
            let state = match current.get(name) {
                Some(existing) => {
                    existing.servers.store(Arc::new(spec.servers.clone()));
                    existing.admission.reconfigure(policy);
                    Arc::clone(existing)
                }
                None => Arc::new(UpstreamState::new(name, spec.servers.clone(), policy)),
            };
            state.retry_budget.set_limits(spec.retry.budget_ratio, f64::from(spec.retry.budget_min));
            next.insert(name.clone(), state);
        }
        self.groups.store(Arc::new(next));
    }

    /// The group named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<UpstreamState>> {
        self.groups.load().get(name).cloned()
    }

    /// Every group, sorted by name.
    pub fn all(&self) -> Vec<Arc<UpstreamState>> {
        let mut all: Vec<_> = self.groups.load().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
