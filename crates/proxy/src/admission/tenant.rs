//! Who a request belongs to, and per-tenant rate limits.
//!
//! The tenant is the Dify app: the hashed `Authorization: Bearer app-…` key by default, or the
//! value of a configured header (e.g. one a gateway sets per customer). Requests without one
//! share the `anonymous` tenant. Only a hash is kept; the label shown in `/status` and logs is
//! redacted (`app-…abcd`).
//!
//! Rate limits use governor's keyed GCRA limiter: `rate` requests per second per tenant with a
//! `burst`. A refusal carries the time until the next request would be allowed, which becomes
//! the 429's `Retry-After`.

use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::queue::TenantId;
use crate::config::TenantSource;
use crate::redact::redact_key;

/// A request's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Hash of the key.
    pub id: TenantId,
    /// Redacted label.
    pub label: String,
}

impl Tenant {
    /// The shared tenant of requests without a key.
    pub fn anonymous() -> Self {
        Tenant { id: 0, label: "anonymous".into() }
    }
}

/// Identifies the tenant of a request from its headers.
pub fn tenant_of(source: &TenantSource, headers: &http::HeaderMap) -> Tenant {
    let key = match source {
        TenantSource::BearerToken => headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("Bearer "))
            .map(str::trim),
        TenantSource::Header(name) => headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim),
    };
    match key {
        Some(key) if !key.is_empty() => {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut hasher);
            // 0 is reserved for the anonymous tenant.
            Tenant { id: hasher.finish().max(1), label: redact_key(key) }
        }
        _ => Tenant::anonymous(),
    }
}

/// Per-tenant request rate limit.
#[derive(Debug)]
pub struct TenantRateLimiter {
    limiter: DefaultKeyedRateLimiter<TenantId>,
    rate: f64,
    burst: u32,
}

impl TenantRateLimiter {
    /// `rate` requests per second (may be fractional) with bursts of `burst`; `None` when
    /// the numbers are unusable (validated at config load).
    pub fn new(rate: f64, burst: u32) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let quota =
            Quota::with_period(Duration::from_secs_f64(1.0 / rate))?.allow_burst(NonZeroU32::new(burst)?);
        Some(TenantRateLimiter { limiter: RateLimiter::keyed(quota), rate, burst })
    }

    /// The configured rate and burst.
    pub fn quota(&self) -> (f64, u32) {
        (self.rate, self.burst)
    }

    /// `Ok` when the tenant may send now, else how long until it may.
    pub fn check(&self, tenant: TenantId) -> Result<(), Duration> {
        self.limiter
            .check_key(&tenant)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets tenants that have been quiet long enough to be back at full burst (keeps the
    /// keyed store from growing with every app key ever seen).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>, tenant: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(a) = auth {
            headers.insert(http::header::AUTHORIZATION, a.parse().expect("header value"));
        }
        if let Some(t) = tenant {
            headers.insert("x-tenant", t.parse().expect("header value"));
        }
        headers
    }

    #[test]
    fn the_app_key_identifies_the_tenant_without_exposing_it() {
        let a =
            tenant_of(&TenantSource::BearerToken, &request(Some("Bearer app-aaaaaaaaaaaaaaaa1111"), None));
        let a2 =
            tenant_of(&TenantSource::BearerToken, &request(Some("Bearer app-aaaaaaaaaaaaaaaa1111"), None));
        let b =
            tenant_of(&TenantSource::BearerToken, &request(Some("Bearer app-bbbbbbbbbbbbbbbb2222"), None));
        assert_eq!(a, a2);
        assert_ne!(a.id, b.id);
        assert_eq!(a.label, "app-…1111");
        assert_eq!(tenant_of(&TenantSource::BearerToken, &request(None, None)), Tenant::anonymous());
        let header = TenantSource::Header(http::HeaderName::from_static("x-tenant"));
        let t = tenant_of(
            &header,
            &request(Some("Bearer app-aaaaaaaaaaaaaaaa1111"), Some("customer-0000000042")),
        );
        assert_eq!(t.label, "customer-…0042");
    }

    #[test]
    fn rate_limit_refuses_past_the_burst_with_a_wait() {
        let limiter = TenantRateLimiter::new(1.0, 2).expect("valid quota");
        assert!(limiter.check(1).is_ok());
        assert!(limiter.check(1).is_ok());
        let wait = limiter.check(1).expect_err("third request within the burst window");
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.check(2).is_ok(), "other tenants are unaffected");
        assert!(TenantRateLimiter::new(0.0, 1).is_none());
        assert!(TenantRateLimiter::new(1.0, 0).is_none());
    }
}
