//! The group's maintenance cycle in Redis ([`GroupLink`] for [`crate::maintenance::group`]):
//! the lease with its fencing token, the cycle's record, each replica's view, and the one
//! exchange per upstream that [`super::cycle`] makes five times a second.
//!
//! Keys, per upstream `U` under the prefix `P` (all expire):
//! - `P:maint:U:lease` — `node|token`, for `LEASE` and renewed by every exchange of the holder;
//! - `P:maint:U:cycle` — a hash: token, holder, phase, hold_only, action_started, resume,
//!   trigger, started (seconds); kept `CYCLE_KEPT` after the holder's last exchange;
//! - `P:maint:U:fence` — the token counter (`INCR`: tokens only grow);
//! - `P:maint:U:view:NODE` — a replica's phase, in-flight count, hold and cycle token;
//! - `P:maint:U:occurrence:SECONDS` — a scheduled occurrence a replica started (each runs once).
//!
//! Every step is one Lua script, so two replicas racing for the lease (the schedule fires on
//! every replica at once) or to take a dead holder's cycle over cannot both win.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::link::Link;
use crate::maintenance::group::{
    Acquired, GroupCycle, GroupLink, ReplicaView, Report, Role, StartRequest, Update,
};
use crate::maintenance::state::Phase;
use crate::maintenance::view::Trigger;

/// How long a lease lasts without its holder renewing it: how soon another replica takes a
/// dead holder's cycle over.
const LEASE: Duration = Duration::from_secs(3);
/// How long a cycle's record outlives its holder's last exchange (a cycle whose every replica
/// died is forgotten).
const CYCLE_KEPT: Duration = Duration::from_secs(3600);
/// How long a replica's view outlives its last exchange.
const VIEW_KEPT: Duration = Duration::from_secs(2);
/// How long a scheduled occurrence is remembered as started.
const OCCURRENCE_KEPT: Duration = Duration::from_secs(6 * 3600);
/// How long the token counter is kept after its last use.
const FENCE_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Nothing waits for an exchange, so it may take longer than a request's call.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(400);
/// An operator command or a lease request waits this long for Redis.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// KEYS: cycle, lease, fence, occurrence. ARGV: node, hold_only, trigger, lease ms, cycle ms,
/// has occurrence, occurrence ms, fence ms. A cycle record left by a holder that died after its
/// hold ended is cleared. Returns `{'granted', token}`, `{'running', cycle
/// hash}` or `{'done'}`.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local phase = redis.call('HGET', KEYS[1], 'phase')
  local holds = phase == 'draining' or phase == 'drained' or phase == 'restarting' or phase == 'recovering'
  if holds or redis.call('EXISTS', KEYS[2]) == 1 then
    return {'running', redis.call('HGETALL', KEYS[1])}
  end
  -- A holder that went away while ramping: nothing is held any more.
  redis.call('DEL', KEYS[1])
end
if ARGV[6] == '1' and not redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ARGV[7]) then
  return {'done'}
end
local token = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[8])
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. token, 'PX', ARGV[4])
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'token', token, 'holder', ARGV[1], 'phase', 'draining',
  'hold_only', ARGV[2], 'action_started', '0', 'resume', '0', 'trigger', ARGV[3], 'started', t[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'granted', token}
";

/// KEYS: cycle, lease. ARGV: `node|token`. 1 when the lease is the caller's (the action is
/// recorded as begun), else 0.
const ACTION_BEGINS: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'action_started', '1')
return 1
";

/// KEYS: cycle. ARGV: token. 1 when the cycle is that one (its holder will resume).
const RESUME: &str = r"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'resume', '1')
return 1
";

