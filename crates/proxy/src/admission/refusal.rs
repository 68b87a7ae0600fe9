//! Why admission refused a request. The client's answer for each reason is the proxy's
//! ([`crate::proxy::envelope::ErrorReply::refused`]).

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
}
