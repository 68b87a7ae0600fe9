//! One maintenance cycle for a group of replicas: what the controller exchanges with the
//! other dify-shaper replicas in front of the same upstream, and the link it exchanges it
//! through ([`GroupLink`], implemented over Redis by the cluster module).
//!
//! The model is a lease with a fencing token. A replica that wants to run a cycle (schedule,
//! memory, `ctl restart` or `ctl drain` on any replica) acquires the group's lease; it becomes
//! the cycle's *holder* and runs it as a single shaper would, publishing its phase. Every
//! other replica *follows*: it holds new requests while the holder drains, restarts and
//! gates, reports its own in-flight count (the holder's drain waits for the whole group), and
//! releases when the holder ramps. The holder writes that the restart action begins (a write
//! fenced by its token) before it runs it, so a replica taking over from a dead holder knows
//! whether to run the action or only to wait for the backend. Redis away: each replica
//! finishes its part alone — the holder its cycle, a follower its hold at the cycle's
//! deadline through the health gate — so no cycle runs twice and no hold lasts forever.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::state::{Phase, Trigger};

/// A replica's part in the group's current cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// No group cycle (or no group): decides alone.
    #[default]
    Alone,
    /// Runs the group's cycle under lease `token`.
    Holder {
        /// The fencing token of its lease.
        token: u64,
    },
    /// Its cycle ended; the group's record of it is being removed.
    Ending {
        /// The token of the cycle that ended.
        token: u64,
    },
    /// Follows the cycle `token` run by another replica.
    Follower {
        /// The token of the cycle followed.
        token: u64,
    },
}

/// The group's cycle as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupCycle {
    /// The fencing token of the holder's lease.
    pub token: u64,
    /// The holder's node name.
    pub holder: String,
    /// The holder's phase.
    pub phase: Phase,
    /// A manual drain (no restart): it waits for a resume.
    pub hold_only: bool,
    /// The restart action began (a replica taking over must not run it again).
    pub action_started: bool,
    /// A replica asked the holder to resume.
    pub resume: bool,
    /// What started it.
    pub trigger: Trigger,
    /// When it started.
    pub started: Option<DateTime<Utc>>,
    /// A rolling cycle: one server at a time, the others serve.
    pub rolling: bool,
    /// Rolling: the server being restarted now.
    pub target: Option<String>,
}

impl GroupCycle {
    /// Whether followers hold new requests in this phase (a rolling cycle holds nothing:
    /// followers take its target out of rotation instead).
    pub fn holds(&self) -> bool {
        !self.rolling
            && matches!(self.phase, Phase::Draining | Phase::Drained | Phase::Restarting | Phase::Recovering)
    }

    /// Rolling: the server followers keep out of rotation now.
    pub fn out_of_rotation(&self) -> Option<&str> {
        let restarting = matches!(self.phase, Phase::Draining | Phase::Restarting | Phase::Recovering);
        self.target.as_deref().filter(|_| self.rolling && restarting)
    }
}

/// One replica's view of an upstream's maintenance, as it reports it to the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaView {
    /// The replica.
    pub node: String,
    /// Its local phase.
    pub phase: Phase,
    /// Its requests in flight to the upstream.
    pub in_flight: usize,
    /// Whether it holds new requests.
    pub held: bool,
    /// The cycle it takes part in (0: none).
    pub token: u64,
    /// Following a rolling cycle: the server it keeps out of rotation (its `in_flight` counts
    /// only the requests to that server).
    pub target: Option<String>,
}

/// How a request for the lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This replica holds the lease with this token: it runs the cycle.
    Granted(u64),
    /// Another cycle runs in the group: this replica follows it.
    Running(GroupCycle),
    /// The scheduled occurrence already ran (or runs) in the group.
    AlreadyDone,
    /// The group cannot be asked (Redis down or slow): decide alone.
    Unavailable(String),
}

/// What a replica asks for when it starts a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// What starts it.
    pub trigger: Trigger,
    /// The scheduled occurrence it serves (each runs once in the group).
    pub occurrence: Option<DateTime<Utc>>,
    /// A manual drain (no restart).
    pub hold_only: bool,
}

/// What this replica reports on each exchange with the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Its part in the group's cycle.
    pub role: Role,
    /// Its own view.
    pub view: ReplicaView,
    /// Holder: the cycle as it runs it (published, fenced by its token).
    pub cycle: Option<GroupCycle>,
}

/// What the group answered to a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// The group's cycle, if one runs.
    pub cycle: Option<GroupCycle>,
    /// Every live replica's view (this one's included).
    pub replicas: Vec<ReplicaView>,
    /// Holder: another replica holds the lease now.
    pub lost: bool,
    /// Follower: the holder's lease had expired and this replica took the cycle over with
    /// this token.
    pub took_over: Option<u64>,
    /// Ending: the group's record of the cycle is gone.
    pub ended: bool,
}

/// The link to the other replicas of the group.
#[async_trait]
pub trait GroupLink: Send + Sync + std::fmt::Debug {
    /// Whether the group can be asked now (a command answers from the group, not alone).
    fn linked(&self) -> bool;
    /// This replica's name in the group.
    fn node(&self) -> &str;
    /// Asks for the lease of `upstream`'s cycle.
    async fn acquire(&self, upstream: &str, request: &StartRequest) -> Acquired;
    /// Holder: records that the restart action begins under `token`. `Ok(false)`: the lease
    /// is another replica's now (the action must not run); `Err`: the group cannot be asked.
    async fn action_begins(&self, upstream: &str, token: u64) -> Result<bool, String>;
    /// Follower: asks the holder of cycle `token` to resume.
    async fn ask_resume(&self, upstream: &str, token: u64) -> Result<(), String>;
}

/// What `/status` shows of the group's cycle.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    /// This replica's part.
    #[serde(flatten)]
    pub role: Role,
    /// Whether the group answered the last exchange.
    pub linked: bool,
    /// The group's cycle, if one runs.
    pub cycle: Option<GroupCycle>,
    /// Every live replica's view.
    pub replicas: Vec<ReplicaView>,
    /// Cycles this replica took over from a holder that went away.
    pub takeovers: u64,
}
