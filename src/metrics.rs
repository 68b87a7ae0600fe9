//! Every Prometheus metric the proxy exports, defined in one place (`GET /metrics` on the
//! admin listener). Names are `dify_shaper_*` in base units (`_seconds`, `_total`).
//!
//! Two kinds:
//! - **per request**, recorded once when a request ends ([`Metrics::request_done`]): counts by
//!   route, class and status, the time to answer, the queue wait, retries, proxy errors by code;
//! - **state**, read at scrape time from the run-time state that already keeps it (admission
//!   snapshot, endpoint health, maintenance view, retry budget, reload counts): gauges, and
//!   counters those structures count anyway. Reading them at scrape time keeps the request
//!   path free of metric bookkeeping for them and can never drift from `/status`.
//!
//! Labels are bounded: routes and classes come from the config, statuses are HTTP codes,
//! upstreams and endpoints are configured, tenants are the top ten waiting (redacted keys).

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::app::App;
use crate::maintenance::state::Phase;

/// Request durations: Dify answers pings in milliseconds and runs workflows for 15 s or more.
const DURATION_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0];
/// Queue waits: most are zero; held requests wait through a restart (minutes).
const WAIT_BUCKETS: &[f64] =
    &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The metrics recorded per request; the state metrics are built at scrape time.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    queue_wait: HistogramVec,
    retries: IntCounterVec,
    proxy_errors: IntCounterVec,
}

/// What one finished request reports.
#[derive(Debug, Clone, Copy)]
pub struct RequestDone<'a> {
    /// Route name (or prefix); `-` when unrouted.
    pub route: &'a str,
    /// Class; `-` when unrouted.
    pub class: &'a str,
    /// Upstream; `-` when unrouted.
    pub upstream: &'a str,
    /// Status sent to the client (0: none, the client left first).
    pub status: u16,
    /// Arrival to the end of the response.
    pub seconds: f64,
    /// Time queued for admission, when it was admitted.
    pub queue_wait: Option<f64>,
    /// Attempts beyond the first.
    pub retries: u32,
    /// The envelope code when the proxy answered by itself.
    pub proxy_error: Option<&'a str>,
}

impl Metrics {
    /// Defines and registers the per-request metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "dify_shaper_requests_total",
                "Requests answered, by route, class and status (0: client left)",
            ),
            &["route", "class", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("dify_shaper_request_duration_seconds", "Arrival to the end of the response")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "class"],
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new("dify_shaper_queue_wait_seconds", "Time a request waited for admission")
                .buckets(WAIT_BUCKETS.to_vec()),
            &["upstream", "class"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new("dify_shaper_retries_total", "Upstream attempts beyond the first"),
            &["upstream"],
        )?;
        let proxy_errors = IntCounterVec::new(
            Opts::new(
                "dify_shaper_proxy_errors_total",
                "Answers the proxy generated itself, by envelope code",
            ),
            &["code"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(proxy_errors.clone()))?;
        Ok(Metrics { registry, requests, duration, queue_wait, retries, proxy_errors })
    }

    /// Records a finished request.
    pub fn request_done(&self, done: RequestDone<'_>) {
        let status = done.status.to_string();
        self.requests.with_label_values(&[done.route, done.class, &status]).inc();
        self.duration.with_label_values(&[done.route, done.class]).observe(done.seconds);
        if let Some(wait) = done.queue_wait {
            self.queue_wait.with_label_values(&[done.upstream, done.class]).observe(wait);
        }
        if done.retries > 0 {
            self.retries.with_label_values(&[done.upstream]).inc_by(u64::from(done.retries));
        }
        if let Some(code) = done.proxy_error {
            self.proxy_errors.with_label_values(&[code]).inc();
        }
    }
}

