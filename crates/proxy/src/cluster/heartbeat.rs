//! The heartbeat: every half second, connect when there is no connection, write this
//! replica's beat and read the live replicas (one script: a sorted set of node → last beat,
//! pruned of beats older than three periods), and mark the link up or down accordingly. A
//! replica whose Redis goes away falls back within one beat of noticing (a request's failed
//! call notices at once), and rejoins on the first beat Redis answers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::Script;

use super::Cluster;

/// Time between beats.
pub const BEAT: Duration = Duration::from_millis(500);
/// A replica whose last beat is older than this is gone.
const ALIVE: Duration = Duration::from_millis(1500);
/// A beat's call may take longer than a request's: nothing waits for it.
const BEAT_TIMEOUT: Duration = Duration::from_millis(400);

/// KEYS: the node set. ARGV: this node, the liveness window (ms). Returns the live nodes.
const BEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local alive = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - alive)
redis.call('PEXPIRE', KEYS[1], alive * 4)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// The background service keeping the cluster link.
pub struct Heartbeat {
    cluster: Arc<Cluster>,
}

impl Heartbeat {
    /// The heartbeat of `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> Heartbeat {
        Heartbeat { cluster }
    }

    /// One beat: connect if needed, beat, update the link's state.
    pub async fn beat(&self, script: &Script) {
        let link = &self.cluster.link;
        let connection = match link.ensure_connected().await {
            Ok(c) => c,
            Err(e) => {
                link.mark_down(&e);
                return;
            }
        };
        let settings = self.cluster.settings();
        let key = format!("{}:nodes", settings.key_prefix);
        let beat = tokio::time::timeout(BEAT_TIMEOUT, async {
            let mut c = connection;
            let nodes: Vec<String> = script
                .key(&key)
                .arg(&settings.node)
                .arg(ALIVE.as_millis() as u64)
                .invoke_async(&mut c)
                .await?;
            Ok::<_, redis::RedisError>(nodes)
        })
        .await;
        match beat {
            Ok(Ok(nodes)) => link.mark_up(nodes),
            Ok(Err(e)) => link.mark_down(&e.to_string()),
            Err(_) => link.mark_down(&format!("heartbeat not answered within {BEAT_TIMEOUT:?}")),
        }
    }
}

#[async_trait]
impl BackgroundService for Heartbeat {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let script = Script::new(BEAT_SCRIPT);
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.beat(&script).await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
