//! The listening socket and gunicorn's accept discipline: `accept()` is only called while
//! fewer than `workers * worker_connections` slots are held, so excess connections wait,
//! un-accepted, in the kernel's listen backlog (their TCP handshake completes, nothing
//! answers).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use super::accepted;
use super::shared::Shared;

/// Binds `addr` with `SO_REUSEADDR` (so a restart can rebind while old connections linger
/// in `TIME_WAIT`) and listens with `backlog`.
pub(crate) fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accepts while capacity allows, until `accept` fires (graceful stop: open connections live
/// on) or `kill` fires (everything dies); dropping the listener on return closes the port (and
/// resets connections still waiting in the backlog). `accept` is a child of `kill`.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    accept: CancellationToken,
    kill: CancellationToken,
) {
    let mut open = shared.watch_open();
    loop {
        // Wait for a free slot (slot releases and config changes both wake us).
        let free = async { open.wait_for(|&n| n < shared.config().capacity()).await.map(|_| ()) };
        tokio::select! {
            biased;
            () = accept.cancelled() => return,
            r = free => if r.is_err() { return },
        }
        let accepted = tokio::select! {
            biased;
            () = accept.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                shared.stats.on_accept();
                let slot = shared.take_slot();
                tokio::spawn(accepted::serve(shared.clone(), stream, peer, slot, kill.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "sim accept failed");
                tokio::select! {
                    () = accept.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
    }
}
