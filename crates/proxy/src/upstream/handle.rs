//! The group's side of [`UpstreamHandle`]: each call goes to the admission or health state
//! that owns it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::{Endpoint, UpstreamState};
use crate::maintenance::handle::UpstreamHandle;

impl UpstreamHandle for UpstreamState {
    fn name(&self) -> &str {
        UpstreamState::name(self)
    }

    fn servers(&self) -> Vec<String> {
        UpstreamState::servers(self).iter().map(ToString::to_string).collect()
    }

    fn endpoints_of(&self, server: Option<&str>) -> Vec<Endpoint> {
        UpstreamState::endpoints_of(self, server)
    }

    fn queued(&self) -> usize {
        self.admission().queued()
    }

    fn held(&self) -> bool {
        self.admission().held()
    }

    fn in_flight(&self) -> usize {
        self.admission().in_flight()
    }

    fn in_flight_to(&self, addr: SocketAddr) -> usize {
        self.health().in_flight(addr)
    }

    fn hold(&self, until: Option<Instant>, ramp: Duration) {
        self.admission().set_hold(until, ramp);
    }

    fn set_capacity_share(&self, share: f64) {
        self.admission().set_capacity_share(share);
    }

    fn set_drained(&self, addr: SocketAddr, drained: bool) {
        self.health().set_drained(addr, drained);
    }

    fn mark_up(&self, addr: SocketAddr) {
        self.health().mark_up(addr);
    }

    fn sync_availability(&self, ramp: Duration) {
        UpstreamState::sync_availability(self, ramp);
    }
}
