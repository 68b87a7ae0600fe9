//! Open-loop HTTP load generator for `benches/compare.sh`: the command line and JSON report
//! around the crate's generator (`dify_shaper_tools::loadgen`, which the demo and the tests use too).
//!
//! Requests start on a fixed schedule (`--rate` per second for `--duration`) whatever happened
//! to earlier ones, as real clients do; each opens its own TCP connection (like Dify's clients
//! behind nginx), sends one request and gives up after `--timeout` (the whole exchange, body
//! included), closing its connection. Prints one JSON object (also to `--out`): sent, ok,
//! goodput, statuses, Dify error codes, client-side errors by kind, latency percentiles of ok
//! responses, first-frame latency of streams, a per-second timeline by send time, and ok
//! answers per 100 ms by completion time (`ok_done_100ms`, from the window's start).
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/v1/workflows/run \
//!     --rate 10 --duration 25s --timeout 10s [--stream] [--method POST] [--body JSON] \
//!     [--header 'k: v']… [--apps N] [--signal-pid PID --signal-at 8s] [--warmup 30s] \
//!     [--label L] [--out F]
//! ```
//!
//! An answer is **ok** when it is 2xx and its body arrived whole before the timeout; a stream
//! (`--stream`) must also end with `workflow_finished`/`message_end` and carry no `error`
//! event. Errors are counted by kind: `status` (a non-2xx answer, by code), `refused`
//! (connect refused), `reset` (the connection was closed or reset before a response head),
//! `broken` (a body cut short), `stream_error` (a 200 stream ending without its final event
//! or with Dify's `error` event), `timeout` (the client gave up), `other`.
//! Goodput counts ok answers that *completed* inside the send window, per second of it.
//!
//! `--warmup D` first sends the same traffic for `D` (a proxy that learns starts the window
//! warm, as it is after minutes in production; the backend starts it as loaded as the
//! traffic leaves it). Warm-up requests are not reported, except that their ok answers
//! completing inside the window count towards goodput: that is useful work done in it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dify_shaper_tools::loadgen::{exchange, open_loop, Answer, Failure, Shot};
use serde_json::json;
use tokio::time::Instant;

#[derive(Clone)]
struct Args {
    url: String,
    addr: SocketAddr,
    path: String,
    method: http::Method,
    body: String,
    headers: Vec<(String, String)>,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    stream: bool,
    apps: usize,
    signal_pid: Option<i32>,
    signal_at: Duration,
    label: String,
    out: Option<String>,
}

