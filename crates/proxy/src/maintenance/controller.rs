//! One upstream's maintenance controller: drives the phase machine
//! ([`Machine`](super::state::Machine)) from the schedule, the memory trigger and operator
//! commands, and turns its phases into effects — the admission hold (whole upstream) or
//! drained replicas (rolling), the restart action, the health gate, the ramp. Lives in the
//! upstream's run-time state, so it survives config reloads. What a phase does is planned
//! by a pure function (`plan`) and carried out here (`apply`).
//!
//! [`Maintenance::step`] runs every tick from the background service ([`super::service`]);
//! it never blocks: actions, the health gate and memory readings run as spawned tasks whose
//! results are collected on a later tick, and are aborted when the phase moves on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::gate;
use super::group::{GroupLink, Role};
use super::handle::UpstreamHandle;
use super::state::{Event, Phase, Transition};
use super::view::Trigger;
pub use super::view::{CycleRecord, MemoryView, Record, View};
use crate::config::maintenance::Action;
use inner::{timeouts, Inner, Task};
use plan::{plan, Effect};

mod group;
mod inner;
mod plan;
mod triggers;
use crate::config::{Config, MaintenanceMode, MaintenanceSpec};

/// Why an operator command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The current phase does not allow it.
    #[error("{0}")]
    Conflict(String),
}

/// One upstream's maintenance controller.
pub struct Maintenance {
    name: String,
    inner: Mutex<Inner>,
    /// The other replicas in front of the upstream (`[cluster]`), once joined.
    link: OnceLock<Arc<dyn GroupLink>>,
}

impl std::fmt::Debug for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintenance").field("upstream", &self.name).finish_non_exhaustive()
    }
}

