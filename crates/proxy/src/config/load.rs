//! Turning TOML text into a validated [`Config`]: parse (serde, with spans), apply the CLI
//! overrides, check cross-references, and report the first problem as
//! `FILE:LINE:COL: KEY: what was expected`.
//!
//! The CLI overrides are applied here, on every load, so a SIGHUP reload keeps honouring the
//! `--listen`, `--admin` and `--upstream` flags the process was started with.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::schema::RawConfig;
use super::units::HumanDuration;
use super::{Config, LogSettings, ServerSettings, UpstreamSpec};
use crate::config::routes::Router;
use errors::Locator;
use names::check_name;
use routes::{build_classes, build_route};
use sections::{
    build_admission_global, build_maintenance, build_sidecar, build_tenants, build_trusted_proxies,
    check_client_limits,
};
use upstreams::{build_admission, build_health, build_retry};

mod errors;
mod names;
mod routes;
mod sections;
mod upstreams;

pub use errors::ConfigError;
pub use routes::DIFY_NGINX_TIMEOUT;
pub use upstreams::{parse_server_addr, parse_upstream_url};

/// The embedded default config used when `run` gets no `--config`.
pub const EMBEDDED_DEFAULTS: &str = include_str!("embedded.toml");

/// Command-line values that replace parts of every loaded config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`: replaces `server.listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// `--admin`: replaces `server.admin`.
    pub admin: Option<std::net::SocketAddr>,
    /// `--upstream`: replaces the servers of the upstream named `api`.
    pub upstream: Option<String>,
    /// `DIFY_SHAPER_ADMIN_TOKEN`: the admin token when the file sets no `server.admin_token`
    /// (read from the environment by the caller: the loader reads nothing but its text).
    pub admin_token: Option<String>,
    /// `--redis` / `DIFY_SHAPER_REDIS`: replaces `cluster.redis`.
    pub redis: Option<String>,
}

/// Reads and validates a config file.
pub fn load_file(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Io { path: path.display().to_string(), source })?;
    parse_str(&text, &path.display().to_string(), overrides)
}

/// Validates the embedded defaults (every path → upstream `api`).
pub fn load_embedded(overrides: &Overrides) -> Result<Config, ConfigError> {
    parse_str(EMBEDDED_DEFAULTS, "embedded defaults", overrides)
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse_str(text: &str, origin: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
    let at = Locator { text, origin };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        at.error(span.clone(), at.key_at(span.start), e.message().to_string())
    })?;
    build(raw, &at, overrides)
}

