//! The admission step of `request_filter`: read a small request body up front, then wait for a
//! slot while watching the client, so a client that gives up leaves the queue at once and its
//! request never reaches the backend.
//!
//! Why read the body first: HTTP/1.1 only shows a disconnect to a reader, and reading the
//! socket while the body is unread would consume it. Bodies up to [`PREREAD_LIMIT`] (every
//! Dify run request) are read into pingora's retry buffer, which pingora sends upstream first
//! on every attempt — so the body still reaches the backend intact, and can be replayed on a
//! safe retry. Larger or chunked bodies (file uploads) wait without the watch.

use pingora::proxy::Session;
use pingora::Result;

use crate::admission::{Admission, Permit, Refusal, Ticket};

/// Largest body read before admission (pingora's retry buffer holds 64 KiB).
pub const PREREAD_LIMIT: u64 = 64 * 1024;

/// How waiting for admission ended.
#[derive(Debug)]
pub enum Admitted {
    /// Admitted: hold the permit for the request's lifetime.
    Yes(Permit),
    /// Refused: answer 503 with the refusal.
    Refused(Refusal),
    /// The client disconnected while waiting.
    ClientGone,
}

/// Reads the whole body when it is declared and small; returns whether the client can be
/// watched for a disconnect while waiting (the body is complete, or there is none). A client
/// that sent `Expect: 100-continue` waits for the backend's go-ahead before sending its body,
/// so its body is not read here (that would stall it until its own expect timeout).
pub async fn preread_small_body(
    session: &mut Session,
    declared_len: Option<u64>,
    chunked: bool,
) -> Result<bool> {
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    match declared_len {
        _ if chunked => Ok(false),
        None | Some(0) => Ok(true),
        Some(len) if len > PREREAD_LIMIT || expects_continue => Ok(false),
        Some(_) => {
            session.as_mut().enable_retry_buffering();
            while session.read_request_body().await?.is_some() {}
            Ok(true)
        }
    }
}

/// Whether a pre-read body asks Dify for a streaming answer (`"response_mode":"streaming"`).
pub fn asks_for_stream(session: &Session) -> bool {
    #[derive(serde::Deserialize)]
    struct Mode<'a> {
        #[serde(borrow)]
        response_mode: Option<&'a str>,
    }
    session
        .as_downstream()
        .get_retry_buffer()
        .and_then(|body| {
            serde_json::from_slice::<Mode<'_>>(&body)
                .ok()
                .and_then(|m| m.response_mode.map(|m| m == "streaming"))
        })
        .unwrap_or(false)
}

/// Waits for a slot; when `watch_client`, a disconnect withdraws the request.
pub async fn wait_for_slot(
    session: &mut Session,
    admission: &std::sync::Arc<Admission>,
    ticket: Ticket,
    watch_client: bool,
) -> Admitted {
    let acquire = admission.acquire(ticket);
    if !watch_client {
        return match acquire.await {
            Ok(permit) => Admitted::Yes(permit),
            Err(refusal) => Admitted::Refused(refusal),
        };
    }
    tokio::select! {
        biased;
        result = acquire => match result {
            Ok(permit) => Admitted::Yes(permit),
            Err(refusal) => Admitted::Refused(refusal),
        },
        () = client_gone(session) => Admitted::ClientGone,
    }
}

/// Resolves when the client closes its connection (its request is complete, so any read
/// event is either EOF or the start of a pipelined next request, which we leave alone).
async fn client_gone(session: &mut Session) {
    match session.downstream_session.read_body_or_idle(true).await {
        Err(_) => {}
        // Bytes of a pipelined request: we can no longer tell a disconnect; wait forever and
        // let the admission decide.
        Ok(_) => std::future::pending().await,
    }
}
