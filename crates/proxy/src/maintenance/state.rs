//! The per-upstream maintenance state machine, pure and clock-injected:
//!
//! ```text
//! Serving ─due─► Draining ─idle or drain_timeout─► Restarting ─action done─► Recovering
//!    │  ▲             │ (manual drain)                 │ action failed/timed out   │ health passes
//!    │  │             ▼                                ▼                           ▼
//!    │  └──────── Drained ─resume / manual_timeout─► Recovering       Ramping ─ramp over─► Serving
//!    │                                                                   ▲
//!    └─ back to Serving on any failure (loud, counted) ──────────────────┘
//! ```
//!
//! Every phase has a deadline; when an action fails or the backend never comes back the
//! machine returns to `Serving` with the reason recorded — holding traffic forever is never
//! an outcome. A manual drain (`drain`) ends in `Drained` instead of restarting, and stays
//! there until `resume` or `manual_timeout`. The caller turns the phase into admission
//! decisions (Draining/Drained/Restarting/Recovering hold new work, Ramping ramps) and runs
//! the actions.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Where an upstream is in its maintenance cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Normal traffic.
    Serving,
    /// No new work admitted; in-flight requests finish (up to `drain_timeout`).
    Draining,
    /// Manually drained: nothing in flight, new work held until `resume` (or
    /// `manual_timeout`).
    Drained,
    /// The restart action runs (up to `restart_timeout`).
    Restarting,
    /// Waiting for the health gate (up to `recover_timeout`).
    Recovering,
    /// Admission ramps back to the learned limit.
    Ramping,
}

impl Phase {
    /// Every phase, in cycle order.
    pub const ALL: [Phase; 6] = [
        Phase::Serving,
        Phase::Draining,
        Phase::Drained,
        Phase::Restarting,
        Phase::Recovering,
        Phase::Ramping,
    ];

    /// The phase named `name` (as [`Phase::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The phase's name as `/status` and metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Drained => "drained",
            Phase::Restarting => "restarting",
            Phase::Recovering => "recovering",
            Phase::Ramping => "ramping",
        }
    }
}

/// What started a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The cron schedule.
    Schedule,
    /// An operator (admin API or `ctl`).
    Manual,
    /// Memory use passed the threshold.
    Memory,
}

impl Trigger {
    /// The trigger's name as `/status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Memory => "memory",
        }
    }

    /// The trigger named `name`.
    pub fn parse(name: &str) -> Option<Trigger> {
        [Trigger::Schedule, Trigger::Manual, Trigger::Memory].into_iter().find(|t| t.as_str() == name)
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The schedule (or an operator) started a restart cycle.
    Start,
    /// An operator drained the upstream by hand (no restart: it waits for `Resume`).
    Drain,
    /// An operator resumed: wait for the health gate, then serve.
    Resume,
    /// Requests in flight to the upstream right now.
    InFlight(usize),
    /// The restart action ended.
    ActionDone(Result<(), String>),
    /// The health gate passed.
    Healthy,
    /// This replica took over a group cycle whose holder went away before its restart began:
    /// the drain it followed now ends in the restart.
    TakeOver,
    /// Time passed (deadlines are checked).
    Tick,
}

/// Deadlines of the phases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest drain.
    pub drain: Duration,
    /// Longest restart action.
    pub restart: Duration,
    /// Longest wait for the health gate.
    pub recover: Duration,
    /// Ramp length.
    pub ramp: Duration,
    /// Longest manual drain without a `resume`.
    pub manual: Duration,
}

/// A phase change, for logs, `/status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// From.
    pub from: Phase,
    /// To.
    pub to: Phase,
    /// Why (`"drained"`, `"drain timeout: 3 still in flight"`, `"action failed: …"`, …).
    pub reason: String,
    /// Whether this ends a cycle that did not go as planned.
    pub failure: bool,
}

/// The machine.
#[derive(Debug)]
pub struct Machine {
    phase: Phase,
    since: Instant,
    timeouts: Timeouts,
    in_flight: usize,
    /// Whether this drain ends in `Drained` (manual) rather than `Restarting`.
    hold_only: bool,
}

impl Machine {
    /// A machine in `Serving`.
    pub fn new(timeouts: Timeouts, now: Instant) -> Self {
        Machine { phase: Phase::Serving, since: now, timeouts, in_flight: 0, hold_only: false }
    }

