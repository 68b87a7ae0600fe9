//! pingora's request-header hook: reads the limits from the config in force (a reload changes
//! them for the next request) and, when a client hits one, counts it, logs it (rate-limited)
//! and renders the answer: 408 for a header that took too long, 431 for one too large, and
//! nothing for a connection that sent no byte before its time was up (as nginx does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::protocols::http::v1::header_limits::{HeaderLimitHit, RequestHeaderLimits};

use super::throttle::Throttle;
use crate::app::App;
use crate::proxy::envelope::ErrorReply;

/// The request-header limits of `[server]`, as pingora's hook.
#[derive(Debug)]
pub struct HeaderLimits {
    app: Arc<App>,
    log: Throttle,
}

impl HeaderLimits {
    /// The hook for `app`'s config.
    pub fn new(app: Arc<App>) -> HeaderLimits {
        HeaderLimits { app, log: Throttle::new(Duration::from_secs(10)) }
    }
}

impl RequestHeaderLimits for HeaderLimits {
    fn header_timeout(&self) -> Option<Duration> {
        Some(self.app.config().server.request_header_timeout.0)
    }

    fn max_header_size(&self) -> usize {
        self.app.config().server.max_request_header.0 as usize
    }

    fn max_header_line(&self) -> usize {
        self.app.config().server.max_request_header_line.0 as usize
    }

    fn on_limit(&self, hit: HeaderLimitHit, peer: Option<SocketAddr>) -> Option<Bytes> {
        self.app.clients.header_refused(hit);
        let config = self.app.config();
        let server = &config.server;
        let (reply, what) = match hit {
            HeaderLimitHit::Timeout { received: 0 } => {
                (None, "no request within the header timeout".to_string())
            }
            HeaderLimitHit::Timeout { received } => (
                Some(ErrorReply::request_header_timeout(format!(
                    "the request header was not received within {}",
                    server.request_header_timeout
                ))),
                format!(
                    "request header not complete within {} ({received} bytes)",
                    server.request_header_timeout
                ),
            ),
            HeaderLimitHit::TooLarge { received } => (
                Some(ErrorReply::request_header_too_large(format!(
                    "the request header is larger than {}",
                    server.max_request_header
                ))),
                format!("request header over {} ({received} bytes so far)", server.max_request_header),
            ),
            HeaderLimitHit::LineTooLong { length } => (
                Some(ErrorReply::request_header_too_large(format!(
                    "a request header line is longer than {}",
                    server.max_request_header_line
                ))),
                format!("request header line of {length} bytes, over {}", server.max_request_header_line),
            ),
        };
        if reply.is_none() {
            // An idle connection (a browser's preconnect, a health checker): not an attack.
            tracing::debug!(target: "dify_shaper::clients", "{what}: connection closed");
        } else if let Some(held_back) = self.log.admit() {
            let peer = peer.map_or_else(|| "-".to_string(), |p| p.ip().to_string());
            tracing::warn!(target: "dify_shaper::clients", %peer, held_back, "{what}: connection closed");
        }
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        reply.map(|r| r.raw_response(&request_id))
    }
}
