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
//! logging ─► finish: release the admission permit with its outcome, metrics, access log
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

use super::admit::admit;
use super::client_limits;
use super::ctx::{RequestCtx, Routed};
use super::envelope::{ErrorReply, REQUEST_ID};
use super::finish::finish;
use super::headers::{apply_forwarding, request_id_and_value, request_id_from};
use super::outcome::reset_before_answer;
use super::rate_limit;
use super::sse;
use super::timer_anchor;
use super::{peer, retry};
use crate::admission::tenant::tenant_of;
use crate::app::App;
use crate::config::forwarding::{ForwardingMode, NO_TRUSTED_PROXIES};
use crate::resilience::retry_policy::{Decision, Ending};

/// The proxy service.
pub struct DifyProxy {
    app: Arc<App>,
}

impl DifyProxy {
    /// A proxy over the shared state.
    pub fn new(app: Arc<App>) -> Self {
        DifyProxy { app }
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
        if let Some(reply) = client_limits::apply(&self.app, session, ctx, &config) {
            return self.refuse(session, ctx, reply).await;
        }
        let req = session.req_header();
        let method = &req.method;
        let path = req.uri.path();
        let tenant = tenant_of(&config.tenants.source, &req.headers);
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

        let routed = Routed::resolve(&config, &self.app.upstreams, method, path);
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
        if let Err(wait) = rate_limit::check(&self.app, tenant.id).await {
            let reply = ErrorReply::too_many_requests(format!("rate limit of {} exceeded", tenant.label))
                .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64);
            return self.refuse(session, ctx, reply).await;
        }

        // WebSocket sessions (Dify's collaboration) live for hours and sit idle: holding an
        // admission slot that long would starve runs, so they pass without one.
        if session.is_upgrade_req() {
            return Ok(false);
        }

        // Admission: wait here (in our queue, not gunicorn's backlog) for a slot.
        match admit(session, ctx, &upstream, tenant, class_index, declared_len, chunked).await? {
            Some(reply) => self.refuse(session, ctx, reply).await,
            None => Ok(false),
        }
    }

    /// A client that leaves or stalls (a disconnect while queued, a body that stops) is an
    /// ordinary access-log line and a metric; pingora's ERROR line for it would bury real
    /// errors under overload.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        *error.esource() == ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed
                    | ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout
            )
    }

    /// Picks an endpoint of the routed group and applies the class's timeouts.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        if let Some(wait) = ctx.pending_backoff.take() {
            tokio::time::sleep(wait).await;
        }
        let Some(routed) = &ctx.routed else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let chosen = peer::pick_endpoint(routed, ctx.started).await.and_then(|(endpoint, lease)| {
            peer::peer_for(routed, &endpoint, ctx.wants_stream, ctx.started).map(|p| (p, endpoint, lease))
        });
        let (peer, endpoint, lease) = match chosen {
            Ok(chosen) => chosen,
            Err((e, reply)) => {
                ctx.reply = Some(reply);
                return Err(e);
            }
        };
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
        let decision = retry::decide_retry(session, ctx, Ending::ConnectFailed, true);
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
        match retry::decide_retry(session, ctx, ending, replayable) {
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
        if let Some(retry) = retry::retry_answer(session, ctx, upstream_response) {
            return Err(retry);
        }
        let status = upstream_response.status.as_u16();
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
            return retry::overloaded(session, upstream_response, ctx).await;
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
        finish(&self.app.metrics, session, e, ctx);
    }
}