/// KEYS: cycle, lease, fence, own view, live nodes. ARGV: node, role, token, view phase,
/// view in-flight, view held, lease ms, cycle ms, view ms, view key prefix, phase, hold_only,
/// action_started, trigger, started, fence ms, rolling, target, view target. Returns `{lost, took, ended, cycle hash, views}`
/// (views flat: node, phase, in_flight, held, token, target, …).
const EXCHANGE_SCRIPT: &str = r"
local node, role, token = ARGV[1], ARGV[2], ARGV[3]
redis.call('HSET', KEYS[4], 'phase', ARGV[4], 'in_flight', ARGV[5], 'held', ARGV[6], 'token', token,
  'target', ARGV[19])
redis.call('PEXPIRE', KEYS[4], ARGV[9])
local mine = node .. '|' .. token
local lease = redis.call('GET', KEYS[2])
local current = redis.call('HGET', KEYS[1], 'token')
local lost, took, ended = 0, 0, 0
if role == 'holder' then
  if lease == mine or (not lease and (not current or current == token)) then
    redis.call('SET', KEYS[2], mine, 'PX', ARGV[7])
    redis.call('HSET', KEYS[1], 'token', token, 'holder', node, 'phase', ARGV[11],
      'hold_only', ARGV[12], 'trigger', ARGV[14], 'started', ARGV[15], 'rolling', ARGV[17],
      'target', ARGV[18])
    if ARGV[13] == '1' then redis.call('HSET', KEYS[1], 'action_started', '1') end
    redis.call('HSETNX', KEYS[1], 'action_started', '0')
    redis.call('HSETNX', KEYS[1], 'resume', '0')
    redis.call('PEXPIRE', KEYS[1], ARGV[8])
  else
    lost = 1
  end
elseif role == 'ending' then
  if lease == mine or (not lease and current == token) then
    redis.call('DEL', KEYS[1], KEYS[2])
  end
  ended = 1
elseif role == 'follower' and not lease and current then
  took = redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[16])
  redis.call('SET', KEYS[2], node .. '|' .. took, 'PX', ARGV[7])
  redis.call('HSET', KEYS[1], 'token', took, 'holder', node)
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
end
local views = {}
for _, n in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  local v = redis.call('HMGET', ARGV[10] .. n, 'phase', 'in_flight', 'held', 'token', 'target')
  if v[1] then
    table.insert(views, n)
    for i = 1, 5 do table.insert(views, v[i] or '') end
  end
end
return {lost, took, ended, redis.call('HGETALL', KEYS[1]), views}
";

/// The group's maintenance through Redis.
pub struct RedisGroup {
    /// The link to Redis.
    pub link: Arc<Link>,
    prefix: String,
    /// This replica's name.
    pub node: String,
    acquire: Script,
    action_begins: Script,
    resume: Script,
    exchange: Script,
}

impl std::fmt::Debug for RedisGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGroup").field("node", &self.node).finish_non_exhaustive()
    }
}

struct Keys {
    base: String,
}

