//! What a finished request teaches the adaptive limit: maps the upstream status or the error
//! that ended it to an [`Outcome`].

use pingora::{Error, ErrorSource, ErrorType};

use crate::admission::Outcome;

/// Classifies a finished request. `upstream_status` is the backend's response status, if one
/// arrived; `error` the error that ended the request, if any.
pub fn classify(upstream_status: Option<u16>, error: Option<&Error>) -> Outcome {
    if let Some(e) = error {
        if e.esource() == &ErrorSource::Upstream {
            return match e.etype() {
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    Outcome::Timeout
                }
                ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::ConnectionClosed => Outcome::Overload,
                // A backend that answered but broke the protocol says nothing about load.
                _ if upstream_status.is_some() => Outcome::Ignore,
                _ => Outcome::Overload,
            };
        }
        // The client left or sent garbage: nothing learned about the backend.
        if upstream_status.is_none() {
            return Outcome::Ignore;
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
        assert_eq!(classify(Some(200), None), Outcome::Success);
        assert_eq!(classify(Some(404), None), Outcome::Success);
        assert_eq!(classify(Some(429), None), Outcome::Throttled);
        assert_eq!(classify(Some(500), None), Outcome::Overload);
        assert_eq!(classify(Some(503), None), Outcome::Overload);
        assert_eq!(
            classify(None, Some(&upstream(ErrorType::ConnectRefused))),
            Outcome::Overload
        );
        assert_eq!(
            classify(None, Some(&upstream(ErrorType::ReadTimedout))),
            Outcome::Timeout
        );
        let mut gone = Error::new(ErrorType::ConnectionClosed);
        gone.as_down();
        assert_eq!(classify(None, Some(&gone)), Outcome::Ignore);
        assert_eq!(
            classify(Some(200), Some(&gone)),
            Outcome::Success,
            "the client left mid-stream"
        );
        assert_eq!(classify(None, None), Outcome::Ignore);
    }
}
