//! The access log: one structured `tracing` event per request, target
//! `dify_shaper::access`, rendered as text or JSON by the subscriber ([`crate::telemetry`]).
//! It never contains secrets: the tenant is redacted and query values are dropped.

use pingora::proxy::Session;
use pingora::Error;

use super::ctx::RequestCtx;
use crate::redact::path_without_query_values;

fn ms(d: Option<std::time::Duration>) -> f64 {
    d.map_or(-1.0, |d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// Writes the access-log line for a finished request. `status` is the one recorded for it
/// ([`recorded_status`](super::outcome::recorded_status)): the status sent, or `499` when the
/// client left before one was.
pub fn log_request(session: &Session, ctx: &RequestCtx, status: u16, error: Option<&Error>) {
    let req = session.req_header();
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let (route, class, upstream) = ctx.labels();
    let server = ctx.endpoint.as_ref().map_or_else(|| "-".to_string(), |e| e.addr.to_string());
    let total = ctx.started.elapsed();
    tracing::info!(
        target: "dify_shaper::access",
        id = %ctx.request_id,
        method = %req.method,
        path = %path_without_query_values(path),
        route,
        class,
        upstream,
        server = %server,
        status,
        queue_ms = ms(Some(ctx.queue_wait)),
        connect_ms = ms(ctx.connect),
        first_byte_ms = ms(ctx.first_byte),
        total_ms = ms(Some(total)),
        bytes_in = ctx.bytes_in,
        bytes_out = ctx.bytes_out,
        retries = ctx.attempts.saturating_sub(1),
        tenant = ctx.tenant.as_deref().unwrap_or("-"),
        error = error.map(|e| e.etype().as_str()).unwrap_or("-"),
        reply = ctx.reply.as_ref().map_or("-", |r| r.code),
    );
}
