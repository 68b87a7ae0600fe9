//! Turning TOML text into a validated [`Config`]: parse (serde, with spans), apply the CLI
//! overrides, check cross-references, and report the first problem as
//! `FILE:LINE:COL: KEY: what was expected`.
//!
//! The CLI overrides are applied here, on every load, so a SIGHUP reload keeps honouring the
//! `--listen`, `--admin` and `--upstream` flags the process was started with.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use toml::Spanned;

use super::schema::{
    RawAdmission, RawAdmissionGlobal, RawClass, RawConfig, RawHealth, RawRetry, RawRoute, RawSidecar,
    RawTenants,
};
use super::units::HumanDuration;
use super::{
    AdmissionGlobal, AdmissionSpec, ClassSpec, Config, HealthSpec, LogSettings, RateLimitSpec, RetrySpec,
    ServerAddr, ServerSettings, SidecarSettings, TenantSettings, UpstreamSpec,
};
use crate::admission::tenant::TenantSource;
use crate::admission::AdmissionPolicy;
use crate::metrics::SeriesSlot;
use crate::proxy::headers::TrustedProxies;
use crate::proxy::routing::{Route, Router};

/// The embedded default config used when `run` gets no `--config`.
pub const EMBEDDED_DEFAULTS: &str = include_str!("embedded.toml");

/// Why a config could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Io {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A value or structure in the file is wrong; points at the place.
    #[error("{origin}:{line}:{column}: {key}{message}", key = key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Invalid {
        /// File path or `embedded defaults`.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The dotted key, when known.
        key: Option<String>,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A command-line override does not fit the config.
    #[error("{flag}: {message}")]
    Override {
        /// The flag, e.g. `--upstream`.
        flag: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// Command-line values that replace parts of every loaded config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`: replaces `server.listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// `--admin`: replaces `server.admin`.
    pub admin: Option<std::net::SocketAddr>,
    /// `--upstream`: replaces the servers of the upstream named `api`.
    pub upstream: Option<String>,
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
    let server_settings = ServerSettings {
        listen: overrides.listen.map_or_else(|| server.listen.clone(), |a| vec![a]),
        admin: overrides.admin.unwrap_or(server.admin),
        admin_token: server
            .admin_token
            .clone()
            .or_else(|| std::env::var("DIFY_SHAPER_ADMIN_TOKEN").ok())
            .filter(|t| !t.trim().is_empty()),
        threads,
        max_request_body: server.max_request_body,
        client_read_buffer: server.client_read_buffer,
        resolve_interval: server.resolve_interval,
        upstream_keepalive_pool: server.upstream_keepalive_pool,
        shutdown_grace: server.shutdown_grace,
        forwarding: server.forwarding,
        trusted_proxies,
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
    })
}

/// `[sidecar]`: service names must be names.
fn build_sidecar(raw: &RawSidecar, at: &Locator<'_>) -> Result<SidecarSettings, ConfigError> {
    let reload_nginx = raw.reload_nginx.clone().unwrap_or_default();
    if reload_nginx.iter().any(|s| s.trim().is_empty()) {
        return Err(at.unplaced("sidecar.reload_nginx", "names compose services: no empty names".into()));
    }
    let defaults = SidecarSettings::default();
    Ok(SidecarSettings { reload_nginx, socket: raw.socket.clone().unwrap_or(defaults.socket) })
}

/// `server.trusted_proxies`, parsed once here so a request only compares addresses. Unset
/// means loopback and the private ranges; an empty list trusts no peer.
fn build_trusted_proxies(
    raw: Option<&[Spanned<String>]>,
    at: &Locator<'_>,
) -> Result<TrustedProxies, ConfigError> {
    let Some(entries) = raw else { return Ok(TrustedProxies::defaults()) };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let range = TrustedProxies::parse_range(entry.get_ref())
            .map_err(|m| at.error(entry.span(), Some("server.trusted_proxies".into()), m))?;
        ranges.push(range);
    }
    Ok(TrustedProxies::new(ranges))
}

