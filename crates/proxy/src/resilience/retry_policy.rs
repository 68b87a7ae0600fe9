//! Whether an attempt that failed is tried again, and after how long: one pure decision for
//! every hook that sees an attempt end (a failed connect, an error while proxying, an answer
//! that proves nothing ran). The hooks only describe what happened ([`Ending`], [`Attempt`])
//! and carry the [`Decision`] out; the budget is consulted through a closure, and only when
//! the rule needs it, so a retry that is not budgeted never spends it.
//!
//! The rules, from what is *known* about the attempt (see [`crate::resilience::retry`]):
//! * the application never saw the request (a failed connect, a pooled connection the backend
//!   had closed, a reset with the request unread, a 429/503): it is sent again, POST included,
//!   as long as its body can be replayed;
//! * it may have run (a 500/502/504, a close, a break): only a request that is safe to repeat
//!   (an idempotent method, or a route that opted in), never once the client has part of an
//!   answer, within the budget;
//! * otherwise an idempotent request follows pingora's default (retried on a reused
//!   connection only) and any other is not retried.

use std::time::Duration;

use super::retry::backoff;
use crate::config::RetrySpec;

/// Connect attempts per request (pingora's `max_retries` caps retries above this).
pub const MAX_CONNECT_ATTEMPTS: u32 = 6;

/// How an attempt ended, as far as it tells whether the request ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The connect failed: the application never saw the request.
    ConnectFailed,
    /// A pooled keep-alive connection the backend had already closed: the request never
    /// reached the application.
    StaleConnection,
    /// The backend reset the connection with the request unread, before any answer (a
    /// restarting gunicorn closing its backlog).
    ResetUnread,
    /// A 429 or 503 answer, or Dify's refusal of a run it failed before running it: nothing
    /// was processed.
    Unprocessed {
        /// The wait the backend asked for.
        retry_after: Option<Duration>,
    },
    /// Anything after which the request may have run: a 500/502/504, a close, a break.
    MayHaveRun {
        /// The wait the backend asked for, if it answered.
        retry_after: Option<Duration>,
    },
}

/// What is known of the request when an attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Connect attempts made so far, this one included.
    pub attempts: u32,
    /// Retries already counted against the request's `max_retries`.
    pub retries: u32,
    /// Its body can be sent again.
    pub replayable: bool,
    /// Its method is idempotent.
    pub idempotent: bool,
    /// Running it twice is safe: an idempotent method, or a route that opted in.
    pub repeatable: bool,
    /// The client already has part of an answer.
    pub answered: bool,
}

/// What to do with the failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again.
    Retry {
        /// The wait before the next attempt.
        backoff: Duration,
        /// Whether it counts against the request's `max_retries`.
        counted: bool,
    },
    /// Pingora's default: again only if the attempt ran on a reused connection.
    IfReused,
    /// Answer the client with what this attempt ended in.
    Stop,
}

