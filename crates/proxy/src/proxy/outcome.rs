//! How a finished request ended: what it teaches the adaptive limit (the upstream status or
//! the error that ended it, mapped to an [`Outcome`]), and the status it is recorded with in
//! the metrics and the access log ([`recorded_status`]).

use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};

use crate::admission::Outcome;

/// The status recorded for a request whose client left before a response status was sent
/// (nginx's "client closed request"). Only our records use it; it is never sent.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The status a finished request is recorded with: the one sent to the client, else
/// [`CLIENT_CLOSED_REQUEST`]. Every failure the client can still hear about is answered (an
/// envelope from `fail_to_proxy`), so a request that sent no status is one whose client left
/// — queued, waiting for the backend, or as the answer was written. A 4xx code counts it
/// where operators look for failed requests (`status=~"4.."`, `status >= 400`), which a `0`
/// fell outside of, and neither the proxy nor Dify's API answers with it.
pub fn recorded_status(sent: Option<&ResponseHeader>) -> u16 {
    sent.map_or(CLIENT_CLOSED_REQUEST, |r| r.status.as_u16())
}

/// The length of Dify's answer to an exception nothing in the endpoint handled: a 500 with the
/// generic envelope `{"message": "Internal Server Error", "code": "unknown", "status": 500}`
/// and a newline (Flask-RESTx's `handle_error`). The run endpoints turn failures of the
/// workflow code into `internal_server_error`, so this answer comes only from the wrappers
/// around them: the API-key check and the end-user lookup, which is where PostgreSQL's
/// connection limit strikes first. Measured against Dify 1.12.1 at a 20-connection limit,
/// every such answer had created nothing (no end user, no run, no model call).
pub const DIFY_UNHANDLED_ERROR_LEN: usize = 71;

/// Whether `response` is Dify's generic unhandled-error 500 ([`DIFY_UNHANDLED_ERROR_LEN`]),
/// told by its length: the proxy decides before any byte of the body is read, while the client
/// has heard nothing yet.
pub fn unhandled_error_answer(response: &ResponseHeader) -> bool {
    let header = |name| response.headers.get(name).and_then(|v| v.to_str().ok());
    response.status.as_u16() == 500
        && header(http::header::CONTENT_TYPE).is_some_and(|t| t.starts_with("application/json"))
        && header(http::header::CONTENT_LENGTH).and_then(|l| l.trim().parse::<usize>().ok())
            == Some(DIFY_UNHANDLED_ERROR_LEN)
}

/// Whether the backend reset the connection before any byte of an answer: the TCP reset that
/// a close with our request still unread sends — a listener closed with connections waiting
/// in its backlog (a graceful restart of gunicorn stops accepting while requests queue), or a
/// worker stopped before reading them. An application cannot act on a request it has not
/// read, so such a request provably did not run, and may be replayed whatever its method. A
/// backend that read the request and then died closes with a FIN instead (`ConnectionClosed`),
/// which proves nothing and is not matched here.
pub fn reset_before_answer(e: &Error) -> bool {
    if e.esource() != &ErrorSource::Upstream
        || !matches!(e.etype(), ErrorType::ReadError | ErrorType::WriteError)
    {
        return false;
    }
    // `root_cause` looks through the layers of pingora context down to the io error; a write
    // that fails with a broken pipe met the same reset.
    e.root_cause().downcast_ref::<std::io::Error>().is_some_and(|io| {
        matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
    })
}

