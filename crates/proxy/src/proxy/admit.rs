//! The admission step of `request_filter` ([`admit`]): read a small request body up front,
//! then wait for a slot while watching the client, so a client that gives up leaves the queue at once and its
//! request never reaches the backend.
//!
//! Why read the body first: HTTP/1.1 only shows a disconnect to a reader, and reading the
//! socket while the body is unread would consume it. Bodies up to [`PREREAD_LIMIT`] (every
//! Dify run request) are read into pingora's retry buffer, which pingora sends upstream first
//! on every attempt — so the body still reaches the backend intact, and can be replayed on a
//! safe retry. Larger or chunked bodies (file uploads) wait without the watch.

use std::sync::Arc;
use std::time::Duration;

use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use tokio::time::Instant;

use super::ctx::RequestCtx;
use super::envelope::ErrorReply;
use crate::admission::tenant::Tenant;
use crate::admission::{Admission, Permit, Refusal, Ticket};
use crate::upstream::UpstreamState;

/// Largest body read before admission (pingora's retry buffer holds 64 KiB).
pub const PREREAD_LIMIT: u64 = 64 * 1024;

/// The header in which a client states how long it waits for the answer: seconds
/// (`"10"`, `"2.5"`) or a duration with a unit (`"1500ms"`, `"30s"`, `"2m"`) — e.g. the
/// timeout a Dify SDK client is configured with. The queue then refuses it (503 + Retry-After)
/// before that time runs out rather than letting it time out silently.
pub const REQUEST_TIMEOUT: &str = "x-request-timeout";
/// [`REQUEST_TIMEOUT`] ready-made for the lookup on every request (a `&str` is parsed each time).
static REQUEST_TIMEOUT_NAME: http::HeaderName = http::HeaderName::from_static(REQUEST_TIMEOUT);

/// The longest stated deadline taken as it is: Dify's own nginx allows no more.
const LONGEST_DEADLINE: Duration = Duration::from_secs(3600);

/// The deadline a client stated in [`REQUEST_TIMEOUT`]. Absent, malformed, zero or negative
/// is ignored (as if not sent); above an hour is an hour. It only ever shortens the wait in
/// the queue, so it cannot be used to jump it.
pub fn client_deadline(header: &pingora::http::RequestHeader) -> Option<Duration> {
    let text = header.headers.get(&REQUEST_TIMEOUT_NAME)?.to_str().ok()?.trim();
    let deadline = match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => {
            Duration::from_secs_f64(secs.min(LONGEST_DEADLINE.as_secs_f64()))
        }
        Ok(_) => return None,
        Err(_) => humantime::parse_duration(text).ok().filter(|d| !d.is_zero())?,
    };
    Some(deadline.min(LONGEST_DEADLINE))
}

/// How waiting for admission ended.
#[derive(Debug)]
pub enum Admitted {
    /// Admitted: hold the permit for the request's lifetime.
    Yes(Permit),
    /// Refused: answer 503 with the refusal.
    Refused(Refusal),
    /// The client disconnected while waiting.
    ClientGone,
}

/// Reads the whole body when it is declared and small; returns whether the client can be
/// watched for a disconnect while waiting (the body is complete, or there is none). A client
/// that sent `Expect: 100-continue` waits for the backend's go-ahead before sending its body,
/// so its body is not read here (that would stall it until its own expect timeout).
pub async fn preread_small_body(
    session: &mut Session,
    declared_len: Option<u64>,
    chunked: bool,
) -> Result<bool> {
    let expects_continue = |session: &Session| {
        session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    };
    match declared_len {
        _ if chunked => Ok(false),
        None | Some(0) => Ok(true),
        Some(len) if len > PREREAD_LIMIT || expects_continue(session) => Ok(false),
        Some(_) => {
            session.as_mut().enable_retry_buffering();
            // A client that stalls or leaves mid-body is the client's failure (408, or
            // nothing to answer), not the proxy's.
            while session
                .read_request_body()
                .await
                .map_err(|mut e| {
                    e.as_down();
                    e
                })?
                .is_some()
            {}
            Ok(true)
        }
    }
}

/// Whether a pre-read body asks Dify for a streaming answer (`"response_mode":"streaming"`).
pub fn asks_for_stream(session: &Session) -> bool {
    #[derive(serde::Deserialize)]
    struct Mode<'a> {
        #[serde(borrow)]
        response_mode: Option<&'a str>,
    }
    session
        .as_downstream()
        .get_retry_buffer()
        .and_then(|body| {
            serde_json::from_slice::<Mode<'_>>(&body)
                .ok()
                .and_then(|m| m.response_mode.map(|m| m == "streaming"))
        })
        .unwrap_or(false)
}

