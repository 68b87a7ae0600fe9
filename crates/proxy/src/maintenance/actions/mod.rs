//! Restart actions: what the maintenance cycle runs to restart a backend — a shell command,
//! container restarts through the Docker Engine API, an HTTP call, a signal to a process, or
//! nothing (an external cron restarts it). This module owns running one action once, bounded
//! by its own timeout, and turning every way it can fail into a one-line operator message.
//! When to run it and what to do on failure belongs to the caller.

mod command;
pub mod docker;
#[cfg(test)]
pub(crate) mod fake_docker;
mod http;
mod signal;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::config::maintenance::{Action, Containers};

/// Who the action is for; fills the placeholders `{upstream}`, `{server}`, `{host}`, `{port}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The upstream's name.
    pub upstream: String,
    /// The server (`host:port` as configured) in rolling mode; `None` for the whole upstream.
    pub server: Option<String>,
}

/// Why an action failed. Each message is one line meant for an operator.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ActionError {
    /// `sh` could not be started.
    #[error("command: cannot start sh: {0}")]
    CommandSpawn(String),
    /// The command ended unsuccessfully.
    #[error("command exited with {status}: {stderr}")]
    CommandFailed {
        /// `status 1` or `signal 9`.
        status: String,
        /// The last few hundred bytes of stderr, on one line.
        stderr: String,
    },
    /// The command ran past its timeout and its process group was killed.
    #[error("command timed out after {} (killed)", humantime::format_duration(*.0))]
    CommandTimeout(Duration),
    /// No container matches what the action names.
    #[error("docker: {0}")]
    DockerNoMatch(String),
    /// The engine could not be asked which containers the action means.
    #[error("docker: {0}")]
    DockerLookup(String),
    /// The Docker daemon could not be reached or its API version not agreed on.
    #[error("docker: cannot use {socket}: {reason}")]
    DockerConnect {
        /// The socket path.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// Docker refused or failed a restart.
    #[error("docker: restarting container {container}: {reason}")]
    DockerRestart {
        /// The container.
        container: String,
        /// Docker's message.
        reason: String,
    },
    /// A restart ran past its timeout.
    #[error("docker: restarting container {container} timed out after {}", humantime::format_duration(*.timeout))]
    DockerTimeout {
        /// The container.
        container: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The HTTP call failed (bad URL, connection, non-2xx answer).
    #[error("http {method} {url}: {reason}")]
    Http {
        /// Method.
        method: String,
        /// URL (placeholders filled).
        url: String,
        /// Why, e.g. `500 Internal Server Error: <body start>`.
        reason: String,
    },
    /// The HTTP call ran past its timeout.
    #[error("http {method} {url}: timed out after {}", humantime::format_duration(*.timeout))]
    HttpTimeout {
        /// Method.
        method: String,
        /// URL (placeholders filled).
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The signal action is misconfigured (bad name, no pid or both).
    #[error("signal: {0}")]
    SignalConfig(String),
    /// The pid file could not be read.
    #[error("signal: cannot read pid file {path}: {reason}")]
    PidFileRead {
        /// The file (placeholders filled).
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The pid file does not hold a usable pid.
    #[error("signal: pid file {path} does not hold a pid: {content:?}")]
    PidFileBad {
        /// The file (placeholders filled).
        path: PathBuf,
        /// The start of what it holds.
        content: String,
    },
    /// `kill(2)` failed.
    #[error("signal: cannot send {signal} to pid {pid}: {reason}")]
    SignalSend {
        /// Signal name.
        signal: String,
        /// Target pid.
        pid: u32,
        /// The errno's description.
        reason: String,
    },
}

impl Action {
    /// Runs the action once. Placeholders `{upstream}`, `{server}`, `{host}`, `{port}` are
    /// replaced verbatim (not shell-quoted) in `command`, `url`, header values, container
    /// names and `pid_file`; with no server they become empty strings. Commands also get the
    /// environment variables `DIFY_SHAPER_UPSTREAM` and `DIFY_SHAPER_SERVER`.
    pub async fn run(&self, target: &Target) -> Result<(), ActionError> {
        match self {
            Action::Command { command, timeout } => {
                command::run(&fill(command, target), target, *timeout).await
            }
            Action::Docker { socket, containers, stop_timeout, stop_timeouts, timeout } => {
                let containers = match containers {
                    Containers::Named { containers } => {
                        Containers::Named { containers: containers.iter().map(|c| fill(c, target)).collect() }
                    }
                    services => services.clone(),
                };
                let grace = docker::Grace { default: *stop_timeout, by_name: stop_timeouts };
                docker::restart(socket, &containers, &grace, *timeout).await
            }
            Action::Http { method, url, headers, timeout } => {
                let headers: Vec<(String, String)> =
                    headers.iter().map(|(k, v)| (k.clone(), fill(v, target))).collect();
                http::call(method, &fill(url, target), &headers, *timeout).await
            }
            Action::Signal { pid, pid_file, signal } => {
                let pid_file = pid_file.as_ref().map(|p| PathBuf::from(fill(&p.to_string_lossy(), target)));
                signal::send(*pid, pid_file.as_deref(), signal).await
            }
            // The caller waits out the window; there is nothing to do here.
            Action::None { .. } => Ok(()),
        }
    }

    /// For a `docker` action, the containers it would restart now for `target` (asking the
    /// engine, within `timeout`); `None` for the other kinds. Start-up and `check` show it,
    /// so a selector that matches nothing is found long before the restart is due.
    pub async fn preview(&self, target: &Target, timeout: Duration) -> Option<docker::Preview> {
        let Action::Docker { socket, containers, .. } = self else {
            return None;
        };
        let containers = match containers {
            Containers::Named { containers } => {
                Containers::Named { containers: containers.iter().map(|c| fill(c, target)).collect() }
            }
            services => services.clone(),
        };
        Some(docker::preview(socket, &containers, timeout).await)
    }

    /// A short description for logs and `/status`, with placeholders unfilled.
    pub fn describe(&self) -> String {
        match self {
            Action::Command { command, .. } => format!("command {command:?}"),
            Action::Docker { containers: Containers::Named { containers }, .. } => {
                format!("docker restart {}", containers.join(", "))
            }
            Action::Docker { containers: Containers::Services { services, project }, .. } => {
                let project = project.as_deref().unwrap_or("(this container's)");
                format!("docker restart compose services {} of project {project}", services.join(", "))
            }
            Action::Http { method, url, .. } => format!("http {method} {url}"),
            Action::Signal { pid, pid_file, signal } => match (pid, pid_file) {
                (Some(pid), _) => format!("signal {signal} to pid {pid}"),
                (None, Some(file)) => format!("signal {signal} to pid in {}", file.display()),
                (None, None) => format!("signal {signal} (no pid configured)"),
            },
            Action::None { window } => {
                format!("none (external restart within {})", humantime::format_duration(*window))
            }
        }
    }

    /// Parses a signal name (`HUP`, `SIGHUP`, `hup`, …), for the config loader to validate
    /// early. The error names the accepted forms.
    pub fn parse_signal(name: &str) -> Result<nix::sys::signal::Signal, String> {
        let upper = name.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
        nix::sys::signal::Signal::from_str(&full).map_err(|_| {
            format!("unknown signal {name:?}: expected a name such as \"HUP\", \"SIGHUP\", \"USR1\", \"USR2\" or \"TERM\"")
        })
    }
}

/// Replaces the placeholders in one pass, so a value that itself contains `{…}` is not
/// expanded again.
fn fill(template: &str, target: &Target) -> String {
    let server = target.server.as_deref().unwrap_or("");
    let (host, port) = split_host_port(server);
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let found = [
            ("{upstream}", target.upstream.as_str()),
            ("{server}", server),
            ("{host}", host),
            ("{port}", port),
        ]
        .into_iter()
        .find(|(key, _)| tail.starts_with(key));
        match found {
            Some((key, value)) => {
                out.push_str(value);
                rest = &tail[key.len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `host:port` → (`host`, `port`); `[::1]:80` → (`::1`, `80`); no port → (`server`, ``).
fn split_host_port(server: &str) -> (&str, &str) {
    if let Some(inner) = server.strip_prefix('[') {
        if let Some((host, rest)) = inner.split_once(']') {
            return (host, rest.strip_prefix(':').unwrap_or(""));
        }
    }
    match server.rsplit_once(':') {
        // Several colons without brackets is a bare IPv6 address, not host:port.
        Some((host, port)) if !host.contains(':') => (host, port),
        _ => (server, ""),
    }
}

/// Makes captured output fit on one log line: trimmed, lines joined with ` | `.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests;
