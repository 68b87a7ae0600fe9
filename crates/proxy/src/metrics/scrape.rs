//! `GET /metrics`: the request metrics recorded so far, with the state metrics read at
//! scrape time from the shared state (see the parent module), in Prometheus' text format.

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::app::App;
use crate::maintenance::state::Phase;

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
    let stats = app.reload_summary();
    reloads.with_label_values(&["ok"]).inc_by(stats.ok);
    reloads.with_label_values(&["failed"]).inc_by(stats.failed);
    let active =
        Gauge::new("dify_shaper_client_requests_active", "Client requests in progress (streams included)")?;
    active.set(app.active.count() as f64);
    r.register(Box::new(active))?;
    let clients = app.clients.snapshot();
    let open = Gauge::new("dify_shaper_client_connections", "Client connections open")?;
    open.set(clients.open as f64);
    r.register(Box::new(open))?;
    let accepted = IntCounter::new(
        "dify_shaper_client_connections_total",
        "Client connections taken (refused ones not included)",
    )?;
    accepted.inc_by(clients.accepted);
    r.register(Box::new(accepted))?;
    let refused = counter_vec(
        &r,
        "dify_shaper_client_connections_refused_total",
        "Client connections (or a trusted proxy's clients' requests) refused at a connection cap",
        &["limit"],
    )?;
    refused.with_label_values(&["max_connections"]).inc_by(clients.refused_max_connections);
    refused.with_label_values(&["max_connections_per_ip"]).inc_by(clients.refused_max_connections_per_ip);
    let headers = counter_vec(
        &r,
        "dify_shaper_request_headers_refused_total",
        "Request headers refused before routing: too slow (408, or closed when nothing came), too large or a line too long (431)",
        &["reason"],
    )?;
    headers.with_label_values(&["timeout"]).inc_by(clients.header_timeouts);
    headers.with_label_values(&["too_large"]).inc_by(clients.headers_too_large);
    headers.with_label_values(&["line_too_long"]).inc_by(clients.header_lines_too_long);
    if let Some(cluster) = &app.cluster {
        let link = cluster.link.snapshot();
        let up = Gauge::new(
            "dify_shaper_cluster_redis_up",
            "1 while limits are shared through Redis, 0 while deciding locally",
        )?;
        up.set(if link.state == "shared" { 1.0 } else { 0.0 });
        r.register(Box::new(up))?;
        let nodes = Gauge::new(
            "dify_shaper_cluster_nodes",
            "Replicas whose heartbeat Redis holds (this one included)",
        )?;
        nodes.set(link.nodes.len() as f64);
        r.register(Box::new(nodes))?;
        let fallbacks = IntCounter::new(
            "dify_shaper_cluster_fallbacks_total",
            "Times this replica fell back to local decisions (Redis down, failing or slow)",
        )?;
        fallbacks.inc_by(link.fallbacks);
        r.register(Box::new(fallbacks))?;
        let local = IntCounter::new(
            "dify_shaper_cluster_local_calls_total",
            "Calls decided locally because Redis failed, timed out or was down",
        )?;
        local.inc_by(link.local_calls);
        r.register(Box::new(local))?;
    }
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
