//! Configuration: the on-disk schema ([`schema`]), loading and validation into the runtime
//! [`Config`] ([`load`]), and human units ([`units`]).
//!
//! The runtime [`Config`] is immutable and shared as `Arc<Config>`; a reload builds a new one
//! and swaps it in whole. State that must survive a reload (upstream resolution, and later the
//! admission limiter and maintenance state) lives outside it, keyed by upstream name.

pub mod load;
pub mod schema;
pub mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

pub use load::{load_embedded, load_file, parse_str, ConfigError, Overrides};
pub use schema::LogFormat;
pub use units::{ByteSize, HumanDuration};

use crate::proxy::routing::Router;

/// A validated, effective configuration.
#[derive(Debug, Serialize)]
pub struct Config {
    /// Where it came from (a path, or `embedded defaults`). Not part of the file format.
    #[serde(skip)]
    pub source: String,
    /// Listeners and process-wide settings.
    pub server: ServerSettings,
    /// Logging.
    pub log: LogSettings,
    /// Upstream groups by name.
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// Traffic classes by name.
    pub classes: BTreeMap<String, Arc<ClassSpec>>,
    /// Routes, in match order (most specific first).
    #[serde(rename = "routes")]
    pub router: Router,
}

/// `[server]` after validation.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSettings {
    /// Client-facing listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Admin listen address.
    pub admin: SocketAddr,
    /// Proxy worker threads.
    pub threads: usize,
    /// Largest accepted request body.
    pub max_request_body: ByteSize,
    /// Upstream hostname re-resolution period.
    pub resolve_interval: HumanDuration,
    /// Idle keep-alive connections kept to upstreams.
    pub upstream_keepalive_pool: usize,
    /// SIGTERM grace for in-flight requests.
    pub shutdown_grace: HumanDuration,
}

/// `[log]` after validation.
#[derive(Debug, Clone, Serialize)]
pub struct LogSettings {
    /// Output format.
    pub format: LogFormat,
    /// tracing filter directive.
    pub level: String,
    /// Whether access-log lines are written.
    pub access_log: bool,
}

/// One `host:port` upstream server as written in the config (resolved at run time).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerAddr {
    /// Hostname or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for ServerAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An upstream group after validation.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamSpec {
    /// The group's servers.
    pub servers: Vec<ServerAddr>,
}

/// A traffic class after validation: every timeout resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassSpec {
    /// Class name.
    #[serde(skip)]
    pub name: String,
    /// Upstream TCP connect timeout.
    pub connect_timeout: HumanDuration,
    /// Longest wait for upstream bytes (headers, then between body chunks).
    pub read_timeout: HumanDuration,
    /// Longest wait for the upstream to accept request bytes.
    pub write_timeout: HumanDuration,
}
