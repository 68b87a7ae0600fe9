//! The controller's side of a group cycle (see [`crate::maintenance::group`]): acquiring the
//! lease before a cycle starts, what it reports on each exchange with the group, and what it
//! does with the answer — follow another replica's cycle, take a dead holder's over, hand
//! back the lease when its own cycle ends — plus the operator commands as the group sees
//! them.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::inner::{timeouts, Heard, Inner, Task};
use super::plan::Effect;
use super::{busy, Maintenance, Refused, View};
use crate::config::maintenance::Action;
use crate::config::MaintenanceSpec;
use crate::maintenance::gate;
use crate::maintenance::group::{
    Acquired, GroupCycle, GroupLink, GroupView, ReplicaView, Report, Role, StartRequest, Update,
};
use crate::maintenance::handle::UpstreamHandle;
use crate::maintenance::state::{Event, Phase};
use crate::maintenance::view::Trigger;

impl Maintenance {
    /// Joins the group reached through `link` (once; later calls change nothing).
    pub fn join(&self, link: Arc<dyn GroupLink>) {
        let _ = self.link.set(link);
    }

    /// The group link, when it answers now.
    pub(super) fn linked(&self) -> Option<&Arc<dyn GroupLink>> {
        self.link.get().filter(|l| l.linked())
    }

    /// Asks the group for the lease in the background; the answer is collected on a later
    /// tick ([`Self::collect_acquired`]).
    pub(super) fn acquire(&self, inner: &mut Inner, link: &Arc<dyn GroupLink>, request: StartRequest) {
        let (tx, rx) = oneshot::channel();
        let (link, name, asked) = (Arc::clone(link), self.name.clone(), request.clone());
        tokio::spawn(async move {
            let _ = tx.send(link.acquire(&name, &asked).await);
        });
        inner.acquiring = Some((rx, request));
    }