/// Classifies a finished request. `upstream_status` is the backend's response status, if one
/// arrived; `error` the error that ended the request, if any; `sent_upstream` whether the
/// request was handed to the backend at all.
pub fn classify(upstream_status: Option<u16>, error: Option<&Error>, sent_upstream: bool) -> Outcome {
    if let Some(e) = error {
        if e.esource() == &ErrorSource::Upstream {
            return match e.etype() {
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    Outcome::Timeout
                }
                // No endpoint in rotation, or nothing listening: the upstream is down or
                // restarting, which health handles; it says nothing about how much concurrency
                // it takes. (Linux does not refuse a connection because the accept queue is
                // full — with the default `tcp_abort_on_overflow = 0` it drops the SYN and the
                // client retries — so a refusal is not an overload answer. Counting it as one
                // left the limit cut far below capacity after every uncoordinated restart.)
                ErrorType::ConnectNoRoute | ErrorType::ConnectRefused => Outcome::Ignore,
                // The backend closed or reset a connection it had accepted, before answering:
                // a restart or a crashed worker cutting everything in flight at once. gunicorn
                // does not shed load that way (past its capacity requests wait in the backlog,
                // which the latency signal sees), so cutting here only dragged the limit — and
                // the ceiling remembered from it — far below capacity after every restart.
                // Health counts these failures instead.
                ErrorType::ConnectionClosed | ErrorType::ReadError => Outcome::Ignore,
                ErrorType::ConnectError => Outcome::Overload,
                // An overload answer the proxy turned into a 503 for the client.
                ErrorType::HTTPStatus(status) if *status >= 500 => Outcome::Overload,
                // A backend that answered but broke the protocol says nothing about load.
                _ if upstream_status.is_some() => Outcome::Ignore,
                _ => Outcome::Overload,
            };
        }
        // The client left before the backend answered: a lower bound on the latency.
        if upstream_status.is_none() {
            let client_left = matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
            return if client_left && sent_upstream { Outcome::Abandoned } else { Outcome::Ignore };
        }
    }
    match upstream_status {
        Some(429) => Outcome::Throttled,
        Some(status) if status >= 500 => Outcome::Overload,
        Some(_) => Outcome::Success,
        None => Outcome::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(t: ErrorType) -> Box<Error> {
        let mut e = Error::new(t);
        e.as_up();
        e
    }

    #[test]
    fn statuses_and_errors_map_to_outcomes() {
        assert_eq!(classify(Some(200), None, true), Outcome::Success);
        assert_eq!(classify(Some(404), None, true), Outcome::Success);
        assert_eq!(classify(Some(429), None, true), Outcome::Throttled);
        assert_eq!(classify(Some(500), None, true), Outcome::Overload);
        assert_eq!(classify(Some(503), None, true), Outcome::Overload);
        assert_eq!(classify(None, Some(&upstream(ErrorType::ConnectRefused)), true), Outcome::Ignore, "down");
        assert_eq!(
            classify(None, Some(&upstream(ErrorType::ConnectionClosed)), true),
            Outcome::Ignore,
            "cut by a restart"
        );
        assert_eq!(classify(None, Some(&upstream(ErrorType::ReadError)), true), Outcome::Ignore, "reset");
        assert_eq!(classify(None, Some(&upstream(ErrorType::ConnectError)), true), Outcome::Overload);
        assert_eq!(classify(None, Some(&upstream(ErrorType::ReadTimedout)), true), Outcome::Timeout);
        let mut gone = Error::new(ErrorType::ConnectionClosed);
        gone.as_down();
        assert_eq!(classify(None, Some(&gone), true), Outcome::Abandoned, "left before the header");
        assert_eq!(classify(None, Some(&gone), false), Outcome::Ignore, "left before it was sent");
        assert_eq!(classify(Some(200), Some(&gone), true), Outcome::Success, "left mid-stream");
        assert_eq!(classify(None, None, false), Outcome::Ignore);
    }

    #[test]
    fn dify_unhandled_error_is_told_by_its_length() {
        let answer = |status: u16, length: usize, json: bool| {
            let mut r = ResponseHeader::build(status, None).expect("header");
            let kind = if json { "application/json" } else { "text/html" };
            r.insert_header("content-type", kind).expect("content-type");
            r.insert_header("content-length", length.to_string()).expect("content-length");
            r
        };
        assert!(unhandled_error_answer(&answer(500, 71, true)));
        assert!(!unhandled_error_answer(&answer(500, 190, true)), "internal_server_error: the run started");
        assert!(!unhandled_error_answer(&answer(500, 71, false)));
        assert!(!unhandled_error_answer(&answer(502, 71, true)));
    }

    #[test]
    fn only_a_reset_from_the_backend_proves_the_request_unread() {
        let reset = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        // As pingora reports it: ReadError, context, then the io error under another layer.
        let mut inner = Error::because(ErrorType::ReadError, "while reading response headers", reset());
        inner.as_up();
        let mut outer = Error::because(ErrorType::ReadError, "Peer: 127.0.0.1:5001", inner);
        outer.as_up();
        assert!(reset_before_answer(&outer));
        let mut direct = Error::because(ErrorType::WriteError, "writing the body", reset());
        direct.as_up();
        assert!(reset_before_answer(&direct), "reset while the backend had not read the body yet");
        let mut closed = Error::because(
            ErrorType::ReadError,
            "while reading response headers",
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        );
        closed.as_up();
        assert!(!reset_before_answer(&closed), "a close after reading proves nothing");
        let mut client = Error::because(ErrorType::ReadError, "client", reset());
        client.as_down();
        assert!(!reset_before_answer(&client), "the client's reset is not the backend's");
        assert!(!reset_before_answer(&upstream(ErrorType::ConnectionClosed)));
    }

    #[test]
    fn a_request_without_a_response_is_recorded_as_499() {
        assert_eq!(recorded_status(None), 499, "the client left first");
        let sent = ResponseHeader::build(503, None).expect("header");
        assert_eq!(recorded_status(Some(&sent)), 503);
    }
}
