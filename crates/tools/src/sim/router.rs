//! Entry point of every request: stats and fault injection, then path → handler (404 and
//! 405 in Dify's envelope), and completion tracking on the way out.
//!
//! | path | methods | handler |
//! |---|---|---|
//! | `/health` | GET | `{"status":"ok","version":"sim"}` |
//! | `/console/api/ping` | GET | `{"result":"pong"}` |
//! | `/v1/workflows/run`, `/v1/chat-messages`, `/v1/completion-messages` | POST | runs |
//! | `/v1/workflows/tasks/:id/stop`, `/v1/{chat,completion}-messages/:id/stop` | POST | `{"result":"success"}` |
//! | `/v1/parameters`, `/v1/info` | GET | app metadata |
//! | `/v1/files/upload` | POST | streamed multipart upload, 201 |
//! | `/socket.io/…` | GET | websocket echo |
//! | `/sim/echo` | any | JSON echo of the request |
//! | `/sim/bytes?n=N` | GET | `N` bytes |
//! | `/sim/fast` | GET | `ok` |

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::body::SimBody;
use super::conn::ConnCtx;
use super::envelope;
use super::fault::{self, Fault, FaultReset};
use super::ids::REQUEST_ID_HEADER;
use super::payload::RunKind;
use super::request::header;
use super::{endpoints, run, upload, ws};

/// Handles one request of a connection.
pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, FaultReset> {
    let inflight = ctx.begin_request();
    let stats = ctx.shared.stats.clone();
    let attempt = stats.on_request(req.uri().path(), header(req.headers(), REQUEST_ID_HEADER));
    let resp = match fault::check(req.headers(), attempt) {
        Some(Fault::Reset) => {
            stats.on_fault();
            return Err(FaultReset);
        }
        Some(Fault::Close) => {
            stats.on_fault();
            // Everything read, so the close is a FIN, not a reset of unread data.
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            return Err(FaultReset);
        }
        Some(Fault::Status(s)) => {
            stats.on_fault();
            envelope::error(s, envelope::code_for(s), "Injected fault (X-Sim-Fail).")
        }
        Some(Fault::Unhandled) => {
            stats.on_fault();
            envelope::db_refused()
        }
        None => route(ctx, req).await,
    };
    stats.on_status(resp.status().as_u16());
    Ok(resp.map(|b| b.tracked(stats, inflight)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Health,
    Ping,
    Run(RunKind),
    StopTask,
    Parameters,
    Info,
    Upload,
    Socket,
    Echo,
    Bytes,
    Fast,
}

impl Route {
    fn resolve(path: &str) -> Option<Route> {
        Some(match path {
            "/health" => Route::Health,
            "/console/api/ping" => Route::Ping,
            "/v1/workflows/run" => Route::Run(RunKind::Workflow),
            "/v1/chat-messages" => Route::Run(RunKind::Chat),
            "/v1/completion-messages" => Route::Run(RunKind::Completion),
            "/v1/parameters" => Route::Parameters,
            "/v1/info" => Route::Info,
            "/v1/files/upload" => Route::Upload,
            "/sim/echo" => Route::Echo,
            "/sim/bytes" => Route::Bytes,
            "/sim/fast" => Route::Fast,
            p if p == "/socket.io" || p.starts_with("/socket.io/") => Route::Socket,
            p if is_stop(p) => Route::StopTask,
            _ => return None,
        })
    }

    /// The `Allow` header value, or `None` for any method.
    fn allow(self) -> Option<&'static str> {
        match self {
            Route::Run(_) | Route::StopTask | Route::Upload => Some("POST, OPTIONS"),
            Route::Echo => None,
            _ => Some("GET, HEAD, OPTIONS"),
        }
    }
}

fn is_stop(path: &str) -> bool {
    ["/v1/workflows/tasks/", "/v1/chat-messages/", "/v1/completion-messages/"]
        .iter()
        .filter_map(|prefix| path.strip_prefix(prefix)?.strip_suffix("/stop"))
        .any(|id| !id.is_empty() && !id.contains('/'))
}

fn method_allowed(allow: &str, method: &Method) -> bool {
    allow.split(", ").any(|m| m == method.as_str())
}

async fn route(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<SimBody> {
    let Some(route) = Route::resolve(req.uri().path()) else {
        return envelope::not_found();
    };
    if let Some(allow) = route.allow() {
        if req.method() == Method::OPTIONS {
            let mut r =
                envelope::with_type(http::StatusCode::OK, "text/html; charset=utf-8", SimBody::empty());
            r.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
            return r;
        }
        if !method_allowed(allow, req.method()) {
            return envelope::method_not_allowed(allow);
        }
    }
    match route {
        Route::Health => endpoints::health(),
        Route::Ping => endpoints::ping(),
        Route::Run(kind) => run::handle(ctx, req, kind).await,
        Route::StopTask => endpoints::stop_task(),
        Route::Parameters => endpoints::app_meta(&ctx, false),
        Route::Info => endpoints::app_meta(&ctx, true),
        Route::Upload => upload::handle(ctx, req).await,
        Route::Socket => ws::handle(ctx, req),
        Route::Echo => endpoints::echo(&ctx, req).await,
        Route::Bytes => endpoints::bytes(req.uri().query()),
        Route::Fast => endpoints::fast(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dify_paths() {
        assert_eq!(Route::resolve("/v1/workflows/run"), Some(Route::Run(RunKind::Workflow)));
        assert_eq!(Route::resolve("/v1/workflows/tasks/abc/stop"), Some(Route::StopTask));
        assert_eq!(Route::resolve("/v1/chat-messages/t1/stop"), Some(Route::StopTask));
        assert_eq!(Route::resolve("/v1/chat-messages//stop"), None);
        assert_eq!(Route::resolve("/v1/workflows/tasks/a/b/stop"), None);
        assert_eq!(Route::resolve("/socket.io/?EIO=4"), Some(Route::Socket));
        assert_eq!(Route::resolve("/socket.iox"), None);
        assert_eq!(Route::resolve("/v1/workflows/run/"), None);
    }

    #[test]
    fn methods() {
        let run = Route::Run(RunKind::Chat).allow().unwrap_or_default();
        assert!(method_allowed(run, &Method::POST));
        assert!(!method_allowed(run, &Method::GET));
        let get = Route::Health.allow().unwrap_or_default();
        assert!(method_allowed(get, &Method::HEAD));
        assert_eq!(Route::Echo.allow(), None);
    }
}