    /// Starts the cycle the group granted (or, with no group to ask, alone).
    pub(super) fn collect_acquired<G: UpstreamHandle>(&self, inner: &mut Inner, group: &Arc<G>) {
        let Some((rx, _)) = inner.acquiring.as_mut() else { return };
        let answer = match rx.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return,
            Err(oneshot::error::TryRecvError::Closed) => Acquired::Unavailable("no answer".into()),
            Ok(answer) => answer,
        };
        let Some((_, request)) = inner.acquiring.take() else { return };
        self.begin_granted(inner, group, answer, &request);
    }

    /// Acts on the group's answer to a lease request: start the cycle as its holder, start it
    /// alone when the group cannot be asked, or leave it to the cycle already running.
    fn begin_granted<G: UpstreamHandle>(
        &self,
        inner: &mut Inner,
        group: &Arc<G>,
        answer: Acquired,
        request: &StartRequest,
    ) -> Acquired {
        if inner.machine.phase() != Phase::Serving {
            // A group cycle reached this replica first; it follows that one.
            return answer;
        }
        match &answer {
            Acquired::Granted(token) => {
                inner.role = Role::Holder { token: *token };
                inner.action_started = false;
                tracing::warn!(upstream = %self.name, token, trigger = ?request.trigger, "maintenance: this replica holds the group's lease and runs the cycle");
                self.begin(inner, group, request);
            }
            Acquired::Unavailable(why) => {
                tracing::warn!(upstream = %self.name, error = %why, trigger = ?request.trigger, "maintenance: the group cannot be asked; running the cycle on this replica alone");
                inner.role = Role::Alone;
                self.begin(inner, group, request);
            }
            Acquired::Running(cycle) => {
                tracing::warn!(upstream = %self.name, holder = %cycle.holder, phase = ?cycle.phase, trigger = ?request.trigger, "maintenance: a cycle already runs in the group; following it");
            }
            Acquired::AlreadyDone => {
                tracing::info!(upstream = %self.name, occurrence = ?request.occurrence, "maintenance: another replica ran this scheduled restart");
            }
        }
        answer
    }

    fn begin<G: UpstreamHandle>(&self, inner: &mut Inner, group: &Arc<G>, request: &StartRequest) {
        if request.hold_only {
            inner.trigger = Some(request.trigger);
            inner.rolling = false;
            self.begin_cycle(inner);
            self.feed(inner, group, Event::Drain, Instant::now());
        } else {
            self.start(inner, group, request.trigger, request.occurrence);
        }
    }

    /// What this replica reports to the group now.
    pub fn report<G: UpstreamHandle>(&self, group: &Arc<G>, node: &str) -> Report {
        let inner = self.lock();
        let phase = inner.machine.phase();
        let token = match inner.role {
            Role::Alone => 0,
            Role::Holder { token } | Role::Ending { token } | Role::Follower { token } => token,
        };
        let cycle = match inner.role {
            Role::Holder { token } => Some(GroupCycle {
                token,
                holder: node.to_string(),
                phase,
                hold_only: inner.machine.hold_only(),
                action_started: inner.action_started,
                resume: false,
                trigger: inner.trigger.unwrap_or(Trigger::Manual),
                started: inner.cycle_started,
                rolling: inner.rolling,
                target: inner.current.clone(),
            }),
            _ => None,
        };
        Report {
            role: inner.role.clone(),
            view: ReplicaView {
                node: node.to_string(),
                phase,
                in_flight: super::in_flight(&inner, group.as_ref()),
                held: group.held(),
                token,
                target: inner.out_of_rotation.clone(),
            },
            cycle,
        }
    }

    /// What the group answered (`None`: it could not be asked). Follows another replica's
    /// cycle, takes over one whose holder went away, releases with the holder, and hands
    /// back the lease of a cycle that ended.
    pub fn update<G: UpstreamHandle>(&self, group: &Arc<G>, node: &str, update: Option<Update>) {
        let mut inner = self.lock();
        let now = Instant::now();
        let phase = inner.machine.phase();
        let held_here = matches!(phase, Phase::Draining | Phase::Drained);
        if let (Role::Holder { token }, Phase::Serving) = (&inner.role, phase) {
            inner.role = Role::Ending { token: *token };
        }
        let Some(update) = update else {
            inner.heard.linked = false;
            // Cut off from the group while following: release once this replica has seen the
            // backend go down and pass the health gate again (the holder's restart), or at
            // the cycle's deadline.
            if matches!(inner.role, Role::Follower { .. }) && held_here && inner.task.is_none() {
                tracing::warn!(upstream = %self.name, "maintenance: the group cannot be asked while following its cycle; watching the backend's restart from here");
                inner.task = Some(watch_restart_then_gate(group, &inner.spec));
            }
            return;
        };
        inner.heard = Heard { linked: true, update: update.clone() };
        match inner.role.clone() {
            Role::Holder { token } => {
                if update.lost {
                    let holder = update.cycle.as_ref().map(|c| c.holder.clone()).unwrap_or_default();
                    tracing::error!(upstream = %self.name, token, %holder, "maintenance: another replica holds the group's lease now; following its cycle");
                    inner.role = Role::Follower { token: update.cycle.as_ref().map_or(0, |c| c.token) };
                } else if held_here && update.cycle.as_ref().is_some_and(|c| c.token == token && c.resume) {
                    tracing::warn!(upstream = %self.name, "maintenance: a replica of the group asked to resume");
                    self.feed(&mut inner, group, Event::Resume, now);
                }
            }
            Role::Ending { .. } => {
                if update.ended {
                    inner.role = Role::Alone;
                }
            }
            Role::Follower { token } => {
                if let (Some(taken), Some(cycle)) = (update.took_over, update.cycle.as_ref()) {
                    self.take_over(&mut inner, group, taken, cycle, now);
                } else if phase == Phase::Serving {
                    if !update.cycle.as_ref().is_some_and(|c| c.token == token && c.rolling) {
                        inner.role = Role::Alone;
                    }
                } else if held_here && !update.cycle.as_ref().is_some_and(|c| c.token == token && c.holds()) {
                    // The holder ramps: its health gate passed, so this replica ramps with it.
                    // The cycle gone (ended, or Redis lost it): this replica's own gate decides.
                    let passed = update.cycle.as_ref().is_some_and(|c| c.token == token);
                    tracing::warn!(upstream = %self.name, token, gate_passed = passed, "maintenance: the group's cycle released");
                    self.feed(&mut inner, group, Event::Resume, now);
                    if passed {
                        self.feed(&mut inner, group, Event::Healthy, now);
                    }
                }
            }
            Role::Alone => {}
        }
        if inner.role == Role::Alone && phase == Phase::Serving {
            if let Some(cycle) = update.cycle.as_ref().filter(|c| c.holds() && c.holder != node) {
                if inner.followed != Some(cycle.token) {
                    self.follow(&mut inner, group, cycle, now);
                }
            }
        }
        self.follow_rolling(&mut inner, group, update.cycle.as_ref().filter(|c| c.holder != node));
    }

    /// A rolling cycle run by another replica: keeps the server it restarts out of rotation
    /// here too (with the capacity share the other servers carry), and puts it back when the
    /// holder moves on.
    fn follow_rolling<G: UpstreamHandle>(
        &self,
        inner: &mut Inner,
        group: &Arc<G>,
        cycle: Option<&GroupCycle>,
    ) {
        if inner.machine.phase() != Phase::Serving {
            return;
        }
        if let Some(rolling) = cycle.filter(|c| c.rolling) {
            if inner.role == Role::Alone {
                inner.role = Role::Follower { token: rolling.token };
            }
        }
        let wanted = cycle.and_then(GroupCycle::out_of_rotation).map(str::to_string);
        if wanted == inner.out_of_rotation {
            return;
        }
        let now = Instant::now();
        if let Some(server) = inner.out_of_rotation.take() {
            tracing::warn!(upstream = %self.name, %server, "maintenance: the group's rolling restart moved on; the server is back in rotation");
            self.apply(inner, group, Effect::RestoreReplica { server: Some(server) }, now);
            self.apply(inner, group, Effect::Sync { ramp: std::time::Duration::ZERO }, now);
        }
        if let Some(server) = wanted {
            tracing::warn!(upstream = %self.name, %server, "maintenance: the group's rolling restart takes this server out of rotation");
            let total = group.servers().len().max(1) as f64;
            let share = (total - 1.0) / total;
            self.apply(inner, group, Effect::DrainReplica { server: Some(server.clone()), share }, now);
            inner.out_of_rotation = Some(server);
        }
    }

    /// Holds new requests for the group's cycle `cycle` until its holder releases them (or,
    /// should it never, until the cycle's own deadlines have passed).
    fn follow<G: UpstreamHandle>(&self, inner: &mut Inner, group: &Arc<G>, cycle: &GroupCycle, now: Instant) {
        tracing::warn!(upstream = %self.name, holder = %cycle.holder, token = cycle.token, phase = ?cycle.phase, "maintenance: following the group's cycle");
        inner.role = Role::Follower { token: cycle.token };
        inner.followed = Some(cycle.token);
        let mut t = timeouts(&inner.spec, false);
        t.manual = t.drain + t.restart + t.recover;
        inner.machine.set_timeouts(t);
        inner.trigger = Some(cycle.trigger);
        inner.rolling = false;
        self.begin_cycle(inner);
        self.feed(inner, group, Event::Drain, now);
    }

    /// Continues the cycle of a holder that went away: runs the restart if it had not begun,
    /// else waits for the backend's health gate and releases.
    fn take_over<G: UpstreamHandle>(
        &self,
        inner: &mut Inner,
        group: &Arc<G>,
        token: u64,
        cycle: &GroupCycle,
        now: Instant,
    ) {
        inner.role = Role::Holder { token };
        inner.takeovers += 1;
        inner.action_started = cycle.action_started;
        inner.machine.set_timeouts(timeouts(&inner.spec, false));
        let restarted = cycle.action_started
            || matches!(cycle.phase, Phase::Restarting | Phase::Recovering | Phase::Ramping);
        tracing::error!(upstream = %self.name, token, from = %cycle.holder, phase = ?cycle.phase, action_started = cycle.action_started, "maintenance: the holder of the group's cycle went away; this replica takes it over");
        match inner.machine.phase() {
            Phase::Draining | Phase::Drained if cycle.hold_only => {}
            Phase::Draining | Phase::Drained if restarted => self.feed(inner, group, Event::Resume, now),
            Phase::Draining | Phase::Drained => self.feed(inner, group, Event::TakeOver, now),
            // Released already (its own deadline): the cycle ends here.
            _ => inner.role = Role::Ending { token },
        }
    }

    /// What `/status` shows of the group (`None` with no group).
    pub(super) fn group_view(&self, inner: &Inner) -> Option<GroupView> {
        self.link.get()?;
        Some(GroupView {
            role: inner.role.clone(),
            linked: inner.heard.linked,
            cycle: inner.heard.update.cycle.clone(),
            replicas: inner.heard.update.replicas.clone(),
            takeovers: inner.takeovers,
        })
    }

    /// Requests in flight the holder's drain waits for: its own, each follower's, and one for
    /// every live replica not yet following this cycle.
    pub(super) fn group_in_flight(&self, inner: &Inner, own: usize) -> usize {
        let (Role::Holder { token }, Some(link)) = (&inner.role, self.link.get()) else { return own };
        if !inner.heard.linked {
            return own;
        }
        let (token, node) = (*token, link.node());
        let others: usize = inner
            .heard
            .update
            .replicas
            .iter()
            .filter(|r| r.node != node)
            .map(|r| {
                // A follower of a rolling cycle serves on and reports what it still has in
                // flight to the server being restarted.
                let holding = r.token == token
                    && if inner.rolling {
                        r.target.is_some() && r.target == inner.current
                    } else {
                        matches!(r.phase, Phase::Draining | Phase::Drained)
                    };
                if holding {
                    r.in_flight
                } else {
                    1
                }
            })
            .sum();
        own + others
    }

    /// Operator `restart` as the group sees it: the replica that asks holds the lease and runs
    /// the cycle; refused while another cycle runs in the group.
    pub async fn restart_in_group<G: UpstreamHandle>(&self, group: &Arc<G>) -> Result<(View, u64), Refused> {
        let Some(link) = self.linked().cloned() else { return self.restart(group) };
        {
            let inner = self.lock();
            match (&inner.spec.action, inner.machine.phase()) {
                (None | Some(Action::None { .. }), _) => {
                    drop(inner);
                    return self.restart(group);
                }
                (_, Phase::Serving) => {}
                (_, phase) => return Err(busy(phase, "restart")),
            }
        }
        let request = StartRequest { trigger: Trigger::Manual, occurrence: None, hold_only: false };
        let answer = link.acquire(&self.name, &request).await;
        let mut inner = self.lock();
        match self.begin_granted(&mut inner, group, answer, &request) {
            Acquired::Granted(_) | Acquired::Unavailable(_) => {
                let cycle = inner.cycles;
                Ok((self.view_locked(&inner, group), cycle))
            }
            Acquired::Running(cycle) => Err(Refused::Conflict(format!(
                "a maintenance cycle already runs in the group, held by {} ({}); this replica follows it",
                cycle.holder,
                cycle.phase.as_str()
            ))),
            Acquired::AlreadyDone => Err(busy(inner.machine.phase(), "restart")),
        }
    }

    /// Operator `drain` as the group sees it: every replica holds until a `resume` on any.
    pub async fn drain_in_group<G: UpstreamHandle>(&self, group: &Arc<G>) -> Result<View, Refused> {
        let Some(link) = self.linked().cloned() else { return self.drain(group) };
        {
            let inner = self.lock();
            match (inner.machine.phase(), &inner.role) {
                (Phase::Serving, _) => {}
                (Phase::Draining | Phase::Drained, Role::Follower { .. }) => {
                    return Ok(self.view_locked(&inner, group))
                }
                _ => {
                    drop(inner);
                    return self.drain(group);
                }
            }
        }
        let request = StartRequest { trigger: Trigger::Manual, occurrence: None, hold_only: true };
        let answer = link.acquire(&self.name, &request).await;
        let mut inner = self.lock();
        self.begin_granted(&mut inner, group, answer, &request);
        Ok(self.view_locked(&inner, group))
    }

    /// Operator `resume` as the group sees it: a follower asks the holder, which resumes the
    /// whole group through its health gate.
    pub async fn resume_in_group<G: UpstreamHandle>(&self, group: &Arc<G>) -> Result<View, Refused> {
        // The guard must be gone before `resume` locks again.
        let role = self.lock().role.clone();
        let Role::Follower { token } = role else { return self.resume(group) };
        match self.linked().cloned() {
            Some(link) => {
                if let Err(e) = link.ask_resume(&self.name, token).await {
                    tracing::warn!(upstream = %self.name, error = %e, "maintenance: cannot ask the group to resume; resuming this replica");
                    return self.resume(group);
                }
                Ok(self.view(group))
            }
            None => self.resume(group),
        }
    }
}

/// Resolves once the backend went down (refused, or 5xx on the health path) and then passed
/// the health gate: a follower cut off from the group has seen the holder's restart.
fn watch_restart_then_gate<G: UpstreamHandle>(group: &Arc<G>, spec: &MaintenanceSpec) -> Task {
    let (group, health) = (Arc::clone(group), spec.health.clone());
    Task::spawn(async move {
        gate::went_down(Arc::clone(&group), None, health.clone()).await;
        for addr in gate::passed(Arc::clone(&group), None, health).await {
            group.mark_up(addr);
        }
        Ok(())
    })
}
