//! `[upstreams.NAME]`: servers, admission, health and retry settings, each checked and
//! resolved to its defaults; and the `host:port` / `--upstream` URL parsers.

use std::time::Duration;

use super::errors::{ConfigError, Locator};
use crate::config::schema::{RawAdmission, RawHealth, RawRetry};
use crate::config::{AdmissionSpec, HealthSpec, RetrySpec, ServerAddr};

pub(super) fn build_admission(
    name: &str,
    raw: &RawAdmission,
    at: &Locator<'_>,
) -> Result<AdmissionSpec, ConfigError> {
    let d = AdmissionSpec::default();
    let key = |k: &str| format!("upstreams.{name}.admission.{k}");
    let initial_limit = raw.initial_limit.unwrap_or(d.initial_limit);
    let max_limit = raw.max_limit.unwrap_or(d.max_limit);
    // Absent, the floor gives way to bounds the operator set below it: a limit pinned at one
    // (`max_limit = 1`) or started there keeps a floor of one, as before the default was two.
    let min_limit = raw.min_limit.unwrap_or_else(|| d.min_limit.min(initial_limit).min(max_limit).max(1));
    let spec = AdmissionSpec {
        enabled: raw.enabled.unwrap_or(d.enabled),
        initial_limit,
        min_limit,
        max_limit,
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

pub(super) fn build_health(name: &str, raw: &RawHealth, at: &Locator<'_>) -> Result<HealthSpec, ConfigError> {
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
        silent_timeout: raw.silent_timeout.unwrap_or(d.silent_timeout),
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
    let silent = spec.silent_timeout;
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&silent.0) || silent.0 <= spec.timeout.0
    {
        return Err(at.unplaced(
            &key("silent_timeout"),
            format!(
                "{silent} is out of range: expected 1s..=10m and above health.timeout ({})",
                spec.timeout
            ),
        ));
    }
    if spec.ramp.0 > Duration::from_secs(3600) {
        return Err(at.unplaced(&key("ramp"), format!("{} is out of range: expected 0s..=1h", spec.ramp)));
    }
    Ok(spec)
}

pub(super) fn build_retry(name: &str, raw: &RawRetry, at: &Locator<'_>) -> Result<RetrySpec, ConfigError> {
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
