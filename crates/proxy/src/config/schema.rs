//! The raw, on-disk shape of the config file: serde types with `deny_unknown_fields`, their
//! defaults and documented ranges. Nothing here is validated beyond what a single value can
//! check on its own; cross-references (routes → upstreams, duplicate routes) are checked in
//! [`super::load`], which turns a [`RawConfig`] into the runtime [`super::Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use super::units::{ByteSize, HumanDuration};
use crate::config::forwarding::ForwardingMode;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listeners and process-wide settings.
    #[serde(default)]
    pub server: RawServer,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// Named upstream groups.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    /// Traffic classes (timeouts and, later, admission shares). `interactive`, `run` and
    /// `control` always exist; a table here overrides their defaults or adds a class.
    #[serde(default)]
    pub classes: BTreeMap<String, RawClass>,
    /// Routes by path prefix, most specific match wins.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Admission settings shared by all upstreams.
    #[serde(default)]
    pub admission: RawAdmissionGlobal,
    /// Tenant identification and per-tenant rate limits.
    #[serde(default)]
    pub tenants: RawTenants,
    /// Scheduled/manual maintenance per upstream (`[[maintenance]]`).
    #[serde(default)]
    pub maintenance: Vec<super::maintenance::RawMaintenance>,
    /// What dify-shaper does for the compose project it runs in.
    #[serde(default)]
    pub sidecar: RawSidecar,
    /// Replicas sharing state through Redis.
    #[serde(default)]
    pub cluster: super::cluster::RawCluster,
}

/// `[sidecar]`: dify-shaper as a container in Dify's compose project.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSidecar {
    /// Compose services (of dify-shaper's own project) whose nginx is reloaded once
    /// dify-shaper is up, so it resolves dify-shaper's current address.
    pub reload_nginx: Option<Vec<String>>,
    /// The Docker Engine API socket.
    pub socket: Option<std::path::PathBuf>,
}

/// `[admission]`: settings shared by every upstream's admission.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmissionGlobal {
    /// Fraction of the limit kept free for interactive classes while they are active (0..=0.5).
    pub interactive_reserve: Option<f64>,
    /// A queue that has not emptied for this long serves newest first (adaptive LIFO).
    pub lifo_after: Option<HumanDuration>,
}

/// `[upstreams.NAME.admission]`: the adaptive limit of one upstream. No capacity is given;
/// these are bounds and a starting point.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmission {
    /// `false` turns queueing and the limit off for this upstream (requests are only counted).
    pub enabled: Option<bool>,
    /// Limit before anything is learned (keep at or below the real capacity).
    pub initial_limit: Option<usize>,
    /// Lowest limit (>= 1). Absent: 2, or `initial_limit`/`max_limit` when lower.
    pub min_limit: Option<usize>,
    /// Highest limit.
    pub max_limit: Option<usize>,
    /// Most requests waiting at once.
    pub max_queue: Option<usize>,
    /// Latency ratio (window mean / no-load baseline) above which the limit is cut (> 1).
    pub latency_tolerance: Option<f64>,
}

/// `[tenants]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenants {
    /// Header whose value identifies the tenant; default: the `Authorization` bearer token.
    pub header: Option<Spanned<String>>,
    /// Optional per-tenant rate limit.
    pub rate_limit: Option<RawRateLimit>,
}

/// `[tenants.rate_limit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests per second per tenant (may be fractional, e.g. 0.5).
    pub rate: f64,
    /// Requests a tenant may send at once after being quiet.
    pub burst: u32,
}

