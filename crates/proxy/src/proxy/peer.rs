//! Where an attempt goes: an endpoint of the routed group (held, with the request's admission
//! slot, while none is in rotation) and the peer with the class's timeouts.

use std::sync::Arc;
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use tokio::time::Instant;

use super::ctx::Routed;
use super::envelope::ErrorReply;
use crate::upstream::{Endpoint, EndpointLease, UpstreamState};

/// Waits until the group has an endpoint in rotation, up to `deadline`.
async fn wait_for_endpoint(
    upstream: &Arc<UpstreamState>,
    deadline: Instant,
) -> Option<(Endpoint, EndpointLease)> {
    let mut serving = upstream.health().watch();
    loop {
        if let Some(picked) = upstream.pick() {
            return Some(picked);
        }
        // Woken by the prober; the short sleep also catches a re-resolution finding an address.
        let wake = tokio::time::sleep(Duration::from_millis(100));
        tokio::select! {
            _ = serving.changed() => {}
            () = wake => {}
            () = tokio::time::sleep_until(deadline) => return upstream.pick(),
        }
    }
}

/// An endpoint of the routed group for the next attempt. With nothing in rotation (down,
/// restarting, or not resolvable yet), the request is held — with its admission slot — until
/// the group is back or its class's queue deadline (from `started`) passes.
pub(super) async fn pick_endpoint(
    routed: &Routed,
    started: Instant,
) -> Result<(Endpoint, EndpointLease), Failed> {
    if let Some(picked) = routed.upstream.pick() {
        return Ok(picked);
    }
    let deadline = started + routed.class.queue_timeout.0;
    wait_for_endpoint(&routed.upstream, deadline).await.ok_or_else(|| {
        let reply = ErrorReply::upstream_unavailable(
            503,
            format!("upstream {} is down or restarting and was not back in time", routed.upstream.name()),
        )
        .retry_after(5);
        failed(ErrorType::ConnectNoRoute, "no endpoint in rotation", reply)
    })
}

/// Why no attempt can be made: the error for pingora and the answer for the client.
pub(super) type Failed = (Box<Error>, ErrorReply);

fn failed(kind: ErrorType, why: &'static str, reply: ErrorReply) -> Failed {
    let mut e = Error::explain(kind, why);
    e.as_up();
    (e, reply)
}

/// The peer for `endpoint` with the class's timeouts: a stream waits per event, a blocking
/// run for its whole answer, within what is left of its total time since `started`.
pub(super) fn peer_for(
    routed: &Routed,
    endpoint: &Endpoint,
    wants_stream: bool,
    started: Instant,
) -> Result<HttpPeer, Failed> {
    let class = &routed.class;
    let mut peer = HttpPeer::new(endpoint.addr, false, String::new());
    peer.options.connection_timeout = Some(class.connect_timeout.0);
    let mut read_timeout = if wants_stream { class.stream_idle_timeout.0 } else { class.read_timeout.0 };
    if let (false, Some(total)) = (wants_stream, class.total_timeout) {
        // The header must arrive within what is left of the request's total time.
        let left = total.0.saturating_sub(started.elapsed());
        if left.is_zero() {
            let reply = ErrorReply::upstream_timeout("the request's total time ran out before it was sent");
            return Err(failed(ErrorType::ReadTimedout, "total_timeout exhausted", reply));
        }
        read_timeout = read_timeout.min(left);
    }
    peer.options.read_timeout = Some(read_timeout);
    peer.options.write_timeout = Some(class.write_timeout.0);
    peer.options.idle_timeout = Some(routed.keepalive).filter(|k| !k.is_zero());
    Ok(peer)
}