fn build_maintenance(
    raw: &[super::maintenance::RawMaintenance],
    upstreams: &BTreeMap<String, UpstreamSpec>,
    at: &Locator<'_>,
) -> Result<BTreeMap<String, super::MaintenanceSpec>, ConfigError> {
    let mut built = BTreeMap::new();
    for (index, entry) in raw.iter().enumerate() {
        let name = entry.upstream.get_ref();
        let key = format!("maintenance[{index}].upstream");
        let Some(upstream) = upstreams.get(name) else {
            let known = upstreams.keys().map(String::as_str).collect::<Vec<_>>();
            let message = format!("no upstream named {name:?}; defined: {}", list(&known));
            return Err(at.error(entry.upstream.span(), Some(key), message));
        };
        if built.contains_key(name) {
            let message = format!("upstream {name:?} already has a [[maintenance]] entry; one per upstream");
            return Err(at.error(entry.upstream.span(), Some(key), message));
        }
        let spec = super::maintenance::build(index, entry, &upstream.health.path).map_err(
            |(key, message, span)| {
                let span = span.unwrap_or_else(|| entry.upstream.span());
                at.error(span, Some(key), message)
            },
        )?;
        built.insert(name.clone(), spec);
    }
    Ok(built)
}

fn build_admission(name: &str, raw: &RawAdmission, at: &Locator<'_>) -> Result<AdmissionSpec, ConfigError> {
    let d = AdmissionSpec::default();
    let key = |k: &str| format!("upstreams.{name}.admission.{k}");
    let spec = AdmissionSpec {
        enabled: raw.enabled.unwrap_or(d.enabled),
        initial_limit: raw.initial_limit.unwrap_or(d.initial_limit),
        min_limit: raw.min_limit.unwrap_or(d.min_limit),
        max_limit: raw.max_limit.unwrap_or(d.max_limit),
        max_queue: raw.max_queue.unwrap_or(d.max_queue),
        latency_tolerance: raw.latency_tolerance.unwrap_or(d.latency_tolerance),
    };
    if spec.min_limit == 0 {
        return Err(at.unplaced(&key("min_limit"), "must be at least 1".into()));
    }
    if spec.max_limit < spec.min_limit || spec.max_limit > 100_000 {
        return Err(
            at.unplaced(&key("max_limit"), format!("{} must be within min_limit..=100000", spec.max_limit))
        );
    }
    if !(spec.min_limit..=spec.max_limit).contains(&spec.initial_limit) {
        return Err(at.unplaced(
            &key("initial_limit"),
            format!(
                "{} must be within min_limit..=max_limit ({}..={})",
                spec.initial_limit, spec.min_limit, spec.max_limit
            ),
        ));
    }
    if spec.max_queue > 1_000_000 {
        return Err(at.unplaced(
            &key("max_queue"),
            format!("{} is out of range: expected 0..=1000000", spec.max_queue),
        ));
    }
    if !(spec.latency_tolerance > 1.0 && spec.latency_tolerance <= 10.0) {
        return Err(at.unplaced(
            &key("latency_tolerance"),
            format!("{} is out of range: expected a ratio in (1, 10], e.g. 1.3", spec.latency_tolerance),
        ));
    }
    Ok(spec)
}

fn build_health(name: &str, raw: &RawHealth, at: &Locator<'_>) -> Result<HealthSpec, ConfigError> {
    let d = HealthSpec::default();
    let key = |k: &str| format!("upstreams.{name}.health.{k}");
    let spec = HealthSpec {
        enabled: raw.enabled.unwrap_or(d.enabled),
        path: raw.path.clone().unwrap_or(d.path),
        interval: raw.interval.unwrap_or(d.interval),
        timeout: raw.timeout.unwrap_or(d.timeout),
        rise: raw.rise.unwrap_or(d.rise),
        fall: raw.fall.unwrap_or(d.fall),
        ramp: raw.ramp.unwrap_or(d.ramp),
    };
    if !spec.path.starts_with('/') || spec.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(at.unplaced(&key("path"), format!("{:?} must be a path starting with '/'", spec.path)));
    }
    for (k, v) in [("interval", spec.interval), ("timeout", spec.timeout)] {
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&v.0) {
            return Err(at.unplaced(&key(k), format!("{v} is out of range: expected 100ms..=5m")));
        }
    }
    for (k, v) in [("rise", spec.rise), ("fall", spec.fall)] {
        if !(1..=100).contains(&v) {
            return Err(at.unplaced(&key(k), format!("{v} is out of range: expected 1..=100")));
        }
    }
    if spec.ramp.0 > Duration::from_secs(3600) {
        return Err(at.unplaced(&key("ramp"), format!("{} is out of range: expected 0s..=1h", spec.ramp)));
    }
    Ok(spec)
}

