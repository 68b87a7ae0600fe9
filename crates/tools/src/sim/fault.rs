//! Fault injection for retry tests: `X-Sim-Fail: <status>|unhandled|reset|close` answers at
//! once with that status (in Dify's envelope) or with Dify's generic unhandled-error 500 (its
//! answer when PostgreSQL is out of connections), or drops the connection without an answer — `reset`
//! before reading the request body (the kernel answers the unread data with a TCP reset, as
//! for a request still queued in a closing gunicorn), `close` after reading all of it (a
//! worker that died mid-run: a plain close);
//! `X-Sim-Fail-First: N` limits it to the first `N` attempts of a request, counted per
//! `X-Request-Id` (so a retried request succeeds on attempt `N + 1`).

use http::{HeaderMap, StatusCode};

use super::request::header;

/// Header selecting the fault: an HTTP status (`500`, `503`, `429`, …), `unhandled`, `reset`
/// or `close`.
pub const FAIL_HEADER: &str = "x-sim-fail";
/// Header limiting the fault to the first `N` attempts per `X-Request-Id`.
pub const FAIL_FIRST_HEADER: &str = "x-sim-fail-first";

/// What to do instead of serving the request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer with this status and Dify's envelope.
    Status(StatusCode),
    /// Answer Dify's generic unhandled-error 500, as when the database refused a connection.
    Unhandled,
    /// Drop the connection without reading the body or answering (a TCP reset).
    Reset,
    /// Read the whole request, then drop the connection without answering (a plain close).
    Close,
}

/// The fault to inject for attempt number `attempt` (1-based) of this request, if any.
/// Unknown `X-Sim-Fail` values are ignored.
pub(crate) fn check(headers: &HeaderMap, attempt: u64) -> Option<Fault> {
    let spec = header(headers, FAIL_HEADER)?.trim();
    if let Some(first) = header(headers, FAIL_FIRST_HEADER) {
        let n: u64 = first.trim().parse().ok()?;
        if attempt > n {
            return None;
        }
    }
    if spec.eq_ignore_ascii_case("reset") {
        return Some(Fault::Reset);
    }
    if spec.eq_ignore_ascii_case("close") {
        return Some(Fault::Close);
    }
    if spec.eq_ignore_ascii_case("unhandled") {
        return Some(Fault::Unhandled);
    }
    spec.parse::<u16>()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
        .map(Fault::Status)
}

/// The error returned to hyper to drop a connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by fault injection")]
pub struct FaultReset;

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn fault_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(check(&h, 1), None);
        h.insert(FAIL_HEADER, HeaderValue::from_static("503"));
        assert_eq!(check(&h, 9), Some(Fault::Status(StatusCode::SERVICE_UNAVAILABLE)));
        h.insert(FAIL_FIRST_HEADER, HeaderValue::from_static("2"));
        assert!(check(&h, 2).is_some());
        assert_eq!(check(&h, 3), None);
        h.insert(FAIL_HEADER, HeaderValue::from_static("reset"));
        assert_eq!(check(&h, 1), Some(Fault::Reset));
        h.insert(FAIL_HEADER, HeaderValue::from_static("close"));
        assert_eq!(check(&h, 1), Some(Fault::Close));
        h.insert(FAIL_HEADER, HeaderValue::from_static("unhandled"));
        assert_eq!(check(&h, 1), Some(Fault::Unhandled));
        h.insert(FAIL_HEADER, HeaderValue::from_static("200"));
        assert_eq!(check(&h, 1), None);
    }
}
