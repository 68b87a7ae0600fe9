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

use super::conn::ConnCtx;
use super::router;
use super::shared::{Shared, SlotGuard};

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
    let (ctx, idle_rx) = ConnCtx::new(shared.clone(), kill.clone(), peer, slot);
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