impl Maintenance {
    /// A controller in `Serving` for upstream `name`.
    pub fn new(name: &str) -> Self {
        Maintenance {
            name: name.to_string(),
            inner: Mutex::new(Inner::new(MaintenanceSpec::manual_only(name, "/health"))),
            link: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.lock().machine.phase()
    }

    /// One tick: picks up config changes, collects finished tasks, checks deadlines, the
    /// schedule and the memory trigger.
    pub fn step<G: UpstreamHandle>(&self, group: &Arc<G>, config: &Arc<Config>) {
        let mut inner = self.lock();
        let current = Arc::downgrade(config);
        if !Weak::ptr_eq(&inner.seen, &current) {
            inner.seen = current;
            let spec = config.maintenance_spec(&self.name);
            if spec != inner.spec {
                let rolling = inner.rolling;
                inner.machine.set_timeouts(timeouts(&spec, rolling));
                inner.next_scheduled = None;
                inner.spec = spec;
            }
        }
        let now = Instant::now();
        let wall = Utc::now();
        if inner.next_scheduled.is_none() {
            let lead = chrono::Duration::from_std(inner.spec.lead()).unwrap_or_default();
            inner.next_scheduled = inner.spec.schedule.as_ref().and_then(|s| s.next_after(wall + lead));
        }
        self.collect(&mut inner, group, now, wall);
        self.collect_acquired(&mut inner, group);
        if inner.machine.phase() == Phase::Draining {
            let n = self.group_in_flight(&inner, in_flight(&inner, group.as_ref()));
            self.feed(&mut inner, group, Event::InFlight(n), now);
        }
        self.feed(&mut inner, group, Event::Tick, now);
        self.check_schedule(&mut inner, group, wall);
        self.check_memory(&mut inner, group, now);
    }

    /// Operator: stop admitting to the upstream and wait for in-flight requests; stays
    /// drained until [`Maintenance::resume`] (or `manual_timeout`).
    pub fn drain<G: UpstreamHandle>(&self, group: &Arc<G>) -> Result<View, Refused> {
        let mut inner = self.lock();
        match inner.machine.phase() {
            Phase::Serving => {
                inner.trigger = Some(Trigger::Manual);
                inner.rolling = false;
                self.begin_cycle(&mut inner);
                self.feed(&mut inner, group, Event::Drain, Instant::now());
            }
            Phase::Draining | Phase::Drained if inner.machine.hold_only() => {}
            phase => return Err(busy(phase, "drain")),
        }
        Ok(self.view_locked(&inner, group))
    }

    /// Operator: serve again once the health gate passes (safe while the backend boots).
    pub fn resume<G: UpstreamHandle>(&self, group: &Arc<G>) -> Result<View, Refused> {
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.machine.phase() {
            Phase::Draining | Phase::Drained => self.feed(&mut inner, group, Event::Resume, now),
            // Waiting for an external restart: the operator says it is done.
            Phase::Restarting if matches!(inner.spec.action, Some(Action::None { .. })) => {
                self.feed(&mut inner, group, Event::ActionDone(Ok(())), now)
            }
            Phase::Restarting => return Err(busy(Phase::Restarting, "resume")),
            Phase::Recovering | Phase::Ramping | Phase::Serving => {}
        }
        Ok(self.view_locked(&inner, group))
    }

    /// Operator: run the restart cycle now. Returns the view and the cycle's number.
    pub fn restart<G: UpstreamHandle>(&self, group: &Arc<G>) -> Result<(View, u64), Refused> {
        let mut inner = self.lock();
        match (&inner.spec.action, inner.machine.phase()) {
            (None | Some(Action::None { .. }), _) => Err(Refused::Conflict(format!(
                "upstream {} has no restart action dify-shaper can run; configure [[maintenance]] action, \
                 or wrap your own restart in drain and resume",
                self.name
            ))),
            (_, Phase::Serving) => {
                self.start(&mut inner, group, Trigger::Manual, None);
                let cycle = inner.cycles;
                Ok((self.view_locked(&inner, group), cycle))
            }
            (_, phase) => Err(busy(phase, "restart")),
        }
    }

    /// The `/status` view.
    pub fn view<G: UpstreamHandle>(&self, group: &Arc<G>) -> View {
        self.view_locked(&self.lock(), group)
    }

    fn view_locked<G: UpstreamHandle>(&self, inner: &Inner, group: &Arc<G>) -> View {
        let spec = &inner.spec;
        View {
            phase: inner.machine.phase(),
            since_seconds: inner.machine.since().elapsed().as_secs_f64(),
            reason: inner.reason.clone(),
            trigger: inner.trigger,
            in_flight: in_flight(inner, group.as_ref()),
            queued: group.queued(),
            held: group.held(),
            target: inner.current.clone(),
            mode: spec.mode,
            schedule: spec.schedule.as_ref().map(ToString::to_string),
            next_scheduled: inner.next_scheduled,
            action: spec.action.as_ref().map(Action::describe),
            cycles: inner.cycles,
            failures: inner.failures,
            last_cycle: inner.last_cycle.clone(),
            memory: spec.memory.as_ref().map(|m| MemoryView {
                source: m.source.describe(),
                threshold_bytes: m.threshold.0,
                last_bytes: inner.memory.last_bytes,
                last_error: inner.memory.last_error.clone(),
            }),
            history: inner.history.iter().cloned().collect(),
            group: self.group_view(inner),
        }
    }

    fn begin_cycle(&self, inner: &mut Inner) {
        inner.cycles += 1;
        inner.cycle_started = Some(Utc::now());
        inner.cycle_failure = None;
        inner.saw_down = false;
    }

    fn start<G: UpstreamHandle>(
        &self,
        inner: &mut Inner,
        group: &Arc<G>,
        trigger: Trigger,
        at: Option<DateTime<Utc>>,
    ) {
        let servers = group.servers();
        inner.rolling = inner.spec.mode == MaintenanceMode::Rolling && servers.len() > 1;
        inner.pending = if inner.rolling { servers.into() } else { VecDeque::new() };
        inner.trigger = Some(trigger);
        inner.occurrence = at;
        let t = timeouts(&inner.spec, inner.rolling);
        inner.machine.set_timeouts(t);
        self.begin_cycle(inner);
        tracing::warn!(upstream = %self.name, ?trigger, rolling = inner.rolling, action = ?inner.spec.action.as_ref().map(Action::describe), "maintenance: starting a restart cycle");
        self.feed(inner, group, Event::Start, Instant::now());
    }

    /// Feeds one event and applies every transition it causes.
    fn feed<G: UpstreamHandle>(&self, inner: &mut Inner, group: &Arc<G>, event: Event, now: Instant) {
        if let Some(t) = inner.machine.on(event, now) {
            self.enter(inner, group, t, now);
        }
    }

    /// Enters the phase `t` leads to: plans its effects (see [`plan`]) and carries them out.
    fn enter<G: UpstreamHandle>(&self, inner: &mut Inner, group: &Arc<G>, t: Transition, now: Instant) {
        // Leaving a phase ends its work (a running action's process group is killed).
        inner.task = None;
        if t.failure {
            tracing::error!(upstream = %self.name, from = ?t.from, to = ?t.to, reason = %t.reason, target = ?inner.current, "maintenance failed: serving resumes");
        } else {
            tracing::warn!(upstream = %self.name, from = ?t.from, to = ?t.to, reason = %t.reason, target = ?inner.current, "maintenance phase changed");
        }
        let servers = group.servers().len();
        for effect in plan(inner, &self.name, &t, servers, now, Utc::now()) {
            self.apply(inner, group, effect, now);
        }
    }

    /// Carries out one planned effect.
    fn apply<G: UpstreamHandle>(&self, inner: &mut Inner, group: &Arc<G>, effect: Effect, now: Instant) {
        match effect {
            Effect::Hold { until, ramp } => group.hold(Some(until), ramp),
            Effect::DrainReplica { server, share } => {
                group.set_capacity_share(share);
                for addr in addrs_of(group.as_ref(), server.as_deref()) {
                    group.set_drained(addr, true);
                }
            }
            Effect::RestoreReplica { server } => {
                for addr in addrs_of(group.as_ref(), server.as_deref()) {
                    group.set_drained(addr, false);
                }
                group.set_capacity_share(1.0);
            }
            Effect::Release { ramp } => group.hold(None, ramp),
            Effect::Sync { ramp } => group.sync_availability(ramp),
            Effect::WatchRestart { server } => {
                inner.task = Some(watch_restart(group, server, &inner.spec));
            }
            Effect::RunAction { action, target } => {
                tracing::warn!(upstream = %self.name, action = %action.describe(), target = ?target.server, "maintenance: running the restart action");
                // In a group, the holder first records that the action begins, fenced by its
                // lease: a replica taking over later must not run it again, and a holder whose
                // lease passed to another replica must not run it at all.
                let fence = match (&inner.role, self.link.get()) {
                    (Role::Holder { token }, Some(link)) => Some((Arc::clone(link), *token)),
                    _ => None,
                };
                inner.action_started = true;
                let name = self.name.clone();
                inner.task = Some(Task::spawn(async move {
                    if let Some((link, token)) = fence {
                        match link.action_begins(&name, token).await {
                            Ok(true) => {}
                            Ok(false) => {
                                return Err(
                                    "another replica holds the group's lease now; it runs the restart".into(),
                                )
                            }
                            Err(e) => {
                                tracing::warn!(upstream = %name, error = %e, "maintenance: the group cannot be told the restart begins; running it on this replica's lease");
                            }
                        }
                    }
                    action.run(&target).await.map_err(|e| e.to_string())
                }));
            }
            Effect::Gate { server } => {
                let (group, gate) = (Arc::clone(group), inner.spec.health.clone());
                inner.task = Some(Task::spawn(async move {
                    let passed = gate::passed(Arc::clone(&group), server, gate).await;
                    for addr in passed {
                        group.mark_up(addr);
                    }
                    Ok(())
                }));
            }
            Effect::CycleEnded => {
                if let Some(record) = &inner.last_cycle {
                    tracing::warn!(upstream = %self.name, cycle = record.cycle, outcome = record.outcome, reason = %record.reason, "maintenance cycle ended");
                }
            }
            Effect::Feed(event) => self.feed(inner, group, event, now),
        }
    }

    /// Collects a finished action, gate or restart watch.
    fn collect<G: UpstreamHandle>(
        &self,
        inner: &mut Inner,
        group: &Arc<G>,
        now: Instant,
        wall: DateTime<Utc>,
    ) {
        let phase = inner.machine.phase();
        let finished = inner.task.as_mut().and_then(Task::poll);
        let none_window = match &inner.spec.action {
            Some(Action::None { window }) => Some(*window),
            _ => None,
        };
        match (phase, finished) {
            // A follower cut off from the group saw the backend restart and pass the gate.
            (Phase::Draining | Phase::Drained, Some(Ok(())))
                if matches!(inner.role, Role::Follower { .. }) =>
            {
                tracing::warn!(upstream = %self.name, "maintenance: the backend restarted and passed the health gate; releasing");
                self.feed(inner, group, Event::Resume, now);
                self.feed(inner, group, Event::Healthy, now);
            }
            (Phase::Draining, Some(_)) if none_window.is_some() => {
                inner.saw_down = true;
                inner.task = None;
                tracing::warn!(upstream = %self.name, "maintenance: the external restart began while draining");
            }
            (Phase::Restarting, Some(result)) if none_window.is_some() => {
                let result = result.map_err(|e| format!("watching for the external restart: {e}"));
                self.feed(inner, group, Event::ActionDone(result), now);
            }
            (Phase::Restarting, Some(result)) => self.feed(inner, group, Event::ActionDone(result), now),
            (Phase::Recovering, Some(Ok(()))) => self.feed(inner, group, Event::Healthy, now),
            _ => {}
        }
        // `none`: the window closed without a restart being seen; serve again after the gate.
        if let (Phase::Restarting, Some(window)) = (inner.machine.phase(), none_window) {
            let window = chrono::Duration::from_std(window).unwrap_or_default();
            let closes = inner.occurrence.map_or(wall, |at| at + window);
            if wall >= closes {
                tracing::warn!(upstream = %self.name, "maintenance: no external restart seen in the window");
                self.feed(inner, group, Event::ActionDone(Ok(())), now);
            }
        }
    }
}

fn busy(phase: Phase, what: &str) -> Refused {
    Refused::Conflict(format!("cannot {what} while {}", phase.as_str()))
}

fn addrs_of<G: UpstreamHandle>(group: &G, server: Option<&str>) -> Vec<std::net::SocketAddr> {
    group.endpoints_of(server).into_iter().map(|e| e.addr).collect()
}

/// Requests in flight that the drain waits for: to the replica being drained (by this
/// replica's rolling cycle, or by another's it follows), or to the whole upstream.
fn in_flight<G: UpstreamHandle>(inner: &Inner, group: &G) -> usize {
    let drained = inner.current.as_deref().filter(|_| inner.rolling).or(inner.out_of_rotation.as_deref());
    match drained {
        Some(server) => addrs_of(group, Some(server)).into_iter().map(|a| group.in_flight_to(a)).sum(),
        None => group.in_flight(),
    }
}

fn watch_restart<G: UpstreamHandle>(group: &Arc<G>, server: Option<String>, spec: &MaintenanceSpec) -> Task {
    let (group, gate) = (Arc::clone(group), spec.health.clone());
    Task::spawn(async move {
        gate::went_down(group, server, gate).await;
        Ok(())
    })
}
