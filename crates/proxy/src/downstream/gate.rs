//! The connection gate: wraps the proxy's listener application and gives each new client
//! connection a place in [`ClientCounts`](super::counts::ClientCounts) before pingora reads a
//! byte of it, refusing it with a 503 `too_many_connections` envelope (written at once,
//! without reading the request) when `server.max_connections` are open, or
//! `server.max_connections_per_ip` from its peer.
//! A trusted proxy's connection is not counted per IP (it carries many clients; those are
//! counted per request from its forwarding headers); every connection counts in the total.
//! The place is held for the connection's life: every request on it, queued ones included.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use super::counts::Refused;
use super::throttle::Throttle;
use crate::app::App;
use crate::proxy::envelope::ErrorReply;

/// How long writing a refusal may take: a client that does not read it is simply dropped.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// A listener application behind the connection caps.
pub struct Gate<A> {
    inner: Arc<A>,
    app: Arc<App>,
    log: Throttle,
}

impl<A> Gate<A> {
    /// `inner` behind `app`'s caps.
    pub fn new(inner: A, app: Arc<App>) -> Gate<A> {
        Gate { inner: Arc::new(inner), app, log: Throttle::new(Duration::from_secs(10)) }
    }

    /// The wrapped application.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|a| a.ip())
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Gate<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let config = self.app.config();
        let server = &config.server;
        let peer = peer_ip(&stream);
        let counted_ip = peer.filter(|ip| !server.trusted_proxies.contains(*ip));
        let permit = match self.app.clients.connect(
            counted_ip,
            server.max_connections,
            server.max_connections_per_ip,
        ) {
            Ok(permit) => permit,
            Err(refused) => {
                let (reply, limit) = match refused {
                    Refused::Total => (
                        ErrorReply::too_many_connections(
                            "the proxy has as many client connections as it allows",
                        ),
                        format!("server.max_connections = {}", server.max_connections),
                    ),
                    Refused::PerIp => (
                        ErrorReply::too_many_connections("too many connections from this client address"),
                        format!("server.max_connections_per_ip = {}", server.max_connections_per_ip),
                    ),
                };
                if let Some(held_back) = self.log.admit() {
                    let peer = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
                    tracing::warn!(target: "dify_shaper::clients", %peer, held_back, "connection refused at {limit}");
                }
                let request_id = uuid::Uuid::new_v4().simple().to_string();
                let answer = reply.raw_response(&request_id);
                let _ = tokio::time::timeout(REFUSAL_WRITE, async {
                    stream.write_all(&answer).await?;
                    stream.flush().await?;
                    stream.shutdown().await
                })
                .await;
                return None;
            }
        };
        drop(config);
        // pingora's application serves every request of the connection (keep-alive included)
        // before it returns; the permit is held until then.
        let reused = self.inner.process_new(stream, shutdown).await;
        drop(permit);
        reused
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
