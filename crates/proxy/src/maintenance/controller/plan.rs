//! What entering a phase does, decided without doing it: [`plan`] updates the cycle's record
//! and returns the [`Effect`]s — on the upstream (hold, drain or restore a replica, release)
//! and the work to start (the restart action, the health gate, the restart watch) — that the
//! controller then carries out in order. Pure: the clocks come in as arguments, so every
//! phase's effects are unit-tested on a paused clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::inner::{Inner, HISTORY};
use crate::config::maintenance::Action;
use crate::maintenance::actions::Target;
use crate::maintenance::state::{Event, Phase, Transition};
use crate::maintenance::view::{CycleRecord, Record, Trigger};

/// One thing entering a phase does, in the order planned.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Effect {
    /// Hold new requests until `until` at the latest; the release ramps over `ramp`.
    Hold { until: Instant, ramp: Duration },
    /// Take `server`'s endpoints out of rotation; the rest carries `share` of the capacity.
    DrainReplica { server: Option<String>, share: f64 },
    /// Put `server`'s endpoints back, at the whole capacity.
    RestoreReplica { server: Option<String> },
    /// End the hold, ramping over `ramp`.
    Release { ramp: Duration },
    /// Bring admission in line with health again, ramping over `ramp` where it opens.
    Sync { ramp: Duration },
    /// Watch for an external restart of `server` (the `none` action).
    WatchRestart { server: Option<String> },
    /// Run the restart action on `target`.
    RunAction { action: Action, target: Target },
    /// Run the health gate on `server` (every server with `None`).
    Gate { server: Option<String> },
    /// The cycle ended (its record is `Inner::last_cycle`).
    CycleEnded,
    /// Feed the phase machine this event next (the last effect when present).
    Feed(Event),
}

/// Records transition `t` of upstream `name` in `inner` (reason, failures, history, the
/// replica being restarted, the cycle's end) and returns what entering `t.to` does. `servers`
/// is how many servers the upstream has; `now` and `wall` are the two clocks.
pub(super) fn plan(
    inner: &mut Inner,
    name: &str,
    t: &Transition,
    servers: usize,
    now: Instant,
    wall: DateTime<Utc>,
) -> Vec<Effect> {
    inner.reason = t.reason.clone();
    if t.failure {
        inner.failures += 1;
        inner.cycle_failure = Some(t.reason.clone());
    }
    if inner.history.len() == HISTORY {
        inner.history.pop_front();
    }
    inner.history.push_back(Record {
        at: wall,
        from: t.from,
        to: t.to,
        reason: t.reason.clone(),
        target: inner.current.clone(),
    });
    let spec = &inner.spec;
    let none_action = matches!(spec.action, Some(Action::None { .. }));
    let mut effects = Vec::new();
    match t.to {
        Phase::Draining => {
            if inner.rolling {
                inner.current = inner.pending.pop_front();
                let total = servers.max(1) as f64;
                effects.push(Effect::DrainReplica {
                    server: inner.current.clone(),
                    share: (total - 1.0) / total,
                });
            } else {
                let hold = if inner.machine.hold_only() {
                    spec.drain_timeout.0 + spec.manual_timeout.0 + spec.recover_timeout.0
                } else {
                    spec.hold_timeout.0
                };
                effects.push(Effect::Hold { until: now + hold, ramp: spec.ramp.0 });
            }
            if none_action && !inner.machine.hold_only() {
                effects.push(Effect::WatchRestart { server: inner.current.clone() });
            }
        }
        Phase::Drained => {}
        Phase::Restarting => effects.push(match &spec.action {
            Some(Action::None { .. }) if inner.saw_down => Effect::Feed(Event::ActionDone(Ok(()))),
            Some(Action::None { .. }) => Effect::WatchRestart { server: inner.current.clone() },
            Some(action) => Effect::RunAction {
                action: action.clone(),
                target: Target { upstream: name.to_string(), server: inner.current.clone() },
            },
            None => Effect::Feed(Event::ActionDone(Err("no restart action configured".into()))),
        }),
        Phase::Recovering => effects.push(Effect::Gate { server: inner.current.clone() }),
        Phase::Ramping | Phase::Serving => {
            let ramp = spec.ramp.0;
            if inner.rolling {
                effects.push(Effect::RestoreReplica { server: inner.current.take() });
            } else {
                effects.push(Effect::Release { ramp });
            }
            effects.push(Effect::Sync { ramp });
            if t.to == Phase::Serving {
                if t.failure {
                    inner.pending.clear();
                }
                if inner.pending.is_empty() {
                    if end_cycle(inner, t, wall) {
                        effects.push(Effect::CycleEnded);
                    }
                } else {
                    // Rolling: the next replica.
                    effects.push(Effect::Feed(Event::Start));
                }
            }
        }
    }
    effects
}

