//! Backend crashes, not graceful restarts: the simulator runs as its own process and is killed
//! (SIGKILL) or frozen (SIGSTOP) with blocking and streaming runs in flight. Checks that
//!
//! - every blocking run in flight gets exactly one answer, in Dify's JSON envelope (a 502 when
//!   the backend died, a 504 at the class's `read_timeout` when it froze), and every stream in
//!   flight ends with Dify's `error` event as its last frame (`upstream_lost` / 502 on a
//!   crash, `upstream_timeout` / 504 past the class's `stream_idle_timeout` on a freeze);
//! - no run reaches the backend twice: a POST that may have run is never replayed, which the
//!   simulator's own per-request counters show;
//! - nothing waits past its class's limits;
//! - requests arriving after a crash are held (not failed) until the backend is back on the
//!   same port, and then served once; after a freeze ends, new requests are served.
//!
//! The simulator process is this test binary itself, re-run as the ignored test
//! [`simulator_process`]: it hosts a [`Simulator`] and keeps its per-request counters in a
//! file, so they survive its SIGKILL and can be read while it is frozen.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::fixtures::{poll_until, status, wait_for};
use common::sse::SseReader;
use common::{free_port, json, request, send, ProxyProcess};
use dify_shaper_tools::sim::{SimConfig, Simulator};
use http_body_util::{BodyExt, Full};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Where the simulator process listens (set by the parent; unset, [`simulator_process`] is a
/// no-op).
const HOST_LISTEN: &str = "DIFY_SHAPER_CRASH_SIM_LISTEN";
/// The file the simulator process keeps its counters in.
const HOST_COUNTERS: &str = "DIFY_SHAPER_CRASH_SIM_COUNTERS";
/// The request ids whose arrivals it counts, comma-separated.
const HOST_IDS: &str = "DIFY_SHAPER_CRASH_SIM_IDS";
/// The longest a simulator process lives, should its parent fail to end it.
const HOST_LIFETIME: Duration = Duration::from_secs(180);
/// The longest any request of these tests may take, whatever happens.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);
/// How long the backend of scenario A stays down after its crash.
const OUTAGE: Duration = Duration::from_secs(3);

const BLOCKING: &str = r#"{"inputs":{},"response_mode":"blocking","user":"crash"}"#;
const STREAMING: &str = r#"{"inputs":{},"response_mode":"streaming","user":"crash"}"#;

/// The simulator process of the crash tests, not a test of its own: the parent starts this
/// binary again with only this test and [`HOST_LISTEN`] set. It serves on that address and
/// writes the arrivals of the ids in [`HOST_IDS`] to [`HOST_COUNTERS`] (replaced whole on
/// every change), until it is killed, its parent is gone, or [`HOST_LIFETIME`] passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the simulator process the crash tests start; does nothing on its own"]
async fn simulator_process() {
    let Ok(listen) = std::env::var(HOST_LISTEN) else { return };
    let listen: SocketAddr = listen.parse().expect("listen address");
    let counters = PathBuf::from(std::env::var(HOST_COUNTERS).expect("counters file"));
    let ids: Vec<String> = std::env::var(HOST_IDS)
        .unwrap_or_default()
        .split(',')
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    // Room for every run of a test at once, so none waits in the backlog behind another.
    let config = SimConfig { worker_connections: 64, ..SimConfig::default() };
    let sim = Simulator::start(listen, config).await.expect("start the simulator");
    let parent = std::os::unix::process::parent_id();
    let aside = counters.with_extension("new");
    let deadline = Instant::now() + HOST_LIFETIME;
    let mut written = String::new();
    // Written as they change, every few milliseconds: a SIGKILL leaves no time to write them.
    while Instant::now() < deadline && std::os::unix::process::parent_id() == parent {
        let seen: BTreeMap<&str, u64> = ids
            .iter()
            .map(|id| (id.as_str(), sim.count_for_request_id(id)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let text = serde_json::json!({ "pid": std::process::id(), "requests": seen }).to_string();
        if text != written {
            std::fs::write(&aside, &text).expect("write counters");
            std::fs::rename(&aside, &counters).expect("replace counters");
            written = text;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One simulator process (an instance of [`simulator_process`]); killed on drop.
struct SimHost {
    child: Child,
    counters: PathBuf,
    /// Killed and reaped: its pid may belong to another process now.
    reaped: bool,
}

impl SimHost {
    /// Starts a simulator process on `addr` counting `ids`, and waits until it listens.
    async fn start(addr: SocketAddr, dir: &Path, name: &str, ids: &[String]) -> SimHost {
        let counters = dir.join(format!("{name}.json"));
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["crash::simulator_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(HOST_LISTEN, addr.to_string())
            .env(HOST_COUNTERS, &counters)
            .env(HOST_IDS, ids.join(","))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn the simulator process");
        let host = SimHost { child, counters, reaped: false };
        let what = format!("the simulator process to listen (its log: {name}.log in {})", dir.display());
        wait_for(Duration::from_secs(30), &what, || async {
            host.counters.exists() && tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        host
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"))
    }

    fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal the simulator process");
    }

    /// Kills it with SIGKILL (a crash: no handler runs, the kernel closes its sockets) and
    /// reaps it, so its port is closed on return.
    fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.child.wait().expect("reap the simulator process");
        self.reaped = true;
    }

    /// Freezes it with SIGSTOP until the returned guard is thawed or dropped.
    fn freeze(&self) -> Frozen {
        self.signal(Signal::SIGSTOP);
        Frozen { pid: self.pid() }
    }

    /// How often each counted id reached it, as of its last write.
    fn counts(&self) -> HashMap<String, u64> {
        counts_in(&self.counters)
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // SIGKILL ends a stopped process too; SIGCONT first all the same, so nothing of it
        // lingers frozen should the kill fail.
        let _ = nix::sys::signal::kill(self.pid(), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A frozen simulator process: resumed by [`Frozen::thaw`], or on drop (a failing test
/// must not leave a stopped process behind).
struct Frozen {
    pid: nix::unistd::Pid,
}

impl Frozen {
    fn thaw(self) {}
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGCONT);
    }
}

fn counts_in(path: &Path) -> HashMap<String, u64> {
    let Ok(text) = std::fs::read_to_string(path) else { return HashMap::new() };
    let value: serde_json::Value = serde_json::from_str(&text).expect("counters JSON");
    value["requests"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Blocking,
    Streaming,
}

/// One request of a scenario and how it ended.
#[derive(Debug)]
struct Answer {
    id: String,
    kind: Kind,
    sent: Instant,
    /// When the whole answer was in: a blocking response's body, a stream's last frame.
    answered: Instant,
    /// The HTTP status of the response head (0: none arrived).
    status: u16,
    /// A blocking answer's envelope code, or a stream's last event (`event`, and for an
    /// `error` event its `status` and `code`).
    outcome: String,
    /// A blocking answer's body as JSON (Dify's envelope when the proxy answered).
    envelope: serde_json::Value,
    /// Its `X-Request-Id` and `Retry-After` headers.
    request_id: Option<String>,
    retry_after: Option<String>,
    /// A stream's events with their arrival times.
    events: Vec<(Instant, String)>,
    /// What went wrong on the client's side, if anything (no answer in time, a broken body).
    failure: Option<String>,
}

impl Answer {
    /// The time from sending to the whole answer.
    fn took(&self) -> Duration {
        self.answered.saturating_duration_since(self.sent)
    }

    /// The last event of a stream as JSON (`Null` when there was none, or a ping).
    fn last_event(&self) -> serde_json::Value {
        self.events
            .last()
            .and_then(|(_, f)| f.trim().strip_prefix("data: "))
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// When the last event before the final one arrived: what a stream's idle limit counts from.
    fn before_last(&self) -> Instant {
        self.events.iter().rev().nth(1).map_or(self.sent, |(at, _)| *at)
    }
}

/// Sends a workflow run of `kind` with id `id`, taking `service` in the simulator (with
/// `events` node events when streaming); `started` hears the id once the run is under way
/// (a stream's first event arrived; a blocking run has no such moment).
async fn run(
    proxy: SocketAddr,
    kind: Kind,
    id: String,
    service: &str,
    events: usize,
    started: mpsc::UnboundedSender<String>,
) -> Answer {
    let body = if kind == Kind::Streaming { STREAMING } else { BLOCKING };
    let req = request("POST", proxy, "/v1/workflows/run")
        .header("content-type", "application/json")
        .header("x-request-id", id.as_str())
        .header("x-sim-service-time", service)
        .header("x-sim-events", events.to_string())
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let sent = Instant::now();
    let deadline = sent + CLIENT_LIMIT;
    let mut answer = Answer {
        id,
        kind,
        sent,
        answered: sent,
        status: 0,
        outcome: String::new(),
        envelope: serde_json::Value::Null,
        request_id: None,
        retry_after: None,
        events: Vec::new(),
        failure: None,
    };
    let response = match tokio::time::timeout_at(deadline, send(proxy, req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            answer.failure = Some(format!("no response: {e}"));
            answer.answered = Instant::now();
            return answer;
        }
        Err(_) => {
            answer.failure = Some(format!("no response head within {CLIENT_LIMIT:?}"));
            answer.answered = Instant::now();
            return answer;
        }
    };
    answer.status = response.status().as_u16();
    let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    (answer.request_id, answer.retry_after) = (header("x-request-id"), header("retry-after"));
    let is_stream = response
        .headers()
        .get("content-type")
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream {
        match tokio::time::timeout_at(deadline, response.into_body().collect()).await {
            Ok(Ok(body)) => {
                answer.envelope = json(&body.to_bytes());
                answer.outcome = if answer.status == 200 {
                    "answer".to_owned()
                } else {
                    answer.envelope["code"].as_str().unwrap_or("(no code)").to_owned()
                };
            }
            Ok(Err(e)) => answer.failure = Some(format!("body broke: {e}")),
            Err(_) => answer.failure = Some(format!("no whole body within {CLIENT_LIMIT:?}")),
        }
        answer.answered = Instant::now();
        return answer;
    }
    let mut reader = SseReader::new(response.into_body());
    loop {
        match reader.next(deadline).await {
            Ok(Some((at, frame))) => {
                if answer.events.is_empty() {
                    let _ = started.send(answer.id.clone());
                }
                answer.answered = at;
                answer.events.push((at, frame));
            }
            Ok(None) => break,
            Err(_) => {
                answer.failure = Some(format!("the stream did not end within {CLIENT_LIMIT:?}"));
                answer.answered = Instant::now();
                break;
            }
        }
    }
    let last = answer.last_event();
    answer.outcome = match last["event"].as_str() {
        Some("error") => format!("error {} {}", last["status"], last["code"].as_str().unwrap_or("-")),
        Some(event) => event.to_owned(),
        None => "(no event)".to_owned(),
    };
    answer
}

/// Runs of one group, sent at once.
struct Batch {
    label: &'static str,
    tasks: Vec<JoinHandle<Answer>>,
}

impl Batch {
    /// Sends a run per id of `ids`, of its kind, each taking `service` (streams: with
    /// `events` node events).
    fn send(
        label: &'static str,
        proxy: SocketAddr,
        ids: &Ids,
        service: &str,
        events: usize,
        started: &mpsc::UnboundedSender<String>,
    ) -> Batch {
        let tasks = ids
            .all()
            .map(|(kind, id)| {
                let (service, started) = (service.to_owned(), started.clone());
                tokio::spawn(async move { run(proxy, kind, id, &service, events, started).await })
            })
            .collect();
        Batch { label, tasks }
    }

    fn all_pending(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished())
    }

    async fn answers(self) -> (&'static str, Vec<Answer>) {
        let mut answers = Vec::new();
        for task in self.tasks {
            answers.push(task.await.expect("a run's task panicked"));
        }
        (self.label, answers)
    }
}

/// The ids of one group of runs.
struct Ids {
    blocking: Vec<String>,
    streaming: Vec<String>,
}

impl Ids {
    fn new(prefix: &str, blocking: usize, streaming: usize) -> Ids {
        Ids {
            blocking: (0..blocking).map(|n| format!("{prefix}-b{n}")).collect(),
            streaming: (0..streaming).map(|n| format!("{prefix}-s{n}")).collect(),
        }
    }

    fn all(&self) -> impl Iterator<Item = (Kind, String)> + '_ {
        let blocking = self.blocking.iter().map(|id| (Kind::Blocking, id.clone()));
        blocking.chain(self.streaming.iter().map(|id| (Kind::Streaming, id.clone())))
    }

    fn list(&self) -> Vec<String> {
        self.all().map(|(_, id)| id).collect()
    }

    fn len(&self) -> usize {
        self.blocking.len() + self.streaming.len()
    }
}

/// The proxy's config: everything to the simulator at `backend` as the `run` class (with
/// `class` added to its section), an initial limit above what the tests send at once (so
/// every run is in flight at the backend, none queued by the limiter), and fast probes.
fn proxy_config(backend: SocketAddr, class: &str) -> String {
    format!(
        "[upstreams.api]\nservers = [\"{backend}\"]\n\
         [upstreams.api.admission]\ninitial_limit = 32\n\
         [upstreams.api.health]\ninterval = \"250ms\"\ntimeout = \"500ms\"\n\
         [classes.run]\n{class}\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n"
    )
}

/// Waits until every id of `ids` reached the backend `host` and every stream among them
/// sent its first event (heard on `started`).
async fn wait_in_flight(host: &SimHost, ids: &Ids, started: &mut mpsc::UnboundedReceiver<String>) {
    let mut streams = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while streams < ids.streaming.len() {
        let id = tokio::time::timeout_at(deadline, started.recv())
            .await
            .expect("every stream's first event within 20 s")
            .expect("senders alive");
        assert!(ids.streaming.contains(&id), "{id} started out of turn");
        streams += 1;
    }
    wait_for(Duration::from_secs(20), "every run in flight to reach the backend", || async {
        let counts = host.counts();
        ids.list().iter().all(|id| counts.get(id).copied().unwrap_or(0) >= 1)
    })
    .await;
}

/// Requests the proxy holds for `upstream` right now: waiting in its queue or, admitted,
/// for an endpoint in rotation.
async fn held(admin: SocketAddr) -> (bool, u64) {
    let view = status(admin).await;
    let admission = &view["upstreams"]["api"]["admission"];
    let available = admission["available"].as_bool().unwrap_or(true);
    let waiting = admission["queued"].as_u64().unwrap_or(0) + admission["in_flight"].as_u64().unwrap_or(0);
    (available, waiting)
}

/// Runs that reached the backend per id, summed over every simulator process that ran.
fn reached(id: &str, hosts: &[&HashMap<String, u64>]) -> u64 {
    hosts.iter().map(|c| c.get(id).copied().unwrap_or(0)).sum()
}

/// The table of one scenario: per group and kind, the requests, their outcomes, the longest
/// time to an answer (from sending, and from `event`), and how often each reached the backend.
fn table(
    title: &str,
    event: (&str, Instant),
    groups: &[(&'static str, Vec<Answer>)],
    hosts: &[&HashMap<String, u64>],
) -> String {
    let mut out = format!(
        "\n### {title}\n\n| requests | kind | n | outcome (count) | max time to answer | max after {} | runs reaching the backend per request |\n|---|---|---|---|---|---|---|\n",
        event.0
    );
    for (label, answers) in groups {
        for kind in [Kind::Blocking, Kind::Streaming] {
            let of_kind: Vec<&Answer> = answers.iter().filter(|a| a.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
            for a in &of_kind {
                let shown = match (&a.failure, a.kind) {
                    (Some(f), _) => format!("client: {f}"),
                    (None, Kind::Blocking) => format!("{} {}", a.status, a.outcome),
                    (None, Kind::Streaming) if a.status == 200 => format!("200, last event {}", a.outcome),
                    (None, Kind::Streaming) => format!("{} {}", a.status, a.outcome),
                };
                *outcomes.entry(shown).or_default() += 1;
            }
            let outcomes = outcomes.iter().map(|(k, n)| format!("{k} ({n})")).collect::<Vec<_>>().join(", ");
            let longest = of_kind.iter().map(|a| a.took()).max().unwrap_or_default();
            let after = of_kind.iter().map(|a| a.answered.saturating_duration_since(event.1)).max();
            let mut runs: BTreeMap<u64, usize> = BTreeMap::new();
            for a in &of_kind {
                *runs.entry(reached(&a.id, hosts)).or_default() += 1;
            }
            let runs = runs.iter().map(|(r, n)| format!("{r}× ({n})")).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                out,
                "| {label} | {kind:?} | {} | {outcomes} | {:.2} s | {:.2} s | {runs} |",
                of_kind.len(),
                longest.as_secs_f64(),
                after.unwrap_or_default().as_secs_f64(),
            );
        }
    }
    out
}

/// Asserts that `a` was answered `status` with Dify's error envelope `code` by the proxy,
/// carrying its request id.
fn assert_envelope(a: &Answer, status: u16, code: &str) {
    assert!(a.failure.is_none(), "{}: {a:?}", a.id);
    assert_eq!((a.status, a.outcome.as_str()), (status, code), "{}: {a:?}", a.id);
    let e = &a.envelope;
    assert_eq!(e["status"], status, "{}: {e}", a.id);
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{}: {e}", a.id);
    assert_eq!(e.as_object().map(|o| o.len()), Some(3), "{}: not Dify's envelope: {e}", a.id);
    assert_eq!(a.request_id.as_deref(), Some(a.id.as_str()), "{}: the request id is not echoed", a.id);
}

/// Asserts that the stream `a` started (200, `workflow_started`) and ended with Dify's `error`
/// event with `status` and `code` as its last frame, without finishing.
fn assert_error_event(a: &Answer, status: u16, code: &str) {
    assert!(a.failure.is_none(), "{}: {a:?}", a.id);
    assert_eq!(a.status, 200, "{}: {a:?}", a.id);
    let last = a.last_event();
    assert_eq!(
        (&last["event"], &last["status"], &last["code"]),
        (&serde_json::json!("error"), &serde_json::json!(status), &serde_json::json!(code)),
        "{}: the stream's last frame is not Dify's error event: {:?}",
        a.id,
        a.events
    );
    assert!(
        a.events.first().is_some_and(|(_, f)| f.contains("workflow_started")),
        "{}: {:?}",
        a.id,
        a.events
    );
    assert!(!a.events.iter().any(|(_, f)| f.contains("workflow_finished")), "{}: {:?}", a.id, a.events);
}

/// Asserts that `a` was served in full: a blocking answer, or a stream to `workflow_finished`.
fn assert_served(a: &Answer) {
    assert!(a.failure.is_none(), "{}: {a:?}", a.id);
    assert_eq!(a.status, 200, "{}: {a:?}", a.id);
    let want = if a.kind == Kind::Blocking { "answer" } else { "workflow_finished" };
    assert_eq!(a.outcome, want, "{}: {:?}", a.id, a.events);
}

/// Scenario A: SIGKILL with 8 blocking and 4 streaming runs of 10 s in flight, 4 + 2 new
/// runs sent after the crash, the simulator started again on the same port after an outage of
/// [`OUTAGE`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_fails_what_ran_once_and_holds_what_came_after() {
    let _machine = common::exclusive().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = free_port();
    let (warm, in_flight, after) =
        (Ids::new("a-warm", 1, 1), Ids::new("a-run", 8, 4), Ids::new("a-new", 4, 2));
    let ids: Vec<String> = [&warm, &in_flight, &after].iter().flat_map(|i| i.list()).collect();
    let mut first = SimHost::start(addr, dir.path(), "first", &ids).await;
    let proxy = ProxyProcess::start(&proxy_config(addr, "queue_timeout = \"45s\"")).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();

    // The path works before anything breaks.
    let (_, warmed) = Batch::send("warm-up", proxy.addr, &warm, "100ms", 2, &started_tx).answers().await;
    warmed.iter().for_each(assert_served);
    while started.try_recv().is_ok() {}

    // 10 s runs, a stream event every ~0.5 s: all of them in flight when the backend dies.
    let runs = Batch::send("in flight", proxy.addr, &in_flight, "10s", 10, &started_tx);
    wait_in_flight(&first, &in_flight, &mut started).await;
    first.kill();
    let crashed = Instant::now();
    // Final: nothing reaches a dead process.
    let first_counts = first.counts();

    let (label, in_flight_answers) = runs.answers().await;
    for a in &in_flight_answers {
        match a.kind {
            // The run may have happened: the answer does not invite an immediate retry.
            Kind::Blocking => {
                assert_envelope(a, 502, "upstream_lost");
                assert_eq!(
                    a.retry_after, None,
                    "{}: a run that may have run is not to be retried at once",
                    a.id
                );
            }
            Kind::Streaming => assert_error_event(a, 502, "upstream_lost"),
        }
        // Cut at once, not at a timeout (the runs had 10 s to go).
        let after_crash = a.answered.saturating_duration_since(crashed);
        assert!(after_crash < Duration::from_secs(3), "{} answered {after_crash:?} after the crash", a.id);
    }

    // New runs after the crash: held by the proxy (connects are refused, then probes fail),
    // not answered, for as long as the backend stays down.
    let new_runs = Batch::send("new after the crash", proxy.addr, &after, "1s", 4, &started_tx);
    let all_new = after.len() as u64;
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "the proxy to hold the new runs",
        || async { held(proxy.admin).await == (false, all_new) },
    )
    .await;
    // The length of the outage is the scenario, not a wait for something to happen.
    tokio::time::sleep_until(crashed + OUTAGE).await;
    assert_eq!(held(proxy.admin).await, (false, all_new), "the new runs are still held");
    assert!(new_runs.all_pending(), "a new run was answered while the backend was down");
    let second = SimHost::start(addr, dir.path(), "second", &ids).await;
    let back = Instant::now();

    let (new_label, new_answers) = new_runs.answers().await;
    for a in &new_answers {
        assert_served(a);
        assert!(a.answered > back, "{} answered before the backend was back", a.id);
        // Held through the outage, then served within its class's queue timeout.
        assert!(a.took() < Duration::from_secs(45), "{} took {:?}", a.id, a.took());
    }

    // Each run reached a backend exactly once: those in flight the dead one (a POST that may
    // have run is not replayed on the new one); the new ones only the new one.
    let second_counts = second.counts();
    for id in in_flight.list() {
        assert_eq!(first_counts.get(&id).copied(), Some(1), "{id} reached the crashed backend once");
        assert_eq!(second_counts.get(&id), None, "{id} was replayed after the crash");
    }
    for id in after.list() {
        assert_eq!(first_counts.get(&id), None, "{id} reached the crashed backend");
        assert_eq!(second_counts.get(&id).copied(), Some(1), "{id} reached the new backend once");
    }
    let groups = [(label, in_flight_answers), (new_label, new_answers)];
    println!(
        "{}",
        table("A: SIGKILL of the backend", ("the crash", crashed), &groups, &[&first_counts, &second_counts])
    );
    println!(
        "(backend down {:.2} s, from the SIGKILL until the new process listened)",
        back.saturating_duration_since(crashed).as_secs_f64()
    );
}

/// Scenario B: SIGSTOP with 8 blocking and 4 streaming runs of 4 s in flight, under a 7 s
/// `read_timeout` and a 1.5 s `stream_idle_timeout`; 4 + 2 new runs sent during the freeze;
/// SIGCONT once every one of them was answered, then 4 + 2 new runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_backend_times_out_what_waits_on_it_and_serves_once_thawed() {
    let _machine = common::exclusive().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = free_port();
    let (read_timeout, idle_timeout) = (Duration::from_secs(7), Duration::from_millis(1500));
    // Slack for a loaded machine on top of each limit.
    let slack = Duration::from_secs(2);
    let (warm, in_flight, frozen_new, held_new, after) = (
        Ids::new("b-warm", 1, 1),
        Ids::new("b-run", 8, 4),
        Ids::new("b-frozen", 4, 2),
        Ids::new("b-held", 4, 2),
        Ids::new("b-new", 4, 2),
    );
    let ids: Vec<String> =
        [&warm, &in_flight, &frozen_new, &held_new, &after].iter().flat_map(|i| i.list()).collect();
    let host = SimHost::start(addr, dir.path(), "host", &ids).await;
    let class = "read_timeout = \"7s\"\nstream_idle_timeout = \"1500ms\"\nqueue_timeout = \"30s\"";
    // Silent (no probe, no request answered) for 2 s: frozen, out of rotation.
    let config = proxy_config(addr, class)
        .replace("timeout = \"500ms\"\n", "timeout = \"500ms\"\nsilent_timeout = \"2s\"\n");
    let proxy = ProxyProcess::start(&config).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();

    let (_, warmed) = Batch::send("warm-up", proxy.addr, &warm, "100ms", 2, &started_tx).answers().await;
    warmed.iter().for_each(assert_served);
    while started.try_recv().is_ok() {}

    // 4 s runs (well inside the 7 s read timeout: only the freeze can make them time out), a
    // stream event every ~0.2 s (well inside the 1.5 s idle timeout).
    let runs = Batch::send("in flight", proxy.addr, &in_flight, "4s", 10, &started_tx);
    wait_in_flight(&host, &in_flight, &mut started).await;
    let frozen = host.freeze();
    let froze = Instant::now();
    // Sent to the frozen backend: its kernel still completes their connects into the backlog.
    let during = Batch::send("new during the freeze", proxy.addr, &frozen_new, "1s", 4, &started_tx);
    // Once it has been silent for `silent_timeout`, the prober takes it out of rotation: new
    // runs are held here, as while it is down, instead of being sent into its backlog.
    wait_for(Duration::from_secs(10), "the frozen backend to leave rotation", || async {
        !held(proxy.admin).await.0
    })
    .await;
    let detected = froze.elapsed();
    let held_batch = Batch::send("new once detected", proxy.addr, &held_new, "1s", 4, &started_tx);
    wait_for(Duration::from_secs(10), "the new runs to be held", || async {
        let view = status(proxy.admin).await;
        view["upstreams"]["api"]["admission"]["queued"].as_u64().unwrap_or(0) >= held_new.list().len() as u64
    })
    .await;

    let (label, in_flight_answers) = runs.answers().await;
    for a in &in_flight_answers {
        match a.kind {
            Kind::Blocking => {
                assert_envelope(a, 504, "upstream_timeout");
                // At the class's read timeout: not before (the runs alone take 4 s), not long after.
                assert!(a.took() >= read_timeout, "{} answered after {:?}", a.id, a.took());
                assert!(a.took() < read_timeout + slack, "{} answered after {:?}", a.id, a.took());
            }
            Kind::Streaming => {
                assert_error_event(a, 504, "upstream_timeout");
                let quiet = a.answered.saturating_duration_since(a.before_last());
                assert!(quiet >= idle_timeout, "{}: error event after {quiet:?} of quiet", a.id);
                assert!(quiet < idle_timeout + slack, "{}: error event after {quiet:?} of quiet", a.id);
            }
        }
    }
    // Runs that came during the freeze: none waits past its class's limit either. No answer
    // head came, so a stream gets the envelope too.
    let (during_label, during_answers) = during.answers().await;
    for a in &during_answers {
        assert_envelope(a, 504, "upstream_timeout");
        let limit = if a.kind == Kind::Blocking { read_timeout } else { idle_timeout };
        assert!(a.took() >= limit, "{} answered after {:?}", a.id, a.took());
        assert!(a.took() < limit + slack, "{} answered after {:?}", a.id, a.took());
    }
    let (available, _) = held(proxy.admin).await;
    assert!(!available, "the frozen backend is out of rotation");
    let counts = host.counts();
    assert!(
        held_new.list().iter().all(|id| !counts.contains_key(id)),
        "a held run reached the frozen backend"
    );
    frozen.thaw();
    let thawed = Instant::now();
    // The held runs go once a probe sees it answer again.
    let (held_label, held_answers) = held_batch.answers().await;
    for a in &held_answers {
        assert_served(a);
    }

    // Once it runs again, new runs are served.
    let batch = Batch::send("new after SIGCONT", proxy.addr, &after, "1s", 4, &started_tx);
    let (new_label, new_answers) = batch.answers().await;
    for a in &new_answers {
        assert_served(a);
        assert!(a.took() < Duration::from_secs(10), "{} took {:?}", a.id, a.took());
    }

    // A timed-out POST is not replayed. The backend itself still works through what it
    // had once thawed, the runs sent during the freeze included (read from its backlog),
    // so those may have run once though their clients heard 504.
    wait_for(Duration::from_secs(10), "the thawed backend to count the new runs", || async {
        let counts = host.counts();
        after.list().iter().all(|id| counts.contains_key(id))
    })
    .await;
    let counts = host.counts();
    for id in in_flight.list().iter().chain(&after.list()).chain(&held_new.list()) {
        assert_eq!(counts.get(id).copied(), Some(1), "{id} reached the backend once");
    }
    for id in frozen_new.list() {
        assert!(counts.get(&id).copied().unwrap_or(0) <= 1, "{id} reached the backend more than once");
    }
    let groups = [
        (label, in_flight_answers),
        (during_label, during_answers),
        (held_label, held_answers),
        (new_label, new_answers),
    ];
    println!("{}", table("B: SIGSTOP of the backend", ("the freeze", froze), &groups, &[&counts]));
    println!(
        "(frozen {:.2} s; out of rotation {:.2} s after the freeze, silent_timeout 2 s)",
        thawed.saturating_duration_since(froze).as_secs_f64(),
        detected.as_secs_f64()
    );
}
