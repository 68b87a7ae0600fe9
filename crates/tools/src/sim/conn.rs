//! What a handler knows of its connection ([`ConnCtx`]) and the count of its requests in
//! flight, which the keep-alive idle close in [`super::accepted`] watches.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::shared::{Shared, SlotGuard};

/// What a handler knows about its connection. Runs keep an `Arc` of it (and so the
/// connection slot) until their work ends, even when the client has left.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    /// Cancelled by `stop()`: everything of this generation dies at once.
    pub(crate) kill: CancellationToken,
    pub(crate) peer: SocketAddr,
    /// `(requests in flight, change counter)`; the idle timer restarts on every change.
    inflight: watch::Sender<(usize, u64)>,
    _slot: SlotGuard,
}

impl ConnCtx {
    /// The context of a connection just accepted into `slot`, and the receiver of its
    /// in-flight changes (the keep-alive idle timer watches it).
    pub(crate) fn new(
        shared: Arc<Shared>,
        kill: CancellationToken,
        peer: SocketAddr,
        slot: SlotGuard,
    ) -> (Arc<ConnCtx>, watch::Receiver<(usize, u64)>) {
        let (inflight, idle_rx) = watch::channel((0usize, 0u64));
        (Arc::new(ConnCtx { shared, kill, peer, inflight, _slot: slot }), idle_rx)
    }

    /// Marks a request in flight until the guard (attached to the response body) drops.
    pub(crate) fn begin_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.send_modify(|(n, seq)| {
            *n += 1;
            *seq += 1;
        });
        self.shared.request_started();
        InflightGuard { ctx: self.clone() }
    }
}

/// A request in flight on a connection (keeps it from being keep-alive idle).
pub(crate) struct InflightGuard {
    ctx: Arc<ConnCtx>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.ctx.inflight.send_modify(|(n, seq)| {
            *n = n.saturating_sub(1);
            *seq += 1;
        });
        self.ctx.shared.request_done();
    }
}
