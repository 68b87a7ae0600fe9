//! Health of one upstream group: which endpoints are up, and whether the group can serve at
//! all. Endpoints start up (optimistic, so a start-up never blocks traffic); a refused or
//! failed connect marks one down at once (passive), the active prober ([`super::probe`]) marks
//! it down after `fall` failed probes and up again after `rise` good ones. The group serves
//! while any endpoint is up; watchers (held requests) are woken when that changes.

use std::net::SocketAddr;
use std::sync::Mutex;

use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// Endpoint state by address. Looked up on every pick and every finished request; the keys
/// are the group's own resolved addresses, not client input, so a fast hash is safe here
/// (SipHash cost more than the rest of the lookup).
type EndpointMap = std::collections::HashMap<SocketAddr, EndpointHealth, foldhash::fast::RandomState>;

#[derive(Debug, Clone, Copy, Default)]
struct EndpointHealth {
    down: bool,
    successes: u32,
    failures: u32,
    /// Requests in flight to it (least-loaded selection).
    in_flight: usize,
    /// Consecutive failed requests (passive outlier detection).
    errors_in_a_row: u32,
    /// Taken out as an outlier until then.
    ejected_until: Option<Instant>,
    /// Times ejected (each ejection lasts twice as long as the last, up to a cap).
    ejections: u32,
    /// Drained for maintenance (a rolling restart): out of rotation, but not an outage.
    drained: bool,
    /// Requests it answered (a sign of life the prober compares between rounds; a count,
    /// so the request path reads no clock).
    answered: u64,
}

impl EndpointHealth {
    /// Whether it is in rotation; `now` is only asked for when it matters (an ejection), so
    /// the common case reads no clock.
    fn in_rotation(&self, now: impl FnOnce() -> Instant) -> bool {
        !self.down && !self.drained && self.ejected_until.is_none_or(|t| now() >= t)
    }
}

/// Failed requests in a row that eject an endpoint.
const EJECT_AFTER: u32 = 5;
/// First ejection time; doubles per ejection up to [`EJECT_MAX`].
const EJECT_BASE: Duration = Duration::from_secs(30);
const EJECT_MAX: Duration = Duration::from_secs(300);

/// Health of a group's endpoints.
#[derive(Debug)]
pub struct GroupHealth {
    endpoints: Mutex<EndpointMap>,
    serving: watch::Sender<bool>,
}

/// `/status` view of one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    /// Address.
    pub addr: SocketAddr,
    /// Whether it is taken out of rotation.
    pub down: bool,
    /// Whether it is ejected as an outlier right now.
    pub ejected: bool,
    /// Whether it is drained for a rolling restart.
    pub drained: bool,
    /// Requests in flight to it.
    pub in_flight: usize,
}

impl Default for GroupHealth {
    fn default() -> Self {
        GroupHealth { endpoints: Mutex::new(EndpointMap::default()), serving: watch::Sender::new(true) }
    }
}

impl GroupHealth {
    fn with_endpoints<T>(&self, f: impl FnOnce(&mut EndpointMap) -> T) -> T {
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

    /// Whether `addr` is in rotation (up and not ejected).
    pub fn is_up(&self, addr: SocketAddr) -> bool {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&addr).is_none_or(|e| e.in_rotation(Instant::now))
    }

    /// The least-loaded endpoint in rotation among `candidates` (ties: the first from
    /// `start`), and counts a request in flight to it.
    pub fn take_least_loaded(&self, candidates: &[SocketAddr], start: usize) -> Option<SocketAddr> {
        self.take_least_loaded_by(candidates, |a| *a, start).copied()
    }

