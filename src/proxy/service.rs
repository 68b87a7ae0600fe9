//! `DifyProxy`, the pingora [`ProxyHttp`] implementation. Each hook stays thin and calls the
//! small typed pieces; the request lifecycle is:
//!
//! ```text
//! request_filter ──► route, request id, body-size check, tenant rate limit
//!        │            [the maintenance gate goes here]
//!        │         ──► admission: wait for a slot (client watched) ──(refused: 503, done)
//!        ▼
//! upstream_peer ───► pick an endpoint, set the class's timeouts ──(none resolved: 503)
//!        ▼
//! upstream_request_filter ─► X-Request-Id, X-Forwarded-*
//!        ▼
//! response_filter / response_body_filter ─► X-Request-Id back, count bytes, stream as-is
//!        ▼
//! fail_to_proxy (on error) ─► Dify envelope if nothing was sent yet
//!        ▼
//! logging ─► release the admission permit with its outcome, access log
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};
use tokio::time::Instant;

use super::access_log::log_request;
use super::admit::{asks_for_stream, client_deadline, preread_small_body, wait_for_slot, Admitted};
use super::ctx::{RequestCtx, Routed};
use super::envelope::{ErrorReply, REQUEST_ID};
use super::headers::{
    apply_forwarding, request_id_and_value, request_id_from, ForwardingMode, NO_TRUSTED_PROXIES,
};
use super::outcome::{classify, recorded_status, reset_before_answer, unhandled_error_answer};
use super::sse;
use super::timer_anchor;
use crate::admission::tenant::tenant_of;
use crate::admission::{Outcome, Permit, Ticket};
use crate::app::App;
use crate::metrics::RequestDone;
use crate::resilience::retry::parse_retry_after;
use crate::resilience::retry_policy::{self, Attempt, Decision, Ending};
use crate::upstream::{Endpoint, EndpointLease, UpstreamState};

/// Waits until the group has an endpoint in rotation, up to `deadline`.
async fn wait_for_endpoint(
    upstream: &Arc<UpstreamState>,
    deadline: Instant,
) -> Option<(Endpoint, EndpointLease)> {
    let mut serving = upstream.health().watch();
    loop {
        if let Some(picked) = upstream.pick() {
            return Some(picked);
        }
        // Woken by the prober; the short sleep also catches a re-resolution finding an address.
        let wake = tokio::time::sleep(Duration::from_millis(100));
        tokio::select! {
            _ = serving.changed() => {}
            () = wake => {}
            () = tokio::time::sleep_until(deadline) => return upstream.pick(),
        }
    }
}

/// The proxy service.
pub struct DifyProxy {
    app: Arc<App>,
}

impl DifyProxy {
    /// A proxy over the shared state.
    pub fn new(app: Arc<App>) -> Self {
        DifyProxy { app }
    }

    /// The retry policy's decision for the attempt that just ended as `ending`: the hooks
    /// describe it, [`retry_policy::decide`] decides. A counted retry is added to the
    /// request's retries here.
    fn decide_retry(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        ending: Ending,
        replayable: bool,
    ) -> Decision {
        let Some(routed) = ctx.routed.as_ref() else {
            return Decision::Stop;
        };
        let method = &session.req_header().method;
        let attempt = Attempt {
            attempts: ctx.attempts,
            retries: ctx.budget_retries,
            replayable,
            idempotent: method.is_idempotent(),
            repeatable: routed.retry_after_processing,
            answered: session.response_written().is_some(),
        };
        let budget = routed.upstream.retry_budget();
        let decision =
            retry_policy::decide(ending, &attempt, &routed.retry, || budget.try_retry(Instant::now()));
        if let Decision::Retry { counted: true, .. } = decision {
            ctx.budget_retries += 1;
        }
        decision
    }

    /// Whether an answer's request can be sent again: its whole body is held for a replay
    /// (or a GET has none).
    fn answer_replayable(session: &Session) -> bool {
        let downstream = session.as_downstream();
        !downstream.retry_buffer_truncated()
            && (downstream.get_retry_buffer().is_some() || session.req_header().method == http::Method::GET)
    }

