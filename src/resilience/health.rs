//! Health of one upstream group: which endpoints are up, and whether the group can serve at
//! all. Endpoints start up (optimistic, so a start-up never blocks traffic); a refused or
//! failed connect marks one down at once (passive), the active prober ([`super::probe`]) marks
//! it down after `fall` failed probes and up again after `rise` good ones. The group serves
//! while any endpoint is up; watchers (held requests) are woken when that changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, Default)]
struct EndpointHealth {
    down: bool,
    successes: u32,
    failures: u32,
}

/// Health of a group's endpoints.
#[derive(Debug)]
pub struct GroupHealth {
    endpoints: Mutex<HashMap<SocketAddr, EndpointHealth>>,
    serving: watch::Sender<bool>,
}

/// `/status` view of one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    /// Address.
    pub addr: SocketAddr,
    /// Whether it is taken out of rotation.
    pub down: bool,
}

impl Default for GroupHealth {
    fn default() -> Self {
        GroupHealth { endpoints: Mutex::new(HashMap::new()), serving: watch::Sender::new(true) }
    }
}

impl GroupHealth {
    fn with_endpoints<T>(&self, f: impl FnOnce(&mut HashMap<SocketAddr, EndpointHealth>) -> T) -> T {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let result = f(&mut map);
        let serving = map.is_empty() || map.values().any(|e| !e.down);
        drop(map);
        self.serving.send_if_modified(|current| {
            let changed = *current != serving;
            *current = serving;
            changed
        });
        result
    }

    /// Keeps health entries only for `addrs` (after re-resolution); new ones start up.
    pub fn retain(&self, addrs: &[SocketAddr]) {
        self.with_endpoints(|map| {
            map.retain(|a, _| addrs.contains(a));
            for a in addrs {
                map.entry(*a).or_default();
            }
        });
    }

    /// Whether `addr` is in rotation.
    pub fn is_up(&self, addr: SocketAddr) -> bool {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&addr).is_none_or(|e| !e.down)
    }

    /// A connect to `addr` failed: take it out of rotation now. Returns whether it was up.
    pub fn connect_failed(&self, addr: SocketAddr) -> bool {
        self.with_endpoints(|map| {
            let e = map.entry(addr).or_default();
            let was_up = !e.down;
            e.down = true;
            e.successes = 0;
            was_up
        })
    }

    /// Records a probe result; returns `Some(up)` when the endpoint changed state.
    pub fn probed(&self, addr: SocketAddr, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        self.with_endpoints(|map| {
            let e = map.entry(addr).or_default();
            if ok {
                e.failures = 0;
                e.successes = e.successes.saturating_add(1);
                if e.down && e.successes >= rise {
                    e.down = false;
                    return Some(true);
                }
            } else {
                e.successes = 0;
                e.failures = e.failures.saturating_add(1);
                if !e.down && e.failures >= fall {
                    e.down = true;
                    return Some(false);
                }
            }
            None
        })
    }

    /// Whether any endpoint can serve.
    pub fn serving(&self) -> bool {
        *self.serving.borrow()
    }

    /// A receiver that changes when the group starts or stops serving.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.serving.subscribe()
    }

    /// Per-endpoint view.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<EndpointStatus> =
            map.iter().map(|(a, e)| EndpointStatus { addr: *a, down: e.down }).collect();
        all.sort_by_key(|e| e.addr);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn passive_failure_takes_an_endpoint_out_and_probes_bring_it_back() {
        let health = GroupHealth::default();
        health.retain(&[addr(1), addr(2)]);
        let rx = health.watch();
        assert!(health.connect_failed(addr(1)));
        assert!(health.serving(), "one endpoint is still up");
        assert!(health.connect_failed(addr(2)));
        assert!(!health.serving() && !*rx.borrow(), "nothing can serve");
        assert_eq!(health.probed(addr(2), true, 2, 2), None, "one good probe is not enough");
        assert_eq!(health.probed(addr(2), true, 2, 2), Some(true));
        assert!(health.serving() && *rx.borrow());
        assert!(!health.is_up(addr(1)) && health.is_up(addr(2)));
        assert_eq!(health.probed(addr(2), false, 2, 2), None);
        assert_eq!(health.probed(addr(2), false, 2, 2), Some(false));
        assert!(!health.serving());
    }
}