/// Closes the cycle's record, if one is open; returns whether it did.
fn end_cycle(inner: &mut Inner, t: &Transition, wall: DateTime<Utc>) -> bool {
    let Some(started) = inner.cycle_started.take() else { return false };
    let failure = inner.cycle_failure.take();
    inner.last_cycle = Some(CycleRecord {
        cycle: inner.cycles,
        outcome: if failure.is_some() { "failed" } else { "ok" },
        reason: failure.unwrap_or_else(|| t.reason.clone()),
        trigger: inner.trigger.unwrap_or(Trigger::Manual),
        started,
        ended: wall,
    });
    inner.rolling = false;
    inner.occurrence = None;
    true
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::config::MaintenanceSpec;

    fn inner(action: Option<Action>) -> Inner {
        let mut spec = MaintenanceSpec::manual_only("api", "/health");
        spec.action = action;
        spec.hold_timeout.0 = Duration::from_secs(300);
        spec.ramp.0 = Duration::from_secs(10);
        Inner::new(spec)
    }

    fn to(from: Phase, to: Phase) -> Transition {
        Transition { from, to, reason: format!("{} → {}", from.as_str(), to.as_str()), failure: false }
    }

    fn command() -> Action {
        Action::Command { command: "true".into(), timeout: Duration::from_secs(5) }
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_upstream_cycle_holds_restarts_gates_and_releases() {
        let (now, wall) = (Instant::now(), Utc::now());
        let mut inner = inner(Some(command()));
        inner.cycle_started = Some(wall);
        inner.cycles = 1;
        let hold = plan(&mut inner, "api", &to(Phase::Serving, Phase::Draining), 1, now, wall);
        assert_eq!(
            hold,
            vec![Effect::Hold { until: now + Duration::from_secs(300), ramp: Duration::from_secs(10) }]
        );
        let restart = plan(&mut inner, "api", &to(Phase::Draining, Phase::Restarting), 1, now, wall);
        let target = Target { upstream: "api".into(), server: None };
        assert_eq!(restart, vec![Effect::RunAction { action: command(), target }]);
        let gate = plan(&mut inner, "api", &to(Phase::Restarting, Phase::Recovering), 1, now, wall);
        assert_eq!(gate, vec![Effect::Gate { server: None }]);
        let ramp = Duration::from_secs(10);
        let ramping = plan(&mut inner, "api", &to(Phase::Recovering, Phase::Ramping), 1, now, wall);
        assert_eq!(ramping, vec![Effect::Release { ramp }, Effect::Sync { ramp }]);
        assert!(inner.last_cycle.is_none(), "the cycle ends when serving again");
        let serving = plan(&mut inner, "api", &to(Phase::Ramping, Phase::Serving), 1, now, wall);
        assert_eq!(serving, vec![Effect::Release { ramp }, Effect::Sync { ramp }, Effect::CycleEnded]);
        let record = inner.last_cycle.as_ref().expect("cycle record");
        assert_eq!((record.cycle, record.outcome), (1, "ok"));
        assert_eq!(inner.history.len(), 5);
        assert_eq!(inner.history.back().map(|r| r.to), Some(Phase::Serving));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rolling_cycle_drains_one_replica_at_a_time_and_moves_on() {
        let (now, wall) = (Instant::now(), Utc::now());
        let mut inner = inner(Some(command()));
        inner.rolling = true;
        inner.pending = VecDeque::from(vec!["a:1".to_string(), "b:1".to_string()]);
        inner.cycle_started = Some(wall);
        let drain = plan(&mut inner, "api", &to(Phase::Serving, Phase::Draining), 2, now, wall);
        assert_eq!(drain, vec![Effect::DrainReplica { server: Some("a:1".into()), share: 0.5 }]);
        let restart = plan(&mut inner, "api", &to(Phase::Draining, Phase::Restarting), 2, now, wall);
        let target = Target { upstream: "api".into(), server: Some("a:1".into()) };
        assert_eq!(restart, vec![Effect::RunAction { action: command(), target }]);
        let back = plan(&mut inner, "api", &to(Phase::Ramping, Phase::Serving), 2, now, wall);
        let ramp = Duration::from_secs(10);
        let restore = Effect::RestoreReplica { server: Some("a:1".into()) };
        assert_eq!(back, vec![restore, Effect::Sync { ramp }, Effect::Feed(Event::Start)]);
        assert_eq!(inner.current, None);
        assert!(inner.last_cycle.is_none(), "b:1 is still to restart");
        plan(&mut inner, "api", &to(Phase::Serving, Phase::Draining), 2, now, wall);
        assert_eq!(inner.current.as_deref(), Some("b:1"));
        let done = plan(&mut inner, "api", &to(Phase::Ramping, Phase::Serving), 2, now, wall);
        assert_eq!(done.last(), Some(&Effect::CycleEnded));
        assert!(!inner.rolling);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_ends_the_rolling_cycle_and_counts() {
        let (now, wall) = (Instant::now(), Utc::now());
        let mut inner = inner(Some(command()));
        inner.rolling = true;
        inner.pending = VecDeque::from(vec!["b:1".to_string()]);
        inner.current = Some("a:1".into());
        inner.cycle_started = Some(wall);
        let failed = Transition {
            failure: true,
            reason: "restart timed out".into(),
            ..to(Phase::Restarting, Phase::Serving)
        };
        let effects = plan(&mut inner, "api", &failed, 2, now, wall);
        let ramp = Duration::from_secs(10);
        let restore = Effect::RestoreReplica { server: Some("a:1".into()) };
        assert_eq!(effects, vec![restore, Effect::Sync { ramp }, Effect::CycleEnded]);
        assert!(inner.pending.is_empty(), "the other replicas are not restarted after a failure");
        assert_eq!(inner.failures, 1);
        let record = inner.last_cycle.as_ref().expect("cycle record");
        assert_eq!((record.outcome, record.reason.as_str()), ("failed", "restart timed out"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_none_action_watches_for_the_external_restart() {
        let (now, wall) = (Instant::now(), Utc::now());
        let none = Action::None { window: Duration::from_secs(600) };
        let mut inner = inner(Some(none));
        let drain = plan(&mut inner, "api", &to(Phase::Serving, Phase::Draining), 1, now, wall);
        assert_eq!(drain.last(), Some(&Effect::WatchRestart { server: None }));
        let restart = plan(&mut inner, "api", &to(Phase::Draining, Phase::Restarting), 1, now, wall);
        assert_eq!(restart, vec![Effect::WatchRestart { server: None }]);
        // Seen going down while draining: restarting is over at once.
        inner.saw_down = true;
        let seen = plan(&mut inner, "api", &to(Phase::Draining, Phase::Restarting), 1, now, wall);
        assert_eq!(seen, vec![Effect::Feed(Event::ActionDone(Ok(())))]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_action_fails_the_restart_and_history_is_bounded() {
        let (now, wall) = (Instant::now(), Utc::now());
        let mut inner = inner(None);
        let restart = plan(&mut inner, "api", &to(Phase::Draining, Phase::Restarting), 1, now, wall);
        assert_eq!(
            restart,
            vec![Effect::Feed(Event::ActionDone(Err("no restart action configured".into())))]
        );
        for _ in 0..HISTORY + 5 {
            plan(&mut inner, "api", &to(Phase::Draining, Phase::Drained), 1, now, wall);
        }
        assert_eq!(inner.history.len(), HISTORY);
    }
}
