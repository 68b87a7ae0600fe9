//! The reload history: counts of successful and failed reloads and the latest of each, as
//! plain data for `/status` and metrics ([`crate::app::App::reload_summary`]).

use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::outcome::ReloadOutcome;
use crate::config::changes::RestartNeeded;

/// Reload counts since start and the latest attempts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadSummary {
    /// Reloads that installed a new config.
    pub ok: u64,
    /// Reloads refused (the running config stayed).
    pub failed: u64,
    /// The latest attempt, whatever its result.
    pub last: Option<ReloadRecord>,
    /// The latest failed attempt (kept after later successes, for the error).
    pub last_failure: Option<ReloadRecord>,
}

/// One reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// What asked for it: `sighup` or `admin`.
    pub trigger: String,
    /// `ok` or `failed`.
    pub result: &'static str,
    /// Why it failed (`FILE:LINE:COL: key: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Settings the new config wanted that need a restart.
    pub restart_needed: Vec<RestartNeeded>,
    /// Parts of the config it changed.
    pub changed: Vec<String>,
}

/// The record behind a lock; holding the lock for a whole reload also serialises reloads
/// (a SIGHUP and a `POST /reload` at once run one after the other).
#[derive(Debug, Default)]
pub struct ReloadLog {
    stats: Mutex<ReloadSummary>,
}

impl ReloadLog {
    /// Locks the record for one reload.
    pub fn lock(&self) -> MutexGuard<'_, ReloadSummary> {
        // A panic mid-reload leaves counts that are still meaningful; keep them.
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the record.
    pub fn snapshot(&self) -> ReloadSummary {
        self.lock().clone()
    }
}

impl ReloadSummary {
    /// Counts `outcome` and makes it the latest.
    pub fn record(&mut self, trigger: &str, outcome: &ReloadOutcome) {
        let record = ReloadRecord {
            at: Utc::now(),
            trigger: trigger.to_string(),
            result: outcome.result(),
            error: None,
            restart_needed: Vec::new(),
            changed: Vec::new(),
        };
        match outcome {
            ReloadOutcome::Ok { restart_needed, changed, .. } => {
                self.ok += 1;
                self.last = Some(ReloadRecord {
                    restart_needed: restart_needed.clone(),
                    changed: changed.clone(),
                    ..record
                });
            }
            ReloadOutcome::Failed { error } => {
                self.failed += 1;
                let record = ReloadRecord { error: Some(error.clone()), ..record };
                self.last_failure = Some(record.clone());
                self.last = Some(record);
            }
        }
    }
}
