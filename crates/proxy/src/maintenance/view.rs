//! What `/status`, `ctl` and metrics see of an upstream's maintenance: the current phase
//! and cycle, the last finished cycle, recent phase changes and the memory reading.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::group::GroupView;
use super::state::Phase;
pub use super::state::Trigger;
use crate::config::MaintenanceMode;

/// How a finished cycle went.
#[derive(Debug, Clone, Serialize)]
pub struct CycleRecord {
    /// Cycle number (1-based).
    pub cycle: u64,
    /// `ok` or `failed`.
    pub outcome: &'static str,
    /// The last reason (the failure's, when it failed).
    pub reason: String,
    /// What started it.
    pub trigger: Trigger,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it ended.
    pub ended: DateTime<Utc>,
}

/// One logged phase change.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When.
    pub at: DateTime<Utc>,
    /// From.
    pub from: Phase,
    /// To.
    pub to: Phase,
    /// Why.
    pub reason: String,
    /// The replica, in a rolling cycle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The `/status` view of an upstream's maintenance.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// Current phase.
    pub phase: Phase,
    /// Seconds in it.
    pub since_seconds: f64,
    /// Why it entered it.
    pub reason: String,
    /// What started the current cycle.
    pub trigger: Option<Trigger>,
    /// Requests in flight to the upstream (or to the replica being drained).
    pub in_flight: usize,
    /// Requests queued (held while the upstream is drained).
    pub queued: usize,
    /// Whether new requests are held.
    pub held: bool,
    /// The replica being restarted (rolling).
    pub target: Option<String>,
    /// `all` or `rolling`.
    pub mode: MaintenanceMode,
    /// The schedule, e.g. `0 20 * * * (Asia/Tokyo)`.
    pub schedule: Option<String>,
    /// The next scheduled restart (the restart time; draining may start before it).
    pub next_scheduled: Option<DateTime<Utc>>,
    /// The restart action, described.
    pub action: Option<String>,
    /// Cycles started.
    pub cycles: u64,
    /// Cycles that failed (action failed or timed out, backend not back in time, manual
    /// drain never resumed).
    pub failures: u64,
    /// The last finished cycle.
    pub last_cycle: Option<CycleRecord>,
    /// The memory trigger's last reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryView>,
    /// Recent phase changes, oldest first.
    pub history: Vec<Record>,
    /// The group's cycle and every replica's view (with `[cluster]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupView>,
}

/// The memory trigger's state.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryView {
    /// Where it is read.
    pub source: String,
    /// Restart above this many bytes.
    pub threshold_bytes: u64,
    /// The last reading.
    pub last_bytes: Option<u64>,
    /// The last reading's error.
    pub last_error: Option<String>,
}