fn build(raw: RawConfig, at: &Locator<'_>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let server = &raw.server;
    let threads = match server.threads {
        Some(n) if !(1..=256).contains(&n) => {
            return Err(at.unplaced("server.threads", format!("{n} is out of range: expected 1..=256")))
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let resolve = server.resolve_interval.0;
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&resolve) {
        return Err(at.unplaced(
            "server.resolve_interval",
            format!("{} is out of range: expected 1s..=1h", server.resolve_interval),
        ));
    }
    let read_buffer = server.client_read_buffer.0;
    if !(1024..=(1 << 20)).contains(&read_buffer) {
        return Err(at.unplaced(
            "server.client_read_buffer",
            format!("{} is out of range: expected 1KiB..=1MiB", server.client_read_buffer),
        ));
    }
    let trusted_proxies = build_trusted_proxies(server.trusted_proxies.as_deref(), at)?;
    let max_connections_per_ip = check_client_limits(server, at)?;
    let server_settings = ServerSettings {
        listen: overrides.listen.map_or_else(|| server.listen.clone(), |a| vec![a]),
        admin: overrides.admin.unwrap_or(server.admin),
        admin_token: server
            .admin_token
            .clone()
            .or_else(|| overrides.admin_token.clone())
            .filter(|t| !t.trim().is_empty()),
        threads,
        max_request_body: server.max_request_body,
        client_read_buffer: server.client_read_buffer,
        resolve_interval: server.resolve_interval,
        upstream_keepalive_pool: server.upstream_keepalive_pool,
        shutdown_grace: server.shutdown_grace,
        forwarding: server.forwarding,
        trusted_proxies,
        request_header_timeout: server.request_header_timeout,
        max_request_header: server.max_request_header,
        max_request_header_line: server.max_request_header_line,
        keepalive_timeout: server.keepalive_timeout,
        body_read_timeout: server.body_read_timeout,
        max_connections: server.max_connections,
        max_connections_per_ip,
    };
    let log =
        LogSettings { format: raw.log.format, level: raw.log.level.clone(), access_log: raw.log.access_log };

    let mut upstreams = BTreeMap::new();
    for (name, spec) in &raw.upstreams {
        check_name(name).map_err(|m| at.error(spec.span(), Some(format!("upstreams.{name}")), m))?;
        let servers = &spec.get_ref().servers;
        if servers.is_empty() {
            return Err(at.error(
                spec.span(),
                Some(format!("upstreams.{name}.servers")),
                "an upstream needs at least one server \"host:port\"".into(),
            ));
        }
        let mut parsed = Vec::with_capacity(servers.len());
        for server in servers {
            let addr = parse_server_addr(server.get_ref())
                .map_err(|m| at.error(server.span(), Some(format!("upstreams.{name}.servers")), m))?;
            parsed.push(addr);
        }
        let admission = build_admission(name, &spec.get_ref().admission, at)?;
        let keepalive = spec.get_ref().keepalive.unwrap_or(HumanDuration(super::DEFAULT_UPSTREAM_KEEPALIVE));
        if keepalive.0 > Duration::from_secs(300) {
            return Err(at.unplaced(
                &format!("upstreams.{name}.keepalive"),
                format!("{keepalive} is out of range: expected 0s..=5m"),
            ));
        }
        let health = build_health(name, &spec.get_ref().health, at)?;
        let retry = build_retry(name, &spec.get_ref().retry, at)?;
        upstreams.insert(name.clone(), UpstreamSpec { servers: parsed, keepalive, admission, health, retry });
    }
    if let Some(url) = &overrides.upstream {
        let addr = parse_upstream_url(url)
            .map_err(|message| ConfigError::Override { flag: "--upstream", message })?;
        match upstreams.get_mut("api") {
            Some(api) => api.servers = vec![addr],
            None => {
                return Err(ConfigError::Override {
                    flag: "--upstream",
                    message:
                        "replaces the servers of the upstream named `api`, which this config does not define"
                            .into(),
                })
            }
        }
    }

    let classes = build_classes(&raw.classes, at)?;
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (index, route) in raw.routes.iter().enumerate() {
        routes.push(build_route(index, route, &upstreams, &classes, at)?);
    }
    let router = Router::new(routes).map_err(|clash| {
        at.error(clash.span.clone(), Some(format!("routes[{}].prefix", clash.index)), clash.message)
    })?;

    let admission = build_admission_global(&raw.admission, at)?;
    let tenants = build_tenants(&raw.tenants, at)?;
    if !server_settings.admin.ip().is_loopback() && server_settings.admin_token.is_none() {
        return Err(at.unplaced(
            "server.admin",
            format!(
                "{} is reachable from other hosts: set server.admin_token (or DIFY_SHAPER_ADMIN_TOKEN) \
                 so drain/restart need a bearer token, or listen on 127.0.0.1",
                server_settings.admin
            ),
        ));
    }
    let maintenance = build_maintenance(&raw.maintenance, &upstreams, at)?;
    let sidecar = build_sidecar(&raw.sidecar, at)?;
    let cluster = super::cluster::build(&raw.cluster, overrides.redis.as_deref())
        .map_err(|(key, message)| at.unplaced(key, message))?;

    Ok(Config {
        source: at.origin.to_string(),
        server: server_settings,
        log,
        upstreams,
        classes,
        admission,
        tenants,
        router,
        maintenance,
        sidecar,
        cluster,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
