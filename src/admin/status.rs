//! What `/ready` and `/status` report, built from the shared state.

use serde::Serialize;

use crate::app::App;

/// `/ready`: serving only when every upstream that a route uses has an address and can
/// serve (or is down for maintenance, whose requests are held, not failed).
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// Whether the proxy can serve.
    pub ready: bool,
    /// Why not, when not.
    pub reasons: Vec<String>,
}

/// Computes readiness.
pub fn readiness(app: &App) -> Readiness {
    let config = app.config();
    let mut reasons = Vec::new();
    for group in app.upstreams.all() {
        let used = config.router.routes().iter().any(|r| r.upstream == group.name());
        // A backend down for planned maintenance is not a reason to take the proxy out of a
        // load balancer: holding its requests until it is back is the proxy's job.
        let in_maintenance = group.maintenance().phase() != crate::maintenance::state::Phase::Serving;
        if used && group.endpoints().is_empty() {
            reasons.push(format!("upstream {} has no resolved address", group.name()));
        } else if used && !group.health().serving() && !in_maintenance {
            reasons.push(format!("upstream {} is down (every endpoint out of rotation)", group.name()));
        }
    }
    Readiness { ready: reasons.is_empty(), reasons }
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
        "reload": app.reload_stats(),
    })
}
