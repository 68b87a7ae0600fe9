//! The hooks' side of the retry policy: describe an attempt that ended to
//! [`retry_policy::decide`] and count what it grants, and replay a request Dify refused
//! before running it through the admission queue again (or answer 503 for any other
//! overload answer).

use std::sync::Arc;

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use tokio::time::Instant;

use super::ctx::RequestCtx;
use super::envelope::ErrorReply;
use super::outcome::unhandled_error_answer;
use crate::admission::{Outcome, Permit};
use crate::resilience::retry::parse_retry_after;
use crate::resilience::retry_policy::{self, Attempt, Decision, Ending};

/// The retry policy's decision for the attempt that just ended as `ending`: the hooks
/// describe it, [`retry_policy::decide`] decides. A counted retry is added to the
/// request's retries here.
pub(super) fn decide_retry(
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
    let decision = retry_policy::decide(ending, &attempt, &routed.retry, || budget.try_retry(Instant::now()));
    if let Decision::Retry { counted: true, .. } = decision {
        ctx.budget_retries += 1;
    }
    decision
}

/// An answer that proves nothing ran (429/503) or that may have run (500/502/504), before any
/// of it reaches the client: the error that makes pingora try again, when the retry policy
/// grants it (the backoff is waited out in `upstream_peer`, this connection already let go).
pub(super) fn retry_answer(
    session: &Session,
    ctx: &mut RequestCtx,
    answer: &ResponseHeader,
) -> Option<Box<Error>> {
    let status = answer.status.as_u16();
    let retry_after = answer
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let ending = match status {
        429 | 503 => Ending::Unprocessed { retry_after },
        500 | 502 | 504 => Ending::MayHaveRun { retry_after },
        _ => return None,
    };
    let replayable = answer_replayable(session);
    let Decision::Retry { backoff, .. } = decide_retry(session, ctx, ending, replayable) else {
        return None;
    };
    ctx.pending_backoff = Some(backoff).filter(|b| !b.is_zero());
    ctx.retry_decided = true;
    let mut e = Error::explain(ErrorType::HTTPStatus(status), "retrying a safe-to-repeat answer");
    e.as_up();
    e.set_retry(true);
    Some(e)
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
pub(super) async fn queue_again(ctx: &mut RequestCtx, status: u16) -> Result<()> {
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
            ctx.reply = Some(ErrorReply::refused(refusal, admission.retry_after_secs()));
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "the backend answered overloaded");
            e.as_up();
            Err(e)
        }
    }
}

/// A 5xx answer the limiter reads as "overloaded" (Dify's 500 when PostgreSQL is out of
/// connections) never reaches the client, which has heard nothing yet: one that provably ran
/// nothing is replayed through the queue, within the retry budget; any other becomes a fast
/// 503 `server_busy` with `Retry-After`, so the client can tell busy from broken. A 500 that
/// lower loads show as well is the request's own and passes through (`Ok`) — except Dify's
/// generic unhandled-error answer, which ran nothing whatever caused it, and so is replayed
/// within the budget all the same: alone in flight, or at a pinned limit where every level
/// meets the database's limit alike, the limiter cannot blame the level, yet the request
/// deserves its second chance. The budget bounds what a fault that fails every attempt costs.
pub(super) async fn overloaded(
    session: &Session,
    response: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let status = response.status.as_u16();
    // Without admission (an unqueued class) there is no queue to replay through.
    if ctx.permit.is_none() {
        return Ok(());
    }
    // Dify's refusal ran nothing: it is replayed as a 503 would be, through our queue.
    if unhandled_error_answer(response) {
        let replayable = answer_replayable(session);
        let ending = Ending::Unprocessed { retry_after: None };
        if let Decision::Retry { .. } = decide_retry(session, ctx, ending, replayable) {
            return queue_again(ctx, status).await;
        }
    }
    let Some(refusal) = ctx.permit.as_ref().and_then(Permit::overloaded_answer) else {
        return Ok(());
    };
    if let (Some(permit), Some(routed)) = (&ctx.permit, &ctx.routed) {
        permit.count_refusal(refusal);
        ctx.reply = Some(ErrorReply::refused(refusal, routed.upstream.admission().retry_after_secs()));
    }
    let mut e = Error::explain(ErrorType::HTTPStatus(status), "the backend answered overloaded");
    e.as_up();
    Err(e)
}
