//! A traffic class after validation (`[classes.NAME]` with every timeout resolved): what
//! routing attaches to a request and admission and the proxy's timeouts read.

use serde::Serialize;

use super::units::HumanDuration;

/// A traffic class after validation: every timeout resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassSpec {
    /// Class name.
    #[serde(skip)]
    pub name: String,
    /// Upstream TCP connect timeout.
    pub connect_timeout: HumanDuration,
    /// Blocking requests: longest wait for the header (= a blocking run's total), then per gap.
    pub read_timeout: HumanDuration,
    /// Streaming requests: longest wait for the header and between events.
    pub stream_idle_timeout: HumanDuration,
    /// Blocking requests: longest time from arrival to the response header, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<HumanDuration>,
    /// Longest wait for the upstream to accept request bytes.
    pub write_timeout: HumanDuration,
    /// Longest wait in the admission queue.
    pub queue_timeout: HumanDuration,
    /// Share of dequeues when several classes wait.
    pub weight: u32,
    /// Whether requests of this class are queued and held to the limit.
    pub queued: bool,
    /// Whether the class gets the interactive headroom.
    pub interactive: bool,
    /// Position among the classes (admission's class index).
    #[serde(skip)]
    pub index: usize,
}
