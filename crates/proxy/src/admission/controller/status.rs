//! What `/status` shows of one upstream's admission.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::time::Instant;

use super::state::Admission;
use crate::admission::ewma::Ewma;
use crate::admission::limit::Change;

impl Admission {
    /// A snapshot for `/status`.
    pub fn status(&self) -> AdmissionStatus {
        let st = self.lock();
        let now = Instant::now();
        let classes = st
            .policy
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| ClassStatus {
                name: c.name.clone(),
                in_flight: st.in_flight_by_class.get(i).copied().unwrap_or(0),
                queued: st.queue.class_len(i),
                cap: st.cap(i, now),
                expected_first_byte_ms: st.first_byte.get(i).and_then(Ewma::get).map(|s| s * 1e3),
            })
            .collect();
        let top_tenants = st
            .queue
            .top_tenants(10)
            .into_iter()
            .map(|(t, queued)| TenantStatus {
                tenant: st.labels.get(&t).cloned().unwrap_or_else(|| format!("{t:016x}")),
                queued,
            })
            .collect();
        AdmissionStatus {
            upstream: self.name.clone(),
            enabled: st.policy.enabled,
            available: st.available,
            held: st.hold_until.is_some(),
            effective_limit: st.effective_limit(now),
            replica: st.replicas,
            group_limit: st.group_limit,
            limit: st.limit.limit(),
            ceiling: st.limit.ceiling(),
            latency_ratio: st.limit.last_ratio(),
            last_change: st.limit.last_change(),
            in_flight: st.in_flight,
            orphaned: st.orphaned,
            queued: st.queue.len(),
            standing_queue: st.standing_since.is_some_and(|t| now.duration_since(t) >= st.policy.lifo_after),
            classes,
            top_tenants,
            admitted: st.counters.admitted,
            queued_total: st.counters.queued,
            abandoned: st.counters.abandoned,
            shed: st.counters.shed.clone(),
            wait_avg_ms: st.waits.get().map_or(0.0, |w| w * 1e3),
            wait_max_ms: st.max_wait.as_secs_f64() * 1e3,
            patience_ms: st.patience.overall().map(|p| p.as_secs_f64() * 1e3),
        }
    }
}

/// `/status` view of one upstream's admission.
#[derive(Debug, Clone, Serialize)]
pub struct AdmissionStatus {
    /// Upstream name.
    pub upstream: String,
    /// Whether admission is on.
    pub enabled: bool,
    /// Whether the upstream can serve (false: requests are held).
    pub available: bool,
    /// Whether a maintenance hold is in place.
    pub held: bool,
    /// The limit in force now (0 while held, lower than `limit` while ramping up).
    pub effective_limit: usize,
    /// The learned concurrency limit (the group's, when several replicas share the upstream).
    pub limit: usize,
    /// This replica's rank and the replicas sharing the upstream (`[0, 1]`: alone); it admits
    /// its part of the lower of `limit` and `group_limit`.
    pub replica: (usize, usize),
    /// The lowest limit any replica sharing the upstream has learned (`null`: alone).
    pub group_limit: Option<usize>,
    /// The remembered failing in-flight level, if any.
    pub ceiling: Option<usize>,
    /// The latest latency ratio (window mean / baseline).
    pub latency_ratio: Option<f64>,
    /// Why the limit last changed.
    pub last_change: Option<Change>,
    /// Requests in flight (orphaned runs included).
    pub in_flight: usize,
    /// Slots kept for runs whose client left before the backend answered, until such a run
    /// would typically have finished.
    pub orphaned: usize,
    /// Requests waiting.
    pub queued: usize,
    /// Whether the queue is standing (served newest first).
    pub standing_queue: bool,
    /// Per class.
    pub classes: Vec<ClassStatus>,
    /// Tenants with the most waiting requests.
    pub top_tenants: Vec<TenantStatus>,
    /// Requests admitted since start.
    pub admitted: u64,
    /// Requests that had to wait since start.
    pub queued_total: u64,
    /// Queued requests whose client left.
    pub abandoned: u64,
    /// Refusals by reason.
    pub shed: BTreeMap<&'static str, u64>,
    /// Average queue wait of admitted requests (EWMA), ms.
    pub wait_avg_ms: f64,
    /// Longest queue wait of an admitted request, ms.
    pub wait_max_ms: f64,
    /// Learned client patience, ms.
    pub patience_ms: Option<f64>,
}

/// Per-class counts.
#[derive(Debug, Clone, Serialize)]
pub struct ClassStatus {
    /// Class name.
    pub name: String,
    /// In flight.
    pub in_flight: usize,
    /// Waiting.
    pub queued: usize,
    /// Current in-flight cap for the class.
    pub cap: usize,
    /// Typical time from admission to the response header, ms.
    pub expected_first_byte_ms: Option<f64>,
}

/// A tenant's queue share.
#[derive(Debug, Clone, Serialize)]
pub struct TenantStatus {
    /// Redacted tenant label.
    pub tenant: String,
    /// Waiting requests.
    pub queued: usize,
}
