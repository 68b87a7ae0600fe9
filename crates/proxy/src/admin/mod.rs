//! The admin listener (default `127.0.0.1:9090`, separate from client traffic):
//!
//! | request | answer |
//! |---|---|
//! | `GET /live` | 200 while the process runs |
//! | `GET /ready` | 200 while the proxy accepts and holds requests (also while an upstream is down or restarting); 503 while starting or shutting down |
//! | `GET /upstreams` | 200 when every routed upstream can serve (or is in maintenance), else 503 |
//! | `GET /status` | JSON: upstreams (admission, health, maintenance), routes, classes |
//! | `GET /metrics` | Prometheus text format ([`crate::metrics`]) |
//! | `POST /upstreams/{name}/drain` | 200: hold new requests, wait for in-flight ones; stays drained until resume |
//! | `POST /upstreams/{name}/resume` | 200: serve again once the health gate passes |
//! | `POST /upstreams/{name}/restart` | 202: run the restart cycle now (`"cycle": N` in the body) |
//! | `POST /reload` | reload the config file (as SIGHUP): 200 with the outcome, 400 `bad_request` with `FILE:LINE:COL` |
//!
//! With `server.admin_token` set, everything but `/live` and `/ready` needs
//! `Authorization: Bearer TOKEN` (401 otherwise); a non-loopback admin address requires it.
//! Errors use Dify's envelope: 404 `not_found`, 409 `conflict`, 401 `unauthorized`.
//!
//! The listener ([`listener`]) keeps answering through a graceful shutdown, until the
//! process exits, so `/ready` says 503 and `/status` and `/metrics` show the drain.

pub mod listener;
pub mod status;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::app::App;
use crate::maintenance::controller::Refused;

/// The admin HTTP application.
pub struct AdminApp {
    app: Arc<App>,
}

/// What an admin request is answered with.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A JSON document (every path but `/metrics`, errors in Dify's envelope).
    Json(serde_json::Value),
    /// Prometheus text exposition format (`/metrics`).
    Metrics(String),
}

/// A maintenance command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Drain,
    Resume,
    Restart,
}

impl AdminApp {
    /// An admin API over the shared state.
    pub fn new(app: Arc<App>) -> Self {
        AdminApp { app }
    }

    /// Answers one admin request; separated from the session for unit tests. `authorization`
    /// is the request's `Authorization` header.
    pub async fn handle(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
    ) -> (StatusCode, Reply) {
        let readable = method == Method::GET || method == Method::HEAD;
        if path == "/metrics" && readable && self.authorized(authorization) {
            return match crate::metrics::scrape::render(&self.app) {
                Ok(text) => (StatusCode::OK, Reply::Metrics(text)),
                Err(e) => {
                    let (status, body) =
                        envelope(StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error", &e.to_string());
                    (status, Reply::Json(body))
                }
            };
        }
        let (status, body) = self.handle_json(method, path, authorization).await;
        (status, Reply::Json(body))
    }

    /// Every JSON answer: probes, status, reload, maintenance commands and errors.
    async fn handle_json(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let open = matches!(path, "/live" | "/ready");
        if !open && !self.authorized(authorization) {
            return envelope(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong admin token (Authorization: Bearer …)",
            );
        }
        if let Some(rest) = path.strip_prefix("/upstreams/") {
            return self.command(method, rest).await;
        }
        if method != Method::GET && method != Method::HEAD && path != "/reload" {
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
            "/upstreams" => {
                let health = status::upstreams_health(&self.app);
                let code = if health.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                (code, serde_json::to_value(health).unwrap_or_default())
            }
            "/status" => (StatusCode::OK, status::status(&self.app)),
            // The same reload as SIGHUP; 200 with the outcome, 400 `bad_request` when refused.
            "/reload" if method != Method::POST => {
                envelope(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "reload is POST")
            }
            "/reload" => {
                let (code, body) = crate::reload::reload(&self.app, "admin").http();
                (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body)
            }
            _ => envelope(
                StatusCode::NOT_FOUND,
                "not_found",
                "unknown admin path; try /live, /ready, /upstreams, /status, /metrics, POST /reload, \
                 POST /upstreams/NAME/drain|resume|restart",
            ),
        }
    }

    fn authorized(&self, authorization: Option<&str>) -> bool {
        let config = self.app.config();
        let Some(token) = config.server.admin_token.as_deref() else { return true };
        let given = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).unwrap_or("");
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }

    /// `POST /upstreams/{name}/{drain|resume|restart}`.
    async fn command(&self, method: &Method, rest: &str) -> (StatusCode, serde_json::Value) {
        let Some((name, verb)) = rest.split_once('/') else {
            return envelope(
                StatusCode::NOT_FOUND,
                "not_found",
                "expected /upstreams/NAME/drain|resume|restart",
            );
        };
        let command = match verb {
            "drain" => Command::Drain,
            "resume" => Command::Resume,
            "restart" => Command::Restart,
            _ => {
                let message = format!("unknown command {verb:?}: expected drain, resume or restart");
                return envelope(StatusCode::NOT_FOUND, "not_found", &message);
            }
        };
        if method != Method::POST {
            return envelope(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "maintenance commands are POST",
            );
        }
        let Some(group) = self.app.upstreams.get(name) else {
            let known: Vec<String> = self.app.upstreams.all().iter().map(|g| g.name().to_string()).collect();
            let message = format!("no upstream named {name:?}; known: {}", known.join(", "));
            return envelope(StatusCode::NOT_FOUND, "not_found", &message);
        };
        tracing::warn!(upstream = name, ?command, "admin: maintenance command");
        let maintenance = group.maintenance();
        // With `[cluster]` each command acts on every replica in front of the upstream.
        let result = match command {
            Command::Drain => maintenance
                .drain_in_group(&group)
                .await
                .map(|v| (StatusCode::OK, serde_json::to_value(v), None)),
            Command::Resume => maintenance
                .resume_in_group(&group)
                .await
                .map(|v| (StatusCode::OK, serde_json::to_value(v), None)),
            Command::Restart => maintenance
                .restart_in_group(&group)
                .await
                .map(|(v, cycle)| (StatusCode::ACCEPTED, serde_json::to_value(v), Some(cycle))),
        };
        match result {
            Ok((code, Ok(mut view), cycle)) => {
                if let (Some(cycle), Some(map)) = (cycle, view.as_object_mut()) {
                    map.insert("cycle".into(), cycle.into());
                }
                (code, view)
            }
            Ok((_, Err(e), _)) => {
                envelope(StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error", &e.to_string())
            }
            Err(Refused::Conflict(message)) => envelope(StatusCode::CONFLICT, "conflict", &message),
        }
    }
}

/// Compares without stopping at the first difference, so the answer time says nothing about
/// how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn envelope(status: StatusCode, code: &str, message: &str) -> (StatusCode, serde_json::Value) {
    (status, serde_json::json!({"code": code, "message": message, "status": status.as_u16()}))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let authorization = req.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let authorization = authorization.map(str::to_string);
        let (status, body) = self.handle(&method, &path, authorization.as_deref()).await;
        let (body, content_type) = match body {
            Reply::Metrics(text) => (text.into_bytes(), "text/plain; version=0.0.4; charset=utf-8"),
            Reply::Json(json) => (serde_json::to_vec_pretty(&json).unwrap_or_default(), "application/json"),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        let len = response.body().len();
        response.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
