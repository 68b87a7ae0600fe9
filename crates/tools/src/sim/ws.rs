//! The collaboration websocket under `/socket.io/`: completes the HTTP/1.1 upgrade and echoes
//! every text and binary message back. The upgraded connection keeps its slot and dies with
//! `stop()`.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::body::SimBody;
use super::conn::ConnCtx;
use super::envelope;
use super::request::header;

fn has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Answers `101 Switching Protocols` and echoes in a task of its own; a request that is not
/// a websocket upgrade gets 400.
pub(crate) fn handle(ctx: Arc<ConnCtx>, mut req: Request<Incoming>) -> Response<SimBody> {
    let h = req.headers();
    let key = header(h, "sec-websocket-key").map(str::to_owned);
    let upgrade = has_token(h, "upgrade", "websocket") && has_token(h, "connection", "upgrade");
    let (Some(key), true) = (key, upgrade) else {
        return envelope::error(StatusCode::BAD_REQUEST, "bad_request", "Expected a websocket upgrade.");
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return envelope::error(StatusCode::BAD_REQUEST, "bad_request", "Bad websocket key.");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let kill = ctx.kill.clone();
        let upgraded = tokio::select! {
            () = kill.cancelled() => return,
            r = on_upgrade => match r {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "sim websocket upgrade failed");
                    return;
                }
            },
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None);
        tokio::select! {
            () = kill.cancelled() => {}
            () = echo(ws.await) => {}
        }
        drop(ctx);
    });
    let mut r = Response::new(SimBody::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = r.headers_mut();
    hs.insert(UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    hs.insert(SEC_WEBSOCKET_ACCEPT, accept);
    r
}

async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    return;
                }
            }
            // Pings are answered by tungstenite; a close is acknowledged by it too, and the
            // stream then ends.
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
