//! `/metrics` on the admin listener parses as Prometheus text, every
//! metric is there, and each moves the right way under load, a shed, a retry and a
//! maintenance cycle — against the real binary and the simulator on 127.0.0.1.

use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::fixtures::*;
use common::*;
use dify_shaper_tools::sim::{ServiceTime, SimConfig, Simulator};

const RUN: &str = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;

/// Every metric the proxy documents.
const EXPORTED: &[&str] = &[
    "dify_shaper_requests_total",
    "dify_shaper_request_duration_seconds",
    "dify_shaper_time_to_first_byte_seconds",
    "dify_shaper_queue_wait_seconds",
    "dify_shaper_retries_total",
    "dify_shaper_proxy_errors_total",
    "dify_shaper_upstream_in_flight",
    "dify_shaper_upstream_concurrency_limit",
    "dify_shaper_upstream_effective_limit",
    "dify_shaper_upstream_available",
    "dify_shaper_upstream_held",
    "dify_shaper_queue_length",
    "dify_shaper_tenant_queue_length",
    "dify_shaper_admitted_total",
    "dify_shaper_queued_total",
    "dify_shaper_abandoned_total",
    "dify_shaper_shed_total",
    "dify_shaper_retry_budget_total",
    "dify_shaper_endpoint_up",
    "dify_shaper_endpoint_in_flight",
    "dify_shaper_maintenance_phase",
    "dify_shaper_maintenance_cycles_total",
    "dify_shaper_maintenance_failures_total",
    "dify_shaper_uptime_seconds",
    "dify_shaper_config_reloads_total",
    "dify_shaper_client_requests_active",
    "dify_shaper_build_info",
];

/// The standard process metrics, under their usual names (read from /proc: Linux only).
const PROCESS: &[&str] = &dify_shaper::metrics::PROCESS_METRICS;
/// One scrape: value by `name{label="value",…}` (labels sorted), and the parsed names.
struct Scrape {
    values: HashMap<String, f64>,
    names: Vec<String>,
}