impl Keys {
    fn cycle(&self) -> String {
        format!("{}:cycle", self.base)
    }
    fn lease(&self) -> String {
        format!("{}:lease", self.base)
    }
    fn fence(&self) -> String {
        format!("{}:fence", self.base)
    }
    fn views(&self) -> String {
        format!("{}:view:", self.base)
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl RedisGroup {
    /// The group of replica `node` through `link`, keys under `prefix`.
    pub fn new(link: Arc<Link>, prefix: &str, node: &str) -> RedisGroup {
        RedisGroup {
            link,
            prefix: prefix.to_string(),
            node: node.to_string(),
            acquire: Script::new(ACQUIRE),
            action_begins: Script::new(ACTION_BEGINS),
            resume: Script::new(RESUME),
            exchange: Script::new(EXCHANGE_SCRIPT),
        }
    }

    fn keys(&self, upstream: &str) -> Keys {
        Keys { base: format!("{}:maint:{upstream}", self.prefix) }
    }

    /// One exchange for `upstream`: this replica's report in, the group's answer out (`None`
    /// when Redis cannot be asked).
    pub async fn exchange(&self, upstream: &str, report: &Report) -> Option<Update> {
        let keys = self.keys(upstream);
        let (role, token) = match report.role {
            Role::Alone => ("alone", 0),
            Role::Holder { token } => ("holder", token),
            Role::Ending { token } => ("ending", token),
            Role::Follower { token } => ("follower", token),
        };
        let published = report.cycle.as_ref();
        let mut invocation = self.exchange.prepare_invoke();
        invocation
            .key(keys.cycle())
            .key(keys.lease())
            .key(keys.fence())
            .key(format!("{}{}", keys.views(), self.node))
            .key(format!("{}:nodes", self.prefix))
            .arg(&self.node)
            .arg(role)
            .arg(token)
            .arg(report.view.phase.as_str())
            .arg(report.view.in_flight)
            .arg(u8::from(report.view.held))
            .arg(ms(LEASE))
            .arg(ms(CYCLE_KEPT))
            .arg(ms(VIEW_KEPT))
            .arg(keys.views())
            .arg(published.map_or("serving", |c| c.phase.as_str()))
            .arg(u8::from(published.is_some_and(|c| c.hold_only)))
            .arg(u8::from(published.is_some_and(|c| c.action_started)))
            .arg(published.map_or(Trigger::Manual, |c| c.trigger).as_str())
            .arg(published.and_then(|c| c.started).map_or(0, |t| t.timestamp()))
            .arg(ms(FENCE_KEPT))
            .arg(u8::from(published.is_some_and(|c| c.rolling)))
            .arg(published.and_then(|c| c.target.as_deref()).unwrap_or(""))
            .arg(report.view.target.as_deref().unwrap_or(""));
        type Answer = (i64, i64, i64, Vec<String>, Vec<String>);
        let answer: Answer = self
            .link
            .call_within(EXCHANGE_TIMEOUT, |mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        let (lost, took, ended, cycle, views) = answer;
        Some(Update {
            cycle: parse_cycle(&cycle),
            replicas: views
                .chunks_exact(6)
                .filter_map(|v| {
                    Some(ReplicaView {
                        node: v[0].clone(),
                        phase: Phase::parse(&v[1])?,
                        in_flight: v[2].parse().ok()?,
                        held: v[3] == "1",
                        token: v[4].parse().ok()?,
                        target: Some(v[5].clone()).filter(|t| !t.is_empty()),
                    })
                })
                .collect(),
            lost: lost == 1,
            took_over: u64::try_from(took).ok().filter(|t| *t > 0),
            ended: ended == 1,
        })
    }
}

/// A cycle from its hash's field/value pairs (`None` when there is none).
fn parse_cycle(pairs: &[String]) -> Option<GroupCycle> {
    let field = |name: &str| pairs.chunks_exact(2).find(|p| p[0] == name).map(|p| p[1].as_str());
    Some(GroupCycle {
        token: field("token")?.parse().ok()?,
        holder: field("holder")?.to_string(),
        phase: Phase::parse(field("phase")?)?,
        hold_only: field("hold_only") == Some("1"),
        action_started: field("action_started") == Some("1"),
        resume: field("resume") == Some("1"),
        trigger: field("trigger").and_then(Trigger::parse).unwrap_or(Trigger::Manual),
        started: field("started")
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0)),
        rolling: field("rolling") == Some("1"),
        target: field("target").filter(|t| !t.is_empty()).map(str::to_string),
    })
}

#[async_trait]
impl GroupLink for RedisGroup {
    fn linked(&self) -> bool {
        self.link.is_up()
    }

    fn node(&self) -> &str {
        &self.node
    }

