//! `[[maintenance]]` after validation: what the maintenance controller, its health gate and
//! its memory trigger read.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Action, MemorySource, Schedule};
use crate::config::units::{ByteSize, HumanDuration};

/// Default Docker Engine API socket.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// `all` or `rolling`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceMode {
    /// Every replica at once; requests are held.
    #[default]
    All,
    /// One replica at a time; the others serve.
    Rolling,
}

/// A validated `[[maintenance]]` entry (or the defaults of an upstream without one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaintenanceSpec {
    /// The upstream.
    pub upstream: String,
    /// When restarts are due (printed as `schedule` and `timezone`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// `all` or `rolling`.
    pub mode: MaintenanceMode,
    /// Longest drain.
    pub drain_timeout: HumanDuration,
    /// Longest restart action.
    pub restart_timeout: HumanDuration,
    /// Longest wait for the health gate.
    pub recover_timeout: HumanDuration,
    /// Slow start after the restart.
    pub ramp: HumanDuration,
    /// Longest manual drain without resume.
    pub manual_timeout: HumanDuration,
    /// Longest wait of one held request.
    pub hold_timeout: HumanDuration,
    /// What restarts the backend (`None` when only manual drain/resume is possible).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// The health gate.
    pub health: GateSpec,
    /// The memory trigger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySpec>,
}

impl MaintenanceSpec {
    /// The defaults for `upstream` (manual control only), probing `health_path`.
    pub fn manual_only(upstream: &str, health_path: &str) -> Self {
        let secs = |s| HumanDuration(Duration::from_secs(s));
        MaintenanceSpec {
            upstream: upstream.to_string(),
            schedule: None,
            mode: MaintenanceMode::All,
            drain_timeout: secs(120),
            restart_timeout: secs(300),
            recover_timeout: secs(600),
            // See the health ramp: the backlog held through the restart drains at full speed.
            ramp: secs(0),
            manual_timeout: secs(1800),
            hold_timeout: secs(120 + 300 + 600),
            action: None,
            health: GateSpec {
                path: health_path.to_string(),
                successes: 3,
                interval: secs(1),
                timeout: secs(2),
                request: None,
            },
            memory: None,
        }
    }

    /// How long before the scheduled time draining starts: for `none` the external restart
    /// comes at the scheduled time, so the drain must be over by then; other actions run at
    /// the scheduled time, after their drain.
    pub fn lead(&self) -> Duration {
        match self.action {
            Some(Action::None { .. }) => self.drain_timeout.0,
            _ => Duration::ZERO,
        }
    }
}

/// The health gate after a restart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateSpec {
    /// Probed path (GET, 2xx).
    pub path: String,
    /// Good answers in a row.
    pub successes: u32,
    /// Between probes.
    pub interval: HumanDuration,
    /// Per probe.
    pub timeout: HumanDuration,
    /// A request through a real route (`METHOD /path`), below 500.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// The memory trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct MemorySpec {
    /// Where memory is read.
    pub source: MemorySource,
    /// Restart above this.
    pub threshold: ByteSize,
    /// Between readings.
    pub interval: HumanDuration,
    /// At most one memory restart per this window.
    pub min_interval: HumanDuration,
}

impl Serialize for MemorySpec {
    /// As the config file writes it (`cgroup = …` or `container = …`), so `check` output
    /// loads again.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("threshold", &self.threshold)?;
        match &self.source {
            MemorySource::Cgroup { path } => map.serialize_entry("cgroup", path)?,
            MemorySource::Docker { socket, container } => {
                map.serialize_entry("container", container)?;
                map.serialize_entry("socket", socket)?;
            }
            MemorySource::DockerService { socket, service, project } => {
                map.serialize_entry("service", service)?;
                if let Some(project) = project {
                    map.serialize_entry("project", project)?;
                }
                map.serialize_entry("socket", socket)?;
            }
        }
        map.serialize_entry("interval", &self.interval)?;
        map.serialize_entry("min_interval", &self.min_interval)?;
        map.end()
    }
}