    /// [`Self::take_least_loaded`] over any list that knows each entry's address, so a caller
    /// need not collect the addresses into a list of their own on every request.
    pub fn take_least_loaded_by<'c, T>(
        &self,
        candidates: &'c [T],
        addr_of: impl Fn(&T) -> SocketAddr,
        start: usize,
    ) -> Option<&'c T> {
        let now = std::cell::OnceCell::new();
        let now = || *now.get_or_init(Instant::now);
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let n = candidates.len();
        let mut least: Option<(usize, &T)> = None;
        for i in 0..n {
            let candidate = &candidates[(start + i) % n];
            let in_flight = match map.get(&addr_of(candidate)) {
                Some(e) if !e.in_rotation(now) => continue,
                Some(e) => e.in_flight,
                None => 0,
            };
            // Strictly less: among equals the first from `start` stays.
            if least.is_none_or(|(fewest, _)| in_flight < fewest) {
                least = Some((in_flight, candidate));
            }
        }
        let (_, chosen) = least?;
        map.entry(addr_of(chosen)).or_default().in_flight += 1;
        Some(chosen)
    }

    /// A request to `addr` ended; `failed` when it failed in a way that blames the endpoint
    /// (refused/closed connection, 5xx). Five failures in a row eject it for a while (30 s,
    /// doubling), unless that would leave fewer than half of the endpoints in rotation.
    pub fn finished(&self, addr: SocketAddr, failed: Option<bool>) {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = map.get_mut(&addr) else { return };
        e.in_flight = e.in_flight.saturating_sub(1);
        match failed {
            Some(false) => {
                e.errors_in_a_row = 0;
                e.answered = e.answered.wrapping_add(1);
            }
            Some(true) => {
                e.errors_in_a_row += 1;
                if e.errors_in_a_row >= EJECT_AFTER {
                    // Only now are the clock and the others' state needed.
                    let now = Instant::now();
                    let total = map.len();
                    let ejected = map.values().filter(|e| e.ejected_until.is_some_and(|t| now < t)).count();
                    // Never eject the last half: with two endpoints, one may go; with one, none.
                    if let Some(e) = map.get_mut(&addr).filter(|_| (ejected + 1) * 2 <= total) {
                        let time = EJECT_BASE.saturating_mul(1 << e.ejections.min(4)).min(EJECT_MAX);
                        e.ejected_until = Some(now + time);
                        e.ejections += 1;
                        e.errors_in_a_row = 0;
                        tracing::warn!(%addr, ?time, "upstream endpoint ejected as an outlier");
                    }
                }
            }
            None => {}
        }
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

    /// Takes `addr` out of rotation for maintenance (`true`) or puts it back (`false`).
    pub fn set_drained(&self, addr: SocketAddr, drained: bool) {
        self.with_endpoints(|map| map.entry(addr).or_default().drained = drained);
    }

    /// The maintenance health gate passed for `addr`: it is up now (the gate asked more of
    /// it than the probes' `rise` does).
    pub fn mark_up(&self, addr: SocketAddr) {
        self.with_endpoints(|map| {
            let e = map.entry(addr).or_default();
            e.down = false;
            e.failures = 0;
        });
    }

    /// Requests `addr` has answered so far (compare two readings: a change is a sign of life).
    pub fn answered(&self, addr: SocketAddr) -> u64 {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&addr).map_or(0, |e| e.answered)
    }

    /// Requests in flight to `addr`.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&addr).map_or(0, |e| e.in_flight)
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
        let now = Instant::now();
        let mut all: Vec<EndpointStatus> = map
            .iter()
            .map(|(a, e)| EndpointStatus {
                addr: *a,
                down: e.down,
                ejected: e.ejected_until.is_some_and(|t| now < t),
                drained: e.drained,
                in_flight: e.in_flight,
            })
            .collect();
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

    #[test]
    fn least_loaded_selection_and_outlier_ejection() {
        let health = GroupHealth::default();
        let both = [addr(1), addr(2)];
        health.retain(&both);
        assert_eq!(health.take_least_loaded(&both, 0), Some(addr(1)));
        assert_eq!(health.take_least_loaded(&both, 0), Some(addr(2)), "the idle one");
        assert_eq!(health.take_least_loaded(&both, 0), Some(addr(1)), "tie: from the start");
        for _ in 0..5 {
            health.finished(addr(1), Some(true));
        }
        assert!(!health.is_up(addr(1)), "five failures in a row eject it");
        assert!(health.serving(), "ejection is not an outage");
        assert_eq!(health.take_least_loaded(&both, 0), Some(addr(2)));
        for _ in 0..10 {
            health.finished(addr(2), Some(true));
        }
        assert!(health.is_up(addr(2)), "the last half is never ejected");
    }
}
