//! The end of a request (pingora's `logging` hook): the admission permit goes back with the
//! sample that teaches the limiter, the endpoint's lease with its passive-health outcome, and
//! the request is counted in the metrics and written to the access log.

use pingora::proxy::Session;
use pingora::Error;
use tokio::time::Instant;

use super::access_log::log_request;
use super::ctx::RequestCtx;
use super::outcome::{classify, recorded_status};
use crate::admission::Outcome;
use crate::metrics::{Metrics, RequestDone};

/// Ends the request `ctx` describes; `e` is the error it ended with, if any.
pub fn finish(metrics: &Metrics, session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
    let now = Instant::now();
    let outcome = classify(ctx.upstream_status, e, ctx.endpoint.is_some());
    if let Some(permit) = ctx.permit.take() {
        let latency = match outcome {
            Outcome::Abandoned => ctx.peer_chosen_at.map(|t| now.saturating_duration_since(t)),
            _ => ctx.first_byte_after_admission,
        };
        permit.complete(ctx.streaming, latency, outcome);
    }
    if let Some(mut lease) = ctx.endpoint_lease.take() {
        // Passive outlier detection: failures that blame the endpoint, successes that clear it.
        lease.set_outcome(match outcome {
            Outcome::Overload | Outcome::Refused | Outcome::Timeout => Some(true),
            Outcome::Success | Outcome::Throttled => Some(false),
            Outcome::Abandoned | Outcome::Ignore => None,
        });
    }
    let status = recorded_status(session.response_written());
    let (route, class, upstream) = ctx.labels();
    let done = RequestDone {
        route,
        class,
        upstream,
        status,
        seconds: now.saturating_duration_since(ctx.started).as_secs_f64(),
        queue_wait: ctx.admitted_at.map(|_| ctx.queue_wait.as_secs_f64()),
        first_byte: ctx.time_to_first_byte().map(|d| d.as_secs_f64()),
        retries: ctx.attempts.saturating_sub(1),
        proxy_error: ctx.reply.as_ref().map(|r| r.code),
    };
    match ctx.route() {
        Some(r) => metrics.request_done_in(&r.cache, done),
        None => metrics.request_done(done),
    }
    let access_log = ctx.config.as_ref().is_none_or(|c| c.log.access_log);
    if access_log {
        log_request(session, ctx, status, e);
    }
}
