//! `--wait`: the maintenance view ctl reads from the admin API, what each command waits for
//! in it, and the polling of `GET /status` until it gets there.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use super::client::{CallError, Client};

/// How often `--wait` asks `GET /status`.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// At most one progress line per this interval, so a long drain does not flood the terminal.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// What one look at the upstream's view says about a `--wait`.
#[derive(Debug, PartialEq)]
pub(super) enum Check {
    /// Got there.
    Done,
    /// Not yet.
    Pending,
    /// Will not get there (or got there badly): the reason.
    Fail(String),
}

/// Drained means nothing in flight too: the phase can turn before the last response ends.
/// `seen_maintenance` remembers a non-serving phase, so that a later `serving` is read as
/// "someone resumed it" rather than polling until the timeout.
pub(super) fn drain_check(view: &View, seen_maintenance: &mut bool) -> Check {
    if view.phase == "drained" && view.in_flight == 0 {
        return Check::Done;
    }
    if view.phase == "serving" {
        if *seen_maintenance {
            return Check::Fail("the upstream is serving again (resumed while waiting?)".into());
        }
    } else {
        *seen_maintenance = true;
    }
    Check::Pending
}

/// The health gate has passed once the phase is `ramping` (new work flows, at a growing
/// limit) or `serving`.
pub(super) fn resume_check(view: &View) -> Check {
    if matches!(view.phase.as_str(), "ramping" | "serving") {
        Check::Done
    } else {
        Check::Pending
    }
}

/// Cycle numbers only grow, so a `last_cycle` at or past ours means ours has ended; when a
/// later one already ended too, its outcome is the freshest word on the upstream.
pub(super) fn restart_check(view: &View, cycle: u64) -> Check {
    match &view.last_cycle {
        Some(last) if last.cycle >= cycle => {
            if last.outcome == "ok" {
                Check::Done
            } else if last.cycle == cycle {
                Check::Fail(format!("cycle {cycle} {}: {}", last.outcome, last.reason))
            } else {
                Check::Fail(format!(
                    "cycle {cycle} ended, and cycle {} since {}: {}",
                    last.cycle, last.outcome, last.reason
                ))
            }
        }
        _ => Check::Pending,
    }
}

/// Polls `GET /status` until `check` says done or fails, or `timeout` passes; prints a
/// progress line at most every [`PROGRESS_INTERVAL`]. Transport errors while polling are
/// retried until the deadline (a blip should not abandon a long wait); answers with an
/// error status are not, since asking again gets the same answer.
pub(super) fn wait(
    client: &Client,
    name: &str,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&View) -> Check,
) -> Result<View, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last_progress = start;
    let mut last_seen = String::from("nothing yet");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "gave up after {} waiting for {what} (--timeout); last seen: {last_seen}",
                humantime::format_duration(timeout)
            ));
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        match client.get::<Value>("/status", Some(deadline)) {
            Ok(status) => {
                let view = maintenance_view(&status, name)?;
                let view: View = serde_json::from_value(view.clone())
                    .map_err(|e| format!("the maintenance view in /status does not parse: {e}"))?;
                match check(&view) {
                    Check::Done => return Ok(view),
                    Check::Fail(reason) => return Err(reason),
                    Check::Pending => last_seen = view.summary(),
                }
            }
            Err(CallError::Transport(e)) => last_seen = e,
            Err(e) => return Err(e.to_string()),
        }
        let now = Instant::now();
        if now.duration_since(last_progress) >= PROGRESS_INTERVAL {
            last_progress = now;
            println!("{name}: {last_seen}; waited {}s", now.duration_since(start).as_secs());
        }
    }
}

/// One upstream's maintenance view, as `POST /upstreams/{name}/…` and `/status` report it.
/// Only what ctl reads is typed; `status` prints the JSON as the server sent it.
#[derive(Debug, Deserialize)]
pub(super) struct View {
    pub(super) phase: String,
    #[serde(default)]
    pub(super) since_seconds: f64,
    #[serde(default)]
    pub(super) reason: String,
    #[serde(default)]
    pub(super) in_flight: u64,
    #[serde(default)]
    pub(super) queued: u64,
    #[serde(default)]
    pub(super) held: bool,
    #[serde(default)]
    pub(super) last_cycle: Option<LastCycle>,
}

/// The last restart cycle that ended.
#[derive(Debug, Deserialize)]
pub(super) struct LastCycle {
    pub(super) cycle: u64,
    pub(super) outcome: String,
    #[serde(default)]
    pub(super) reason: String,
}

/// `POST /upstreams/{name}/restart`: the view plus the number of the cycle just started.
#[derive(Debug, Deserialize)]
pub(super) struct Started {
    pub(super) cycle: u64,
    #[serde(flatten)]
    pub(super) view: View,
}

impl View {
    /// `draining for 3s (why), in flight 2, queued 5, requests held`.
    pub(super) fn summary(&self) -> String {
        let mut line = format!("{} for {:.0}s", self.phase, self.since_seconds);
        if !self.reason.is_empty() {
            let _ = write!(line, " ({})", self.reason);
        }
        let _ = write!(line, ", {}", self.counts());
        if self.held {
            line.push_str(", requests held");
        }
        line
    }

    pub(super) fn counts(&self) -> String {
        format!("in flight {}, queued {}", self.in_flight, self.queued)
    }
}

/// `upstreams.{name}.maintenance` of a `/status` answer.
pub(super) fn maintenance_view<'a>(status: &'a Value, name: &str) -> Result<&'a Value, String> {
    let upstreams = status
        .get("upstreams")
        .and_then(Value::as_object)
        .ok_or("the /status answer has no `upstreams` object")?;
    let Some(upstream) = upstreams.get(name) else {
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        return Err(format!("no upstream named {name:?} (known: {})", known.join(", ")));
    };
    upstream.get("maintenance").ok_or_else(|| {
        format!("/status has no maintenance view for {name:?} (is the server older than this ctl?)")
    })
}
