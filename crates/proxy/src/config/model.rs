//! The runtime [`Config`] and its parts, after validation: what the proxy, admission and the
//! control plane read (see the parent module).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use super::class::ClassSpec;
use super::maintenance::MaintenanceSpec;
use super::routes::Router;
use super::schema::LogFormat;
use super::units::{ByteSize, HumanDuration};
use crate::config::forwarding::{ForwardingMode, TrustedProxies};

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
    /// Admission settings shared by all upstreams.
    pub admission: AdmissionGlobal,
    /// Tenant identification and rate limits.
    pub tenants: TenantSettings,
    /// Routes, in match order (most specific first).
    #[serde(rename = "routes")]
    pub router: Router,
    /// `[[maintenance]]` entries by upstream name.
    #[serde(serialize_with = "maintenance_list")]
    pub maintenance: BTreeMap<String, MaintenanceSpec>,
    /// `[sidecar]`: what dify-shaper does for the compose project it runs in.
    pub sidecar: SidecarSettings,
    /// `[cluster]`: replicas sharing state through Redis.
    pub cluster: super::cluster::ClusterSettings,
}

/// `[sidecar]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SidecarSettings {
    /// Compose services whose nginx is told to reload (`nginx -s reload`, through the Engine
    /// API) once dify-shaper is up: nginx resolves a `proxy_pass` host only when it loads its
    /// config, so after dify-shaper's container got a new address (recreated, or started
    /// after nginx at boot) nginx would keep the old one. Empty: nothing is reloaded.
    pub reload_nginx: Vec<String>,
    /// The Docker Engine API socket.
    pub socket: std::path::PathBuf,
}

impl Default for SidecarSettings {
    fn default() -> Self {
        SidecarSettings { reload_nginx: Vec::new(), socket: super::maintenance::DOCKER_SOCKET.into() }
    }
}

fn maintenance_list<S: serde::Serializer>(
    map: &BTreeMap<String, MaintenanceSpec>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.values())
}

impl Config {
    /// The maintenance settings of upstream `name`: its `[[maintenance]]` entry, or manual
    /// drain/resume only with default deadlines.
    pub fn maintenance_spec(&self, name: &str) -> MaintenanceSpec {
        self.maintenance.get(name).cloned().unwrap_or_else(|| {
            let path = self.upstreams.get(name).map_or("/health", |u| u.health.path.as_str());
            MaintenanceSpec::manual_only(name, path)
        })
    }
}

/// `[admission]` after validation.
#[derive(Debug, Clone, Serialize)]
pub struct AdmissionGlobal {
    /// Fraction of the limit kept for interactive classes while they are active.
    pub interactive_reserve: f64,
    /// Standing-queue age after which the newest requests are served first.
    pub lifo_after: HumanDuration,
}

impl Default for AdmissionGlobal {
    /// The defaults of `[admission]`.
    fn default() -> Self {
        AdmissionGlobal {
            interactive_reserve: 0.1,
            lifo_after: HumanDuration(std::time::Duration::from_secs(2)),
        }
    }
}

/// `[upstreams.NAME.admission]` after validation.
#[derive(Debug, Clone, Serialize)]
pub struct AdmissionSpec {
    /// Whether the limit and queue are on.
    pub enabled: bool,
    /// Starting limit.
    pub initial_limit: usize,
    /// Lowest limit. Two by default: one run in the worker and the next ready behind it.
    /// At one, the worker idles for the round trip between an answer and the next admission,
    /// and a CPU-bound worker whose latency doubles at two in flight was cut to one and
    /// served less than direct access (real Dify's echo workflow at 18/s on one worker).
    pub min_limit: usize,
    /// Highest limit.
    pub max_limit: usize,
    /// Most requests waiting.
    pub max_queue: usize,
    /// Latency ratio above which the limit is cut.
    pub latency_tolerance: f64,
}

impl Default for AdmissionSpec {
    /// The defaults of `[upstreams.NAME.admission]`; admission's own defaults start from them.
    fn default() -> Self {
        AdmissionSpec {
            enabled: true,
            initial_limit: 4,
            min_limit: 2,
            max_limit: 1000,
            max_queue: 1024,
            latency_tolerance: 1.3,
        }
    }
}

/// Where the tenant key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    /// The bearer token of `Authorization` (Dify's app key).
    BearerToken,
    /// The value of this header.
    Header(http::HeaderName),
}

/// `[tenants]` after validation.
#[derive(Debug, Clone, Serialize)]
pub struct TenantSettings {
    /// The header naming the tenant; `None` = the `Authorization` bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Per-tenant rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Where the tenant key is read from (derived from `header` once, at load).
    #[serde(skip)]
    pub source: TenantSource,
}

