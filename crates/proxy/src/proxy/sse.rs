//! Ending a broken event stream the way Dify's SDKs understand: when the upstream dies or goes
//! quiet after an SSE response has started, the client gets a final Dify-style `error` event
//! instead of a silently truncated stream (a 5xx can no longer be sent once the 200 went out).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType};

/// Whether more body can be appended to a response that has started: only when its length
/// was not announced (chunked or close-delimited, as Dify's streams are).
pub fn can_append(sent: &ResponseHeader) -> bool {
    !sent.headers.contains_key(http::header::CONTENT_LENGTH)
}

/// The final frame for a stream that ended because of `error`.
pub fn error_frame(error: &Error) -> Bytes {
    let (status, code, message) = match error.etype() {
        ErrorType::ReadTimedout => {
            (504, "upstream_timeout", "the backend sent nothing for longer than the stream idle timeout")
        }
        _ => (502, "upstream_lost", "the connection to the backend was lost during the stream"),
    };
    let event = serde_json::json!({
        "event": "error",
        "status": status,
        "code": code,
        "message": message,
    });
    Bytes::from(format!("data: {event}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_dify_error_events() {
        let lost = error_frame(&Error::new(ErrorType::ConnectionClosed));
        let text = String::from_utf8_lossy(&lost);
        assert!(text.starts_with("data: {") && text.ends_with("}\n\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text[6..text.len() - 2]).expect("json");
        assert_eq!(json["event"], "error");
        assert_eq!(json["code"], "upstream_lost");
        assert_eq!(json["status"], 502);
        let idle = error_frame(&Error::new(ErrorType::ReadTimedout));
        assert!(String::from_utf8_lossy(&idle).contains("\"upstream_timeout\""));
    }
}

#[cfg(test)]
mod proptests;
