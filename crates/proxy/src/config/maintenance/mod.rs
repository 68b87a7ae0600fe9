//! `[[maintenance]]`: when and how an upstream is drained and restarted — the raw TOML shape,
//! its validated form ([`MaintenanceSpec`]) and the checks between them. Each entry names
//! one upstream; an upstream without an entry still gets manual drain/resume with the
//! defaults of [`MaintenanceSpec::manual_only`], but no schedule and no restart action.

mod action;
mod memory;
mod raw;
pub mod schedule;
mod spec;

pub use action::{Action, Containers};
pub use memory::MemorySource;
pub use raw::{RawAction, RawGate, RawMaintenance, RawMemory};
pub use schedule::Schedule;
pub use spec::{GateSpec, MaintenanceMode, MaintenanceSpec, MemorySpec, DOCKER_SOCKET};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::units::HumanDuration;

/// Checks one entry; errors are `(key, message, span)` with the span of the offending value
/// when it has one (the caller turns them into `FILE:LINE:COL`).
pub fn build(
    index: usize,
    raw: &RawMaintenance,
    health_path: &str,
) -> Result<MaintenanceSpec, (String, String, Option<std::ops::Range<usize>>)> {
    let key = |k: &str| format!("maintenance[{index}].{k}");
    let err = |k: &str, m: String, span: Option<std::ops::Range<usize>>| (key(k), m, span);
    let mut spec = MaintenanceSpec::manual_only(raw.upstream.get_ref(), health_path);
    let zone = raw.timezone.as_ref().map_or("UTC", |z| z.get_ref().as_str());
    if let Some(expr) = &raw.schedule {
        let schedule = Schedule::new(expr.get_ref(), zone).map_err(|e| match e {
            schedule::ScheduleError::Zone(_) => {
                err("timezone", e.to_string(), raw.timezone.as_ref().map(|z| z.span()))
            }
            _ => err("schedule", e.to_string(), Some(expr.span())),
        })?;
        spec.schedule = Some(schedule);
    } else if let Some(z) = &raw.timezone {
        return Err(err("timezone", "a time zone needs a `schedule`".into(), Some(z.span())));
    }
    spec.mode = raw.mode.unwrap_or_default();
    let ranged = |k: &str, v: Option<HumanDuration>, d: HumanDuration, lo: u64, hi: u64| {
        let v = v.unwrap_or(d);
        if (Duration::from_secs(lo)..=Duration::from_secs(hi)).contains(&v.0) {
            Ok(v)
        } else {
            Err(err(k, format!("{v} is out of range: expected {lo}s..={hi}s"), None))
        }
    };
    spec.drain_timeout = ranged("drain_timeout", raw.drain_timeout, spec.drain_timeout, 0, 3600)?;
    spec.restart_timeout = ranged("restart_timeout", raw.restart_timeout, spec.restart_timeout, 1, 3600)?;
    spec.recover_timeout = ranged("recover_timeout", raw.recover_timeout, spec.recover_timeout, 1, 7200)?;
    spec.ramp = ranged("ramp", raw.ramp, spec.ramp, 0, 3600)?;
    spec.manual_timeout = ranged("manual_timeout", raw.manual_timeout, spec.manual_timeout, 1, 86400)?;
    let cycle = spec.drain_timeout.0 + spec.restart_timeout.0 + spec.recover_timeout.0;
    spec.hold_timeout = ranged("hold_timeout", raw.hold_timeout, HumanDuration(cycle), 1, 86400)?;
    if let Some(action) = &raw.action {
        let built = build_action(action.get_ref(), spec.restart_timeout.0)
            .map_err(|(k, m)| err(&format!("action.{k}"), m, Some(action.span())))?;
        if let Action::None { window } = &built {
            // `Restarting` waits for the external restart from the end of the drain (as early
            // as `lead` before the scheduled time) to the end of the window.
            let needed = *window + spec.lead();
            if needed >= spec.restart_timeout.0 {
                spec.restart_timeout = HumanDuration(needed + Duration::from_secs(1));
            }
            if spec.mode == MaintenanceMode::Rolling {
                let m = "`rolling` needs an action dify-shaper runs per replica, not `none`".into();
                return Err(err("mode", m, Some(action.span())));
            }
        }
        spec.action = Some(built);
    } else if raw.schedule.is_some() || raw.memory.is_some() {
        let m =
            "a schedule or memory trigger needs an `action` (kind = command|docker|http|signal|none)".into();
        return Err(err("action", m, Some(raw.upstream.span())));
    }
    spec.health = build_gate(&raw.health, spec.health.clone())
        .map_err(|(k, m)| err(&format!("health.{k}"), m, None))?;
    if let Some(memory) = &raw.memory {
        if matches!(spec.action, Some(Action::None { .. })) {
            let m = "a memory trigger needs an action dify-shaper runs, not `none`".into();
            return Err(err("memory", m, Some(memory.span())));
        }
        spec.memory = Some(
            build_memory(memory.get_ref())
                .map_err(|(k, m)| err(&format!("memory.{k}"), m, Some(memory.span())))?,
        );
    }
    Ok(spec)
}

