//! Errors the proxy itself answers, in Dify's JSON envelope
//! `{"code":"…","message":"…","status":N}` with the matching HTTP status, `X-Request-Id` and,
//! where retrying later helps, `Retry-After`. Never an HTML page.

use crate::admission::Refusal;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};
use serde::Serialize;

/// The header carrying the request id on requests and responses.
pub const REQUEST_ID: &str = "x-request-id";

/// An error answer the proxy generates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorReply {
    /// Dify-style error code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// HTTP status.
    pub status: u16,
    /// Seconds for `Retry-After`, when retrying later makes sense.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl ErrorReply {
    /// The answer to a request admission refused: always 503 with a `Retry-After`, so a
    /// client can tell "busy" from "broken"; `server_busy` unless the backend is down.
    pub fn refused(refusal: Refusal, retry_after_secs: u64) -> ErrorReply {
        if refusal == Refusal::ShuttingDown {
            // `server_busy`, not `upstream_unavailable`: the backend is fine and nothing was
            // sent to it, so any request may be retried at once — by then a restarted proxy
            // (or another replica) takes it. The queue's own estimate says nothing here.
            return ErrorReply::server_busy(
                "the proxy is shutting down; this request was not sent to the backend, retry it",
            )
            .retry_after(1);
        }
        if refusal == Refusal::Unavailable {
            return ErrorReply::upstream_unavailable(
                503,
                "the backend is down or restarting; it was not back in time",
            )
            .retry_after(retry_after_secs.clamp(1, 60));
        }
        let message = match refusal {
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

    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ErrorReply { code, message: message.into(), status, retry_after: None }
    }

    /// Adds a `Retry-After` in seconds.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 503 `server_busy`: the proxy refused or timed out the request in its queue.
    pub fn server_busy(message: impl Into<String>) -> Self {
        Self::new(503, "server_busy", message)
    }

    /// 429 `too_many_requests`: a tenant's rate limit.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "too_many_requests", message)
    }

    /// 502/503 `upstream_unavailable`: the backend could not be reached.
    pub fn upstream_unavailable(status: u16, message: impl Into<String>) -> Self {
        Self::new(status, "upstream_unavailable", message)
    }

    /// 504 `upstream_timeout`: the backend did not answer in time.
    pub fn upstream_timeout(message: impl Into<String>) -> Self {
        Self::new(504, "upstream_timeout", message)
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: impl std::fmt::Display) -> Self {
        Self::new(413, "payload_too_large", format!("request body exceeds the limit of {limit}"))
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }

    /// 404 `not_found`: no route matches.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// 500 `internal_server_error`: a bug or an unexpected state in the proxy.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_server_error", message)
    }

    /// Maps a pingora error to the answer for the client; `None` when the client is gone or
    /// the error belongs to the client connection itself (nothing useful can be written).
    pub fn from_error(error: &Error) -> Option<ErrorReply> {
        use ErrorType::*;
        let etype = error.etype();
        if let HTTPStatus(413) = etype {
            return Some(Self::payload_too_large("the configured max_request_body"));
        }
        if let HTTPStatus(code) = etype {
            return Some(Self::new(*code, "bad_request", "request rejected"));
        }
        Some(match error.esource() {
            ErrorSource::Upstream => match etype {
                ConnectTimedout => Self::upstream_timeout("timed out connecting to the backend"),
                ReadTimedout => Self::upstream_timeout("the backend did not answer in time"),
                WriteTimedout => Self::upstream_timeout("the backend did not accept the request in time"),
                ConnectRefused | ConnectNoRoute => {
                    Self::upstream_unavailable(502, "the backend refused the connection").retry_after(1)
                }
                // The request reached the backend, which then went away (killed, crashed): it
                // may have run, so it is neither replayed nor an invitation to retry at once.
                ConnectionClosed | ReadError | WriteError => Self::new(
                    502,
                    "upstream_lost",
                    "the connection to the backend was lost before it answered; the request may have run",
                ),
                _ => Self::upstream_unavailable(
                    502,
                    "the backend closed the connection or sent an invalid response",
                ),
            },
            ErrorSource::Downstream => match etype {
                ReadError | WriteError | ConnectionClosed => return None,
                ReadTimedout => {
                    Self::new(408, "request_timeout", "the request body was not received in time")
                }
                _ => Self::bad_request("malformed request"),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                Self::internal("the proxy failed to handle the request")
            }
        })
    }

    /// Too many client connections open (in total, or from one client IP): 503, retry soon.
    pub fn too_many_connections(message: impl Into<String>) -> Self {
        Self::new(503, "too_many_connections", message).retry_after(1)
    }

    /// A request header (or one line of it) over the configured size: 431.
    pub fn request_header_too_large(message: impl Into<String>) -> Self {
        Self::new(431, "request_header_fields_too_large", message)
    }

    /// A request header not received within the configured time: 408.
    pub fn request_header_timeout(message: impl Into<String>) -> Self {
        Self::new(408, "request_timeout", message)
    }

    /// This error as a whole HTTP/1.1 response that closes the connection, for answers
    /// written before pingora has a session (a refused connection, a refused header).
    pub fn raw_response(&self, request_id: &str) -> Bytes {
        let body = self.body();
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nconnection: close\r\n{REQUEST_ID}: {request_id}\r\n",
            self.status,
            body.len()
        );
        if let Some(seconds) = self.retry_after {
            out.push_str(&format!("retry-after: {seconds}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = Vec::with_capacity(out.len() + body.len());
        bytes.extend_from_slice(out.as_bytes());
        bytes.extend_from_slice(&body);
        Bytes::from(bytes)
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        // Serialising a struct of strings and an integer cannot fail; fall back to a fixed
        // envelope rather than panicking on the traffic path anyway.
        serde_json::to_vec(self).map(Bytes::from).unwrap_or_else(|_| {
            Bytes::from_static(br#"{"code":"internal_server_error","message":"error","status":500}"#)
        })
    }

    /// The response header for this error.
    pub fn header(&self, request_id: &str, body_len: usize) -> Result<ResponseHeader> {
        let mut header = ResponseHeader::build(self.status, Some(5))?;
        header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        header.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
        header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        header.insert_header(REQUEST_ID, request_id)?;
        if let Some(seconds) = self.retry_after {
            header.insert_header(http::header::RETRY_AFTER, seconds.to_string())?;
        }
        Ok(header)
    }

    /// Writes this error as the whole response.
    pub async fn send(&self, session: &mut Session, request_id: &str) -> Result<()> {
        let body = self.body();
        let header = self.header(request_id, body.len())?;
        session.write_response_header(Box::new(header), false).await?;
        session.write_response_body(Some(body), true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_difys_shape() {
        let reply = ErrorReply::server_busy("queue full").retry_after(2);
        let json: serde_json::Value = serde_json::from_slice(&reply.body()).expect("json");
        assert_eq!(json, serde_json::json!({"code":"server_busy","message":"queue full","status":503}));
        let header = reply.header("abc", 10).expect("header");
        assert_eq!(header.status.as_u16(), 503);
        assert_eq!(header.headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"2"[..]));
        assert_eq!(header.headers.get(REQUEST_ID).map(|v| v.as_bytes()), Some(&b"abc"[..]));
    }

    #[test]
    fn raw_response_is_a_whole_closing_answer() {
        let reply = ErrorReply::too_many_connections("full");
        let raw = reply.raw_response("rid");
        let text = std::str::from_utf8(&raw).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close") && head.contains("\r\nretry-after: 1"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(head.contains("x-request-id: rid"), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["code"], "too_many_connections");
        let header_reply = ErrorReply::request_header_too_large("long line").raw_response("r");
        assert!(header_reply.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    }

    #[test]
    fn pingora_errors_map_to_statuses() {
        let up = |t| {
            let mut e = Error::new(t);
            e.as_up();
            ErrorReply::from_error(&e)
        };
        assert_eq!(
            up(ErrorType::ConnectRefused).map(|r| (r.status, r.code)),
            Some((502, "upstream_unavailable"))
        );
        assert_eq!(up(ErrorType::ReadTimedout).map(|r| (r.status, r.code)), Some((504, "upstream_timeout")));
        assert_eq!(up(ErrorType::ConnectTimedout).map(|r| r.status), Some(504));
        let lost = up(ErrorType::ConnectionClosed).expect("an answer");
        assert_eq!((lost.status, lost.code, lost.retry_after), (502, "upstream_lost", None));
        let mut gone = Error::new(ErrorType::ConnectionClosed);
        gone.as_down();
        assert_eq!(ErrorReply::from_error(&gone), None);
        let too_big = Error::new(ErrorType::HTTPStatus(413));
        assert_eq!(ErrorReply::from_error(&too_big).map(|r| r.code), Some("payload_too_large"));
    }
}

#[cfg(test)]
mod proptests;