    async fn acquire(&self, upstream: &str, request: &StartRequest) -> Acquired {
        let keys = self.keys(upstream);
        let occurrence = request.occurrence.map(|t| format!("{}:occurrence:{}", keys.base, t.timestamp()));
        let mut invocation = self.acquire.prepare_invoke();
        invocation
            .key(keys.cycle())
            .key(keys.lease())
            .key(keys.fence())
            .key(occurrence.clone().unwrap_or_else(|| format!("{}:occurrence:-", keys.base)))
            .arg(&self.node)
            .arg(u8::from(request.hold_only))
            .arg(request.trigger.as_str())
            .arg(ms(LEASE))
            .arg(ms(CYCLE_KEPT))
            .arg(u8::from(occurrence.is_some()))
            .arg(ms(OCCURRENCE_KEPT))
            .arg(ms(FENCE_KEPT));
        let answer: Option<redis::Value> = self
            .link
            .call_within(COMMAND_TIMEOUT, |mut c| async move { invocation.invoke_async(&mut c).await })
            .await;
        let Some(redis::Value::Array(items)) = answer else {
            return Acquired::Unavailable(
                self.link.snapshot().last_error.unwrap_or_else(|| "Redis is down".into()),
            );
        };
        let word = items.first().and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        match word.as_deref() {
            Some("granted") => match items.get(1).and_then(|v| redis::from_redis_value_ref::<u64>(v).ok()) {
                Some(token) => Acquired::Granted(token),
                None => Acquired::Unavailable("Redis answered a lease without a token".into()),
            },
            Some("running") => {
                let pairs: Vec<String> =
                    items.get(1).and_then(|v| redis::from_redis_value_ref(v).ok()).unwrap_or_default();
                match parse_cycle(&pairs) {
                    Some(cycle) => Acquired::Running(cycle),
                    None => Acquired::Unavailable("Redis holds an unreadable cycle record".into()),
                }
            }
            Some("done") => Acquired::AlreadyDone,
            _ => Acquired::Unavailable(format!("unexpected answer from Redis: {items:?}")),
        }
    }

    async fn action_begins(&self, upstream: &str, token: u64) -> Result<bool, String> {
        let keys = self.keys(upstream);
        let mut invocation = self.action_begins.prepare_invoke();
        invocation.key(keys.cycle()).key(keys.lease()).arg(format!("{}|{token}", self.node));
        let answer: Option<i64> = self
            .link
            .call_within(COMMAND_TIMEOUT, |mut c| async move { invocation.invoke_async(&mut c).await })
            .await;
        answer.map(|a| a == 1).ok_or_else(|| "Redis cannot be asked".to_string())
    }

    async fn ask_resume(&self, upstream: &str, token: u64) -> Result<(), String> {
        let keys = self.keys(upstream);
        let mut invocation = self.resume.prepare_invoke();
        invocation.key(keys.cycle()).arg(token);
        let answer: Option<i64> = self
            .link
            .call_within(COMMAND_TIMEOUT, |mut c| async move { invocation.invoke_async(&mut c).await })
            .await;
        match answer {
            Some(1) => Ok(()),
            Some(_) => Err("the group's cycle ended or changed".into()),
            None => Err("Redis cannot be asked".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_record_reads_back_and_a_partial_one_is_none() {
        let pairs: Vec<String> = [
            "token",
            "7",
            "holder",
            "a",
            "phase",
            "restarting",
            "hold_only",
            "0",
            "action_started",
            "1",
            "resume",
            "0",
            "trigger",
            "schedule",
            "started",
            "1700000000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cycle = parse_cycle(&pairs).expect("cycle");
        assert_eq!((cycle.token, cycle.holder.as_str(), cycle.phase), (7, "a", Phase::Restarting));
        assert!(cycle.action_started && !cycle.hold_only && !cycle.resume);
        assert_eq!(cycle.trigger, Trigger::Schedule);
        assert!(cycle.holds());
        assert_eq!((cycle.rolling, cycle.target.as_deref(), cycle.out_of_rotation()), (false, None, None));
        let rolling = GroupCycle { rolling: true, target: Some("10.0.0.5:5001".into()), ..cycle };
        assert!(!rolling.holds(), "a rolling cycle holds nothing");
        assert_eq!(rolling.out_of_rotation(), Some("10.0.0.5:5001"));
        assert_eq!(parse_cycle(&pairs[..4]), None, "no phase");
        assert_eq!(parse_cycle(&[]), None);
    }
}
