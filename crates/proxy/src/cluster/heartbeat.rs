//! The heartbeat: every half second, connect when there is no connection, write this
//! replica's beat and read the live replicas (one script: a sorted set of node → last beat,
//! pruned of beats older than three periods), and mark the link up or down accordingly. A
//! replica whose Redis goes away falls back within one beat of noticing (a request's failed
//! call notices at once), and rejoins on the first beat Redis answers.
//!
//! Each beat also shares the capacity: every upstream's learned limit is the group's, and
//! this replica admits its part of it by its rank among the live replicas (an even split; no
//! per-request round trip, no count left behind by a replica that dies). The limit is written
//! to Redis, and a replica that starts (or restarts) begins from it instead of from
//! `initial_limit`. While Redis is away the last split stands: the other replicas most likely
//! still serve, and the limiter corrects if they do not.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::Script;

use super::Cluster;
use crate::app::App;

/// How long a learned limit written to Redis is kept without a replica renewing it.
const LIMIT_KEPT: Duration = Duration::from_secs(600);

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
    app: Arc<App>,
    cluster: Arc<Cluster>,
    seeded: std::sync::atomic::AtomicBool,
}

impl Heartbeat {
    /// The heartbeat of `app`'s cluster.
    pub fn new(app: Arc<App>, cluster: Arc<Cluster>) -> Heartbeat {
        Heartbeat { app, cluster, seeded: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Gives every upstream's admission this replica's part, writes this replica's learned
    /// limits, and on the first beat starts from the limits learned before (this node's own,
    /// else the lowest of the live replicas').
    async fn share_capacity(&self, connection: redis::aio::ConnectionManager, nodes: &[String]) {
        let settings = self.cluster.settings();
        let mut sorted: Vec<&String> = nodes.iter().collect();
        sorted.sort();
        let count = sorted.len().max(1);
        let index = sorted.iter().position(|n| **n == settings.node).unwrap_or(0);
        let key = |upstream: &str, node: &str| format!("{}:limit:{upstream}:{node}", settings.key_prefix);
        let mut c = connection;
        let exchange = async {
            for group in self.app.upstreams.all() {
                let name = group.name();
                let keys: Vec<String> = sorted.iter().map(|n| key(name, n)).collect();
                let learned: Vec<Option<usize>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
                let lowest = learned.iter().flatten().copied().min();
                if !self.seeded.load(std::sync::atomic::Ordering::Acquire) {
                    let own = learned.get(index).copied().flatten();
                    if let Some(limit) = own.or(lowest) {
                        group.admission().seed_limit(limit);
                    }
                }
                let _: () = redis::cmd("SET")
                    .arg(key(name, &settings.node))
                    .arg(group.admission().limit())
                    .arg("PX")
                    .arg(LIMIT_KEPT.as_millis() as u64)
                    .query_async(&mut c)
                    .await?;
                group.admission().set_replica_share(index, count, lowest.filter(|_| count > 1));
            }
            self.seeded.store(true, std::sync::atomic::Ordering::Release);
            Ok::<(), redis::RedisError>(())
        };
        // A failed exchange leaves the last split standing; the next beat tries again.
        let _ = tokio::time::timeout(BEAT_TIMEOUT, exchange).await;
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
        let beat: Option<Vec<String>> = link
            .probe_within(connection.clone(), BEAT_TIMEOUT, |mut c| async move {
                script.key(&key).arg(&settings.node).arg(ALIVE.as_millis() as u64).invoke_async(&mut c).await
            })
            .await;
        // A failed or late beat has marked the link down already.
        if let Some(nodes) = beat {
            self.share_capacity(connection, &nodes).await;
            link.mark_up(nodes);
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
