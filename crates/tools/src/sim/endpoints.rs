//! The quick endpoints: health and ping, task stop, app parameters/info, and the `/sim/*`
//! test helpers (`echo`, `bytes`, `fast`).

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::body::SimBody;
use super::conn::ConnCtx;
use super::envelope;
use super::stats::ActiveGuard;

/// `GET /health` (the API container's health check).
pub(crate) fn health() -> Response<SimBody> {
    envelope::json(StatusCode::OK, &json!({"status": "ok", "version": "sim"}))
}

/// `GET /console/api/ping` (health through Dify's nginx).
pub(crate) fn ping() -> Response<SimBody> {
    envelope::json(StatusCode::OK, &json!({"result": "pong"}))
}

/// `POST /v1/workflows/tasks/:id/stop`, `/v1/chat-messages/:id/stop`: acknowledged at once.
pub(crate) fn stop_task() -> Response<SimBody> {
    envelope::json(StatusCode::OK, &json!({"result": "success"}))
}

/// `GET /v1/parameters` and `GET /v1/info`: quick, but they read the app from PostgreSQL.
pub(crate) fn app_meta(ctx: &ConnCtx, info: bool) -> Response<SimBody> {
    let cfg = ctx.shared.config();
    let Some(_db) = ctx.shared.limits.try_db(cfg.db_connections) else {
        return envelope::db_refused();
    };
    let _active = ActiveGuard::new(ctx.shared.stats.clone());
    let body = if info {
        json!({
            "name": "Dify Simulator",
            "description": "A simulated Dify app",
            "tags": [],
            "mode": "workflow",
            "author_name": "sim",
        })
    } else {
        json!({
            "opening_statement": "",
            "suggested_questions": [],
            "suggested_questions_after_answer": {"enabled": false},
            "speech_to_text": {"enabled": false},
            "text_to_speech": {"enabled": false},
            "retriever_resource": {"enabled": false},
            "annotation_reply": {"enabled": false},
            "more_like_this": {"enabled": false},
            "user_input_form": [],
            "sensitive_word_avoidance": {"enabled": false},
            "file_upload": {
                "image": {
                    "enabled": false,
                    "number_limits": 3,
                    "transfer_methods": ["remote_url", "local_file"],
                },
            },
            "system_parameters": {
                "file_size_limit": 15,
                "image_file_size_limit": 10,
                "audio_file_size_limit": 50,
                "video_file_size_limit": 100,
            },
        })
    };
    envelope::json(StatusCode::OK, &body)
}

/// `GET /sim/fast`: `200 ok`, no delay (raw throughput).
pub(crate) fn fast() -> Response<SimBody> {
    envelope::text(StatusCode::OK, "ok")
}

/// `GET /sim/bytes?n=N`: `N` bytes of `0123456789abcdef…`, generated while sent.
pub(crate) fn bytes(query: Option<&str>) -> Response<SimBody> {
    let n = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("n="))
        .and_then(|v| v.parse::<u64>().ok());
    match n {
        Some(n) => envelope::with_type(StatusCode::OK, "application/octet-stream", SimBody::pattern(n)),
        None => envelope::invalid_param("query parameter n (a byte count) is required"),
    }
}

/// `ANY /sim/echo`: what the backend received, as JSON:
/// `{"method","path","query","version","peer","headers":{name: value},"header_list":[[name,
/// value]…],"body_bytes"}`. Header names are lower-case; repeated headers are joined with
/// `", "` in `headers` and listed one by one, in order, in `header_list`.
pub(crate) async fn echo(ctx: &ConnCtx, req: Request<Incoming>) -> Response<SimBody> {
    let (parts, body) = req.into_parts();
    let mut headers = Map::new();
    let mut list = Vec::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        list.push(json!([name.as_str(), v]));
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::String(v));
            }
        }
    }
    let mut body_bytes: u64 = 0;
    let mut body = body;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            body_bytes += d.len() as u64;
        }
    }
    envelope::json(
        StatusCode::OK,
        &json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "version": format!("{:?}", parts.version),
            "peer": ctx.peer.to_string(),
            "headers": headers,
            "header_list": list,
            "body_bytes": body_bytes,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_needs_n() {
        assert_eq!(bytes(Some("n=5")).status(), 200);
        assert_eq!(bytes(Some("x=1&n=0")).status(), 200);
        assert_eq!(bytes(None).status(), 400);
        assert_eq!(bytes(Some("n=-1")).status(), 400);
    }
}