/// `[tenants.rate_limit]` after validation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateLimitSpec {
    /// Requests per second per tenant.
    pub rate: f64,
    /// Burst size.
    pub burst: u32,
}

/// `[server]` after validation.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSettings {
    /// Client-facing listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Admin listen address.
    pub admin: SocketAddr,
    /// Bearer token of the admin API, if any (never printed).
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// Proxy worker threads.
    pub threads: usize,
    /// Largest accepted request body.
    pub max_request_body: ByteSize,
    /// Read buffer per client connection.
    pub client_read_buffer: ByteSize,
    /// Upstream hostname re-resolution period.
    pub resolve_interval: HumanDuration,
    /// Idle keep-alive connections kept to upstreams.
    pub upstream_keepalive_pool: usize,
    /// SIGTERM grace for in-flight requests.
    pub shutdown_grace: HumanDuration,
    /// What happens to the forwarding headers a request arrives with.
    pub forwarding: ForwardingMode,
    /// Peers whose forwarding headers are believed in `trusted` mode (parsed at load).
    pub trusted_proxies: TrustedProxies,
    /// Longest time to receive a whole request header.
    pub request_header_timeout: HumanDuration,
    /// Largest request header.
    pub max_request_header: ByteSize,
    /// Longest single header line.
    pub max_request_header_line: ByteSize,
    /// Idle time allowed between requests on a client connection (zero: no keep-alive).
    pub keepalive_timeout: HumanDuration,
    /// Longest wait for the next bytes of a request body.
    pub body_read_timeout: HumanDuration,
    /// Client connections open at once, in total.
    pub max_connections: usize,
    /// Client connections open at once from one client IP.
    pub max_connections_per_ip: usize,
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
    /// Idle time an upstream connection is kept for reuse (zero: a connection per request).
    pub keepalive: HumanDuration,
    /// Its admission settings.
    pub admission: AdmissionSpec,
    /// Its health probes.
    pub health: HealthSpec,
    /// Its retry budget and backoff.
    pub retry: RetrySpec,
}

/// `[upstreams.NAME.retry]` after validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrySpec {
    /// Share of requests that may be retried.
    pub budget_ratio: f64,
    /// Retries always allowed per 10 s window.
    pub budget_min: u32,
    /// Most budgeted retries per request.
    pub max_retries: u32,
    /// Backoff base.
    pub backoff_base: HumanDuration,
    /// Backoff cap.
    pub backoff_max: HumanDuration,
}

impl Default for RetrySpec {
    fn default() -> Self {
        // Envoy's and Linkerd's defaults: 20 % plus a small floor.
        RetrySpec {
            budget_ratio: 0.2,
            budget_min: 3,
            max_retries: 2,
            backoff_base: HumanDuration(std::time::Duration::from_millis(100)),
            backoff_max: HumanDuration(std::time::Duration::from_secs(2)),
        }
    }
}

/// `[upstreams.NAME.health]` after validation.
#[derive(Debug, Clone, Serialize)]
pub struct HealthSpec {
    /// Whether active probes run.
    pub enabled: bool,
    /// Probed path.
    pub path: String,
    /// Time between probes.
    pub interval: HumanDuration,
    /// Probe timeout.
    pub timeout: HumanDuration,
    /// Good probes to come back.
    pub rise: u32,
    /// Failed probes to go out.
    pub fall: u32,
    /// Slow start after recovery.
    pub ramp: HumanDuration,
    /// Silence (no probe answered, no request answered) after which an endpoint that still
    /// accepts connections is taken out as frozen.
    pub silent_timeout: HumanDuration,
}

impl Default for HealthSpec {
    fn default() -> Self {
        let secs = |s| HumanDuration(std::time::Duration::from_secs(s));
        HealthSpec {
            enabled: true,
            // Dify's API answers `GET /health`; other services answer something below 500.
            path: "/health".into(),
            interval: secs(1),
            timeout: secs(1),
            rise: 2,
            fall: 2,
            // A held backlog drains fastest at the whole learned limit: a restarted Dify
            // serves as much as before (the limiter still cuts if it answers slower).
            ramp: secs(0),
            // Longer than a saturated gunicorn leaves probes unanswered while it still
            // finishes requests; short enough that little is sent to a frozen process.
            silent_timeout: secs(10),
        }
    }
}

/// Default idle keep-alive to an upstream: none. Under gunicorn+gevent an open connection
/// holds one of the worker's `worker_connections` slots even while idle, so pooled idle
/// connections lock real requests out in the listen backlog; Dify's own nginx opens a
/// connection per request (`Connection: close`) for the same reason. Loopback/compose-network
/// connects cost well under a millisecond next to Dify's run times.
pub const DEFAULT_UPSTREAM_KEEPALIVE: std::time::Duration = std::time::Duration::ZERO;