impl Scrape {
    /// The value of `name` with exactly `labels` (0 when absent).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.values.get(&key(name, labels)).copied().unwrap_or(0.0)
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

async fn scrape(admin: SocketAddr) -> Scrape {
    let (status, headers, body) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let mut values = HashMap::new();
    let mut names = Vec::new();
    for sample in &parsed.samples {
        let labels: Vec<(&str, &str)> = sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let value = match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        };
        values.insert(key(&sample.metric, &labels), value);
        names.push(sample.metric.clone());
    }
    for name in &names {
        let ours = name.starts_with("dify_shaper_") || PROCESS.contains(&name.as_str());
        assert!(ours, "{name}: every metric is dify_shaper_* or a standard process_* one");
    }
    Scrape { values, names }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_exported_and_moves_the_right_way() {
    let _machine = crate::common::shared().await;
    let sim_config =
        SimConfig { service_time: ServiceTime::Fixed(Duration::from_millis(400)), ..SimConfig::default() };
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), sim_config).await.expect("sim");
    // A fixed limit of 1 and room for one waiter: a burst of five sheds three.
    let config = format!(
        "[upstreams.api]\nservers = [\"{}\"]\n[upstreams.api.admission]\ninitial_limit = 1\nmin_limit = 1\n\
         max_limit = 1\nmax_queue = 1\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n\n\
         [[maintenance]]\nupstream = \"api\"\nramp = \"0s\"\naction = {{ kind = \"command\", command = \"true\" }}\n\
         [maintenance.health]\ninterval = \"100ms\"\nsuccesses = 1\n",
        sim.addr()
    );
    let proxy = ProxyProcess::start(&config).await;
    let before = scrape(proxy.admin).await;
    let run = [("route", "/"), ("class", "run"), ("upstream", "api"), ("status", "200")];
    let left = [("route", "/"), ("class", "run"), ("upstream", "api"), ("status", "499")];
    assert_eq!(before.get("dify_shaper_requests_total", &run), 0.0);
    assert_eq!(before.get("dify_shaper_requests_total", &left), 0.0);
    assert_eq!(before.get("dify_shaper_upstream_concurrency_limit", &[("upstream", "api")]), 1.0);
    assert_eq!(
        before.get("dify_shaper_maintenance_phase", &[("upstream", "api"), ("phase", "serving")]),
        1.0
    );

    // Load with a shed: five at once against a limit of one and a queue of one.
    let burst: Vec<_> = (0..5)
        .map(|i| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let key = format!("Bearer app-metricsmetricsmetr{i}");
                post_json(addr, "/v1/workflows/run", RUN, &[("authorization", key.as_str())]).await.0
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in burst {
        statuses.push(task.await.expect("join").as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503, 503], "one admitted, one queued, three shed");
    // A retry: the backend's 503 on the first attempt proves nothing ran.
    let (status, _, _) = post_json(
        proxy.addr,
        "/v1/workflows/run",
        RUN,
        &[("x-sim-fail", "503"), ("x-sim-fail-first", "1"), ("x-request-id", "metrics-retry")],
    )
    .await;
    assert_eq!(status, 200);

    // A maintenance cycle (drained by hand first, to see the phase gauge move).
    let (code, _) = admin_post(proxy.admin, "/upstreams/api/drain", None).await;
    assert_eq!(code, 200);
    wait_maintenance(proxy.admin, "api", Duration::from_secs(10), "drained", |v| v["phase"] == "drained")
        .await;
    // A client that leaves while held (the queue has room for one) gets no status: recorded
    // as 499, in the metrics and the access log.
    let mut gone = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    let raw = format!(
        "POST /v1/workflows/run HTTP/1.1\r\nHost: {}\r\nX-Request-Id: metrics-gone\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{RUN}",
        proxy.addr,
        RUN.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut gone, raw.as_bytes()).await.expect("write");
    wait_maintenance(proxy.admin, "api", Duration::from_secs(10), "the leaving client held", |v| {
        v["queued"] == 1
    })
    .await;
    drop(gone);
    wait_maintenance(proxy.admin, "api", Duration::from_secs(10), "the departed client withdrawn", |v| {
        v["queued"] == 0
    })
    .await;
    let addr = proxy.addr;
    let held = tokio::spawn(async move {
        let key = "Bearer app-heldheldheldheld9";
        post_json(addr, "/v1/workflows/run", RUN, &[("authorization", key)]).await.0
    });
    wait_maintenance(proxy.admin, "api", Duration::from_secs(10), "a held request", |v| v["queued"] == 1)
        .await;
    let drained = scrape(proxy.admin).await;
    let tenant = [("upstream", "api"), ("tenant", "app-…eld9")];
    assert_eq!(drained.get("dify_shaper_tenant_queue_length", &tenant), 1.0, "held, by tenant");
    assert_eq!(drained.get("dify_shaper_queue_length", &[("upstream", "api"), ("class", "run")]), 1.0);
    assert_eq!(
        drained.get("dify_shaper_maintenance_phase", &[("upstream", "api"), ("phase", "drained")]),
        1.0
    );
    assert_eq!(drained.get("dify_shaper_upstream_held", &[("upstream", "api")]), 1.0);
    assert_eq!(drained.get("dify_shaper_upstream_effective_limit", &[("upstream", "api")]), 0.0);
    admin_post(proxy.admin, "/upstreams/api/resume", None).await;
    wait_maintenance(proxy.admin, "api", Duration::from_secs(10), "serving", |v| v["phase"] == "serving")
        .await;
    assert_eq!(held.await.expect("join"), 200, "released by resume");
    let (code, _) = admin_post(proxy.admin, "/upstreams/api/restart", None).await;
    assert_eq!(code, 202);
    wait_maintenance(proxy.admin, "api", Duration::from_secs(20), "the restart cycle", |v| {
        v["cycles"] == 2 && v["phase"] == "serving"
    })
    .await;

    let (code, body) = admin_post(proxy.admin, "/reload", None).await;
    assert_eq!(code, 200, "{body:#}");

    let after = scrape(proxy.admin).await;
    let process = if cfg!(target_os = "linux") { PROCESS } else { &[] };
    for name in EXPORTED.iter().chain(process) {
        let seen = after.names.iter().chain(&drained.names).any(|n| n.starts_with(name));
        assert!(seen, "{name} is not exported");
    }
    let api = [("upstream", "api")];
    let grew = |name: &str, labels: &[(&str, &str)], by: f64| {
        let (b, a) = (before.get(name, labels), after.get(name, labels));
        assert!(a - b >= by, "{name}{labels:?} went from {b} to {a}, expected +{by} at least");
    };
    grew("dify_shaper_requests_total", &run, 3.0);
    let shed = [("route", "/"), ("class", "run"), ("upstream", "api"), ("status", "503")];
    grew("dify_shaper_requests_total", &shed, 3.0);
    grew("dify_shaper_requests_total", &left, 1.0);
    grew("dify_shaper_request_duration_seconds", &[("route", "/"), ("class", "run")], 6.0);
    // The backend's answers (two of the burst, the retried one, the held one), not the sheds
    // nor the client that left.
    let first_byte = [("route", "/"), ("class", "run"), ("upstream", "api")];
    grew("dify_shaper_time_to_first_byte_seconds", &first_byte, 4.0);
    let answered =
        after.get("dify_shaper_requests_total", &run) - before.get("dify_shaper_requests_total", &run);
    let observed = after.get("dify_shaper_time_to_first_byte_seconds", &first_byte)
        - before.get("dify_shaper_time_to_first_byte_seconds", &first_byte);
    assert_eq!(observed, answered, "one first byte per answer from the backend");
    grew("dify_shaper_queue_wait_seconds", &[("upstream", "api"), ("class", "run")], 3.0);
    grew("dify_shaper_proxy_errors_total", &[("code", "server_busy")], 3.0);
    grew("dify_shaper_shed_total", &[("upstream", "api"), ("reason", "queue_full")], 3.0);
    grew("dify_shaper_admitted_total", &api, 3.0);
    grew("dify_shaper_queued_total", &api, 1.0);
    grew("dify_shaper_abandoned_total", &api, 1.0);
    grew("dify_shaper_retries_total", &api, 1.0);
    grew("dify_shaper_retry_budget_total", &[("upstream", "api"), ("result", "granted")], 1.0);
    grew("dify_shaper_maintenance_cycles_total", &api, 2.0);
    grew("dify_shaper_config_reloads_total", &[("result", "ok")], 1.0);
    assert_eq!(after.get("dify_shaper_config_reloads_total", &[("result", "failed")]), 0.0);
    assert_eq!(after.get("dify_shaper_maintenance_failures_total", &api), 0.0);
    assert_eq!(after.get("dify_shaper_upstream_in_flight", &api), 0.0, "nothing left in flight");
    assert_eq!(after.get("dify_shaper_upstream_available", &api), 1.0);
    assert_eq!(after.get("dify_shaper_upstream_held", &api), 0.0);
    // The Grafana dashboard only queries metrics this scrape showed.
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/grafana/dify-shaper.json"))
            .expect("dashboard file");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "queue, limit, goodput, errors, waits, maintenance …");
    for panel in panels {
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("panel {} queries nothing", panel["title"]));
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            let used = metric_names(expr);
            assert!(!used.is_empty(), "panel {}: {expr} queries no metric of ours", panel["title"]);
            for name in used {
                let seen = after.names.iter().chain(&drained.names).any(|n| *n == name);
                assert!(seen, "panel {} queries {name}, which the proxy does not export", panel["title"]);
            }
        }
    }
    let endpoint = sim.addr().to_string();
    assert_eq!(after.get("dify_shaper_endpoint_up", &[("upstream", "api"), ("endpoint", &endpoint)]), 1.0);
    assert_eq!(after.get("dify_shaper_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    let logs = proxy.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("dify_shaper::access") && l.contains("metrics-gone"))
        .unwrap_or_else(|| panic!("no access log line for the departed client:\n{logs}"));
    assert!(line.contains(" status=499 "), "{line}");
}

/// An event stream's time to first byte is its first event, not its header: the backend
/// sends the header at once and the answer later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_timed_to_its_first_event() {
    let _machine = crate::common::shared().await;
    let sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default()).await.expect("sim");
    let config = format!(
        "[upstreams.api]\nservers = [\"{}\"]\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n",
        sim.addr()
    );
    let proxy = ProxyProcess::start(&config).await;
    // Two answer chunks over 1.2 s: the header at once, the first chunk at 0.6 s.
    let chat = r#"{"inputs":{},"query":"hi","response_mode":"streaming","user":"u"}"#;
    let (status, headers, body) = post_json(
        proxy.addr,
        "/v1/chat-messages",
        chat,
        &[("x-sim-service-time", "1200ms"), ("x-sim-events", "2")],
    )
    .await;
    assert_eq!(status, 200);
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    assert!(String::from_utf8_lossy(&body).contains("message_end"), "the whole stream arrived");
    let after = scrape(proxy.admin).await;
    let series = [("route", "/"), ("class", "run"), ("upstream", "api")];
    assert_eq!(after.get("dify_shaper_time_to_first_byte_seconds", &series), 1.0);
    let first_byte = after.get("dify_shaper_time_to_first_byte_seconds_sum", &series);
    assert!((0.55..1.15).contains(&first_byte), "first event at 0.6 s, the end at 1.2 s: {first_byte}");
}

/// The `dify_shaper_*` and `process_*` metric names in a PromQL expression, histogram
/// suffixes removed.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("dify_shaper_") || word.starts_with("process_"))
        .map(|name| {
            let base =
                ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            base.to_string()
        })
        .collect()
}
