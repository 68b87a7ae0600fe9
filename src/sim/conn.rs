//! One accepted connection: HTTP/1.1 via hyper (keep-alive, upgrades), gunicorn's keep-alive
//! idle close, and the kill switch (`stop()` drops the socket mid-whatever).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::router;
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

/// Serves `stream` until the client closes it, it is idle for `keepalive_timeout`, or `kill`
/// fires. An upgraded (websocket) connection continues in its own task.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: SlotGuard,
    kill: CancellationToken,
) {
    // SSE frames must leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let (inflight, idle_rx) = watch::channel((0usize, 0u64));
    let ctx = Arc::new(ConnCtx { shared: shared.clone(), kill: kill.clone(), peer, inflight, _slot: slot });
    let svc = service_fn(move |req| router::handle(ctx.clone(), req));
    let mut builder = http1::Builder::new();
    // The idle rule below replaces hyper's header timeout (which would need a timer).
    builder.keep_alive(true).header_read_timeout(None);
    let conn = builder.serve_connection(TokioIo::new(stream), svc).with_upgrades();
    tokio::select! {
        biased;
        () = kill.cancelled() => {}
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "sim connection ended with error");
            }
        }
        () = idle_close(&shared, idle_rx) => {
            shared.stats.on_idle_close();
            tracing::debug!(%peer, "sim closed idle keep-alive connection");
        }
    }
}

/// Resolves once the connection has had no request in flight for `keepalive_timeout` (read
/// from the config at the start of each idle period).
async fn idle_close(shared: &Shared, mut rx: watch::Receiver<(usize, u64)>) {
    loop {
        let (inflight, _) = *rx.borrow_and_update();
        if inflight == 0 {
            let timeout = shared.config().keepalive_timeout;
            tokio::select! {
                () = tokio::time::sleep(timeout) => return,
                r = rx.changed() => if r.is_err() { return std::future::pending().await },
            }
        } else if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
