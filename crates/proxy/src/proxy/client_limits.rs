//! `[server]`'s client limits as they apply to one request, once its header is in: the
//! keep-alive idle time after it, the idle time allowed while its body is read, and, for a
//! client a trusted proxy forwards, its place under `max_connections_per_ip` (the connection
//! is the proxy's, so the connection gate could not count that client).

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::envelope::ErrorReply;
use super::headers::forwarded_client;
use crate::app::App;
use crate::config::Config;

/// Applies the limits; `Some` answer when a forwarded client has no place left.
pub(super) fn apply(
    app: &App,
    session: &mut Session,
    ctx: &mut RequestCtx,
    config: &Config,
) -> Option<ErrorReply> {
    let server = &config.server;
    let keepalive = server.keepalive_timeout.0;
    // pingora counts in whole seconds and takes `Some(0)` as "no timeout".
    session.set_keepalive((!keepalive.is_zero()).then(|| keepalive.as_secs().max(1)));
    session.as_downstream_mut().set_read_timeout(Some(server.body_read_timeout.0));
    let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())?;
    if !server.trusted_proxies.contains(peer) {
        return None;
    }
    let client = forwarded_client(session.req_header())?;
    match app.clients.forwarded_request(client, server.max_connections_per_ip) {
        Ok(permit) => {
            ctx.client_permit = Some(permit);
            None
        }
        Err(_) => Some(ErrorReply::too_many_connections(format!(
            "too many requests in progress from this client address (server.max_connections_per_ip = {})",
            server.max_connections_per_ip
        ))),
    }
}
