//! The tenant's rate limit for one request: shared by every replica through Redis while the
//! cluster link is up, this replica's own otherwise (no cluster, or Redis down or slow — a
//! request never fails for Redis).

use std::time::Duration;

use crate::admission::queue::TenantId;
use crate::app::App;

/// `Ok` when `tenant` may send now, else how long until it may.
pub(super) async fn check(app: &App, tenant: TenantId) -> Result<(), Duration> {
    let Some(local) = app.rate_limiter() else {
        return Ok(());
    };
    if let Some(cluster) = &app.cluster {
        let (rate, burst) = local.quota();
        if let Some(decided) = cluster.rate.check(tenant, rate, burst).await {
            return decided;
        }
    }
    local.check(tenant)
}
