//! One resolved address of a configured server: what a request is sent to, and what the
//! control plane drains, probes and puts back.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

/// One resolved address of a configured server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The socket address connected to.
    pub addr: SocketAddr,
    /// The configured `host:port` it came from (shared: every request clones its endpoint).
    pub server: Arc<str>,
}
