//! The settings admission runs with, derived from the config on every (re)load
//! ([`AdmissionPolicy::for_upstream`]). Kept apart from the config types so the admission
//! code can be tested without a config file.

use std::sync::Arc;
use std::time::Duration;

use super::limit::LimitSettings;
use crate::config::{AdmissionGlobal, AdmissionSpec, ClassSpec, Config};

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

impl AdmissionPolicy {
    /// The policy of upstream `name` in `config` (the defaults when it is not configured).
    pub fn for_upstream(config: &Config, name: &str) -> Self {
        let spec = config.upstreams.get(name).map(|u| u.admission.clone()).unwrap_or_default();
        let mut classes: Vec<&Arc<ClassSpec>> = config.classes.values().collect();
        classes.sort_by_key(|c| c.index);
        AdmissionPolicy {
            enabled: spec.enabled,
            limit: LimitSettings {
                initial: spec.initial_limit,
                min: spec.min_limit,
                max: spec.max_limit,
                tolerance: spec.latency_tolerance,
                ..LimitSettings::default()
            },
            max_queue: spec.max_queue,
            classes: classes
                .into_iter()
                .map(|c| ClassPolicy {
                    name: c.name.clone(),
                    weight: c.weight,
                    queue_timeout: c.queue_timeout.0,
                    queued: c.queued,
                    interactive: c.interactive,
                })
                .collect(),
            interactive_reserve: config.admission.interactive_reserve,
            lifo_after: config.admission.lifo_after.0,
        }
    }
}

impl Default for AdmissionPolicy {
    /// The config's defaults, with one class.
    fn default() -> Self {
        let (spec, global) = (AdmissionSpec::default(), AdmissionGlobal::default());
        AdmissionPolicy {
            enabled: spec.enabled,
            limit: LimitSettings::default(),
            max_queue: spec.max_queue,
            classes: vec![ClassPolicy {
                name: "default".into(),
                weight: 1,
                queue_timeout: Duration::from_secs(30),
                queued: true,
                interactive: false,
            }],
            interactive_reserve: global.interactive_reserve,
            lifo_after: global.lifo_after.0,
        }
    }
}
