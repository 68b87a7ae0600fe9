//! What `/ready`, `/upstreams` and `/status` report, built from the shared state.

use serde::Serialize;

use crate::app::App;
use crate::lifecycle::Phase;

/// `/ready`: whether the proxy can accept and hold requests — config loaded, listeners up,
/// not shutting down. An upstream being down is not a reason: holding its requests until it
/// is back is the proxy's job, and a load balancer that dropped the proxy then would fail
/// them. Upstream health is [`UpstreamsHealth`].
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// Whether the proxy can take traffic.
    pub ready: bool,
    /// `starting`, `serving` or `shutting_down`.
    pub phase: Phase,
    /// Why not, when not.
    pub reasons: Vec<String>,
}

/// Computes readiness.
pub fn readiness(app: &App) -> Readiness {
    let phase = app.lifecycle.phase();
    let reasons = match phase {
        Phase::Serving => Vec::new(),
        Phase::Starting => vec!["starting: the client listeners do not accept connections yet".to_string()],
        Phase::ShuttingDown => {
            vec!["shutting down: listeners closed, requests in progress finishing".to_string()]
        }
    };
    Readiness { ready: phase == Phase::Serving, phase, reasons }
}

/// `/upstreams`: whether every upstream that a route uses can serve now (or is down for
/// maintenance, whose requests are held by design), for monitoring rather than for a load
/// balancer's readiness check.
#[derive(Debug, Serialize)]
pub struct UpstreamsHealth {
    /// Whether every routed upstream can serve.
    pub healthy: bool,
    /// Why not, when not.
    pub reasons: Vec<String>,
}

/// Computes upstream health.
pub fn upstreams_health(app: &App) -> UpstreamsHealth {
    let config = app.config();
    let mut reasons = Vec::new();
    for group in app.upstreams.all() {
        let used = config.router.routes().iter().any(|r| r.upstream == group.name());
        let in_maintenance = group.maintenance().phase() != crate::maintenance::state::Phase::Serving;
        if used && group.endpoints().is_empty() {
            reasons.push(format!("upstream {} has no resolved address", group.name()));
        } else if used && !group.health().serving() && !in_maintenance {
            reasons.push(format!("upstream {} is down (every endpoint out of rotation)", group.name()));
        }
    }
    UpstreamsHealth { healthy: reasons.is_empty(), reasons }
}

/// `/status`: upstreams (servers, resolved endpoints, in flight) and routes.
pub fn status(app: &App) -> serde_json::Value {
    let config = app.config();
    let upstreams: serde_json::Map<String, serde_json::Value> = app
        .upstreams
        .all()
        .into_iter()
        .map(|group| {
            let value = serde_json::json!({
                "servers": group.servers().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "endpoints": group.endpoints().iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
                "admission": group.admission().status(),
                "health": group.health().status(),
                "maintenance": group.maintenance().view(&group),
                "last_resolve_error": group.last_resolve_error(),
            });
            (group.name().to_string(), value)
        })
        .collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": config.source,
        "uptime_seconds": app.uptime().as_secs(),
        "listen": config.server.listen,
        "upstreams": upstreams,
        "routes": config.router,
        "classes": config.classes,
        "reload": app.reload_summary(),
        "cluster": app.cluster.as_ref().map(|c| c.status()),
        "clients": {
            "connections": app.clients.snapshot(),
            "requests_active": app.active.count(),
            "limits": {
                "max_connections": config.server.max_connections,
                "max_connections_per_ip": config.server.max_connections_per_ip,
                "request_header_timeout": config.server.request_header_timeout.to_string(),
                "max_request_header": config.server.max_request_header.to_string(),
                "max_request_header_line": config.server.max_request_header_line.to_string(),
                "keepalive_timeout": config.server.keepalive_timeout.to_string(),
                "body_read_timeout": config.server.body_read_timeout.to_string(),
            },
        },
    })
}