fn build_retry(name: &str, raw: &RawRetry, at: &Locator<'_>) -> Result<RetrySpec, ConfigError> {
    let d = RetrySpec::default();
    let key = |k: &str| format!("upstreams.{name}.retry.{k}");
    let spec = RetrySpec {
        budget_ratio: raw.budget_ratio.unwrap_or(d.budget_ratio),
        budget_min: raw.budget_min.unwrap_or(d.budget_min),
        max_retries: raw.max_retries.unwrap_or(d.max_retries),
        backoff_base: raw.backoff_base.unwrap_or(d.backoff_base),
        backoff_max: raw.backoff_max.unwrap_or(d.backoff_max),
    };
    if !(0.0..=1.0).contains(&spec.budget_ratio) {
        return Err(at.unplaced(
            &key("budget_ratio"),
            format!("{} is out of range: expected 0..=1", spec.budget_ratio),
        ));
    }
    if spec.budget_min > 1000 {
        return Err(at.unplaced(
            &key("budget_min"),
            format!("{} is out of range: expected 0..=1000", spec.budget_min),
        ));
    }
    if spec.max_retries > 10 {
        return Err(at.unplaced(
            &key("max_retries"),
            format!("{} is out of range: expected 0..=10", spec.max_retries),
        ));
    }
    if spec.backoff_max < spec.backoff_base || spec.backoff_max.0 > Duration::from_secs(60) {
        return Err(at.unplaced(
            &key("backoff_max"),
            format!("{} must be within backoff_base..=60s", spec.backoff_max),
        ));
    }
    Ok(spec)
}

fn build_admission_global(
    raw: &RawAdmissionGlobal,
    at: &Locator<'_>,
) -> Result<AdmissionGlobal, ConfigError> {
    let defaults = AdmissionPolicy::default();
    let reserve = raw.interactive_reserve.unwrap_or(defaults.interactive_reserve);
    if !(0.0..=0.5).contains(&reserve) {
        return Err(at.unplaced(
            "admission.interactive_reserve",
            format!("{reserve} is out of range: expected 0..=0.5"),
        ));
    }
    Ok(AdmissionGlobal {
        interactive_reserve: reserve,
        lifo_after: raw.lifo_after.unwrap_or(HumanDuration(defaults.lifo_after)),
    })
}

fn build_tenants(raw: &RawTenants, at: &Locator<'_>) -> Result<TenantSettings, ConfigError> {
    let header = match &raw.header {
        None => None,
        Some(name) => {
            let text = name.get_ref().to_ascii_lowercase();
            if http::HeaderName::from_bytes(text.as_bytes()).is_err() {
                return Err(at.error(
                    name.span(),
                    Some("tenants.header".into()),
                    format!("{text:?} is not a valid header name"),
                ));
            }
            // `authorization` means the default: the bearer token, not the whole header.
            (text != "authorization").then_some(text)
        }
    };
    let rate_limit = match &raw.rate_limit {
        None => None,
        Some(r) => {
            if !(r.rate.is_finite() && r.rate > 0.0 && r.rate <= 1_000_000.0) {
                return Err(at.unplaced(
                    "tenants.rate_limit.rate",
                    format!("{} is out of range: expected requests per second > 0", r.rate),
                ));
            }
            if r.burst == 0 {
                return Err(at.unplaced("tenants.rate_limit.burst", "must be at least 1".into()));
            }
            Some(RateLimitSpec { rate: r.rate, burst: r.burst })
        }
    };
    // Validated above, so the header name parses; resolve it once instead of per request.
    let source = match header.as_deref().map(|h| http::HeaderName::from_bytes(h.as_bytes())) {
        Some(Ok(name)) => TenantSource::Header(name),
        _ => TenantSource::BearerToken,
    };
    Ok(TenantSettings { header, rate_limit, source })
}

/// The built-in class names; each always exists.
const BUILTIN_CLASSES: [&str; 3] = ["interactive", "run", "control"];

/// Dify's own nginx (`proxy_read_timeout` and `proxy_send_timeout`): the longest any request
/// may take through stock Dify. A shorter default would cut runs stock Dify finishes.
pub const DIFY_NGINX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Defaults for a class. `run` is Dify's long workflow/chat runs, `control` the cheap
/// stop-task calls; any other name starts from the `interactive` values. Every class may
/// wait as long as Dify's nginx allows: the proxy's own limits guard against a dead backend
/// (connect, stream idle, queue), never against a slow run.
fn class_defaults(name: &str) -> ClassSpec {
    let secs = |s| HumanDuration(Duration::from_secs(s));
    // (queue timeout, weight, queued)
    let (queue, weight, queued) = match name {
        "run" => (60, 1, true),
        "control" => (10, 1, false),
        _ => (10, 4, true),
    };
    ClassSpec {
        name: name.to_string(),
        connect_timeout: secs(5),
        read_timeout: HumanDuration(DIFY_NGINX_TIMEOUT),
        // Dify pings every 10 s: three missed pings mean the stream is dead.
        stream_idle_timeout: secs(30),
        total_timeout: None,
        write_timeout: HumanDuration(DIFY_NGINX_TIMEOUT),
        queue_timeout: secs(queue),
        weight,
        queued,
        interactive: name == "interactive",
        index: 0,
    }
}

