//! Why admission refused a request, and the client's answer for each reason: always the
//! 503 `server_busy` envelope with a `Retry-After`, so a client can tell "busy" from "broken".

use crate::proxy::envelope::ErrorReply;

/// A refused request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue was full and this request's tenant had the most waiting.
    QueueFull,
    /// Evicted from a full queue to make room for a lighter tenant.
    Evicted,
    /// Waited its class's `queue_timeout`.
    Timeout,
    /// The estimated wait already exceeds what the request can wait.
    WouldExceedDeadline,
    /// Waited so long that its client has most likely left (learned patience).
    Impatient,
    /// Its wait ended while the upstream could not serve at all (down or restarting).
    Unavailable,
    /// The proxy is shutting down (SIGTERM): it was never sent to the backend.
    ShuttingDown,
    /// The backend answered it with a 5xx that says "overloaded" (PostgreSQL's "too many
    /// clients" reaches the client as Dify's 500): the client gets this instead, so it can
    /// tell "busy, retry" from "broken".
    BackendOverloaded,
}

impl Refusal {
    /// Short name for logs, `/status` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::Evicted => "evicted",
            Refusal::Timeout => "queue_timeout",
            Refusal::WouldExceedDeadline => "deadline",
            Refusal::Impatient => "impatient",
            Refusal::Unavailable => "unavailable",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::BackendOverloaded => "backend_overloaded",
        }
    }

    /// The envelope for the client.
    pub fn reply(self, retry_after_secs: u64) -> ErrorReply {
        if self == Refusal::ShuttingDown {
            // `server_busy`, not `upstream_unavailable`: the backend is fine and nothing was
            // sent to it, so any request may be retried at once — by then a restarted proxy
            // (or another replica) takes it. The queue's own estimate says nothing here.
            return ErrorReply::server_busy(
                "the proxy is shutting down; this request was not sent to the backend, retry it",
            )
            .retry_after(1);
        }
        if self == Refusal::Unavailable {
            return ErrorReply::upstream_unavailable(
                503,
                "the backend is down or restarting; it was not back in time",
            )
            .retry_after(retry_after_secs.clamp(1, 60));
        }
        let message = match self {
            Refusal::QueueFull | Refusal::Evicted => "the backend is at capacity and the queue is full",
            Refusal::Timeout => "the backend stayed at capacity for as long as this request may wait",
            Refusal::WouldExceedDeadline => "the expected wait exceeds how long this request may wait",
            Refusal::Impatient => "the backend is at capacity; this request waited too long",
            Refusal::Unavailable => "the backend is down",
            Refusal::ShuttingDown => "the proxy is shutting down",
            Refusal::BackendOverloaded => {
                "the backend ran out of capacity for this request (an overload error, such as \
                 PostgreSQL's connection limit); retry it"
            }
        };
        ErrorReply::server_busy(message).retry_after(retry_after_secs.clamp(1, 60))
    }
}
