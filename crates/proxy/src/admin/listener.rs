//! The admin listener: owns the admin socket and its accept loop, and hands every connection
//! to pingora's HTTP/1 server code with [`AdminApp`] answering.
//!
//! pingora's listening `Service` is not used for it because pingora ends every listening
//! service's accept loop on the shutdown broadcast (`pingora-core`
//! `services::listening::Service::run_endpoint`). The admin port would then refuse connections
//! for the whole drain ([`crate::shutdown`]), exactly when operators watch it: `/ready` has to
//! answer 503 to take the proxy out of a load balancer, and `/status` and `/metrics` show the
//! requests still finishing. This background service keeps accepting until the process
//! exits; once shutdown began, pingora's HTTP code closes each connection after its answer, so
//! no keep-alive connection outlives an answer given during the drain.
//!
//! The socket is bound by [`AdminListener::bind`] before pingora starts, so a taken address is
//! a clear error at start instead of pingora's "Failed to build listeners" panic after half a
//! minute of retries. It gets `SO_REUSEADDR` (a restart rebinds while old connections linger in
//! `TIME_WAIT`) but not `SO_REUSEPORT`: this project does not run pingora's fd-passing upgrade
//! (no `--upgrade`), and with `SO_REUSEPORT` a second dify-shaper of the same user would share
//! the port silently, with the kernel spreading admin requests over both processes, instead of
//! failing fast. A replacement therefore starts once the old process has exited.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use socket2::{Domain, Protocol, Socket, Type};

use super::AdminApp;

/// Connections the kernel holds for the admin listener before it accepts them; admin traffic
/// is a few probes and scrapes at a time.
const BACKLOG: i32 = 1024;
/// Pause after a failed `accept()` (out of file descriptors and the like), which would
/// otherwise fail again at once and spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The admin address could not be bound.
#[derive(Debug)]
pub struct BindError {
    /// The admin address.
    pub addr: SocketAddr,
    /// Why.
    pub source: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot listen on the admin address {} (server.admin, --admin): {}",
            self.addr, self.source
        )?;
        if self.source.kind() == io::ErrorKind::AddrInUse {
            f.write_str("; another process (another dify-shaper?) holds it")?;
        }
        Ok(())
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The admin API's socket and accept loop, run as a pingora background service.
pub struct AdminListener {
    /// Bound and listening; taken by [`BackgroundService::start`], which needs the runtime to
    /// register it.
    listener: Mutex<Option<std::net::TcpListener>>,
    addr: SocketAddr,
    app: Arc<HttpServer<AdminApp>>,
}

impl AdminListener {
    /// Binds `addr` (listening from now on; connections wait in the backlog until the service
    /// starts) for `app`.
    pub fn bind(addr: SocketAddr, app: AdminApp) -> Result<Self, BindError> {
        let listener = listen(addr).map_err(|source| BindError { addr, source })?;
        // With port 0 the kernel picks the port; report the one it picked.
        let addr = listener.local_addr().unwrap_or(addr);
        Ok(AdminListener {
            listener: Mutex::new(Some(listener)),
            addr,
            app: Arc::new(HttpServer::new_app(app)),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// One connection: pingora's HTTP/1 server reads requests and writes [`AdminApp`]'s
    /// answers, keeping the connection alive between them until shutdown began.
    async fn serve(app: Arc<HttpServer<AdminApp>>, stream: tokio::net::TcpStream, shutdown: ShutdownWatch) {
        // Answers are written as a header and a body; without this, Nagle's algorithm and the
        // client's delayed ACK could hold the body back for tens of milliseconds.
        let _ = stream.set_nodelay(true);
        let mut next: Option<Stream> = Some(Box::new(L4Stream::from(stream)));
        while let Some(stream) = next {
            next = app.process_new(stream, &shutdown).await;
        }
    }
}

/// A listening std socket on `addr`, non-blocking (as tokio needs it), with `SO_REUSEADDR`.
/// socket2 creates it close-on-exec, so restart actions (`command`) started by the
/// maintenance service do not inherit it and keep the port after this process exits.
fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[async_trait]
impl BackgroundService for AdminListener {
    /// Accepts until the process exits. The shutdown broadcast does not stop it (see the
    /// module docs); it only reaches each connection, which then closes after its answer.
    async fn start(&self, shutdown: ShutdownWatch) {
        let taken = match self.listener.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(std_listener) = taken else {
            tracing::error!(admin = %self.addr, "admin listener started twice; the second start does nothing");
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(listener) => listener,
            Err(e) => {
                // Registering a socket that is already listening fails only when the runtime
                // cannot watch more descriptors; without the admin API there is no readiness
                // probe and no way to watch a drain, so do not run blind.
                tracing::error!(admin = %self.addr, error = %e, "cannot serve the admin listener; exiting");
                std::process::exit(1)
            }
        };
        tracing::info!(admin = %self.addr, "admin listener accepting");
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    tokio::spawn(Self::serve(Arc::clone(&self.app), stream, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(admin = %self.addr, error = %e, "admin accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::config::{load_embedded, Overrides};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn admin_app() -> (Arc<App>, AdminApp) {
        let config = load_embedded(&Overrides::default()).expect("embedded defaults");
        let app = App::new(config, Overrides::default());
        let admin = AdminApp::new(Arc::clone(&app));
        (app, admin)
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// Sends `GET path` on `conn` and reads one answer (headers and a `Content-Length` body).
    async fn get(conn: &mut tokio::net::TcpStream, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return text;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
                .await
                .expect("an answer within 5 s")
                .expect("read");
            assert!(n > 0, "connection closed before a whole answer: {text:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the peer closed `conn` (EOF within `within`).
    async fn closed(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(within, conn.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    #[test]
    fn a_taken_address_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind(loopback()).expect("bind");
        let addr = taken.local_addr().expect("addr");
        let (_app, admin) = admin_app();
        let Err(e) = AdminListener::bind(addr, admin) else { panic!("bound a taken address") };
        assert_eq!(e.source.kind(), io::ErrorKind::AddrInUse);
        let message = e.to_string();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("admin address"), "{message}");
    }

    #[tokio::test]
    async fn keeps_answering_after_the_shutdown_broadcast() {
        let (app, admin) = admin_app();
        let listener = Arc::new(AdminListener::bind(loopback(), admin).expect("bind"));
        let addr = listener.local_addr();
        assert_ne!(addr.port(), 0, "the picked port is reported");
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let service = Arc::clone(&listener);
        let task = tokio::spawn(async move { service.start(shutdown_rx).await });

        // Before shutdown: keep-alive, two answers on one connection.
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(get(&mut conn, "/live").await.starts_with("HTTP/1.1 200"));
        assert!(get(&mut conn, "/live").await.starts_with("HTTP/1.1 200"));
        assert!(!closed(&mut conn, Duration::from_millis(200)).await, "closed before shutdown");

        app.lifecycle.shutting_down();
        shutdown_tx.send(true).expect("broadcast");

        // After it: new connections are still accepted; each closes after its answer.
        for _ in 0..2 {
            let mut conn = tokio::net::TcpStream::connect(addr).await.expect("accepting during shutdown");
            let answer = get(&mut conn, "/ready").await;
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            assert!(answer.contains("shutting_down"), "{answer}");
            assert!(closed(&mut conn, Duration::from_secs(2)).await, "keep-alive after shutdown: {answer}");
        }
        assert!(!task.is_finished(), "the accept loop ended on the broadcast");
        task.abort();
    }
}
