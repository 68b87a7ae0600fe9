//! The smaller top-level tables: `[sidecar]`, `server.trusted_proxies`, the client limits of
//! `[server]`, `[[maintenance]]`, `[admission]` and `[tenants]`.

use std::collections::BTreeMap;

use toml::Spanned;

use super::errors::{ConfigError, Locator};
use super::names::list;
use crate::config::forwarding::TrustedProxies;
use crate::config::schema::{RawAdmissionGlobal, RawServer, RawSidecar, RawTenants};
use crate::config::TenantSource;
use crate::config::{AdmissionGlobal, RateLimitSpec, SidecarSettings, TenantSettings, UpstreamSpec};

/// `[sidecar]`: service names must be names.
pub(super) fn build_sidecar(raw: &RawSidecar, at: &Locator<'_>) -> Result<SidecarSettings, ConfigError> {
    let reload_nginx = raw.reload_nginx.clone().unwrap_or_default();
    if reload_nginx.iter().any(|s| s.trim().is_empty()) {
        return Err(at.unplaced("sidecar.reload_nginx", "names compose services: no empty names".into()));
    }
    let defaults = SidecarSettings::default();
    Ok(SidecarSettings { reload_nginx, socket: raw.socket.clone().unwrap_or(defaults.socket) })
}

/// Client connections allowed from one IP when `max_connections_per_ip` is not set (never
/// more than `max_connections`).
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1024;

/// The client limits of `[server]`: each in a range where it still protects (0 would refuse
/// everyone, an hour-long header timeout would protect no one). Returns the per-IP cap in
/// force.
pub(super) fn check_client_limits(server: &RawServer, at: &Locator<'_>) -> Result<usize, ConfigError> {
    use std::time::Duration;
    let secs = Duration::from_secs;
    let durations = [
        ("server.request_header_timeout", server.request_header_timeout, secs(1), secs(600), "1s..=10m"),
        ("server.keepalive_timeout", server.keepalive_timeout, secs(0), secs(3600), "0s..=1h"),
        ("server.body_read_timeout", server.body_read_timeout, secs(1), secs(3600), "1s..=1h"),
    ];
    for (key, value, low, high, range) in durations {
        if !(low..=high).contains(&value.0) {
            return Err(at.unplaced(key, format!("{value} is out of range: expected {range}")));
        }
    }
    let header = server.max_request_header;
    if !((1 << 10)..=(1 << 20)).contains(&header.0) {
        return Err(at.unplaced(
            "server.max_request_header",
            format!("{header} is out of range: expected 1KiB..=1MiB"),
        ));
    }
    let line = server.max_request_header_line;
    if !(256..=header.0).contains(&line.0) {
        return Err(at.unplaced(
            "server.max_request_header_line",
            format!("{line} is out of range: expected 256B..=server.max_request_header ({header})"),
        ));
    }
    let total = server.max_connections;
    if !(1..=1_000_000).contains(&total) {
        return Err(
            at.unplaced("server.max_connections", format!("{total} is out of range: expected 1..=1000000"))
        );
    }
    let Some(per_ip) = server.max_connections_per_ip else {
        return Ok(DEFAULT_MAX_CONNECTIONS_PER_IP.min(total));
    };
    if !(1..=total).contains(&per_ip) {
        return Err(at.unplaced(
            "server.max_connections_per_ip",
            format!("{per_ip} is out of range: expected 1..=server.max_connections ({total})"),
        ));
    }
    Ok(per_ip)
}

/// `server.trusted_proxies`, parsed once here so a request only compares addresses. Unset
/// means loopback and the private ranges; an empty list trusts no peer.
pub(super) fn build_trusted_proxies(
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

pub(super) fn build_maintenance(
    raw: &[crate::config::maintenance::RawMaintenance],
    upstreams: &BTreeMap<String, UpstreamSpec>,
    at: &Locator<'_>,
) -> Result<BTreeMap<String, crate::config::MaintenanceSpec>, ConfigError> {
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
        let spec = crate::config::maintenance::build(index, entry, &upstream.health.path).map_err(
            |(key, message, span)| {
                let span = span.unwrap_or_else(|| entry.upstream.span());
                at.error(span, Some(key), message)
            },
        )?;
        built.insert(name.clone(), spec);
    }
    Ok(built)
}

pub(super) fn build_admission_global(
    raw: &RawAdmissionGlobal,
    at: &Locator<'_>,
) -> Result<AdmissionGlobal, ConfigError> {
    let defaults = AdmissionGlobal::default();
    let reserve = raw.interactive_reserve.unwrap_or(defaults.interactive_reserve);
    if !(0.0..=0.5).contains(&reserve) {
        return Err(at.unplaced(
            "admission.interactive_reserve",
            format!("{reserve} is out of range: expected 0..=0.5"),
        ));
    }
    Ok(AdmissionGlobal {
        interactive_reserve: reserve,
        lifo_after: raw.lifo_after.unwrap_or(defaults.lifo_after),
    })
}

pub(super) fn build_tenants(raw: &RawTenants, at: &Locator<'_>) -> Result<TenantSettings, ConfigError> {
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