/// `[server]`: listeners and process-wide settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Client-facing listen address(es): one string or a list.
    #[serde(default = "default_listen", deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// Admin listener (`/live`, `/ready`, `/status`, drain/resume/restart).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Bearer token the admin API requires (all but `/live` and `/ready`); required when
    /// `admin` is not a loopback address. `DIFY_SHAPER_ADMIN_TOKEN` is used when unset.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Proxy worker threads (1..=256); default: the number of CPUs.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Largest request body accepted; larger ones get 413 `payload_too_large`.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: ByteSize,
    /// Read buffer per client connection (1KiB..=1MiB). Small keeps queued requests cheap.
    #[serde(default = "default_client_read_buffer")]
    pub client_read_buffer: ByteSize,
    /// How often upstream hostnames are re-resolved (1s..=1h).
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: HumanDuration,
    /// Idle keep-alive connections kept to upstreams, in total (0 disables reuse).
    #[serde(default = "default_keepalive_pool")]
    pub upstream_keepalive_pool: usize,
    /// How long a SIGTERM waits for in-flight requests before the process exits.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: HumanDuration,
    /// What happens to `X-Forwarded-*` (and `Forwarded`, `X-Real-IP`, `CF-Connecting-IP`):
    /// `trusted` (default), `append` or `replace`.
    #[serde(default)]
    pub forwarding: ForwardingMode,
    /// Peers whose forwarding headers are believed in `trusted` mode: CIDR ranges or single
    /// addresses; default loopback and the private ranges.
    #[serde(default)]
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// Longest time to receive a whole request header (1s..=10m); then 408, or a quiet close
    /// when nothing arrived.
    #[serde(default = "default_request_header_timeout")]
    pub request_header_timeout: HumanDuration,
    /// Largest request header, request line and fields together (1KiB..=1MiB); larger: 431.
    #[serde(default = "default_max_request_header")]
    pub max_request_header: ByteSize,
    /// Longest single header line (256B..=`max_request_header`); longer: 431.
    #[serde(default = "default_max_request_header_line")]
    pub max_request_header_line: ByteSize,
    /// How long a client connection may sit idle between requests (0s..=1h; 0s: no keep-alive).
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: HumanDuration,
    /// Longest wait for the next bytes of a request body (1s..=1h); then 408.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: HumanDuration,
    /// Client connections open at once, in total (1..=1000000); more are refused with 503.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Client connections open at once from one client IP (1..=`max_connections`): the peer's,
    /// or for a peer in `trusted_proxies` the forwarded client's (counted per request).
    /// Default: 1024, or `max_connections` when that is lower.
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            admin: default_admin(),
            admin_token: None,
            threads: None,
            max_request_body: default_max_request_body(),
            client_read_buffer: default_client_read_buffer(),
            resolve_interval: default_resolve_interval(),
            upstream_keepalive_pool: default_keepalive_pool(),
            shutdown_grace: default_shutdown_grace(),
            forwarding: ForwardingMode::default(),
            trusted_proxies: None,
            request_header_timeout: default_request_header_timeout(),
            max_request_header: default_max_request_header(),
            max_request_header_line: default_max_request_header_line(),
            keepalive_timeout: default_keepalive_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: None,
        }
    }
}

/// Access/diagnostic log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `"info"` or `"info,pingora=warn"`. `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Whether to emit one access-log line per request.
    #[serde(default = "default_true")]
    pub access_log: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { format: LogFormat::Text, level: default_log_level(), access_log: true }
    }
}

/// `[upstreams.NAME]`: a group of interchangeable servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `host:port` entries; hostnames are re-resolved every `server.resolve_interval`.
    pub servers: Vec<Spanned<String>>,
    /// How long an idle connection to this upstream is kept for reuse; `"0s"` sends
    /// `Connection: close` and opens a connection per request, as Dify's own nginx does.
    #[serde(default)]
    pub keepalive: Option<HumanDuration>,
    /// The upstream's adaptive concurrency limit.
    #[serde(default)]
    pub admission: RawAdmission,
    /// Active health probes and the slow start after recovery.
    #[serde(default)]
    pub health: RawHealth,
    /// Retry budget and backoff.
    #[serde(default)]
    pub retry: RawRetry,
}

/// `[upstreams.NAME.retry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Retries may reach this share of requests (0..=1) …
    pub budget_ratio: Option<f64>,
    /// … plus this many, per 10 s window.
    pub budget_min: Option<u32>,
    /// Most retries of one request after a 429/503 or a possibly-processed failure.
    pub max_retries: Option<u32>,
    /// Backoff: full jitter up to `backoff_base × 2^n`, capped at `backoff_max`; a backend's
    /// `Retry-After` is honoured up to the cap.
    pub backoff_base: Option<HumanDuration>,
    /// Cap of the backoff.
    pub backoff_max: Option<HumanDuration>,
}