fn build_classes(
    raw: &BTreeMap<String, RawClass>,
    at: &Locator<'_>,
) -> Result<BTreeMap<String, Arc<ClassSpec>>, ConfigError> {
    let mut classes: BTreeMap<String, Arc<ClassSpec>> =
        BUILTIN_CLASSES.into_iter().map(|name| (name.to_string(), Arc::new(class_defaults(name)))).collect();
    for (name, overrides) in raw {
        check_name(name).map_err(|m| at.unplaced(&format!("classes.{name}"), m))?;
        let base = class_defaults(name);
        let spec = ClassSpec {
            name: name.clone(),
            connect_timeout: overrides.connect_timeout.unwrap_or(base.connect_timeout),
            read_timeout: overrides.read_timeout.unwrap_or(base.read_timeout),
            stream_idle_timeout: overrides.stream_idle_timeout.unwrap_or(base.stream_idle_timeout),
            total_timeout: overrides.total_timeout.or(base.total_timeout),
            write_timeout: overrides.write_timeout.unwrap_or(base.write_timeout),
            queue_timeout: overrides.queue_timeout.unwrap_or(base.queue_timeout),
            weight: overrides.weight.unwrap_or(base.weight),
            queued: overrides.queued.unwrap_or(base.queued),
            interactive: overrides.interactive.unwrap_or(base.interactive),
            index: 0,
        };
        if spec.total_timeout.is_some_and(|t| t.0.is_zero()) {
            return Err(
                at.unplaced(&format!("classes.{name}.total_timeout"), "must be greater than 0".into())
            );
        }
        if !(1..=100).contains(&spec.weight) {
            return Err(at.unplaced(
                &format!("classes.{name}.weight"),
                format!("{} is out of range: expected 1..=100", spec.weight),
            ));
        }
        for (key, value) in [
            ("connect_timeout", spec.connect_timeout),
            ("read_timeout", spec.read_timeout),
            ("stream_idle_timeout", spec.stream_idle_timeout),
            ("write_timeout", spec.write_timeout),
            ("queue_timeout", spec.queue_timeout),
        ] {
            if value.0.is_zero() {
                return Err(at.unplaced(&format!("classes.{name}.{key}"), "must be greater than 0".into()));
            }
        }
        classes.insert(name.clone(), Arc::new(spec));
    }
    // Indices follow the (sorted) names; admission and latency signals are keyed by them.
    for (index, spec) in classes.values_mut().enumerate() {
        Arc::make_mut(spec).index = index;
    }
    Ok(classes)
}

