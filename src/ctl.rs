//! `dify-shaper ctl`: the operator's client for the admin API's maintenance endpoints.
//!
//! It owns the `ctl` command line, the blocking HTTP calls to the admin listener
//! (`POST /upstreams/{name}/drain|resume|restart`, `GET /status`) and the `--wait` polling
//! that turns "the server accepted the request" into "the upstream reached the state asked
//! for". The server side of the contract lives in [`crate::admin`].
//!
//! The client is blocking (ureq, plain HTTP, no TLS): the admin listener is meant for
//! loopback or a private network, and a one-shot command gains nothing from a runtime.

use std::fmt::{self, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

/// Bound of each HTTP request; `--timeout` bounds the whole `--wait`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `--wait` asks `GET /status`.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// At most one progress line per this interval, so a long drain does not flood the terminal.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// Shortest per-request timeout near the `--wait` deadline: a zero timeout would fail at once.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_millis(100);

/// Flags of `ctl`: drain, resume, restart an upstream or show its maintenance state through
/// the admin API of a running dify-shaper.
#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(subcommand)]
    action: Action,
    /// Admin API address of the running dify-shaper (`host:port` or `http://host:port`).
    // Own ids: global args share the match map with the top level, whose `run` flags
    // include a `--admin` of another type.
    #[arg(
        id = "ctl_admin",
        long = "admin",
        global = true,
        value_name = "ADDR",
        env = "DIFY_SHAPER_ADMIN",
        default_value = "127.0.0.1:9090",
        value_parser = parse_admin
    )]
    admin: AdminAddr,
    /// Admin API token, sent as `Authorization: Bearer TOKEN`.
    #[arg(
        id = "ctl_token",
        long = "token",
        global = true,
        value_name = "TOKEN",
        env = "DIFY_SHAPER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Stop admitting new work to UPSTREAM and let in-flight work finish.
    ///
    /// New requests for UPSTREAM are held, not refused. With --wait, returns once the
    /// upstream is `drained` with nothing in flight; it then stays drained until `resume`.
    Drain(WaitArgs),
    /// End a drain: held requests flow again once UPSTREAM passes its health gate.
    ///
    /// With --wait, returns once the health gate has passed, i.e. the phase is `ramping`
    /// or `serving`. It does not wait for the ramp to finish: from `ramping` on the
    /// upstream takes new work.
    Resume(WaitArgs),
    /// Run UPSTREAM's configured restart cycle now.
    ///
    /// The cycle is draining → restarting → recovering → ramping → serving. With --wait,
    /// returns once the cycle started by this command has ended: exit 0 if it ended
    /// `ok`, 1 with its reason if it `failed`.
    Restart(WaitArgs),
    /// Print UPSTREAM's maintenance view as JSON, or the whole `/status` without UPSTREAM.
    Status(StatusArgs),
}

