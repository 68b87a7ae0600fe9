//! `dify-shaper ctl`: the operator's client for the admin API's maintenance endpoints.
//!
//! It owns the `ctl` command line, the blocking HTTP calls to the admin listener
//! (`POST /upstreams/{name}/drain|resume|restart`, `GET /status`) and the `--wait` polling
//! that turns "the server accepted the request" into "the upstream reached the state asked
//! for". The server side of the contract lives in [`crate::admin`].
//!
//! The client is blocking (ureq, plain HTTP, no TLS): the admin listener is meant for
//! loopback or a private network, and a one-shot command gains nothing from a runtime.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use client::{parse_admin, AdminAddr, Client};
use wait::{drain_check, maintenance_view, restart_check, resume_check, wait, Started, View};

mod client;
mod wait;
use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use super::client::{parse_answer, snippet, CallError};
    use super::wait::Check;
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
