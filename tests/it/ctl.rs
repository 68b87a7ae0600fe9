//! `dify-shaper ctl`, the real binary, against a fake admin API started in the test.
//!
//! This tests the CLIENT side only: the fake implements the maintenance contract of the admin
//! API (`POST /upstreams/{name}/drain|resume|restart`, `GET /status`, the error envelope) with
//! a scripted phase progression, so that `--wait`, exit codes and messages can be checked
//! exactly. The round trip against the real server is added later in the `maintenance` module.
//! Every wait is bounded: the binary runs with `--timeout 20s` and is killed after 60 s.

use crate::common;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// What the fake answers, and what it was asked.
#[derive(Default)]
struct Script {
    /// When set, every request must carry `Authorization: Bearer <token>`.
    token: Option<String>,
    /// `POST` path → status and body. Other POSTs get a 404 `not_found` envelope.
    posts: HashMap<String, (u16, Value)>,
    /// Successive maintenance views of `api` in `/status`; the last one repeats.
    views: VecDeque<Value>,
    /// Every request: method, path, `Authorization` header.
    seen: Vec<(String, String, Option<String>)>,
}

impl Script {
    fn post(mut self, path: &str, status: u16, body: Value) -> Script {
        self.posts.insert(path.to_string(), (status, body));
        self
    }

    fn views(mut self, views: impl IntoIterator<Item = Value>) -> Script {
        self.views = views.into_iter().collect();
        self
    }

    fn answer(&mut self, method: &str, path: &str, auth: Option<String>) -> (u16, Value) {
        self.seen.push((method.to_string(), path.to_string(), auth.clone()));
        if let Some(token) = &self.token {
            if auth.as_deref() != Some(format!("Bearer {token}").as_str()) {
                return envelope(401, "unauthorized", "missing or wrong admin token");
            }
        }
        match (method, path) {
            ("GET", "/status") => {
                let view =
                    if self.views.len() > 1 { self.views.pop_front() } else { self.views.front().cloned() };
                let view = view.unwrap_or_else(|| maintenance("serving", 0, Value::Null));
                let admission = json!({"in_flight": view["in_flight"], "queued": view["queued"]});
                (
                    200,
                    json!({
                        "version": "test",
                        "upstreams": {
                            "api": {"servers": ["127.0.0.1:5001"], "maintenance": view, "admission": admission},
                            "web": {"maintenance": maintenance("serving", 0, Value::Null)},
                        },
                    }),
                )
            }
            ("POST", _) => match self.posts.get(path) {
                Some(answer) => answer.clone(),
                None => envelope(404, "not_found", "no upstream named \"nope\""),
            },
            _ => envelope(404, "not_found", "unknown admin path"),
        }
    }

    fn status_polls(&self) -> usize {
        self.seen.iter().filter(|(m, p, _)| m == "GET" && p == "/status").count()
    }
}

fn envelope(status: u16, code: &str, message: &str) -> (u16, Value) {
    (status, json!({"code": code, "message": message, "status": status}))
}

/// A maintenance view as the contract describes it.
fn maintenance(phase: &str, in_flight: u64, last_cycle: Value) -> Value {
    json!({
        "phase": phase, "since_seconds": 1.5, "reason": "manual", "trigger": "manual",
        "in_flight": in_flight, "queued": 3, "held": phase != "serving", "target": "127.0.0.1:5001",
        "next_scheduled": null, "cycles": 3, "failures": 1, "last_cycle": last_cycle,
    })
}

fn cycle(n: u64, outcome: &str, reason: &str) -> Value {
    json!({"cycle": n, "outcome": outcome, "reason": reason,
           "started": "2025-01-01T03:00:00Z", "ended": "2025-01-01T03:04:00Z"})
}