fn usage(msg: &str) -> ! {
    eprintln!("loadgen: {msg}\nsee the header of examples/loadgen.rs for flags");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        url: String::new(),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        path: String::new(),
        method: http::Method::GET,
        body: String::new(),
        headers: Vec::new(),
        rate: 1.0,
        duration: Duration::from_secs(10),
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(30),
        stream: false,
        apps: 1,
        signal_pid: None,
        signal_at: Duration::ZERO,
        label: String::new(),
        out: None,
    };
    let mut body: Option<String> = None;
    let mut method: Option<String> = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let dur = |s: String| humantime::parse_duration(&s).unwrap_or_else(|e| usage(&format!("{s}: {e}")));
        match flag.as_str() {
            "--url" => a.url = val(),
            "--method" => method = Some(val()),
            "--body" => body = Some(val()),
            "--header" => {
                let h = val();
                let (k, v) = h.split_once(':').unwrap_or_else(|| usage("--header wants 'name: value'"));
                a.headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            "--rate" => a.rate = val().parse().unwrap_or_else(|_| usage("--rate wants a number")),
            "--duration" => a.duration = dur(val()),
            "--warmup" => a.warmup = dur(val()),
            "--timeout" => a.timeout = dur(val()),
            "--stream" => a.stream = true,
            "--apps" => a.apps = val().parse().unwrap_or_else(|_| usage("--apps wants a count")),
            "--signal-pid" => a.signal_pid = Some(val().parse().unwrap_or_else(|_| usage("--signal-pid"))),
            "--signal-at" => a.signal_at = dur(val()),
            "--label" => a.label = val(),
            "--out" => a.out = Some(val()),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    let rest = a.url.strip_prefix("http://").unwrap_or_else(|| usage("--url must start with http://"));
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    a.addr = hostport.parse().unwrap_or_else(|_| usage("--url wants http://IP:PORT/…"));
    a.path = path.to_owned();
    let mode = if a.stream { "streaming" } else { "blocking" };
    a.body = body.unwrap_or_else(|| format!(r#"{{"inputs":{{}},"response_mode":"{mode}","user":"bench"}}"#));
    let method = method.unwrap_or_else(|| if a.body.is_empty() { "GET".into() } else { "POST".into() });
    a.method = method.parse().unwrap_or_else(|_| usage(&format!("--method {method}: not an HTTP method")));
    if a.rate <= 0.0 || a.apps == 0 {
        usage("--rate and --apps must be positive");
    }
    a
}

/// What happened to one request.
#[derive(Debug, Default, Clone)]
struct Outcome {
    sent_at: f64,
    /// Seconds from sending to the end of the answer (any answer) or the error.
    end_at: f64,
    status: Option<u16>,
    code: Option<String>,
    /// `ok`, `status`, `refused`, `reset`, `broken`, `stream_error`, `timeout`, `other`.
    kind: &'static str,
    latency: Option<f64>,
    head: Option<f64>,
    first_frame: Option<f64>,
}

/// The request `idx` sends: its app (one of `--apps`) as its bearer key, unless a `--header`
/// gives the key (a real Dify app's).
fn shot(a: &Args, idx: usize) -> Shot {
    let keyed = a.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    let mut headers = Vec::with_capacity(a.headers.len() + 1);
    if !keyed {
        headers.push(("authorization".to_owned(), format!("Bearer app-bench{:011}", idx % a.apps)));
    }
    headers.extend(a.headers.iter().cloned());
    Shot { method: a.method.clone(), path: a.path.clone(), headers, body: Bytes::from(a.body.clone()) }
}

/// Whether an answer is ok: 2xx and whole, and for a stream, finished without an error event.
fn judge(a: &Args, answer: &Answer) -> &'static str {
    if !answer.is_success() {
        "status"
    } else if !answer.complete {
        "broken"
    } else if a.stream {
        let text = String::from_utf8_lossy(&answer.body);
        let finished = text.contains("\"workflow_finished\"") || text.contains("\"message_end\"");
        let errored = text.contains("\"event\":\"error\"") || text.contains("\"event\": \"error\"");
        if finished && !errored {
            "ok"
        } else {
            "stream_error"
        }
    } else {
        "ok"
    }
}

async fn one(a: &Args, idx: usize, start: Instant) -> Outcome {
    let exchange = exchange(a.addr, &shot(a, idx), a.timeout, start).await;
    let sent_at = exchange.sent_at.as_secs_f64();
    let mut o = Outcome { sent_at, end_at: sent_at + exchange.took.as_secs_f64(), ..Default::default() };
    match &exchange.result {
        Err(Failure::TimedOut) => o.kind = "timeout",
        Err(Failure::Refused) => o.kind = "refused",
        Err(Failure::Reset) => o.kind = "reset",
        Err(Failure::Other(_)) => o.kind = "other",
        Ok(answer) => {
            o.status = Some(answer.status);
            o.head = Some(answer.head.as_secs_f64());
            o.first_frame = answer.first_frame.map(|f| f.as_secs_f64());
            o.kind = judge(a, answer);
            if o.kind == "status" {
                o.code = answer.envelope_code();
            }
            if o.kind == "ok" {
                o.latency = Some(exchange.took.as_secs_f64());
            }
        }
    }
    o
}

fn pct(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * p).ceil() as usize).saturating_sub(1).min(v.len() - 1);
    Some((v[i] * 1e6).round() / 1e3)
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    let warm = (a.rate * a.warmup.as_secs_f64()).round() as usize;
    let total = warm + (a.rate * a.duration.as_secs_f64()).round() as usize;
    let start = Instant::now();
    // Times in outcomes count from `start`; the measured window is [warmup, warmup + duration].
    let offset = a.warmup.as_secs_f64();
    if let Some(pid) = a.signal_pid {
        let at = start + a.warmup + a.signal_at;
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let r = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP);
            eprintln!("loadgen: SIGHUP to {pid} at {:.3}s: {r:?}", start.elapsed().as_secs_f64() - offset);
        });
    }
    let shared = Arc::new(a.clone());
    let outcomes = open_loop(a.rate, total, start, |i| {
        let args = Arc::clone(&shared);
        async move { one(&args, i, start).await }
    })
    .await;
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome { kind: "other", sent_at: f64::NAN, ..Default::default() }))
        .collect();
    let wall = start.elapsed().as_secs_f64() - offset;

    let window = a.duration.as_secs_f64();
    // Useful work done inside the window, whichever phase sent it.
    let ok_in_window = outcomes
        .iter()
        .filter(|o| o.kind == "ok" && o.end_at >= offset && o.end_at <= offset + window)
        .count();
    // The same ok answers by completion time, per 100 ms from the window's start, up to the
    // last moment a request sent in the window can end (how fast goodput builds up).
    let mut done = vec![0usize; (((window + a.timeout.as_secs_f64()) * 10.0).ceil() as usize).max(1)];
    for o in outcomes.iter().filter(|o| o.kind == "ok" && o.end_at >= offset) {
        if let Some(slot) = done.get_mut(((o.end_at - offset) * 10.0) as usize) {
            *slot += 1;
        }
    }
    let outcomes: Vec<Outcome> = outcomes.into_iter().skip(warm).collect();
    let sent = outcomes.len();
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == "ok").collect();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for k in ["refused", "reset", "broken", "stream_error", "timeout", "other"] {
        errors.insert(k.to_owned(), 0);
    }
    for o in &outcomes {
        if let Some(s) = o.status {
            *statuses.entry(s.to_string()).or_default() += 1;
            if o.kind == "status" {
                let c = format!("{s} {}", o.code.as_deref().unwrap_or("-"));
                *codes.entry(c).or_default() += 1;
            }
        }
        if o.kind != "ok" && o.kind != "status" {
            *errors.entry(o.kind.to_owned()).or_default() += 1;
        }
    }
    let mut lat: Vec<f64> = ok.iter().filter_map(|o| o.latency).collect();
    let mut ff: Vec<f64> = ok.iter().filter_map(|o| o.first_frame).collect();
    let mut heads: Vec<f64> = ok.iter().filter_map(|o| o.head).collect();
    let secs = window.ceil() as usize;
    let mut timeline = vec![(0usize, 0usize); secs.max(1)];
    for o in &outcomes {
        let i = ((o.sent_at - offset).max(0.0) as usize).min(timeline.len() - 1);
        timeline[i].0 += 1;
        if o.kind == "ok" {
            timeline[i].1 += 1;
        }
    }
    let report = json!({
        "label": a.label,
        "url": a.url,
        "stream": a.stream,
        "rate": a.rate,
        "duration_s": window,
        "warmup_s": offset,
        "timeout_s": a.timeout.as_secs_f64(),
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "sent": sent,
        "ok": ok.len(),
        "ok_pct": if sent > 0 { (ok.len() as f64 * 1000.0 / sent as f64).round() / 10.0 } else { 0.0 },
        "ok_in_window": ok_in_window,
        "goodput": (ok_in_window as f64 * 100.0 / window).round() / 100.0,
        "statuses": statuses,
        "codes": codes,
        "errors": errors,
        "latency_ms": {"p50": pct(&mut lat, 0.5), "p99": pct(&mut lat, 0.99), "max": pct(&mut lat, 1.0)},
        "head_ms": {"p50": pct(&mut heads, 0.5), "p99": pct(&mut heads, 0.99)},
        "first_frame_ms": {"p50": pct(&mut ff, 0.5), "p99": pct(&mut ff, 0.99), "max": pct(&mut ff, 1.0)},
        "timeline": timeline.iter().map(|(s, k)| json!([s, k])).collect::<Vec<_>>(),
        "ok_done_100ms": done,
    });
    let text = serde_json::to_string(&report).unwrap_or_default();
    if let Some(path) = &a.out {
        if let Err(e) = std::fs::write(path, &text) {
            eprintln!("loadgen: writing {path}: {e}");
            std::process::exit(1);
        }
    }
    println!("{text}");
}