/// Flags of `drain`, `resume` and `restart`.
#[derive(Debug, Args)]
struct WaitArgs {
    /// The upstream, as named in the config (e.g. `api`).
    #[arg(value_parser = parse_upstream)]
    upstream: String,
    /// Wait until the upstream got where the command sends it (see the command's help).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (e.g. `90s`, `15m`); exit 1.
    #[arg(long, value_name = "DUR", default_value = "15m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Flags of `status`.
#[derive(Debug, Args)]
struct StatusArgs {
    /// Only this upstream's maintenance view.
    #[arg(value_parser = parse_upstream)]
    upstream: Option<String>,
}

/// Runs `ctl`: 0 when the command did what it says, 1 (with one line on stderr) otherwise.
pub fn run(args: CtlArgs) -> ExitCode {
    let client = Client::new(args.admin, args.token);
    let result = match args.action {
        Action::Drain(w) => drain(&client, &w).map_err(|e| format!("drain {}: {e}", w.upstream)),
        Action::Resume(w) => resume(&client, &w).map_err(|e| format!("resume {}: {e}", w.upstream)),
        Action::Restart(w) => restart(&client, &w).map_err(|e| format!("restart {}: {e}", w.upstream)),
        Action::Status(s) => status(&client, s.upstream.as_deref()).map_err(|e| match &s.upstream {
            Some(name) => format!("status {name}: {e}"),
            None => format!("status: {e}"),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dify-shaper ctl: {message}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Commands

fn drain(client: &Client, args: &WaitArgs) -> Result<(), String> {
    let name = &args.upstream;
    let view: View = client.post(&upstream_path(name, "drain"))?;
    println!("{name}: {}", view.summary());
    if !args.wait {
        return Ok(());
    }
    // The drain's own answer counts: a `serving` after it means someone resumed.
    let mut seen_maintenance = view.phase != "serving";
    let done =
        wait(client, name, args.timeout, "the drain", |view| drain_check(view, &mut seen_maintenance))?;
    println!("{name}: drained ({})", done.counts());
    Ok(())
}

fn resume(client: &Client, args: &WaitArgs) -> Result<(), String> {
    let name = &args.upstream;
    let view: View = client.post(&upstream_path(name, "resume"))?;
    println!("{name}: {}", view.summary());
    if !args.wait {
        return Ok(());
    }
    let done = wait(client, name, args.timeout, "the health gate", resume_check)?;
    println!("{name}: health gate passed, {}", done.summary());
    Ok(())
}

fn restart(client: &Client, args: &WaitArgs) -> Result<(), String> {
    let name = &args.upstream;
    let started: Started = client.post(&upstream_path(name, "restart"))?;
    let cycle = started.cycle;
    println!("{name}: restart cycle {cycle} started, {}", started.view.summary());
    if !args.wait {
        return Ok(());
    }
    let what = format!("restart cycle {cycle}");
    let done = wait(client, name, args.timeout, &what, |view| restart_check(view, cycle))?;
    let later = match &done.last_cycle {
        Some(last) if last.cycle > cycle => format!(" (cycle {} has ended since)", last.cycle),
        _ => String::new(),
    };
    println!("{name}: restart cycle {cycle} ok{later}, {}", done.summary());
    Ok(())
}

fn status(client: &Client, upstream: Option<&str>) -> Result<(), String> {
    let status: Value = client.get("/status", None)?;
    let shown = match upstream {
        Some(name) => maintenance_view(&status, name)?,
        None => &status,
    };
    let text = serde_json::to_string_pretty(shown).map_err(|e| format!("cannot print the answer: {e}"))?;
    println!("{text}");
    Ok(())
}

/// What one look at the upstream's view says about a `--wait`.
#[derive(Debug, PartialEq)]
enum Check {
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
fn drain_check(view: &View, seen_maintenance: &mut bool) -> Check {
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
fn resume_check(view: &View) -> Check {
    if matches!(view.phase.as_str(), "ramping" | "serving") {
        Check::Done
    } else {
        Check::Pending
    }
}

/// Cycle numbers only grow, so a `last_cycle` at or past ours means ours has ended; when a
/// later one already ended too, its outcome is the freshest word on the upstream.
fn restart_check(view: &View, cycle: u64) -> Check {
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
fn wait(
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

// ---------------------------------------------------------------------------------------
// The admin API's answers

/// One upstream's maintenance view, as `POST /upstreams/{name}/…` and `/status` report it.
/// Only what ctl reads is typed; `status` prints the JSON as the server sent it.
#[derive(Debug, Deserialize)]
struct View {
    phase: String,
    #[serde(default)]
    since_seconds: f64,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    in_flight: u64,
    #[serde(default)]
    queued: u64,
    #[serde(default)]
    held: bool,
    #[serde(default)]
    last_cycle: Option<LastCycle>,
}

/// The last restart cycle that ended.
#[derive(Debug, Deserialize)]
struct LastCycle {
    cycle: u64,
    outcome: String,
    #[serde(default)]
    reason: String,
}

/// `POST /upstreams/{name}/restart`: the view plus the number of the cycle just started.
#[derive(Debug, Deserialize)]
struct Started {
    cycle: u64,
    #[serde(flatten)]
    view: View,
}

impl View {
    /// `draining for 3s (why), in flight 2, queued 5, requests held`.
    fn summary(&self) -> String {
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

    fn counts(&self) -> String {
        format!("in flight {}, queued {}", self.in_flight, self.queued)
    }
}

/// `upstreams.{name}.maintenance` of a `/status` answer.
fn maintenance_view<'a>(status: &'a Value, name: &str) -> Result<&'a Value, String> {
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

// ---------------------------------------------------------------------------------------
// HTTP

/// Where the admin API listens: `host:port`, as given and as used in URLs.
#[derive(Debug, Clone, PartialEq)]
struct AdminAddr(String);

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `host:port` or `http://host:port` (a trailing `/` is fine); no TLS, no path.
fn parse_admin(s: &str) -> Result<AdminAddr, String> {
    let s = s.trim();
    if s.starts_with("https://") {
        return Err("the admin API speaks plain HTTP; give host:port or http://host:port".into());
    }
    let rest = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    if rest.contains('/') {
        return Err("give host:port, without a path".into());
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(AdminAddr(rest.into())),
        _ => Err(format!("expected host:port (e.g. 127.0.0.1:9090), got {s:?}")),
    }
}

fn parse_upstream(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("the upstream name is empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// `/upstreams/{name}/{action}`, the name percent-encoded so any config name is one segment.
fn upstream_path(name: &str, action: &str) -> String {
    let mut path = String::from("/upstreams/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            path.push(char::from(b));
        } else {
            let _ = write!(path, "%{b:02X}");
        }
    }
    path.push('/');
    path.push_str(action);
    path
}

/// Why a call to the admin API did not give a usable answer.
#[derive(Debug, PartialEq)]
enum CallError {
    /// No answer: connect, timeout, I/O. Worth retrying while waiting.
    Transport(String),
    /// An answer with an error status, from the JSON envelope when there was one.
    Api { status: u16, code: String, message: String, hint: &'static str },
    /// A success status with a body ctl cannot read.
    Invalid(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transport(e) | CallError::Invalid(e) => f.write_str(e),
            CallError::Api { status, code, message, hint } => {
                write!(f, "{message} ({status}")?;
                if !code.is_empty() {
                    write!(f, " {code}")?;
                }
                write!(f, "){hint}")
            }
        }
    }
}

impl From<CallError> for String {
    fn from(e: CallError) -> String {
        e.to_string()
    }
}

/// A blocking client for one admin API.
struct Client {
    agent: ureq::Agent,
    admin: AdminAddr,
    token: Option<String>,
}

impl Client {
    fn new(admin: AdminAddr, token: Option<String>) -> Client {
        let config = ureq::Agent::config_builder()
            // Error statuses carry the envelope whose message we quote; read them as answers.
            .http_status_as_error(false)
            // HTTP_PROXY and friends are for the outside world, not a loopback admin port.
            .proxy(None)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("dify-shaper-ctl/", env!("CARGO_PKG_VERSION")))
            .build();
        Client { agent: ureq::Agent::new_with_config(config), admin, token: token.filter(|t| !t.is_empty()) }
    }

    /// `POST path` (no body), expecting a JSON answer of type `T`.
    fn post<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        let mut request = self.agent.post(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let result = request.config().timeout_global(Some(REQUEST_TIMEOUT)).build().send_empty();
        self.answer("POST", path, REQUEST_TIMEOUT, result)
    }

    /// `GET path`; the request's timeout is cut to what is left before `deadline`.
    fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        deadline: Option<Instant>,
    ) -> Result<T, CallError> {
        let timeout = match deadline {
            Some(deadline) => {
                deadline.saturating_duration_since(Instant::now()).clamp(MIN_REQUEST_TIMEOUT, REQUEST_TIMEOUT)
            }
            None => REQUEST_TIMEOUT,
        };
        let mut request = self.agent.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let result = request.config().timeout_global(Some(timeout)).build().call();
        self.answer("GET", path, timeout, result)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    fn answer<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        timeout: Duration,
        result: Result<http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, CallError> {
        let mut response = result.map_err(|e| self.transport_error(&e, timeout))?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().map_err(|e| {
            CallError::Transport(format!("reading the answer from the admin API at {}: {e}", self.admin))
        })?;
        parse_answer(status, &body, self.token.is_some()).map_err(|e| match e {
            CallError::Invalid(e) => CallError::Invalid(format!("{method} {path} at {}: {e}", self.admin)),
            e => e,
        })
    }

    fn transport_error(&self, e: &ureq::Error, timeout: Duration) -> CallError {
        let admin = &self.admin;
        CallError::Transport(match e {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
                "cannot connect to the admin API at {admin}: connection refused; is dify-shaper \
                 running with its admin listener there? Point at it with --admin ADDR \
                 (or DIFY_SHAPER_ADMIN)"
            ),
            ureq::Error::Timeout(_) => format!(
                "the admin API at {admin} did not answer within {}",
                humantime::format_duration(timeout)
            ),
            ureq::Error::HostNotFound => {
                format!("cannot resolve the admin API host {admin}; check --admin ADDR")
            }
            e => format!("request to the admin API at {admin} failed: {e}"),
        })
    }
}

/// Turns a status and body into `T` (2xx) or a [`CallError::Api`] quoting the envelope.
fn parse_answer<T: serde::de::DeserializeOwned>(
    status: u16,
    body: &str,
    token_sent: bool,
) -> Result<T, CallError> {
    if (200..300).contains(&status) {
        return serde_json::from_str(body)
            .map_err(|e| CallError::Invalid(format!("unexpected answer ({e}): {}", snippet(body))));
    }
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default)]
        code: String,
        message: String,
    }
    let (code, message) = match serde_json::from_str::<Envelope>(body) {
        Ok(envelope) => (envelope.code, envelope.message),
        Err(_) if body.trim().is_empty() => (String::new(), "the admin API refused".into()),
        Err(_) => (String::new(), snippet(body)),
    };
    let hint =
        if status == 401 && !token_sent { "; pass --token or set DIFY_SHAPER_ADMIN_TOKEN" } else { "" };
    Err(CallError::Api { status, code, message, hint })
}

/// The start of a body for an error line: one line, bounded.
fn snippet(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(json: Value) -> View {
        serde_json::from_value(json).expect("view parses")
    }

    #[test]
    fn admin_address_forms() {
        assert_eq!(parse_admin("127.0.0.1:9090"), Ok(AdminAddr("127.0.0.1:9090".into())));
        assert_eq!(parse_admin("http://localhost:9090/"), Ok(AdminAddr("localhost:9090".into())));
        assert_eq!(parse_admin("[::1]:9090"), Ok(AdminAddr("[::1]:9090".into())));
        assert!(parse_admin("https://host:9090").is_err());
        assert!(parse_admin("localhost").is_err());
        assert!(parse_admin(":9090").is_err());
        assert!(parse_admin("host:99999").is_err());
        assert!(parse_admin("http://host:9090/admin").is_err());
    }

    #[test]
    fn upstream_names_are_one_path_segment() {
        assert_eq!(upstream_path("api", "drain"), "/upstreams/api/drain");
        assert_eq!(upstream_path("plugin_daemon-2", "resume"), "/upstreams/plugin_daemon-2/resume");
        assert_eq!(upstream_path("a/b c", "restart"), "/upstreams/a%2Fb%20c/restart");
    }

    #[test]
    fn the_contract_view_parses_and_summarises() {
        let v = view(serde_json::json!({
            "phase": "draining", "since_seconds": 3.4, "reason": "manual drain", "trigger": "manual",
            "in_flight": 2, "queued": 5, "held": true, "target": "api:5001", "next_scheduled": null,
            "cycles": 1, "failures": 0,
            "last_cycle": {"cycle": 1, "outcome": "ok", "reason": "", "started": "2025-01-01T03:00:00Z",
                           "ended": "2025-01-01T03:04:00Z"}
        }));
        assert_eq!(v.summary(), "draining for 3s (manual drain), in flight 2, queued 5, requests held");
        assert_eq!(v.last_cycle.as_ref().map(|c| c.cycle), Some(1));
    }

    #[test]
    fn restart_answer_carries_the_cycle() {
        let started: Started = parse_answer(
            202,
            r#"{"cycle": 7, "phase": "draining", "in_flight": 1, "queued": 0, "last_cycle": null}"#,
            false,
        )
        .expect("parses");
        assert_eq!(started.cycle, 7);
        assert_eq!(started.view.phase, "draining");
    }

    #[test]
    fn error_envelopes_are_quoted() {
        let e = parse_answer::<Value>(
            404,
            r#"{"code": "not_found", "message": "no upstream named \"apii\"", "status": 404}"#,
            false,
        )
        .expect_err("404");
        assert_eq!(e.to_string(), r#"no upstream named "apii" (404 not_found)"#);
        let e = parse_answer::<Value>(401, r#"{"code": "unauthorized", "message": "bad token"}"#, false)
            .expect_err("401");
        assert!(e.to_string().contains("--token"), "{e}");
        let e = parse_answer::<Value>(401, r#"{"code": "unauthorized", "message": "bad token"}"#, true)
            .expect_err("401");
        assert_eq!(e.to_string(), "bad token (401 unauthorized)");
        let e = parse_answer::<Value>(502, "<html>\n bad gateway </html>", false).expect_err("502");
        assert_eq!(e.to_string(), "<html> bad gateway </html> (502)");
        assert!(matches!(parse_answer::<Value>(200, "not json", false), Err(CallError::Invalid(_))));
    }

    #[test]
    fn status_lookup() {
        let status = serde_json::json!({"upstreams": {"api": {"maintenance": {"phase": "serving"}},
                                                      "web": {}}});
        assert_eq!(maintenance_view(&status, "api"), Ok(&serde_json::json!({"phase": "serving"})));
        let unknown = maintenance_view(&status, "nope").expect_err("unknown");
        assert!(unknown.contains("known: api, web"), "{unknown}");
        assert!(maintenance_view(&status, "web").expect_err("no view").contains("older"));
    }

    #[test]
    fn drain_waits_for_in_flight_and_notices_a_resume() {
        let mut seen = false;
        let v =
            |phase: &str, in_flight: u64| view(serde_json::json!({"phase": phase, "in_flight": in_flight}));
        assert_eq!(drain_check(&v("draining", 2), &mut seen), Check::Pending);
        assert_eq!(drain_check(&v("drained", 1), &mut seen), Check::Pending);
        assert_eq!(drain_check(&v("drained", 0), &mut seen), Check::Done);
        assert!(matches!(drain_check(&v("serving", 0), &mut seen), Check::Fail(_)));
        // Serving before any maintenance phase was seen is not read as a resume.
        assert_eq!(drain_check(&v("serving", 0), &mut false), Check::Pending);
    }

    #[test]
    fn resume_is_done_once_the_health_gate_passed() {
        let v = |phase: &str| view(serde_json::json!({"phase": phase}));
        assert_eq!(resume_check(&v("drained")), Check::Pending);
        assert_eq!(resume_check(&v("recovering")), Check::Pending);
        assert_eq!(resume_check(&v("ramping")), Check::Done);
        assert_eq!(resume_check(&v("serving")), Check::Done);
    }

    #[test]
    fn restart_judges_its_own_cycle() {
        let v = |last: Value| view(serde_json::json!({"phase": "serving", "last_cycle": last}));
        assert_eq!(restart_check(&v(Value::Null), 4), Check::Pending);
        let old = serde_json::json!({"cycle": 3, "outcome": "failed", "reason": "old"});
        assert_eq!(restart_check(&v(old), 4), Check::Pending);
        let ok = serde_json::json!({"cycle": 4, "outcome": "ok", "reason": ""});
        assert_eq!(restart_check(&v(ok), 4), Check::Done);
        let failed = serde_json::json!({"cycle": 4, "outcome": "failed", "reason": "health gate timed out"});
        assert_eq!(restart_check(&v(failed), 4), Check::Fail("cycle 4 failed: health gate timed out".into()));
    }

    #[test]
    fn snippets_are_bounded() {
        let long = "x".repeat(500);
        assert_eq!(snippet(&long).chars().count(), 201);
    }
}
