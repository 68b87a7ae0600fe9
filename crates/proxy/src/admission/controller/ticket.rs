//! What a request brings to admission: its tenant, class, stated deadline and kind.

use std::time::Duration;

use tokio::time::Instant;

use crate::admission::queue::TenantId;

/// What is being admitted.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The tenant (hashed app key).
    pub tenant: TenantId,
    /// The tenant as it may be shown (`app-…abcd`).
    pub tenant_label: String,
    /// Class index (see [`crate::admission::AdmissionPolicy::classes`]).
    pub class: usize,
    /// How long its client said it waits for the answer, if it said (clamped by the caller);
    /// it only ever shortens the wait.
    pub deadline: Option<Duration>,
    /// When the request first asked for a slot, if before now: a request replayed after the
    /// backend refused it queues again, and its wait counts from its arrival.
    pub since: Option<Instant>,
    /// Whether the client asked for a stream: its header comes when a worker picks it up, a
    /// blocking run's only when the run is done, so each is judged among its own kind.
    pub streams: bool,
}
