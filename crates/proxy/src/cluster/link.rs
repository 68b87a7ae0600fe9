//! The link to Redis: one multiplexed connection (redis' `ConnectionManager`, which reconnects
//! on its own), every call bounded by the time budget, and the state the replica is in —
//! `shared` while Redis answers, `local` after a call failed or timed out until the heartbeat
//! reaches it again. Each change of state is logged once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;
use serde::Serialize;

/// How long a (re)connection attempt may take; the heartbeat tries again on its next beat.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The link to Redis and the state it is in.
pub struct Link {
    client: redis::Client,
    budget: Duration,
    connection: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    local_calls: AtomicU64,
    state: Mutex<LinkState>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("budget", &self.budget)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct LinkState {
    since: Option<SystemTime>,
    last_error: Option<String>,
    nodes: Vec<String>,
    fallbacks: u64,
    rejoins: u64,
}

/// The link's state for `/status` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct LinkSnapshot {
    /// `shared` (Redis answers) or `local` (deciding alone).
    pub state: &'static str,
    /// When it entered that state (RFC 3339), if it has changed since start.
    pub since: Option<String>,
    /// The last Redis error seen.
    pub last_error: Option<String>,
    /// Replicas whose heartbeat Redis holds (this one included), as of the last beat.
    pub nodes: Vec<String>,
    /// Times the replica fell back to local decisions.
    pub fallbacks: u64,
    /// Times it rejoined after a fallback.
    pub rejoins: u64,
    /// Calls answered locally because Redis failed, timed out or was down.
    pub local_calls: u64,
}

impl Link {
    /// A link through `client` whose calls may take `budget`; it connects on the heartbeat's
    /// first beat.
    pub fn new(client: redis::Client, budget: Duration) -> Link {
        Link {
            client,
            budget,
            connection: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            local_calls: AtomicU64::new(0),
            state: Mutex::new(LinkState::default()),
        }
    }

    /// Whether calls go to Redis now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Runs `call` on the connection within the budget; `None` (and the link marked down)
    /// when Redis is down, errs or is too slow: the caller then decides locally.
    pub async fn call<T, F, Fut>(&self, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.call_within(self.budget, call).await
    }

    /// As [`Self::call`] with its own time limit (the heartbeat's is longer than a request's).
    pub async fn call_within<T, F, Fut>(&self, limit: Duration, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let connection = match (self.is_up(), self.connection.load_full()) {
            (true, Some(c)) => (*c).clone(),
            _ => {
                self.local_calls.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let answer = self.bounded(connection, limit, call).await;
        if answer.is_none() {
            self.local_calls.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Runs `call` on `connection` within `limit` whether or not the link is up (the heartbeat,
    /// which is what brings it back up); a failure or timeout marks it down.
    pub async fn probe_within<T, F, Fut>(
        &self,
        connection: ConnectionManager,
        limit: Duration,
        call: F,
    ) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.bounded(connection, limit, call).await
    }

    async fn bounded<T, F, Fut>(&self, connection: ConnectionManager, limit: Duration, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match tokio::time::timeout(limit, call(connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.mark_down(&e.to_string());
                None
            }
            Err(_) => {
                self.mark_down(&format!("no answer within {limit:?}"));
                None
            }
        }
    }

    /// Makes sure a connection exists (connecting when none does); `Err` with why not.
    pub async fn ensure_connected(&self) -> Result<ConnectionManager, String> {
        if let Some(c) = self.connection.load_full() {
            return Ok((*c).clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connect = self.client.get_connection_manager_with_config(config);
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect).await {
            Ok(Ok(c)) => {
                self.connection.store(Some(std::sync::Arc::new(c.clone())));
                Ok(c)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {:?}", CONNECT_TIMEOUT * 2)),
        }
    }

    /// Redis answered: calls go to it again (logged once when that is a change).
    pub fn mark_up(&self, nodes: Vec<String>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.nodes = nodes;
        if !self.up.swap(true, Ordering::AcqRel) {
            let was_down = state.since.is_some();
            let down_for = state.since.and_then(|t| t.elapsed().ok());
            state.since = Some(SystemTime::now());
            if was_down {
                state.rejoins += 1;
                tracing::info!(
                    target: "dify_shaper::cluster",
                    down_for = ?down_for,
                    "Redis answers again: limits are shared with the other replicas"
                );
            } else {
                tracing::info!(target: "dify_shaper::cluster", nodes = ?state.nodes, "joined the cluster through Redis");
            }
        }
    }

    /// Redis failed: decide locally until the heartbeat reaches it (logged once).
    pub fn mark_down(&self, why: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.last_error = Some(why.to_string());
        let was_up = self.up.swap(false, Ordering::AcqRel);
        if was_up || state.since.is_none() {
            state.since = Some(SystemTime::now());
            state.fallbacks += 1;
            tracing::warn!(
                target: "dify_shaper::cluster",
                error = why,
                "Redis unreachable: deciding locally (limits per replica) until it is back"
            );
        }
    }

    /// The state for `/status` and `/metrics`.
    pub fn snapshot(&self) -> LinkSnapshot {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        LinkSnapshot {
            state: if self.is_up() { "shared" } else { "local" },
            since: state.since.map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()),
            last_error: state.last_error.clone(),
            nodes: state.nodes.clone(),
            fallbacks: state.fallbacks,
            rejoins: state.rejoins,
            local_calls: self.local_calls.load(Ordering::Relaxed),
        }
    }
}
