//! The settings admission runs with, derived from the config on every (re)load. Kept apart
//! from the config types so the admission code can be tested without a config file.

use std::time::Duration;

use super::limit::LimitSettings;

/// How one traffic class is admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPolicy {
    /// Class name (for `/status`).
    pub name: String,
    /// Share of dequeues when several classes wait (smooth weighted round robin).
    pub weight: u32,
    /// Longest wait in the queue before the request is answered 503 `server_busy`.
    pub queue_timeout: Duration,
    /// `false`: never queued and not held back by the limit (stop-task calls), only counted.
    pub queued: bool,
    /// Whether this class is "interactive": cheap calls that get headroom reserved.
    pub interactive: bool,
}

/// Everything one upstream's admission needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionPolicy {
    /// Whether admission is on (off: every request goes straight through, only counted).
    pub enabled: bool,
    /// The adaptive limit's tuning.
    pub limit: LimitSettings,
    /// Most requests waiting at once.
    pub max_queue: usize,
    /// Classes by index (the index used in tickets and latency signals).
    pub classes: Vec<ClassPolicy>,
    /// Fraction of the limit kept free for interactive classes while they are active.
    pub interactive_reserve: f64,
    /// A queue that has not emptied for this long is "standing": serve newest first.
    pub lifo_after: Duration,
}

impl Default for AdmissionPolicy {
    fn default() -> Self {
        AdmissionPolicy {
            enabled: true,
            limit: LimitSettings::default(),
            max_queue: 1024,
            classes: vec![ClassPolicy {
                name: "default".into(),
                weight: 1,
                queue_timeout: Duration::from_secs(30),
                queued: true,
                interactive: false,
            }],
            interactive_reserve: 0.1,
            lifo_after: Duration::from_secs(2),
        }
    }
}
