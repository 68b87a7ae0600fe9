//! How one reload went: what `POST /reload`, `ctl reload` and the reload log report.

use serde::Serialize;

use crate::config::changes::RestartNeeded;

/// How a reload went.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The new config is in force.
    Ok {
        /// The file (or `embedded defaults`).
        config: String,
        /// Settings that need a restart; their running values were kept.
        restart_needed: Vec<RestartNeeded>,
        /// Parts of the config that changed.
        changed: Vec<String>,
    },
    /// The file was refused; the running config stays.
    Failed {
        /// The precise error (`FILE:LINE:COL: key: …`).
        error: String,
    },
}

impl ReloadOutcome {
    /// `ok` or `failed`.
    pub fn result(&self) -> &'static str {
        match self {
            ReloadOutcome::Ok { .. } => "ok",
            ReloadOutcome::Failed { .. } => "failed",
        }
    }

    /// The admin API's answer: 200 with the outcome, or 400 `bad_request` in Dify's envelope
    /// with the precise error (the file, not the HTTP request, was bad — but `bad_request`
    /// is the envelope's code for invalid input, and 4xx says "fix it, then retry").
    pub fn http(&self) -> (u16, serde_json::Value) {
        match self {
            ReloadOutcome::Ok { .. } => (200, serde_json::to_value(self).unwrap_or_default()),
            ReloadOutcome::Failed { error } => {
                (400, serde_json::json!({"code": "bad_request", "message": error, "status": 400}))
            }
        }
    }
}