/// The Prometheus text exposition of every metric.
pub fn render(app: &App) -> Result<String, prometheus::Error> {
    let mut families = app.metrics.registry.gather();
    families.extend(state_registry(app)?.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    let vec = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

/// A fresh registry holding the state metrics as they are now. Counters are set from the
/// totals the state keeps since start (a fresh counter incremented by the total).
fn state_registry(app: &App) -> Result<Registry, prometheus::Error> {
    let r = Registry::new();
    let in_flight =
        gauge_vec(&r, "dify_shaper_upstream_in_flight", "Requests in flight to the upstream", &["upstream"])?;
    let limit =
        gauge_vec(&r, "dify_shaper_upstream_concurrency_limit", "Learned concurrency limit", &["upstream"])?;
    let effective = gauge_vec(
        &r,
        "dify_shaper_upstream_effective_limit",
        "Limit in force now (0 while held, lower while ramping or replicas are drained)",
        &["upstream"],
    )?;
    let available =
        gauge_vec(&r, "dify_shaper_upstream_available", "1 when some endpoint can serve", &["upstream"])?;
    let held =
        gauge_vec(&r, "dify_shaper_upstream_held", "1 while maintenance holds new requests", &["upstream"])?;
    let queue =
        gauge_vec(&r, "dify_shaper_queue_length", "Requests waiting for admission", &["upstream", "class"])?;
    let tenant_queue = gauge_vec(
        &r,
        "dify_shaper_tenant_queue_length",
        "Requests waiting, for the ten tenants with the most (redacted app keys)",
        &["upstream", "tenant"],
    )?;
    let admitted = counter_vec(&r, "dify_shaper_admitted_total", "Requests admitted", &["upstream"])?;
    let queued = counter_vec(&r, "dify_shaper_queued_total", "Requests that had to wait", &["upstream"])?;
    let abandoned =
        counter_vec(&r, "dify_shaper_abandoned_total", "Queued requests whose client left", &["upstream"])?;
    let shed = counter_vec(
        &r,
        "dify_shaper_shed_total",
        "Requests refused by admission, by reason",
        &["upstream", "reason"],
    )?;
    let budget = counter_vec(
        &r,
        "dify_shaper_retry_budget_total",
        "Retry budget decisions: granted, or exhausted (a retry refused)",
        &["upstream", "result"],
    )?;
    let endpoint_up = gauge_vec(
        &r,
        "dify_shaper_endpoint_up",
        "1 when the endpoint is in rotation (not down, ejected or drained)",
        &["upstream", "endpoint"],
    )?;
    let endpoint_in_flight = gauge_vec(
        &r,
        "dify_shaper_endpoint_in_flight",
        "Requests in flight to the endpoint",
        &["upstream", "endpoint"],
    )?;
    let phase = gauge_vec(
        &r,
        "dify_shaper_maintenance_phase",
        "1 for the current maintenance phase",
        &["upstream", "phase"],
    )?;
    let cycles =
        counter_vec(&r, "dify_shaper_maintenance_cycles_total", "Maintenance cycles started", &["upstream"])?;
    let failures = counter_vec(
        &r,
        "dify_shaper_maintenance_failures_total",
        "Maintenance cycles that failed (action, health gate, manual drain expired)",
        &["upstream"],
    )?;
    let next = gauge_vec(
        &r,
        "dify_shaper_maintenance_next_timestamp_seconds",
        "Unix time of the next scheduled restart",
        &["upstream"],
    )?;
    for group in app.upstreams.all() {
        let name = group.name();
        let s = group.admission().status();
        in_flight.with_label_values(&[name]).set(s.in_flight as f64);
        limit.with_label_values(&[name]).set(s.limit as f64);
        effective.with_label_values(&[name]).set(s.effective_limit as f64);
        available.with_label_values(&[name]).set(f64::from(u8::from(s.available)));
        held.with_label_values(&[name]).set(f64::from(u8::from(s.held)));
        for class in &s.classes {
            queue.with_label_values(&[name, &class.name]).set(class.queued as f64);
        }
        for tenant in &s.top_tenants {
            tenant_queue.with_label_values(&[name, &tenant.tenant]).set(tenant.queued as f64);
        }
        admitted.with_label_values(&[name]).inc_by(s.admitted);
        queued.with_label_values(&[name]).inc_by(s.queued_total);
        abandoned.with_label_values(&[name]).inc_by(s.abandoned);
        for (reason, n) in &s.shed {
            shed.with_label_values(&[name, reason]).inc_by(*n);
        }
        let (granted, denied) = group.retry_budget().counts();
        budget.with_label_values(&[name, "granted"]).inc_by(granted);
        budget.with_label_values(&[name, "exhausted"]).inc_by(denied);
        for e in group.health().status() {
            let addr = e.addr.to_string();
            let up = !e.down && !e.ejected && !e.drained;
            endpoint_up.with_label_values(&[name, &addr]).set(f64::from(u8::from(up)));
            endpoint_in_flight.with_label_values(&[name, &addr]).set(e.in_flight as f64);
        }
        let view = group.maintenance().view(&group);
        for p in Phase::ALL {
            phase.with_label_values(&[name, p.as_str()]).set(f64::from(u8::from(view.phase == p)));
        }
        cycles.with_label_values(&[name]).inc_by(view.cycles);
        failures.with_label_values(&[name]).inc_by(view.failures);
        if let Some(at) = view.next_scheduled {
            next.with_label_values(&[name]).set(at.timestamp() as f64);
        }
    }
    let reloads = counter_vec(
        &r,
        "dify_shaper_config_reloads_total",
        "Config reloads (SIGHUP, POST /reload)",
        &["result"],
    )?;
    let stats = app.reload_stats();
    reloads.with_label_values(&["ok"]).inc_by(stats.ok);
    reloads.with_label_values(&["failed"]).inc_by(stats.failed);
    let active =
        Gauge::new("dify_shaper_client_requests_active", "Client requests in progress (streams included)")?;
    active.set(app.active.count() as f64);
    r.register(Box::new(active))?;
    let uptime = Gauge::new("dify_shaper_uptime_seconds", "Time since the process started")?;
    uptime.set(app.uptime().as_secs_f64());
    r.register(Box::new(uptime))?;
    let info = IntGaugeVec::new(
        Opts::new("dify_shaper_build_info", "Always 1; the version is a label"),
        &["version"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    r.register(Box::new(info))?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_metrics_render_in_text_format() {
        let metrics = Metrics::new().expect("metrics");
        metrics.request_done(RequestDone {
            route: "/v1",
            class: "run",
            upstream: "api",
            status: 503,
            seconds: 0.2,
            queue_wait: Some(0.1),
            retries: 2,
            proxy_error: Some("server_busy"),
        });
        let mut out = Vec::new();
        TextEncoder::new().encode(&metrics.registry.gather(), &mut out).expect("encode");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains(r#"dify_shaper_requests_total{class="run",route="/v1",status="503"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"dify_shaper_retries_total{upstream="api"} 2"#));
        assert!(text.contains(r#"dify_shaper_proxy_errors_total{code="server_busy"} 1"#));
        assert!(text.contains("dify_shaper_queue_wait_seconds_bucket"));
    }
}
