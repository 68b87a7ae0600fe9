//! The admin listener (default `127.0.0.1:9090`, separate from client traffic):
//! `GET /live`, `GET /ready`, `GET /status`. Later: `/metrics`, `/reload`, drain/resume.

pub mod status;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::app::App;

/// The admin HTTP application.
pub struct AdminApp {
    app: Arc<App>,
}

impl AdminApp {
    /// An admin API over the shared state.
    pub fn new(app: Arc<App>) -> Self {
        AdminApp { app }
    }

    /// Answers one admin request; separated from the session for unit tests.
    pub fn handle(&self, method: &Method, path: &str) -> (StatusCode, serde_json::Value) {
        if method != Method::GET && method != Method::HEAD {
            return envelope(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the admin API answers GET here",
            );
        }
        match path {
            "/live" => (StatusCode::OK, serde_json::json!({"status": "live"})),
            "/ready" => {
                let readiness = status::readiness(&self.app);
                let code = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                (code, serde_json::to_value(readiness).unwrap_or_default())
            }
            "/status" => (StatusCode::OK, status::status(&self.app)),
            _ => {
                envelope(StatusCode::NOT_FOUND, "not_found", "unknown admin path; try /live, /ready, /status")
            }
        }
    }
}

fn envelope(status: StatusCode, code: &str, message: &str) -> (StatusCode, serde_json::Value) {
    (status, serde_json::json!({"code": code, "message": message, "status": status.as_u16()}))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, body) = self.handle(&req.method, req.uri.path());
        let body = serde_json::to_vec_pretty(&body).unwrap_or_default();
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        let len = response.body().len();
        response.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        response
    }
}
