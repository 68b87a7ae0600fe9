//! The client-side numbers: connections open (in total and per client IP) with the permits
//! that hold them, connections refused by limit, request headers refused by limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pingora::protocols::http::v1::header_limits::HeaderLimitHit;
use serde::Serialize;

/// Per-IP counts are split over this many locks: thousands of connections arriving at once
/// from many addresses would otherwise all wait on one.
const SHARDS: usize = 16;

/// Why a connection (or a forwarded client's request) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `server.max_connections` connections were open.
    Total,
    /// `server.max_connections_per_ip` were open from this client IP.
    PerIp,
}

/// Connections open and limits hit on the client side, shared by every listener thread.
#[derive(Debug, Clone, Default)]
pub struct ClientCounts {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    open: AtomicUsize,
    accepted: AtomicU64,
    per_ip: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
    header_timeout: AtomicU64,
    header_too_large: AtomicU64,
    header_line_too_long: AtomicU64,
}

/// A point-in-time copy of the counts, for `/status` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClientSnapshot {
    /// Client connections open now.
    pub open: usize,
    /// Client connections taken since start (refused ones not included).
    pub accepted: u64,
    /// Connections refused at `server.max_connections`.
    pub refused_max_connections: u64,
    /// Connections (or forwarded clients' requests) refused at `server.max_connections_per_ip`.
    pub refused_max_connections_per_ip: u64,
    /// Request headers not received within `server.request_header_timeout`.
    pub header_timeouts: u64,
    /// Request headers over `server.max_request_header`.
    pub headers_too_large: u64,
    /// Request headers with a line over `server.max_request_header_line`.
    pub header_lines_too_long: u64,
}

/// Holds one connection (or one forwarded client's request) in the counts; dropping it
/// gives the place back.
#[derive(Debug)]
#[must_use = "the place is given back when the permit is dropped"]
pub struct Permit {
    inner: Arc<Inner>,
    counted_in_total: bool,
    ip: Option<IpAddr>,
}

impl ClientCounts {
    /// Takes a place for a new connection from `ip` (`None`: not counted per IP, e.g. a
    /// trusted proxy's connection, whose clients are counted per request instead).
    pub fn connect(
        &self,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Permit, Refused> {
        let inner = &self.inner;
        if inner.open.fetch_add(1, Ordering::AcqRel) >= max_total {
            inner.open.fetch_sub(1, Ordering::AcqRel);
            inner.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        let permit = Permit { inner: Arc::clone(inner), counted_in_total: true, ip: None };
        let permit = match ip {
            Some(ip) => self.take_ip(permit, ip, max_per_ip)?,
            None => permit,
        };
        inner.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(permit)
    }

    /// Takes a place for one request of a client known from a trusted proxy's forwarding
    /// headers (its connection is the proxy's and is not counted per IP).
    pub fn forwarded_request(&self, ip: IpAddr, max_per_ip: usize) -> Result<Permit, Refused> {
        let permit = Permit { inner: Arc::clone(&self.inner), counted_in_total: false, ip: None };
        self.take_ip(permit, ip, max_per_ip)
    }

    fn take_ip(&self, mut permit: Permit, ip: IpAddr, max_per_ip: usize) -> Result<Permit, Refused> {
        let mut shard = self.inner.shard(ip).lock().unwrap_or_else(PoisonError::into_inner);
        let count = shard.entry(ip).or_insert(0);
        if *count >= max_per_ip {
            if *count == 0 {
                shard.remove(&ip);
            }
            drop(shard);
            self.inner.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            // Dropping `permit` gives back its place in the total.
            return Err(Refused::PerIp);
        }
        *count += 1;
        permit.ip = Some(ip);
        Ok(permit)
    }

    /// Counts a request header refused by a limit.
    pub fn header_refused(&self, hit: HeaderLimitHit) {
        let counter = match hit {
            HeaderLimitHit::Timeout { .. } => &self.inner.header_timeout,
            HeaderLimitHit::TooLarge { .. } => &self.inner.header_too_large,
            HeaderLimitHit::LineTooLong { .. } => &self.inner.header_line_too_long,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open from `ip` now (counted per IP).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let shard = self.inner.shard(ip).lock().unwrap_or_else(PoisonError::into_inner);
        shard.get(&ip).copied().unwrap_or(0)
    }

    /// The counts now.
    pub fn snapshot(&self) -> ClientSnapshot {
        let i = &self.inner;
        ClientSnapshot {
            open: i.open.load(Ordering::Relaxed),
            accepted: i.accepted.load(Ordering::Relaxed),
            refused_max_connections: i.refused_total.load(Ordering::Relaxed),
            refused_max_connections_per_ip: i.refused_per_ip.load(Ordering::Relaxed),
            header_timeouts: i.header_timeout.load(Ordering::Relaxed),
            headers_too_large: i.header_too_large.load(Ordering::Relaxed),
            header_lines_too_long: i.header_line_too_long.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        let key = match ip {
            IpAddr::V4(v4) => u32::from(v4) as usize,
            IpAddr::V6(v6) => (u128::from(v6) ^ (u128::from(v6) >> 64)) as usize,
        };
        &self.per_ip[key % SHARDS]
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.counted_in_total {
            self.inner.open.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(ip) = self.ip {
            let mut shard = self.inner.shard(ip).lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = shard.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    // Forget idle addresses: the map holds only clients with something open.
                    shard.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn total_cap_refuses_and_gives_back() {
        let counts = ClientCounts::default();
        let a = counts.connect(None, 2, 10).expect("first");
        let _b = counts.connect(None, 2, 10).expect("second");
        assert_eq!(counts.connect(None, 2, 10).err(), Some(Refused::Total));
        drop(a);
        let _c = counts.connect(None, 2, 10).expect("a place was given back");
        let s = counts.snapshot();
        assert_eq!((s.open, s.accepted, s.refused_max_connections), (2, 3, 1));
    }

    #[test]
    fn per_ip_cap_counts_each_address_and_forgets_idle_ones() {
        let counts = ClientCounts::default();
        let a1 = counts.connect(ip(1), 100, 2).expect("a1");
        let a2 = counts.connect(ip(1), 100, 2).expect("a2");
        assert_eq!(counts.connect(ip(1), 100, 2).err(), Some(Refused::PerIp));
        // The refused one gave its place in the total back.
        assert_eq!(counts.snapshot().open, 2);
        let _b = counts.connect(ip(2), 100, 2).expect("another address");
        let fwd = counts.forwarded_request(IpAddr::from([192, 0, 2, 1]), 2);
        assert_eq!(fwd.err(), Some(Refused::PerIp), "forwarded requests share the address's count");
        drop((a1, a2));
        assert_eq!(counts.open_from(IpAddr::from([192, 0, 2, 1])), 0);
        assert_eq!(counts.snapshot().open, 1);
        assert_eq!(counts.snapshot().refused_max_connections_per_ip, 2);
    }
}