    /// Replaces the deadlines (config reload); the phase and its start are kept.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// The deadlines in force.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Whether the current drain is a manual one (ends in `Drained`).
    pub fn hold_only(&self) -> bool {
        self.hold_only
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Since when.
    pub fn since(&self) -> Instant {
        self.since
    }

    fn go(
        &mut self,
        to: Phase,
        now: Instant,
        reason: impl Into<String>,
        failure: bool,
    ) -> Option<Transition> {
        let from = self.phase;
        self.phase = to;
        self.since = now;
        Some(Transition { from, to, reason: reason.into(), failure })
    }

    fn overdue(&self, limit: Duration, now: Instant) -> bool {
        now.duration_since(self.since) >= limit
    }

    /// Feeds an event; returns the transition it caused, if any.
    pub fn on(&mut self, event: Event, now: Instant) -> Option<Transition> {
        if let Event::InFlight(n) = event {
            self.in_flight = n;
        }
        match (self.phase, event) {
            (Phase::Serving, Event::Start) => {
                self.hold_only = false;
                self.go(Phase::Draining, now, "maintenance started", false)
            }
            (Phase::Serving, Event::Drain) => {
                self.hold_only = true;
                self.go(Phase::Draining, now, "drain requested", false)
            }
            (Phase::Draining, Event::InFlight(0)) if self.hold_only => {
                self.go(Phase::Drained, now, "drained", false)
            }
            (Phase::Draining, Event::InFlight(0)) => self.go(Phase::Restarting, now, "drained", false),
            (Phase::Draining, Event::Tick) if self.overdue(self.timeouts.drain, now) => {
                let reason = format!("drain timeout: {} still in flight", self.in_flight);
                let to = if self.hold_only { Phase::Drained } else { Phase::Restarting };
                self.go(to, now, reason, false)
            }
            (Phase::Draining, Event::TakeOver) => {
                self.hold_only = false;
                None
            }
            (Phase::Drained, Event::TakeOver) => {
                self.hold_only = false;
                self.go(Phase::Restarting, now, "took over the group's cycle", false)
            }
            (Phase::Draining | Phase::Drained, Event::Resume) => {
                self.go(Phase::Recovering, now, "resume requested", false)
            }
            (Phase::Drained, Event::Tick) if self.overdue(self.timeouts.manual, now) => {
                let reason = format!(
                    "manual drain not resumed within {}: resuming",
                    humantime::format_duration(self.timeouts.manual)
                );
                self.go(Phase::Recovering, now, reason, true)
            }
            (Phase::Restarting, Event::ActionDone(Ok(()))) => {
                self.go(Phase::Recovering, now, "action done", false)
            }
            (Phase::Restarting, Event::ActionDone(Err(e))) => {
                self.go(Phase::Serving, now, format!("action failed: {e}"), true)
            }
            (Phase::Restarting, Event::Tick) if self.overdue(self.timeouts.restart, now) => {
                let limit = humantime::format_duration(self.timeouts.restart);
                self.go(Phase::Serving, now, format!("action did not end within {limit}"), true)
            }
            (Phase::Recovering, Event::Healthy) => self.go(Phase::Ramping, now, "health gate passed", false),
            (Phase::Recovering, Event::Tick) if self.overdue(self.timeouts.recover, now) => {
                self.go(Phase::Serving, now, "backend not healthy in time", true)
            }
            (Phase::Ramping, Event::Tick) if self.overdue(self.timeouts.ramp, now) => {
                self.go(Phase::Serving, now, "ramp done", false)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        let s = Duration::from_secs;
        Timeouts { drain: s(30), restart: s(120), recover: s(300), ramp: s(10), manual: s(600) }
    }

    #[test]
    fn a_full_cycle() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut m = Machine::new(timeouts(), t0);
        assert_eq!(m.on(Event::Start, at(0)).map(|t| t.to), Some(Phase::Draining));
        assert_eq!(m.on(Event::InFlight(3), at(1)), None);
        assert_eq!(m.on(Event::InFlight(0), at(5)).map(|t| t.to), Some(Phase::Restarting));
        assert_eq!(m.on(Event::ActionDone(Ok(())), at(8)).map(|t| t.to), Some(Phase::Recovering));
        assert_eq!(m.on(Event::Healthy, at(40)).map(|t| t.to), Some(Phase::Ramping));
        assert_eq!(m.on(Event::Tick, at(45)), None);
        let done = m.on(Event::Tick, at(50)).expect("ramp over");
        assert_eq!((done.to, done.failure), (Phase::Serving, false));
    }

    #[test]
    fn every_phase_has_a_deadline_and_failures_resume_serving() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut m = Machine::new(timeouts(), t0);
        m.on(Event::Start, at(0));
        m.on(Event::InFlight(2), at(1));
        let drained = m.on(Event::Tick, at(30)).expect("drain timeout");
        assert_eq!(drained.to, Phase::Restarting);
        assert!(drained.reason.contains("2 still in flight"), "{}", drained.reason);
        let failed = m.on(Event::ActionDone(Err("exit status 1".into())), at(31)).expect("failed");
        assert_eq!((failed.to, failed.failure), (Phase::Serving, true));
        assert!(failed.reason.contains("exit status 1"));

        m.on(Event::Start, at(100));
        m.on(Event::InFlight(0), at(100));
        assert_eq!(m.on(Event::Tick, at(220)).map(|t| (t.to, t.failure)), Some((Phase::Serving, true)));

        m.on(Event::Start, at(300));
        m.on(Event::InFlight(0), at(300));
        m.on(Event::ActionDone(Ok(())), at(301));
        let gave_up = m.on(Event::Tick, at(601)).expect("recover timeout");
        assert_eq!((gave_up.to, gave_up.failure), (Phase::Serving, true));
    }

    #[test]
    fn irrelevant_events_change_nothing() {
        let t0 = Instant::now();
        let mut m = Machine::new(timeouts(), t0);
        assert_eq!(m.on(Event::Healthy, t0), None);
        assert_eq!(m.on(Event::ActionDone(Ok(())), t0), None);
        m.on(Event::Start, t0);
        assert_eq!(m.on(Event::Start, t0), None, "already draining");
        assert_eq!(m.phase(), Phase::Draining);
    }
}

#[cfg(test)]
mod manual_tests {
    use super::*;