fn build_action(raw: &RawAction, restart_timeout: Duration) -> Result<Action, (String, String)> {
    let present: Vec<&str> = [
        ("command", raw.command.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("containers", raw.containers.is_some()),
        ("services", raw.services.is_some()),
        ("project", raw.project.is_some()),
        ("stop_timeouts", raw.stop_timeouts.is_some()),
        ("socket", raw.socket.is_some()),
        ("stop_timeout", raw.stop_timeout.is_some()),
        ("url", raw.url.is_some()),
        ("method", raw.method.is_some()),
        ("headers", raw.headers.is_some()),
        ("pid", raw.pid.is_some()),
        ("pid_file", raw.pid_file.is_some()),
        ("signal", raw.signal.is_some()),
        ("window", raw.window.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    let allowed: &[&str] = match raw.kind.as_str() {
        "command" => &["command", "timeout"],
        "docker" => {
            &["containers", "services", "project", "socket", "stop_timeout", "stop_timeouts", "timeout"]
        }
        "http" => &["url", "method", "headers", "timeout"],
        "signal" => &["pid", "pid_file", "signal"],
        "none" => &["window"],
        other => {
            return Err((
                "kind".into(),
                format!("unknown action {other:?}: expected command, docker, http, signal or none"),
            ))
        }
    };
    if let Some(extra) = present.iter().find(|k| !allowed.contains(k)) {
        return Err(((*extra).into(), format!("does not apply to kind = {:?}", raw.kind)));
    }
    let timeout = raw.timeout.map_or(restart_timeout, |t| t.0);
    if timeout.is_zero() || timeout > restart_timeout {
        return Err((
            "timeout".into(),
            format!("must be between 1ms and restart_timeout ({restart_timeout:?})"),
        ));
    }
    let missing = |k: &str| (k.to_string(), format!("kind = {:?} needs `{k}`", raw.kind));
    Ok(match raw.kind.as_str() {
        "command" => {
            let command =
                raw.command.clone().filter(|c| !c.trim().is_empty()).ok_or_else(|| missing("command"))?;
            Action::Command { command, timeout }
        }
        "docker" => {
            let containers = match (&raw.containers, &raw.services) {
                (Some(_), Some(_)) => {
                    return Err(("services".into(), "set one of `containers` and `services`, not both".into()))
                }
                (None, None) => {
                    return Err((
                        "services".into(),
                        "kind = \"docker\" needs `services` (compose services, found by label) or `containers` (names)".into(),
                    ))
                }
                (Some(names), None) => {
                    if raw.project.is_some() {
                        return Err(("project".into(), "applies to `services` only".into()));
                    }
                    Containers::Named { containers: non_empty(names, "containers")? }
                }
                (None, Some(services)) => {
                    if raw.project.as_deref().is_some_and(|p| p.trim().is_empty()) {
                        return Err(("project".into(), "must not be empty (leave it out for dify-shaper's own)".into()));
                    }
                    Containers::Services { services: non_empty(services, "services")?, project: raw.project.clone() }
                }
            };
            let stop_timeout = raw.stop_timeout.map_or(Duration::from_secs(10), |t| t.0);
            let stop_timeouts: BTreeMap<String, Duration> =
                raw.stop_timeouts.iter().flatten().map(|(k, v)| (k.clone(), v.0)).collect();
            let named: Vec<&String> = match &containers {
                Containers::Named { containers } => containers.iter().collect(),
                Containers::Services { services, .. } => services.iter().collect(),
            };
            if let Some(stray) = stop_timeouts.keys().find(|k| !named.contains(k)) {
                return Err((
                    "stop_timeouts".into(),
                    format!("{stray:?} is not one of the containers or services restarted"),
                ));
            }
            for (key, grace) in std::iter::once(("stop_timeout", &stop_timeout))
                .chain(stop_timeouts.iter().map(|(k, v)| (k.as_str(), v)))
            {
                if *grace >= timeout {
                    return Err((
                        "stop_timeouts".into(),
                        format!(
                            "{key}: {} must be shorter than the action's timeout ({})",
                            humantime::format_duration(*grace),
                            humantime::format_duration(timeout)
                        ),
                    ));
                }
            }
            Action::Docker {
                socket: raw.socket.clone().unwrap_or_else(|| PathBuf::from(DOCKER_SOCKET)),
                containers,
                stop_timeout,
                stop_timeouts,
                timeout,
            }
        }
        "http" => {
            let url = raw.url.clone().ok_or_else(|| missing("url"))?;
            if !url.starts_with("http://") {
                return Err(("url".into(), format!("{url:?}: expected an http:// URL")));
            }
            let method = raw.method.clone().unwrap_or_else(|| "POST".into()).to_ascii_uppercase();
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                return Err(("method".into(), format!("{method:?} is not an HTTP method")));
            }
            let headers = raw.headers.clone().unwrap_or_default().into_iter().collect();
            let timeout = raw.timeout.map_or(Duration::from_secs(30).min(restart_timeout), |t| t.0);
            Action::Http { method, url, headers, timeout }
        }
        "signal" => {
            if raw.pid.is_some() == raw.pid_file.is_some() {
                return Err(("pid".into(), "set exactly one of `pid` and `pid_file`".into()));
            }
            let signal = raw.signal.clone().unwrap_or_else(|| "HUP".into());
            Action::parse_signal(&signal).map_err(|m| ("signal".to_string(), m))?;
            Action::Signal { pid: raw.pid, pid_file: raw.pid_file.clone(), signal }
        }
        _ => Action::None { window: raw.window.map_or(Duration::from_secs(300), |w| w.0) },
    })
}

/// `list` without blank entries, or why not.
fn non_empty(list: &[String], key: &str) -> Result<Vec<String>, (String, String)> {
    if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
        return Err((key.into(), "must list at least one name, and no empty ones".into()));
    }
    Ok(list.to_vec())
}

fn build_gate(raw: &RawGate, defaults: GateSpec) -> Result<GateSpec, (String, String)> {
    let gate = GateSpec {
        path: raw.path.clone().unwrap_or(defaults.path),
        successes: raw.successes.unwrap_or(defaults.successes),
        interval: raw.interval.unwrap_or(defaults.interval),
        timeout: raw.timeout.unwrap_or(defaults.timeout),
        request: raw.request.clone(),
    };
    if !gate.path.starts_with('/') || gate.path.contains(char::is_whitespace) {
        return Err(("path".into(), format!("{:?} must be a path starting with '/'", gate.path)));
    }
    if !(1..=100).contains(&gate.successes) {
        return Err(("successes".into(), format!("{} is out of range: expected 1..=100", gate.successes)));
    }
    for (k, v) in [("interval", gate.interval), ("timeout", gate.timeout)] {
        if !(Duration::from_millis(50)..=Duration::from_secs(60)).contains(&v.0) {
            return Err((k.into(), format!("{v} is out of range: expected 50ms..=60s")));
        }
    }
    if let Some(request) = &gate.request {
        if parse_gate_request(request).is_none() {
            return Err(("request".into(), format!("{request:?}: expected \"METHOD /path\"")));
        }
    }
    Ok(gate)
}

/// Splits a gate request `"GET /console/api/setup"` into method and path.
pub fn parse_gate_request(text: &str) -> Option<(String, String)> {
    let (method, path) = text.trim().split_once(' ')?;
    let path = path.trim();
    let ok = http::Method::from_bytes(method.as_bytes()).is_ok()
        && path.starts_with('/')
        && !path.contains(char::is_whitespace);
    ok.then(|| (method.to_string(), path.to_string()))
}

fn build_memory(raw: &RawMemory) -> Result<MemorySpec, (String, String)> {
    let socket = || raw.socket.clone().unwrap_or_else(|| PathBuf::from(DOCKER_SOCKET));
    if raw.project.is_some() && raw.service.is_none() {
        return Err(("project".into(), "applies to `service` only".into()));
    }
    let source = match (&raw.cgroup, &raw.container, &raw.service) {
        (Some(path), None, None) if raw.socket.is_none() => MemorySource::Cgroup { path: path.clone() },
        (None, Some(container), None) => {
            MemorySource::Docker { socket: socket(), container: container.clone() }
        }
        (None, None, Some(service)) if !service.trim().is_empty() => MemorySource::DockerService {
            socket: socket(),
            service: service.clone(),
            project: raw.project.clone(),
        },
        _ => {
            return Err((
                "cgroup".into(),
                "set exactly one of `cgroup` (a file), `container` (its Docker stats) and `service` \
                 (its compose containers' Docker stats; `project` and `socket` optional)"
                    .into(),
            ))
        }
    };
    if raw.threshold.0 < (1 << 20) {
        return Err(("threshold".into(), format!("{} is too small: expected at least 1MiB", raw.threshold)));
    }
    let interval = raw.interval.unwrap_or(HumanDuration(Duration::from_secs(30)));
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&interval.0) {
        return Err(("interval".into(), format!("{interval} is out of range: expected 100ms..=1h")));
    }
    let min_interval = raw.min_interval.unwrap_or(HumanDuration(Duration::from_secs(6 * 3600)));
    Ok(MemorySpec { source, threshold: raw.threshold, interval, min_interval })
}