    /// Replays a request the backend refused for lack of capacity before running it: its slot
    /// goes back (the limiter learns the overload, and the limit it cut to holds the replay
    /// back), and it queues again with its wait counted from its arrival, so it is answered
    /// 503 before its client gives up if no slot comes. Backing off for a fixed time instead
    /// kept the slot and met the same full database again.
    async fn queue_again(&self, ctx: &mut RequestCtx, status: u16) -> Result<()> {
        let (Some(permit), Some(ticket), Some(routed)) = (ctx.permit.take(), ctx.ticket.clone(), &ctx.routed)
        else {
            return Err(Error::explain(ErrorType::HTTPStatus(status), "no admission to queue again with"));
        };
        let took = ctx.peer_chosen_at.or(ctx.admitted_at).map(|t| t.elapsed());
        permit.complete(ctx.streaming, took, Outcome::Refused);
        let admission = Arc::clone(routed.upstream.admission());
        match admission.acquire(ticket).await {
            Ok(permit) => {
                ctx.admitted_at = Some(permit.admitted_at());
                ctx.queue_wait += permit.waited();
                ctx.permit = Some(permit);
                ctx.retry_decided = true;
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(status),
                    "replaying a request Dify refused before running it",
                );
                e.as_up();
                e.set_retry(true);
                Err(e)
            }
            Err(refusal) => {
                ctx.reply = Some(refusal.reply(admission.retry_after_secs()));
                let mut e = Error::explain(ErrorType::HTTPStatus(status), "the backend answered overloaded");
                e.as_up();
                Err(e)
            }
        }
    }

    /// Writes `reply` as the response from `request_filter` and records it.
    async fn refuse(&self, session: &mut Session, ctx: &mut RequestCtx, reply: ErrorReply) -> Result<bool> {
        reply.send(session, &ctx.request_id).await?;
        ctx.reply = Some(reply);
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for DifyProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        timer_anchor::anchor_timers();
        // pingora makes the context once the request header is read and drops it after the
        // response (stream included) ended: exactly the span the shutdown drain waits for.
        RequestCtx { active: Some(self.app.active.enter()), ..RequestCtx::new() }
    }

    /// Routes the request and checks what can be checked before any upstream work. Returns
    /// `Ok(true)` when it already answered (an envelope), `Ok(false)` to proceed.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        (ctx.request_id, ctx.request_id_value) = request_id_and_value(session.req_header());
        let config = self.app.config();
        ctx.config = Some(Arc::clone(&config));
        let req = session.req_header();
        let method = &req.method;
        let path = req.uri.path();
        let tenant = tenant_of(&config.tenants.source, req);
        // Only the access log shows it; the admission takes the label itself.
        if config.log.access_log {
            ctx.tenant = Some(tenant.label.clone());
        }
        let declared_len = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let chunked = req
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));

        // The path is borrowed from the session, which answering needs: the refusals are
        // worded here, while it is at hand (only they copy it).
        let routed = if !path.starts_with('/') {
            Err(ErrorReply::bad_request("the request target must be an absolute path"))
        } else {
            match config.router.find(method, path) {
                None => Err(ErrorReply::not_found(format!("no route for {method} {path}"))),
                Some((index, route)) => match self.app.upstreams.get(&route.upstream) {
                    None => Err(ErrorReply::internal(format!("upstream {} is not loaded", route.upstream))),
                    Some(upstream) => {
                        let spec = config.upstreams.get(&route.upstream);
                        Ok(Routed {
                            route_index: index,
                            upstream,
                            class: Arc::clone(&route.class),
                            retry_after_processing: route.retry_after_processing || method.is_idempotent(),
                            keepalive: spec.map_or(Duration::ZERO, |u| u.keepalive.0),
                            retry: spec.map(|u| u.retry.clone()).unwrap_or_default(),
                            ramp: spec.map_or(Duration::ZERO, |u| u.health.ramp.0),
                        })
                    }
                },
            }
        };
        let routed = match routed {
            Ok(routed) => ctx.routed.insert(routed),
            Err(reply) => return self.refuse(session, ctx, reply).await,
        };
        let upstream = Arc::clone(&routed.upstream);
        let class_index = routed.class.index;
        let limit = config.server.max_request_body;
        if declared_len.is_some_and(|len| len > limit.0) {
            // The body was not read: the connection cannot be reused for another request.
            session.set_keepalive(None);
            return self.refuse(session, ctx, ErrorReply::payload_too_large(limit)).await;
        }
        if let Some(limiter) = self.app.rate_limiter() {
            if let Err(wait) = limiter.check(tenant.id) {
                let reply = ErrorReply::too_many_requests(format!("rate limit of {} exceeded", tenant.label))
                    .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64);
                return self.refuse(session, ctx, reply).await;
            }
        }

        // WebSocket sessions (Dify's collaboration) live for hours and sit idle: holding an
        // admission slot that long would starve runs, so they pass without one.
        if session.is_upgrade_req() {
            return Ok(false);
        }

        // Admission: wait here (in our queue, not gunicorn's backlog) for a slot.
        let watch_client = preread_small_body(session, declared_len, chunked).await?;
        ctx.wants_stream = asks_for_stream(session);
        let admission = Arc::clone(upstream.admission());
        let deadline = client_deadline(session.req_header());
        let queued_at = Instant::now();
        let ticket = Ticket {
            tenant: tenant.id,
            tenant_label: tenant.label,
            class: class_index,
            deadline,
            since: None,
            streams: ctx.wants_stream,
        };
        ctx.ticket = Some(Ticket { since: Some(queued_at), ..ticket.clone() });
        match wait_for_slot(session, &admission, ticket, watch_client).await {
            Admitted::Yes(permit) => {
                // The moment it was admitted, read once by the admission already.
                upstream.retry_budget().record_request(permit.admitted_at());
                ctx.queue_wait = permit.waited();
                ctx.admitted_at = Some(permit.admitted_at());
                ctx.permit = Some(permit);
                Ok(false)
            }
            Admitted::Refused(refusal) => {
                ctx.queue_wait = queued_at.elapsed();
                let reply = refusal.reply(admission.retry_after_secs());
                tracing::debug!(id = %ctx.request_id, reason = refusal.as_str(), "admission refused");
                self.refuse(session, ctx, reply).await
            }
            Admitted::ClientGone => {
                ctx.queue_wait = queued_at.elapsed();
                let mut e = Error::explain(ErrorType::ConnectionClosed, "client left while queued");
                e.as_down();
                Err(e)
            }
        }
    }

    /// Picks an endpoint of the routed group and applies the class's timeouts.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        if let Some(wait) = ctx.pending_backoff.take() {
            tokio::time::sleep(wait).await;
        }
        let Some(routed) = &ctx.routed else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let (endpoint, lease) = match routed.upstream.pick() {
            Some(picked) => picked,
            None => {
                // Nothing in rotation (down, restarting, or not resolvable yet): hold this
                // request — with its admission slot — until the group is back or its
                // class's queue deadline passes.
                let deadline = ctx.started + routed.class.queue_timeout.0;
                match wait_for_endpoint(&routed.upstream, deadline).await {
                    Some(picked) => picked,
                    None => {
                        ctx.reply = Some(
                            ErrorReply::upstream_unavailable(
                                503,
                                format!(
                                    "upstream {} is down or restarting and was not back in time",
                                    routed.upstream.name()
                                ),
                            )
                            .retry_after(5),
                        );
                        let mut e = Error::explain(ErrorType::ConnectNoRoute, "no endpoint in rotation");
                        e.as_up();
                        return Err(e);
                    }
                }
            }
        };
        let class = &routed.class;
        let mut peer = HttpPeer::new(endpoint.addr, false, String::new());
        peer.options.connection_timeout = Some(class.connect_timeout.0);
        let mut read_timeout =
            if ctx.wants_stream { class.stream_idle_timeout.0 } else { class.read_timeout.0 };
        if let (false, Some(total)) = (ctx.wants_stream, class.total_timeout) {
            // The header must arrive within what is left of the request's total time.
            let left = total.0.saturating_sub(ctx.started.elapsed());
            if left.is_zero() {
                ctx.reply =
                    Some(ErrorReply::upstream_timeout("the request's total time ran out before it was sent"));
                let mut e = Error::explain(ErrorType::ReadTimedout, "total_timeout exhausted");
                e.as_up();
                return Err(e);
            }
            read_timeout = read_timeout.min(left);
        }
        peer.options.read_timeout = Some(read_timeout);
        peer.options.write_timeout = Some(class.write_timeout.0);
        peer.options.idle_timeout = Some(routed.keepalive).filter(|k| !k.is_zero());
        ctx.endpoint = Some(endpoint);
        // Replacing the previous attempt's lease ends its count (and reports it).
        ctx.endpoint_lease = Some(lease);
        ctx.attempts += 1;
        ctx.peer_chosen_at = Some(Instant::now());
        if let Some(permit) = &ctx.permit {
            permit.attempt_started();
        }
        Ok(Box::new(peer))
    }

    /// A failed connect never reached the application, so trying another endpoint of the
    /// group is always safe; with a single endpoint we answer instead of hammering it.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(routed), Some(endpoint)) = (&ctx.routed, &ctx.endpoint) {
            routed.upstream.connect_failed(endpoint.addr, routed.ramp);
        }
        if let Some(lease) = ctx.endpoint_lease.as_mut() {
            lease.set_outcome(Some(true));
        }
        // A failed connect never reached the application, so retrying is always safe — on
        // another endpoint, or (held in upstream_peer) on this one once it is back.
        // Nothing of the body was sent: it is as replayable as it was.
        let decision = self.decide_retry(session, ctx, Ending::ConnectFailed, true);
        e.set_retry(matches!(decision, Decision::Retry { .. }));
        e
    }

    /// Decides whether an error during proxying may be retried. A decision a hook made on
    /// what it knew (a 429/503 proves nothing was processed) stands; otherwise the retry
    /// policy decides from what the error proves: a pooled connection the backend had closed
    /// or a reset before any answer (the request was not read), or nothing.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.retry_decided) {
            return e;
        }
        let ending = if client_reused && matches!(e.retry, RetryType::ReusedOnly) {
            Ending::StaleConnection
        } else if ctx.first_byte.is_none() && reset_before_answer(&e) {
            Ending::ResetUnread
        } else {
            Ending::MayHaveRun { retry_after: None }
        };
        let replayable = !session.as_ref().retry_buffer_truncated();
        match self.decide_retry(session, ctx, ending, replayable) {
            Decision::Retry { backoff, .. } => {
                // This hook cannot sleep; upstream_peer waits it out before the next attempt.
                ctx.pending_backoff = Some(backoff).filter(|b| !b.is_zero());
                e.set_retry(true);
            }
            Decision::IfReused => e.retry.decide_reuse(client_reused),
            Decision::Stop => e.set_retry(false),
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.connect = Some(if reused {
            Duration::ZERO
        } else {
            ctx.peer_chosen_at.map_or(Duration::ZERO, |t| t.elapsed())
        });
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        // request_filter always sets the snapshot; should it be missing, no peer is trusted.
        let (mode, trusted) =
            ctx.config.as_deref().map_or((ForwardingMode::Replace, &NO_TRUSTED_PROXIES), |c| {
                (c.server.forwarding, &c.server.trusted_proxies)
            });
        match &ctx.request_id_value {
            Some(id) => apply_forwarding(upstream_request, id.clone(), mode, trusted, peer)?,
            None => apply_forwarding(upstream_request, ctx.request_id.as_str(), mode, trusted, peer)?,
        }
        let reuse = ctx.routed.as_ref().is_some_and(|r| !r.keepalive.is_zero());
        // WebSocket upgrades need their `Connection: upgrade`.
        if !reuse && !session.is_upgrade_req() {
            upstream_request.insert_header(http::header::CONNECTION, "close")?;
        }
        Ok(())
    }

    /// Counts the body and enforces `max_request_body` for bodies without a declared length.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.bytes_in += chunk.len() as u64;
        }
        let limit = ctx.config.as_ref().map_or(u64::MAX, |c| c.server.max_request_body.0);
        if ctx.bytes_in > limit {
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body over max_request_body");
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        let status = upstream_response.status.as_u16();
        let retry_after = upstream_response
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // 429/503: nothing was processed. 500/502/504: it may have run. The policy decides
        // (this runs before any response byte reaches the client); a retry waits out its
        // backoff in upstream_peer, with this connection already let go.
        let ending = match status {
            429 | 503 => Some(Ending::Unprocessed { retry_after }),
            500 | 502 | 504 => Some(Ending::MayHaveRun { retry_after }),
            _ => None,
        };
        if let Some(ending) = ending {
            let replayable = Self::answer_replayable(session);
            if let Decision::Retry { backoff, .. } = self.decide_retry(session, ctx, ending, replayable) {
                ctx.pending_backoff = Some(backoff).filter(|b| !b.is_zero());
                ctx.retry_decided = true;
                let mut e = Error::explain(ErrorType::HTTPStatus(status), "retrying a safe-to-repeat answer");
                e.as_up();
                e.set_retry(true);
                return Err(e);
            }
        }
        let now = Instant::now();
        ctx.first_byte.get_or_insert_with(|| now.saturating_duration_since(ctx.started));
        // The limiter's latency: from the start of the attempt that answered (a request held
        // through an outage must not read as a slow backend).
        ctx.first_byte_after_admission =
            ctx.peer_chosen_at.or(ctx.admitted_at).map(|t| now.saturating_duration_since(t));
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        if let Some(permit) = &ctx.permit {
            permit.header_received();
        }
        ctx.streaming = upstream_response
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if matches!(status, 500 | 502 | 504) {
            // An overload answer (Dify's 500 when PostgreSQL is out of connections) never
            // reaches the client, which has heard nothing yet: one that provably ran nothing
            // is replayed, within the retry budget; any other becomes a fast 503
            // `server_busy` with `Retry-After`, so the client can tell busy from broken. A 500
            // that lower loads show as well is the request's own and passes through.
            let Some(refusal) = ctx.permit.as_ref().and_then(Permit::overloaded_answer) else {
                return Ok(());
            };
            // Dify's refusal ran nothing: it is replayed as a 503 would be, through our queue.
            if unhandled_error_answer(upstream_response) {
                let replayable = Self::answer_replayable(session);
                let ending = Ending::Unprocessed { retry_after: None };
                if let Decision::Retry { .. } = self.decide_retry(session, ctx, ending, replayable) {
                    return self.queue_again(ctx, status).await;
                }
            }
            if let (Some(permit), Some(routed)) = (&ctx.permit, &ctx.routed) {
                permit.count_refusal(refusal);
                ctx.reply = Some(refusal.reply(routed.upstream.admission().retry_after_secs()));
            }
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "the backend answered overloaded");
            e.as_up();
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        match &ctx.request_id_value {
            Some(id) => upstream_response.insert_header(REQUEST_ID, id.clone()),
            None => upstream_response.insert_header(REQUEST_ID, ctx.request_id.as_str()),
        }
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(chunk) = body {
            if ctx.streaming && ctx.first_body_sent.is_none() && !chunk.is_empty() {
                // A stream's time to first byte: the first event, not its header. (Only a
                // stream's is used: other answers are timed by their header.)
                ctx.first_body_sent = Some(ctx.started.elapsed());
            }
            ctx.bytes_out += chunk.len() as u64;
        }
        Ok(None)
    }

    /// Answers a failed request with Dify's envelope, unless a response already started: then an
    /// event stream ends with Dify's `error` event, anything else by closing the connection.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        if let Some(sent) = session.response_written() {
            let status = sent.status.as_u16();
            // Too late for an error status: end an event stream with Dify's error event.
            if ctx.streaming && sse::can_append(sent) && e.esource() == &ErrorSource::Upstream {
                let frame = sse::error_frame(e);
                if let Err(write_error) = session.write_response_body(Some(frame), true).await {
                    tracing::debug!(id = %ctx.request_id, error = %write_error, "could not write the SSE error event");
                }
            }
            return FailToProxy { error_code: status, can_reuse_downstream: false };
        }
        let reply = ctx.reply.clone().or_else(|| ErrorReply::from_error(e));
        let Some(reply) = reply else {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        };
        if ctx.request_id.is_empty() {
            ctx.request_id = request_id_from(session.req_header());
        }
        if let Err(write_error) = reply.send(session, &ctx.request_id).await {
            tracing::debug!(id = %ctx.request_id, error = %write_error, "could not write the error envelope");
        }
        let code = reply.status;
        ctx.reply = Some(reply);
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
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
            Some(r) => self.app.metrics.request_done_in(&r.metrics, done),
            None => self.app.metrics.request_done(done),
        }
        let access_log = ctx.config.as_ref().is_none_or(|c| c.log.access_log);
        if access_log {
            log_request(session, ctx, status, e);
        }
    }
}