/// Decides the next step for an attempt that ended as `ending`. `budget` takes one retry
/// from the upstream's budget and says whether there was room; it is called at most once,
/// and only for a retry that the budget governs.
pub fn decide(
    ending: Ending,
    attempt: &Attempt,
    spec: &RetrySpec,
    budget: impl FnOnce() -> bool,
) -> Decision {
    let counted = |retry_after| Decision::Retry {
        backoff: backoff(attempt.retries + 1, spec.backoff_base.0, spec.backoff_max.0, retry_after),
        counted: true,
    };
    let room = attempt.retries < spec.max_retries;
    match ending {
        // Never reached the application: again at once, on another endpoint or (held until
        // it is back) this one; outside the budget, which is for answers.
        Ending::ConnectFailed if attempt.attempts < MAX_CONNECT_ATTEMPTS => {
            Decision::Retry { backoff: Duration::ZERO, counted: false }
        }
        Ending::ConnectFailed => Decision::Stop,
        Ending::StaleConnection if attempt.replayable => {
            Decision::Retry { backoff: Duration::ZERO, counted: false }
        }
        Ending::StaleConnection => Decision::Stop,
        // Outside the budget too: a restart resets a whole backlog at once, and the next
        // attempt meets the closed port and is held until the backend is back.
        Ending::ResetUnread if attempt.replayable && !attempt.answered && room => counted(None),
        Ending::Unprocessed { retry_after } => {
            if attempt.replayable && room && budget() {
                counted(retry_after)
            } else {
                Decision::Stop
            }
        }
        Ending::ResetUnread | Ending::MayHaveRun { .. } => {
            let retry_after = match ending {
                Ending::MayHaveRun { retry_after } => retry_after,
                _ => None,
            };
            if !attempt.replayable {
                Decision::Stop
            } else if attempt.repeatable && !attempt.answered && room && budget() {
                counted(retry_after)
            } else if attempt.idempotent {
                Decision::IfReused
            } else {
                Decision::Stop
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POST: Attempt = Attempt {
        attempts: 1,
        retries: 0,
        replayable: true,
        idempotent: false,
        repeatable: false,
        answered: false,
    };
    const GET: Attempt = Attempt { idempotent: true, repeatable: true, ..POST };

    /// What happens, to whom, whether the budget has room; then whether it is retried (and
    /// counted), and whether the budget was asked.
    type Row = (&'static str, Ending, Attempt, bool, Option<bool>, bool);

    /// The decision with the budget's answer `room`, and whether the budget was asked.
    fn run(ending: Ending, attempt: Attempt, room: bool) -> (Decision, bool) {
        let spec = RetrySpec::default();
        let mut asked = false;
        let decision = decide(ending, &attempt, &spec, || {
            asked = true;
            room
        });
        (decision, asked)
    }

    fn retried(decision: Decision) -> Option<bool> {
        match decision {
            Decision::Retry { backoff, counted } => {
                assert!(backoff <= RetrySpec::default().backoff_max.0, "{backoff:?}");
                Some(counted)
            }
            _ => None,
        }
    }

    #[test]
    fn the_table() {
        let unprocessed = Ending::Unprocessed { retry_after: None };
        let ran = Ending::MayHaveRun { retry_after: None };
        let spent = Attempt { retries: RetrySpec::default().max_retries, ..POST };
        let answered = Attempt { answered: true, ..GET };
        let held = Attempt { replayable: false, ..GET };
        let opted_in = Attempt { repeatable: true, ..POST };
        let last_connect = Attempt { attempts: MAX_CONNECT_ATTEMPTS, ..POST };
        // (ending, attempt, budget has room) → (retried and counted?, budget asked?)
        #[rustfmt::skip]
        let table: &[Row] = &[
            ("connect failed: again, unbudgeted",        Ending::ConnectFailed,   POST,         false, Some(false), false),
            ("connect failed, attempts used up",         Ending::ConnectFailed,   last_connect, true,  None,        false),
            ("stale pooled connection: POST again",      Ending::StaleConnection, POST,         false, Some(false), false),
            ("stale, body not replayable",               Ending::StaleConnection, held,         true,  None,        false),
            ("reset unread: POST again, no budget",      Ending::ResetUnread,     POST,         false, Some(true),  false),
            ("reset unread after retries: POST stops",   Ending::ResetUnread,     spent,        true,  None,        false),
            ("reset after an answer began: POST stops",  Ending::ResetUnread,     Attempt { answered: true, ..POST }, true, None, false),
            ("429/503: POST again within the budget",    unprocessed,             POST,         true,  Some(true),  true),
            ("429/503, budget empty",                    unprocessed,             POST,         false, None,        true),
            ("429/503, retries used up",                 unprocessed,             spent,        true,  None,        false),
            ("429/503, body not replayable",             unprocessed,             held,         true,  None,        false),
            ("may have run: POST never",                 ran,                     POST,         true,  None,        false),
            ("may have run: GET within the budget",      ran,                     GET,          true,  Some(true),  true),
            ("may have run: opted-in POST",              ran,                     opted_in,     true,  Some(true),  true),
            ("may have run: opted-in POST, no budget",   ran,                     opted_in,     false, None,        true),
            ("may have run: GET already answering",      ran,                     answered,     true,  None,        false),
        ];
        for (what, ending, attempt, room, want, want_asked) in table {
            let (decision, asked) = run(*ending, *attempt, *room);
            assert_eq!(retried(decision), *want, "{what}: {decision:?}");
            assert_eq!(asked, *want_asked, "{what}: budget asked {asked}");
        }
    }

    #[test]
    fn an_idempotent_request_the_budget_refuses_follows_pingora() {
        let ran = Ending::MayHaveRun { retry_after: None };
        assert_eq!(run(ran, GET, false), (Decision::IfReused, true));
        let answered = Attempt { answered: true, ..GET };
        assert_eq!(run(ran, answered, true), (Decision::IfReused, false));
        let held = Attempt { replayable: false, ..GET };
        assert_eq!(run(ran, held, true), (Decision::Stop, false));
    }

    #[test]
    fn the_backend_s_retry_after_sets_the_wait_up_to_the_cap() {
        let spec = RetrySpec::default();
        let ending = Ending::Unprocessed { retry_after: Some(Duration::from_secs(1)) };
        let decision = decide(ending, &POST, &spec, || true);
        assert_eq!(decision, Decision::Retry { backoff: Duration::from_secs(1), counted: true });
        let ending = Ending::Unprocessed { retry_after: Some(Duration::from_secs(60)) };
        let decision = decide(ending, &POST, &spec, || true);
        assert_eq!(decision, Decision::Retry { backoff: spec.backoff_max.0, counted: true });
    }
}