/// `[upstreams.NAME.health]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `false` disables active probes (a refused connect still takes an endpoint out until
    /// the next resolution).
    pub enabled: Option<bool>,
    /// Path probed with GET; any answer below 500 counts as up.
    pub path: Option<String>,
    /// Time between probes.
    pub interval: Option<HumanDuration>,
    /// Longest wait for a probe's answer.
    pub timeout: Option<HumanDuration>,
    /// Good probes in a row that bring an endpoint back.
    pub rise: Option<u32>,
    /// Failed probes in a row that take an endpoint out.
    pub fall: Option<u32>,
    /// Slow start: time over which admission goes from half the learned limit to all of it
    /// after the upstream came back.
    pub ramp: Option<HumanDuration>,
    /// An endpoint that accepts connections but answers neither probes nor requests for this
    /// long is frozen (SIGSTOP, a hung process): out of rotation until a probe answers.
    pub silent_timeout: Option<HumanDuration>,
}

/// `[classes.NAME]`: per-class timeouts. Unset keys keep the class's built-in default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    /// TCP connect timeout to the upstream.
    pub connect_timeout: Option<HumanDuration>,
    /// For blocking requests: longest wait for the response header (a blocking run answers only
    /// when it is done, so this is its total time), then for each gap in the body.
    pub read_timeout: Option<HumanDuration>,
    /// For streaming requests (`"response_mode":"streaming"`): longest wait for the header and
    /// then between events (Dify pings every 10 s); past it the stream ends with an `error`
    /// event.
    pub stream_idle_timeout: Option<HumanDuration>,
    /// For blocking requests: the whole time from arrival (queue wait included) to the
    /// response header; unset = only the per-phase limits apply.
    pub total_timeout: Option<HumanDuration>,
    /// Longest wait for the upstream to accept request bytes.
    pub write_timeout: Option<HumanDuration>,
    /// Longest wait in the admission queue before a 503 `server_busy`.
    pub queue_timeout: Option<HumanDuration>,
    /// Share of dequeues when several classes wait (1..=100).
    pub weight: Option<u32>,
    /// `false`: never queued nor held back by the limit (only counted), for cheap calls such
    /// as stop-task that must never wait behind the runs they stop.
    pub queued: Option<bool>,
    /// Whether the class gets the interactive headroom (see `admission.interactive_reserve`).
    pub interactive: Option<bool>,
}

/// `[[routes]]`: a path prefix (and optional suffix / methods) mapped to an upstream and class.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// A name for logs and `/status`; defaults to the prefix.
    #[serde(default)]
    pub name: Option<String>,
    /// Path prefix, starting with `/`. Matches whole segments: `/v1` matches `/v1` and
    /// `/v1/…`, not `/v1beta`. A prefix ending in `/` matches anything below it.
    pub prefix: Spanned<String>,
    /// Optional path suffix, e.g. `/stop` for `/v1/chat-messages/{id}/stop`.
    #[serde(default)]
    pub suffix: Option<Spanned<String>>,
    /// Optional HTTP methods this route applies to (default: all).
    #[serde(default)]
    pub methods: Option<Spanned<Vec<String>>>,
    /// The upstream group name.
    pub upstream: Spanned<String>,
    /// The traffic class (default `interactive`).
    #[serde(default)]
    pub class: Option<Spanned<String>>,
    /// Retry non-idempotent requests of this route even after a 500/502/504 or a reset, i.e.
    /// when the backend may have processed them. Only for routes where running twice is
    /// harmless. Default false.
    #[serde(default)]
    pub retry_after_processing: bool,
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let texts = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => vec![text],
        OneOrMany::Many(texts) => texts,
    };
    if texts.is_empty() {
        return Err(serde::de::Error::custom("at least one listen address is required"));
    }
    texts
        .iter()
        .map(|text| {
            text.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid listen address {text:?}: expected IP:PORT, e.g. \"0.0.0.0:8080\""
                ))
            })
        })
        .collect()
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 8080))]
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_request_body() -> ByteSize {
    // Dify's docker nginx ships `client_max_body_size 100M` (NGINX_CLIENT_MAX_BODY_SIZE).
    ByteSize(100 << 20)
}
fn default_client_read_buffer() -> ByteSize {
    ByteSize(8 << 10)
}
fn default_resolve_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}
fn default_keepalive_pool() -> usize {
    256
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}
fn default_request_header_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}
fn default_max_request_header() -> ByteSize {
    ByteSize(32 << 10)
}
fn default_max_request_header_line() -> ByteSize {
    ByteSize(8 << 10)
}
fn default_keepalive_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}
fn default_body_read_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}
fn default_max_connections() -> usize {
    16_384
}
fn default_log_level() -> String {
    "info".to_string()
}
fn default_true() -> bool {
    true
}
