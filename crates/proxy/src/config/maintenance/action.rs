//! `action` of a `[[maintenance]]` entry: what restarts the backend, as validated. Running it
//! is the maintenance actions' job (`Action::run` there).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// What restarts the backend.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// `sh -c COMMAND`, killed (whole process group) after `timeout`; a non-zero exit is a
    /// failure.
    Command {
        /// The shell command (placeholders are filled in first).
        command: String,
        /// Longest run; then the process group is killed.
        #[serde(serialize_with = "human")]
        timeout: Duration,
    },
    /// Restart containers through the Docker Engine API, one after another.
    Docker {
        /// Unix socket of the Docker daemon (usually `/var/run/docker.sock`).
        socket: PathBuf,
        /// Which containers, in restart order.
        #[serde(flatten)]
        containers: Containers,
        /// Seconds Docker waits after SIGTERM before SIGKILL (`t=` of the restart call).
        #[serde(serialize_with = "human")]
        stop_timeout: Duration,
        /// `stop_timeout` for particular services (or, with named containers, containers):
        /// Celery's warm shutdown waits for running tasks, which a short grace kills.
        #[serde(serialize_with = "human_map", skip_serializing_if = "BTreeMap::is_empty")]
        stop_timeouts: BTreeMap<String, Duration>,
        /// Longest restart of each container.
        #[serde(serialize_with = "human")]
        timeout: Duration,
    },
    /// Call a URL (plain `http://`); 2xx is success.
    Http {
        /// Request method, e.g. `POST`.
        method: String,
        /// The URL.
        url: String,
        /// Extra request headers (printed as a table, as the config file writes them).
        #[serde(serialize_with = "header_table")]
        headers: Vec<(String, String)>,
        /// Longest call, from connecting to reading the answer.
        #[serde(serialize_with = "human")]
        timeout: Duration,
    },
    /// Send a signal to a process. Exactly one of `pid` / `pid_file` is set.
    Signal {
        /// The process id.
        pid: Option<u32>,
        /// A file holding the process id (read at each run, so a restarted process is found).
        pid_file: Option<PathBuf>,
        /// Signal name: `HUP`, `SIGHUP`, `USR2`, …
        signal: String,
    },
    /// Nothing to run: an external cron restarts the backend within `window`.
    None {
        /// How long after the start of maintenance the external restart happens.
        #[serde(serialize_with = "human")]
        window: Duration,
    },
}

/// The containers a `docker` action restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Containers {
    /// Names or ids as written (placeholders filled at run time), restarted in this order.
    Named {
        /// The names or ids.
        containers: Vec<String>,
    },
    /// Every container of these compose services, found by the labels Compose sets
    /// (`com.docker.compose.project` / `.service`), whatever `-p` or scaling named them;
    /// services restart in this order.
    Services {
        /// The services, e.g. `["api", "worker"]`.
        services: Vec<String>,
        /// The compose project; `None`: the project of the container dify-shaper runs in.
        #[serde(skip_serializing_if = "Option::is_none")]
        project: Option<String>,
    },
}

/// Serializes headers as the config writes them: a table of name = value.
fn header_table<S: Serializer>(headers: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(headers.iter().map(|(k, v)| (k, v)))
}

/// Serializes a duration the way the config writes it (`5s`, `2m`).
fn human<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Serializes durations by name the way the config writes them.
fn human_map<S: Serializer>(map: &BTreeMap<String, Duration>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter().map(|(k, d)| (k, humantime::format_duration(*d).to_string())))
}
