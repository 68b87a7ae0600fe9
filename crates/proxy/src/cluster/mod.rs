//! Replicas sharing state through Redis (`[cluster]`): the link to Redis with its time budget
//! and its up/down state ([`link`]), the tenants' rate limits shared by every replica
//! ([`rate`]), and the heartbeat that keeps the link, the list of live replicas and the
//! log of Redis coming and going ([`heartbeat`]), and one maintenance cycle for the whole
//! group ([`lease`]: the lease, its fencing token and every replica's view in Redis;
//! [`cycle`]: the service exchanging them).
//!
//! Redis trouble never fails a request: a call that errs or outlasts `call_timeout` marks the
//! link down and the request is decided locally (as with no cluster), and the heartbeat
//! brings it back up once Redis answers again.

pub mod cycle;
pub mod heartbeat;
pub mod lease;
pub mod link;
pub mod rate;

use std::sync::Arc;

use serde::Serialize;

use crate::config::cluster::ClusterSettings;
use lease::RedisGroup;
use link::{Link, LinkSnapshot};
use rate::SharedRateLimit;

/// The cluster of this replica: present when `[cluster] redis` is set.
#[derive(Debug)]
pub struct Cluster {
    settings: ClusterSettings,
    /// The link to Redis.
    pub link: Arc<Link>,
    /// Shared per-tenant rate limits.
    pub rate: SharedRateLimit,
    /// The group's maintenance cycles.
    pub group: Arc<RedisGroup>,
}

/// What `/status` shows of the cluster.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// This replica's name.
    pub node: String,
    /// The Redis URL, password masked.
    pub redis: String,
    /// The link's state, the replicas seen alive, the calls decided locally.
    #[serde(flatten)]
    pub link: LinkSnapshot,
}

/// The Redis client for `settings` (TLS from a `rediss://` URL, checked against
/// `tls_ca_file` when set, else the system's roots).
pub fn client(settings: &ClusterSettings) -> Result<redis::Client, String> {
    let url = settings.redis.as_ref().ok_or("no cluster.redis")?;
    let client = match &settings.tls_ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cluster.tls_ca_file {}: {e}", path.display()))?;
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
            redis::Client::build_with_tls(url.expose(), certificates)
        }
        None => redis::Client::open(url.expose()),
    };
    client.map_err(|e| format!("{url}: {e}"))
}

/// Connects to the configured Redis and asks for its version (for `check`): a wrong URL,
/// password or db, a certificate that does not check out, or a Redis not reachable within
/// `limit`, is an error saying which.
pub fn probe(settings: &ClusterSettings, limit: std::time::Duration) -> Result<String, String> {
    let client = client(settings)?;
    let url = settings.redis.as_ref().map(ToString::to_string).unwrap_or_default();
    let mut connection =
        client.get_connection_with_timeout(limit).map_err(|e| format!("{url}: cannot connect: {e}"))?;
    let _ = connection.set_read_timeout(Some(limit));
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connection)
        .map_err(|e| format!("{url}: connected, but Redis refused a command: {e}"))?;
    let version =
        info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_string();
    Ok(version)
}

impl Cluster {
    /// The cluster for `settings`, or `None` when no Redis is configured (or its URL cannot
    /// make a client, which the config check already refuses).
    pub fn new(settings: &ClusterSettings) -> Option<Arc<Cluster>> {
        settings.redis.as_ref()?;
        let link = match client(settings) {
            Ok(client) => Arc::new(Link::new(client, settings.call_timeout.0)),
            Err(e) => {
                tracing::warn!(target: "dify_shaper::cluster", "cluster.redis {e}; deciding locally");
                return None;
            }
        };
        let rate = SharedRateLimit::new(Arc::clone(&link), &settings.key_prefix);
        let group = Arc::new(RedisGroup::new(Arc::clone(&link), &settings.key_prefix, &settings.node));
        Some(Arc::new(Cluster { settings: settings.clone(), link, rate, group }))
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// For `/status`.
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            node: self.settings.node.clone(),
            redis: self.settings.redis.as_ref().map(ToString::to_string).unwrap_or_default(),
            link: self.link.snapshot(),
        }
    }
}