/// The fake admin API on 127.0.0.1, stopped on drop.
struct FakeAdmin {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAdmin {
    async fn start(script: Script) -> FakeAdmin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let script = Arc::new(Mutex::new(script));
        let shared = script.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let script = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let answer = answer(&script, &req);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeAdmin { addr, script, task }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().expect("script lock")
    }
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(script: &Mutex<Script>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let auth = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(String::from);
    let (status, body) =
        script.lock().expect("script lock").answer(req.method().as_str(), req.uri().path(), auth);
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// What one `dify-shaper ctl` run did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `dify-shaper ctl ARGS` with a clean admin environment plus `env`; killed after 60 s.
async fn ctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dify-shaper"));
    cmd.arg("ctl")
        .args(args)
        .env_remove("DIFY_SHAPER_ADMIN")
        .env_remove("DIFY_SHAPER_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("ctl finished within 60 s")
        .expect("run ctl");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Run {
    fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

#[tokio::test]
async fn drain_wait_returns_once_nothing_is_in_flight() {
    let _machine = crate::common::shared().await;
    let fake = FakeAdmin::start(
        Script::default().post("/upstreams/api/drain", 200, maintenance("draining", 2, Value::Null)).views([
            maintenance("draining", 2, Value::Null),
            // Drained but a response still streaming: not done yet.
            maintenance("drained", 1, Value::Null),
            maintenance("drained", 0, Value::Null),
        ]),
    )
    .await;
    let admin = fake.addr.to_string();
    let run = ctl(&["drain", "api", "--admin", &admin, "--wait", "--timeout", "20s"], &[]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("api: draining"), "{}", run.stdout);
    assert!(run.stdout.contains("api: drained (in flight 0, queued 3)"), "{}", run.stdout);
    // It returned on the third poll (in flight 2, 1, 0), neither before nor after.
    assert_eq!(fake.script().status_polls(), 3);
}

#[tokio::test]
async fn drain_without_wait_does_not_poll() {
    let _machine = crate::common::shared().await;
    let fake = FakeAdmin::start(Script::default().post(
        "/upstreams/api/drain",
        200,
        maintenance("draining", 2, Value::Null),
    ))
    .await;
    let run = ctl(&["drain", "api", "--admin", &fake.addr.to_string()], &[]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("in flight 2, queued 3"), "{}", run.stdout);
    assert_eq!(fake.script().status_polls(), 0);
}

#[tokio::test]
async fn drain_wait_gives_up_at_the_timeout() {
    let _machine = crate::common::shared().await;
    let fake = FakeAdmin::start(
        Script::default()
            .post("/upstreams/api/drain", 200, maintenance("draining", 1, Value::Null))
            .views([maintenance("draining", 1, Value::Null)]),
    )
    .await;
    let run =
        ctl(&["drain", "api", "--admin", &fake.addr.to_string(), "--wait", "--timeout", "1s"], &[]).await;
    run.expect_code(1);
    assert!(run.stderr.starts_with("dify-shaper ctl: drain api: gave up after 1s"), "{}", run.stderr);
    assert!(run.stderr.contains("in flight 1"), "{}", run.stderr);
}

#[tokio::test]
async fn resume_wait_returns_once_the_health_gate_passed() {
    let _machine = crate::common::shared().await;
    let fake = FakeAdmin::start(
        Script::default().post("/upstreams/api/resume", 200, maintenance("drained", 0, Value::Null)).views([
            maintenance("drained", 0, Value::Null),
            maintenance("recovering", 0, Value::Null),
            maintenance("ramping", 1, Value::Null),
        ]),
    )
    .await;
    let run =
        ctl(&["resume", "api", "--admin", &fake.addr.to_string(), "--wait", "--timeout", "20s"], &[]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("health gate passed, ramping"), "{}", run.stdout);
    assert_eq!(fake.script().status_polls(), 3);
}

fn restart_script(outcome: &str, reason: &str) -> Script {
    let mut started = maintenance("draining", 2, cycle(3, "failed", "an older cycle"));
    started["cycle"] = json!(4);
    Script::default().post("/upstreams/api/restart", 202, started).views([
        maintenance("draining", 1, cycle(3, "failed", "an older cycle")),
        maintenance("restarting", 0, cycle(3, "failed", "an older cycle")),
        maintenance("recovering", 0, cycle(3, "failed", "an older cycle")),
        maintenance(if outcome == "ok" { "ramping" } else { "drained" }, 0, cycle(4, outcome, reason)),
    ])
}

#[tokio::test]
async fn restart_wait_exits_0_when_its_cycle_ends_ok() {
    let _machine = crate::common::shared().await;
    let fake = FakeAdmin::start(restart_script("ok", "")).await;
    let run =
        ctl(&["restart", "api", "--admin", &fake.addr.to_string(), "--wait", "--timeout", "20s"], &[]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("restart cycle 4 started"), "{}", run.stdout);
    assert!(run.stdout.contains("restart cycle 4 ok"), "{}", run.stdout);
    // The older failed cycle 3 in every earlier view was not taken for this one.
    assert_eq!(fake.script().status_polls(), 4);
}

#[tokio::test]
async fn restart_wait_exits_1_with_the_reason_when_its_cycle_failed() {
    let _machine = crate::common::shared().await;
    let reason = "health gate: GET /health not 200 within 5m";
    let fake = FakeAdmin::start(restart_script("failed", reason)).await;
    let run =
        ctl(&["restart", "api", "--admin", &fake.addr.to_string(), "--wait", "--timeout", "20s"], &[]).await;
    run.expect_code(1);
    assert!(run.stderr.starts_with("dify-shaper ctl: restart api: cycle 4 failed: "), "{}", run.stderr);
    assert!(run.stderr.contains(reason), "{}", run.stderr);
}

#[tokio::test]
async fn restart_conflict_quotes_the_server() {
    let _machine = crate::common::shared().await;
    let (status, body) = envelope(409, "conflict", "a restart cycle is already running (cycle 4)");
    let fake = FakeAdmin::start(Script::default().post("/upstreams/api/restart", status, body)).await;
    let run = ctl(&["restart", "api", "--admin", &fake.addr.to_string(), "--wait"], &[]).await;
    run.expect_code(1);
    assert!(
        run.stderr.contains("a restart cycle is already running (cycle 4) (409 conflict)"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn unknown_upstream_exits_1_with_the_message() {
    let _machine = crate::common::shared().await;
    let fake = FakeAdmin::start(Script::default()).await;
    let admin = fake.addr.to_string();
    let run = ctl(&["drain", "nope", "--admin", &admin, "--wait", "--timeout", "20s"], &[]).await;
    run.expect_code(1);
    assert_eq!(run.stderr.trim(), r#"dify-shaper ctl: drain nope: no upstream named "nope" (404 not_found)"#);
    assert_eq!(fake.script().status_polls(), 0);

    let run = ctl(&["status", "nope", "--admin", &admin], &[]).await;
    run.expect_code(1);
    assert!(run.stderr.contains(r#"no upstream named "nope" (known: api, web)"#), "{}", run.stderr);
}

#[tokio::test]
async fn status_prints_the_view_or_everything() {
    let _machine = crate::common::shared().await;
    let view = maintenance("drained", 0, cycle(3, "ok", ""));
    let fake = FakeAdmin::start(Script::default().views([view.clone()])).await;
    let admin = fake.addr.to_string();
    // The address from the environment this time.
    let run = ctl(&["status", "api"], &[("DIFY_SHAPER_ADMIN", &admin)]).await;
    run.expect_code(0);
    let printed: Value = serde_json::from_str(&run.stdout).expect("status api prints JSON");
    assert_eq!(printed, view);

    let run = ctl(&["status"], &[("DIFY_SHAPER_ADMIN", &admin)]).await;
    run.expect_code(0);
    let printed: Value = serde_json::from_str(&run.stdout).expect("status prints JSON");
    assert_eq!(printed["version"], "test");
    assert_eq!(printed["upstreams"]["api"]["maintenance"], view);
}

#[tokio::test]
async fn the_token_is_sent_when_given() {
    let _machine = crate::common::shared().await;
    let script = Script {
        token: Some("s3cret".into()),
        ..Script::default().post("/upstreams/api/drain", 200, maintenance("drained", 0, Value::Null))
    };
    let fake = FakeAdmin::start(script.views([maintenance("drained", 0, Value::Null)])).await;
    let admin = fake.addr.to_string();

    let run = ctl(&["drain", "api", "--admin", &admin], &[]).await;
    run.expect_code(1);
    assert!(run.stderr.contains("missing or wrong admin token (401 unauthorized)"), "{}", run.stderr);
    assert!(run.stderr.contains("--token"), "{}", run.stderr);

    ctl(&["drain", "api", "--admin", &admin, "--token", "s3cret", "--wait", "--timeout", "20s"], &[])
        .await
        .expect_code(0);
    ctl(&["status", "api", "--admin", &admin], &[("DIFY_SHAPER_ADMIN_TOKEN", "s3cret")]).await.expect_code(0);

    let seen = fake.script().seen.clone();
    let bearer = Some("Bearer s3cret".to_string());
    assert_eq!(seen[0].2, None);
    assert_eq!(seen.len(), 4, "{seen:?}");
    // The POST and the polls of --wait carry it, and so does the token from the environment.
    assert!(seen[1..].iter().all(|(_, _, auth)| *auth == bearer), "{seen:?}");
}

#[tokio::test]
async fn connection_refused_names_the_address() {
    let _machine = crate::common::shared().await;
    let addr = common::free_port().to_string();
    let run = ctl(&["drain", "api", "--admin", &addr, "--wait", "--timeout", "20s"], &[]).await;
    run.expect_code(1);
    assert!(run.stderr.starts_with("dify-shaper ctl: drain api: cannot connect"), "{}", run.stderr);
    assert!(run.stderr.contains(&addr), "{}", run.stderr);
    assert!(run.stderr.contains("--admin"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let _machine = crate::common::shared().await;
    ctl(&["drain"], &[]).await.expect_code(2);
    ctl(&["status", "--wait"], &[]).await.expect_code(2);
    ctl(&["drain", "api", "--timeout", "soon"], &[]).await.expect_code(2);
    ctl(&["status", "--admin", "https://127.0.0.1:9090"], &[]).await.expect_code(2);
}