fn build_route(
    index: usize,
    raw: &RawRoute,
    upstreams: &BTreeMap<String, UpstreamSpec>,
    classes: &BTreeMap<String, Arc<ClassSpec>>,
    at: &Locator<'_>,
) -> Result<Route, ConfigError> {
    let key = |k: &str| Some(format!("routes[{index}].{k}"));
    let prefix = raw.prefix.get_ref();
    if !prefix.starts_with('/') {
        return Err(at.error(raw.prefix.span(), key("prefix"), format!("{prefix:?} must start with '/'")));
    }
    if !crate::proxy::routing::wildcards_are_segments(prefix) {
        return Err(at.error(
            raw.prefix.span(),
            key("prefix"),
            format!("{prefix:?}: `*` must be a whole segment (e.g. \"/console/api/apps/*/chat-messages\")"),
        ));
    }
    let suffix = match &raw.suffix {
        Some(s) if s.get_ref().is_empty() || !s.get_ref().starts_with('/') => {
            return Err(at.error(s.span(), key("suffix"), format!("{:?} must start with '/'", s.get_ref())))
        }
        Some(s) if s.get_ref().contains('*') => {
            return Err(at.error(
                s.span(),
                key("suffix"),
                format!("{:?}: wildcards belong in `prefix` (a `*` segment), not in `suffix`", s.get_ref()),
            ))
        }
        Some(s) => Some(s.get_ref().clone()),
        None => None,
    };
    let upstream = raw.upstream.get_ref();
    if !upstreams.contains_key(upstream) {
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        return Err(at.error(
            raw.upstream.span(),
            key("upstream"),
            format!(
                "route points to upstream {upstream:?}, which is not defined (defined: {})",
                list(&known)
            ),
        ));
    }
    let class = match &raw.class {
        None => classes.get("interactive").cloned(),
        Some(name) => classes.get(name.get_ref()).cloned(),
    };
    let Some(class) = class else {
        let known: Vec<&str> = classes.keys().map(String::as_str).collect();
        let span = raw.class.as_ref().map_or(0..0, Spanned::span);
        return Err(at.error(span, key("class"), format!("unknown class (defined: {})", list(&known))));
    };
    let methods = match &raw.methods {
        None => None,
        Some(spanned) => {
            let mut methods = Vec::new();
            for text in spanned.get_ref() {
                let method =
                    http::Method::from_bytes(text.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        at.error(spanned.span(), key("methods"), format!("{text:?} is not an HTTP method"))
                    })?;
                methods.push(method);
            }
            if methods.is_empty() {
                return Err(at.error(
                    spanned.span(),
                    key("methods"),
                    "an empty list matches nothing; omit the key to match every method".into(),
                ));
            }
            Some(methods)
        }
    };
    Ok(Route {
        name: raw.name.clone().unwrap_or_else(|| {
            format!("{prefix}{}", suffix.as_deref().map(|s| format!("*{s}")).unwrap_or_default())
        }),
        prefix: prefix.clone(),
        suffix,
        methods,
        upstream: upstream.clone(),
        class,
        retry_after_processing: raw.retry_after_processing,
        index,
        span: raw.prefix.span(),
        metrics: SeriesSlot::default(),
    })
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("name {name:?} must be 1-64 characters of [A-Za-z0-9_-]"))
    }
}

/// Parses `host:port` (IPv6 as `[::1]:5001`).
pub fn parse_server_addr(text: &str) -> Result<ServerAddr, String> {
    let expected = "expected \"host:port\", e.g. \"api:5001\" or \"127.0.0.1:5001\"";
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok(ServerAddr { host: addr.ip().to_string(), port: addr.port() });
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid server address {text:?}: missing port; {expected}"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("invalid port in {text:?}; {expected}"))?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !host_ok {
        return Err(format!("invalid host in {text:?}; {expected}"));
    }
    Ok(ServerAddr { host: host.to_string(), port })
}

/// Parses `--upstream`: `http://host:port` (port defaults to 80) or a bare `host:port`.
pub fn parse_upstream_url(text: &str) -> Result<ServerAddr, String> {
    if text.starts_with("https://") {
        return Err(format!("{text:?}: TLS to the upstream is not supported; Dify's API speaks plain HTTP inside the compose network"));
    }
    let rest = text.strip_prefix("http://").unwrap_or(text);
    let authority = rest.split('/').next().unwrap_or_default();
    if rest.len() > authority.len() && rest != format!("{authority}/") {
        return Err(format!("{text:?}: a path is not supported, give only scheme, host and port"));
    }
    if authority.contains(':') {
        parse_server_addr(authority)
    } else {
        parse_server_addr(&format!("{authority}:80"))
    }
}

/// Maps byte offsets in the source to `line:col` and finds the key an offset belongs to.
struct Locator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: Range<usize>, key: Option<String>, message: String) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError::Invalid { origin: self.origin.to_string(), line, column, key, message }
    }

    /// An error about a key that has no span of its own (a whole-table check): points at the
    /// key's line when it is written in the file, else at the top.
    fn unplaced(&self, key: &str, message: String) -> ConfigError {
        let leaf = key.rsplit('.').next().unwrap_or(key);
        let offset = self
            .text
            .match_indices(leaf)
            .map(|(i, _)| i)
            .find(|i| self.key_at(*i).as_deref() == Some(key))
            .unwrap_or(0);
        self.error(offset..offset, Some(key.to_string()), message)
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// `table.key` for the `key = value` line around `offset`, using the nearest `[table]`
    /// header above it; `None` when the offset is not on such a line.
    fn key_at(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..].find('\n').map_or(self.text.len(), |i| offset + i);
        let line = &self.text[line_start..line_end];
        let (key, _) = line.split_once('=')?;
        let key = key.trim().trim_matches('"');
        if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
            return None;
        }
        let table = self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        Some(match table {
            Some(table) if !table.is_empty() => format!("{table}.{key}"),
            _ => key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