/// The admission step: reads a small body, then waits for a slot of `upstream` for
/// `tenant`'s request of traffic class `class`. `Ok(None)`: admitted, the permit is in `ctx`;
/// `Ok(Some(reply))`: refused, answer with `reply`; `Err`: the client left while queued.
pub async fn admit(
    session: &mut Session,
    ctx: &mut RequestCtx,
    upstream: &UpstreamState,
    tenant: Tenant,
    class: usize,
    declared_len: Option<u64>,
    chunked: bool,
) -> Result<Option<ErrorReply>> {
    let watch_client = preread_small_body(session, declared_len, chunked).await?;
    ctx.wants_stream = asks_for_stream(session);
    let ticket = Ticket {
        tenant: tenant.id,
        tenant_label: tenant.label,
        class,
        deadline: client_deadline(session.req_header()),
        since: None,
        streams: ctx.wants_stream,
    };
    let admission = Arc::clone(upstream.admission());
    let queued_at = Instant::now();
    ctx.ticket = Some(Ticket { since: Some(queued_at), ..ticket.clone() });
    match wait_for_slot(session, &admission, ticket, watch_client).await {
        Admitted::Yes(permit) => {
            // The moment it was admitted, read once by the admission already.
            upstream.retry_budget().record_request(permit.admitted_at());
            ctx.queue_wait = permit.waited();
            ctx.admitted_at = Some(permit.admitted_at());
            ctx.permit = Some(permit);
            Ok(None)
        }
        Admitted::Refused(refusal) => {
            ctx.queue_wait = queued_at.elapsed();
            tracing::debug!(id = %ctx.request_id, reason = refusal.as_str(), "admission refused");
            Ok(Some(ErrorReply::refused(refusal, admission.retry_after_secs())))
        }
        Admitted::ClientGone => {
            ctx.queue_wait = queued_at.elapsed();
            let mut e = Error::explain(ErrorType::ConnectionClosed, "client left while queued");
            e.as_down();
            Err(e)
        }
    }
}

/// Waits for a slot; when `watch_client`, a disconnect withdraws the request.
pub async fn wait_for_slot(
    session: &mut Session,
    admission: &Arc<Admission>,
    ticket: Ticket,
    watch_client: bool,
) -> Admitted {
    let acquire = admission.acquire(ticket);
    if !watch_client {
        return match acquire.await {
            Ok(permit) => Admitted::Yes(permit),
            Err(refusal) => Admitted::Refused(refusal),
        };
    }
    tokio::select! {
        biased;
        result = acquire => match result {
            Ok(permit) => Admitted::Yes(permit),
            Err(refusal) => Admitted::Refused(refusal),
        },
        () = client_gone(session) => Admitted::ClientGone,
    }
}

/// Resolves when the client closes its connection (its request is complete, so any read
/// event is either EOF or the start of a pipelined next request, which we leave alone).
async fn client_gone(session: &mut Session) {
    match session.downstream_session.read_body_or_idle(true).await {
        Err(_) => {}
        // Bytes of a pipelined request: we can no longer tell a disconnect; wait forever and
        // let the admission decide.
        Ok(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline(value: &str) -> Option<Duration> {
        let mut header =
            pingora::http::RequestHeader::build("POST", b"/v1/workflows/run", None).expect("header");
        header.insert_header(REQUEST_TIMEOUT, value).expect("insert");
        client_deadline(&header)
    }

    #[test]
    fn a_stated_deadline_is_read_clamped_or_ignored() {
        assert_eq!(deadline("10"), Some(Duration::from_secs(10)));
        assert_eq!(deadline(" 2.5 "), Some(Duration::from_millis(2500)));
        assert_eq!(deadline("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(deadline("2m"), Some(Duration::from_secs(120)));
        assert_eq!(deadline("86400"), Some(LONGEST_DEADLINE), "huge is clamped");
        assert_eq!(deadline("30d"), Some(LONGEST_DEADLINE));
        for ignored in ["", "0", "-5", "soon", "NaN", "inf", "0s"] {
            assert_eq!(deadline(ignored), None, "{ignored:?}");
        }
        let bare = pingora::http::RequestHeader::build("POST", b"/", None).expect("header");
        assert_eq!(client_deadline(&bare), None);
    }
}
