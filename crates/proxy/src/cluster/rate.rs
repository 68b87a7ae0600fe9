//! Per-tenant rate limits shared by every replica: GCRA in Redis, one server-side script per
//! request (one round trip; Redis runs a script atomically, so two replicas never both take
//! the same slot). The script reads Redis' own clock, so replicas' clocks need not agree.
//! Keys are `PREFIX:rate:HASH`, the hash of the tenant (never an app key), and expire once
//! the tenant would be back at full burst.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::link::Link;
use crate::admission::queue::TenantId;

/// GCRA: the theoretical arrival time (TAT) of the next request, in ms of Redis' clock.
/// ARGV: emission interval (ms, fractional), burst. Returns `{allowed, wait_ms}`.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0}
";

/// The shared limiter.
#[derive(Debug)]
pub struct SharedRateLimit {
    link: Arc<Link>,
    script: Script,
    prefix: String,
}

impl SharedRateLimit {
    /// A limiter over `link`, keys under `prefix`.
    pub fn new(link: Arc<Link>, prefix: &str) -> SharedRateLimit {
        SharedRateLimit { link, script: Script::new(GCRA), prefix: format!("{prefix}:rate:") }
    }

    /// `Some(Ok)` when `tenant` may send now across all replicas, `Some(Err(wait))` when not;
    /// `None` when Redis did not decide (down, failing, too slow): decide locally.
    pub async fn check(&self, tenant: TenantId, rate: f64, burst: u32) -> Option<Result<(), Duration>> {
        let key = format!("{}{tenant:016x}", self.prefix);
        let interval_ms = 1000.0 / rate;
        let (allowed, wait_ms): (i64, i64) = self
            .link
            .call(|mut c| {
                let script = &self.script;
                let key = key.clone();
                async move { script.key(key).arg(interval_ms).arg(burst).invoke_async(&mut c).await }
            })
            .await?;
        Some(if allowed == 1 { Ok(()) } else { Err(Duration::from_millis(wait_ms.max(1) as u64)) })
    }
}