    #[test]
    fn a_manual_drain_waits_for_resume_and_never_holds_forever() {
        let s = Duration::from_secs;
        let timeouts =
            Timeouts { drain: s(30), restart: s(120), recover: s(300), ramp: s(10), manual: s(600) };
        let t0 = Instant::now();
        let at = |secs| t0 + s(secs);
        let mut m = Machine::new(timeouts, t0);
        assert_eq!(m.on(Event::Drain, at(0)).map(|t| t.to), Some(Phase::Draining));
        assert!(m.hold_only());
        assert_eq!(m.on(Event::InFlight(0), at(2)).map(|t| t.to), Some(Phase::Drained), "no restart");
        assert_eq!(m.on(Event::Tick, at(300)), None, "stays drained");
        let resumed = m.on(Event::Resume, at(301)).expect("resume");
        assert_eq!((resumed.to, resumed.failure), (Phase::Recovering, false));
        assert_eq!(m.on(Event::Healthy, at(303)).map(|t| t.to), Some(Phase::Ramping));
        m.on(Event::Tick, at(400));
        assert_eq!(m.phase(), Phase::Serving);

        m.on(Event::Drain, at(1000));
        m.on(Event::InFlight(1), at(1000));
        assert_eq!(m.on(Event::Tick, at(1030)).map(|t| t.to), Some(Phase::Drained), "drain timeout");
        let expired = m.on(Event::Tick, at(1630)).expect("manual timeout");
        assert_eq!((expired.to, expired.failure), (Phase::Recovering, true));
        assert!(expired.reason.contains("not resumed"), "{}", expired.reason);
    }

    #[test]
    fn resume_during_a_scheduled_drain_skips_the_restart_but_not_while_it_runs() {
        let s = Duration::from_secs;
        let timeouts =
            Timeouts { drain: s(30), restart: s(120), recover: s(300), ramp: s(10), manual: s(600) };
        let t0 = Instant::now();
        let mut m = Machine::new(timeouts, t0);
        m.on(Event::Start, t0);
        assert_eq!(m.on(Event::Resume, t0).map(|t| t.to), Some(Phase::Recovering));
        let mut m = Machine::new(m.timeouts().clone(), t0);
        m.on(Event::Start, t0);
        m.on(Event::InFlight(0), t0);
        assert_eq!(m.phase(), Phase::Restarting);
        assert_eq!(m.on(Event::Resume, t0), None, "the action is running");
    }
}
