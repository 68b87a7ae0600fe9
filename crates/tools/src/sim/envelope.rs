//! Response builders: JSON and text responses with the right `Content-Type`, and Dify's
//! error envelope `{"code","message","status"}` with the exact bodies Dify sends for its
//! overload answers.

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde_json::Value;

use super::body::SimBody;

/// `Content-Type` of JSON answers (Flask's `jsonify`).
pub(crate) const JSON: &str = "application/json";

/// Dify's answer when PostgreSQL refuses a connection (`max_connections` reached), byte for
/// byte: the API-key check and the end-user lookup open the request's first connections,
/// outside the endpoint's own error handling, so the client gets Flask-RESTx's generic
/// envelope for an unhandled exception (Dify 1.12.1; "too many clients" is in its log only).
pub const DIFY_UNHANDLED_ERROR: &str =
    "{\"message\": \"Internal Server Error\", \"code\": \"unknown\", \"status\": 500}\n";

/// Dify's message when `APP_MAX_ACTIVE_REQUESTS` is reached.
pub const APP_TOO_MANY_REQUESTS: &str = "Too many requests. Please try again later.";

/// Werkzeug's 404 message.
const NOT_FOUND: &str = "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.";

/// Werkzeug's 405 message.
const METHOD_NOT_ALLOWED: &str = "The method is not allowed for the requested URL.";

/// A response with `body` and `content_type`.
pub(crate) fn with_type(status: StatusCode, content_type: &'static str, body: SimBody) -> Response<SimBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON response; serialization is compact and (with serde_json's sorted maps) has a
/// stable key order.
pub(crate) fn json(status: StatusCode, value: &Value) -> Response<SimBody> {
    with_type(status, JSON, SimBody::full(value.to_string()))
}

/// A `text/plain` response.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<SimBody> {
    with_type(status, "text/plain; charset=utf-8", SimBody::full(body))
}

/// Dify's error envelope.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response<SimBody> {
    json(status, &serde_json::json!({ "code": code, "message": message, "status": status.as_u16() }))
}

/// 400 `invalid_param`.
pub(crate) fn invalid_param(message: &str) -> Response<SimBody> {
    error(StatusCode::BAD_REQUEST, "invalid_param", message)
}

/// Dify's 500 when PostgreSQL is out of connections ([`DIFY_UNHANDLED_ERROR`]).
pub(crate) fn db_refused() -> Response<SimBody> {
    with_type(StatusCode::INTERNAL_SERVER_ERROR, JSON, SimBody::full(DIFY_UNHANDLED_ERROR))
}

/// 429 `too_many_requests` (app's `APP_MAX_ACTIVE_REQUESTS` reached).
pub(crate) fn app_limited() -> Response<SimBody> {
    error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", APP_TOO_MANY_REQUESTS)
}

/// 404 `not_found`.
pub(crate) fn not_found() -> Response<SimBody> {
    error(StatusCode::NOT_FOUND, "not_found", NOT_FOUND)
}

/// 405 `method_not_allowed` with an `Allow` header.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<SimBody> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", METHOD_NOT_ALLOWED);
    r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The envelope code Dify (or its nginx) would use for `status`.
pub(crate) fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        413 => "file_too_large",
        429 => "too_many_requests",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ => "internal_server_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn db_refused_body_is_difys() {
        let r = db_refused();
        assert_eq!(r.status(), 500);
        assert_eq!(r.headers()[CONTENT_TYPE], JSON);
        let b = r.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        assert_eq!(&b[..], DIFY_UNHANDLED_ERROR.as_bytes());
        let v: Value = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(v, serde_json::json!({"code":"unknown","message":"Internal Server Error","status":500}));
    }

    #[test]
    fn the_proxy_tells_this_answer_by_its_length() {
        assert_eq!(dify_shaper::proxy::outcome::DIFY_UNHANDLED_ERROR_LEN, DIFY_UNHANDLED_ERROR.len());
    }
}
