//! The narrow handle the maintenance controller holds on an upstream group: what a cycle may
//! read (replicas, queue, in-flight counts) and do (hold new requests and release them with a
//! ramp, take a replica out of rotation and put it back). The group implements it; the
//! controller, the health gate and the restart watch see nothing else of it, so the control
//! plane cannot reach into admission's or health's internals, and the upstream module can
//! hold its controller without a circle between the two.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::upstream::Endpoint;

/// One upstream group, as maintenance sees it.
pub trait UpstreamHandle: Send + Sync + 'static {
    /// The group's name (for logs).
    fn name(&self) -> &str;
    /// The configured servers (replicas), `host:port` each.
    fn servers(&self) -> Vec<String>;
    /// The resolved endpoints of `server`, or of every server with `None`.
    fn endpoints_of(&self, server: Option<&str>) -> Vec<Endpoint>;
    /// Requests waiting in the group's queue.
    fn queued(&self) -> usize;
    /// Whether new requests are held.
    fn held(&self) -> bool;
    /// Requests in flight to the group.
    fn in_flight(&self) -> usize;
    /// Requests in flight to one endpoint.
    fn in_flight_to(&self, addr: SocketAddr) -> usize;
    /// Holds new requests until `until` (`None`: releases them, ramping over `ramp`).
    fn hold(&self, until: Option<Instant>, ramp: Duration);
    /// The share of the learned capacity in force (less than 1 while a replica is out).
    fn set_capacity_share(&self, share: f64);
    /// Takes `addr` out of rotation, or puts it back.
    fn set_drained(&self, addr: SocketAddr, drained: bool);
    /// Records that `addr` passed the health gate.
    fn mark_up(&self, addr: SocketAddr);
    /// Brings admission in line with health again (ramping over `ramp` where it opens).
    fn sync_availability(&self, ramp: Duration);
}
