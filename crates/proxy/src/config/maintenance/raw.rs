//! `[[maintenance]]` as written in the TOML file, before any check.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::spec::MaintenanceMode;
use crate::config::units::{ByteSize, HumanDuration};

/// One `[[maintenance]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaintenance {
    /// The upstream this entry maintains.
    pub upstream: Spanned<String>,
    /// Cron expression (5 fields, or 6 with seconds first) read in `timezone`.
    pub schedule: Option<Spanned<String>>,
    /// IANA time zone of `schedule` (default `UTC`).
    pub timezone: Option<Spanned<String>>,
    /// `all` (default): the whole upstream at once, requests held meanwhile; `rolling`: one
    /// replica at a time while the others serve.
    pub mode: Option<MaintenanceMode>,
    /// Longest wait for in-flight requests before the restart goes ahead anyway.
    pub drain_timeout: Option<HumanDuration>,
    /// Longest restart action (and, for `none`, the window after the scheduled time).
    pub restart_timeout: Option<HumanDuration>,
    /// Longest wait for the health gate after the restart.
    pub recover_timeout: Option<HumanDuration>,
    /// Slow start after the restart: admission goes from half the limit to all of it.
    pub ramp: Option<HumanDuration>,
    /// Longest manual drain without `resume`, after which serving resumes on its own.
    pub manual_timeout: Option<HumanDuration>,
    /// Longest a held request waits before 503 (default: the whole cycle's deadlines).
    pub hold_timeout: Option<HumanDuration>,
    /// What restarts the backend.
    pub action: Option<Spanned<RawAction>>,
    /// The health gate that ends `Recovering`.
    #[serde(default)]
    pub health: RawGate,
    /// Restart when memory passes a threshold.
    pub memory: Option<Spanned<RawMemory>>,
}

/// `[maintenance.action]` as written; which keys apply depends on `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    /// `command`, `docker`, `http`, `signal` or `none`.
    pub kind: String,
    /// `command`: the shell command.
    pub command: Option<String>,
    /// `command`/`docker`/`http`: longest run.
    pub timeout: Option<HumanDuration>,
    /// `docker`: containers restarted in order.
    pub containers: Option<Vec<String>>,
    /// `docker`: compose services whose containers are restarted, in order (by label).
    pub services: Option<Vec<String>>,
    /// `docker`: the compose project of `services` (default: dify-shaper's own).
    pub project: Option<String>,
    /// `docker`: `stop_timeout` by service (or container name).
    pub stop_timeouts: Option<BTreeMap<String, HumanDuration>>,
    /// `docker`: the Engine API socket.
    pub socket: Option<PathBuf>,
    /// `docker`: SIGTERM → SIGKILL grace given to Docker.
    pub stop_timeout: Option<HumanDuration>,
    /// `http`: the URL.
    pub url: Option<String>,
    /// `http`: the method (default POST).
    pub method: Option<String>,
    /// `http`: extra headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// `signal`: the pid.
    pub pid: Option<u32>,
    /// `signal`: a file holding the pid.
    pub pid_file: Option<PathBuf>,
    /// `signal`: the signal name (default HUP).
    pub signal: Option<String>,
    /// `none`: how long after the scheduled time the external restart may come.
    pub window: Option<HumanDuration>,
}

/// `[maintenance.health]`: the gate after a restart.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    /// Path probed with GET; must answer 2xx (default: the upstream's health path).
    pub path: Option<String>,
    /// Good answers in a row needed.
    pub successes: Option<u32>,
    /// Time between probes.
    pub interval: Option<HumanDuration>,
    /// Longest wait for one probe.
    pub timeout: Option<HumanDuration>,
    /// Optional request through a real route once the path passes, e.g.
    /// `"GET /console/api/setup"`: must answer below 500 (it touches the database).
    pub request: Option<String>,
}

/// `[maintenance.memory]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMemory {
    /// Restart when usage passes this.
    pub threshold: ByteSize,
    /// A cgroup file to read (`memory.current`), or …
    pub cgroup: Option<PathBuf>,
    /// … a container whose Docker stats are read, or …
    pub container: Option<String>,
    /// … a compose service whose containers' Docker stats are read (found by label).
    pub service: Option<String>,
    /// The compose project of `service` (default: dify-shaper's own).
    pub project: Option<String>,
    /// Docker socket for `container` / `service`.
    pub socket: Option<PathBuf>,
    /// How often memory is read.
    pub interval: Option<HumanDuration>,
    /// At most one memory-triggered restart per this window.
    pub min_interval: Option<HumanDuration>,
}
