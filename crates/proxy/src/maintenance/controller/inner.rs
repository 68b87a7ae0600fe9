//! The controller's state behind its lock: the phase machine, the cycle under way (trigger,
//! replicas still to restart, the one being restarted), the record for `/status`, the work
//! of the current phase and the memory trigger's readings.

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, MaintenanceSpec};
use crate::maintenance::group::{Acquired, Role, StartRequest, Update};
use crate::maintenance::state::{Machine, Timeouts};
use crate::maintenance::view::{CycleRecord, Record, Trigger};

/// Transitions remembered for `/status`.
pub(super) const HISTORY: usize = 32;
/// How long after `restart_timeout` the phase machine gives up on an action that has not
/// ended by itself.
pub(super) const RESTART_BACKSTOP: Duration = Duration::from_secs(2);

/// A spawned piece of a cycle whose result a later tick collects.
pub(super) struct Task {
    pub(super) handle: JoinHandle<()>,
    pub(super) done: oneshot::Receiver<Result<(), String>>,
}

impl Task {
    pub(super) fn spawn<F>(work: F) -> Task
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let (tx, done) = oneshot::channel();
        let handle = tokio::spawn(async move {
            let _ = tx.send(work.await);
        });
        Task { handle, done }
    }

    /// `Some(result)` once it finished.
    pub(super) fn poll(&mut self) -> Option<Result<(), String>> {
        match self.done.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err("task ended without a result".into())),
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // Leaving the phase cancels its work (a running command's process group is killed).
        self.handle.abort();
    }
}

/// What the controller last heard from the group.
#[derive(Debug, Default)]
pub(super) struct Heard {
    /// Whether the last exchange was answered.
    pub(super) linked: bool,
    /// The answer.
    pub(super) update: Update,
}

#[derive(Default)]
pub(super) struct Memory {
    pub(super) next_read: Option<Instant>,
    pub(super) reading: Option<oneshot::Receiver<Result<u64, String>>>,
    pub(super) last_bytes: Option<u64>,
    pub(super) last_error: Option<String>,
    pub(super) last_restart: Option<Instant>,
}

pub(super) struct Inner {
    pub(super) spec: MaintenanceSpec,
    /// The config `spec` was taken from: a tick compares specs only after a reload. (A weak
    /// reference keeps the allocation, so a later config cannot reuse its address.)
    pub(super) seen: Weak<Config>,
    pub(super) machine: Machine,
    pub(super) reason: String,
    pub(super) trigger: Option<Trigger>,
    pub(super) rolling: bool,
    /// Rolling: servers still to restart in this cycle.
    pub(super) pending: VecDeque<String>,
    /// Rolling: the server being restarted.
    pub(super) current: Option<String>,
    /// The occurrence the current cycle serves (for the `none` window).
    pub(super) occurrence: Option<DateTime<Utc>>,
    pub(super) next_scheduled: Option<DateTime<Utc>>,
    pub(super) cycles: u64,
    pub(super) failures: u64,
    pub(super) cycle_started: Option<DateTime<Utc>>,
    pub(super) cycle_failure: Option<String>,
    pub(super) last_cycle: Option<CycleRecord>,
    pub(super) history: VecDeque<Record>,
    /// The action, gate or restart watch of the current phase.
    pub(super) task: Option<Task>,
    /// `none` action: the external restart was seen.
    pub(super) saw_down: bool,
    pub(super) memory: Memory,
    /// This replica's part in the group's cycle.
    pub(super) role: Role,
    /// The group cycle last followed (a cycle is followed once).
    pub(super) followed: Option<u64>,
    /// A lease request under way, and what it is for.
    pub(super) acquiring: Option<(oneshot::Receiver<Acquired>, StartRequest)>,
    /// Holder: the restart action began in this cycle.
    pub(super) action_started: bool,
    /// What the group last answered.
    pub(super) heard: Heard,
    /// Cycles taken over from a holder that went away.
    pub(super) takeovers: u64,
    /// Following another replica's rolling cycle: the server kept out of rotation here.
    pub(super) out_of_rotation: Option<String>,
}

pub(super) fn timeouts(spec: &MaintenanceSpec, rolling: bool) -> Timeouts {
    Timeouts {
        drain: spec.drain_timeout.0,
        // A backstop a little after the action's own timeout (which defaults to
        // `restart_timeout`), so the action's precise error is the one reported.
        restart: spec.restart_timeout.0 + RESTART_BACKSTOP,
        recover: spec.recover_timeout.0,
        // A rolling cycle puts each replica straight back: the others carried the load.
        ramp: if rolling { Duration::ZERO } else { spec.ramp.0 },
        manual: spec.manual_timeout.0,
    }
}

impl Inner {
    /// A controller's state in `Serving`, with `spec` (manual-only until a config says more).
    pub(super) fn new(spec: MaintenanceSpec) -> Inner {
        let machine = Machine::new(timeouts(&spec, false), Instant::now());
        Inner {
            spec,
            seen: Weak::new(),
            machine,
            reason: "started".into(),
            trigger: None,
            rolling: false,
            pending: VecDeque::new(),
            current: None,
            occurrence: None,
            next_scheduled: None,
            cycles: 0,
            failures: 0,
            cycle_started: None,
            cycle_failure: None,
            last_cycle: None,
            history: VecDeque::new(),
            task: None,
            saw_down: false,
            memory: Memory::default(),
            role: Role::Alone,
            followed: None,
            acquiring: None,
            action_started: false,
            heard: Heard::default(),
            takeovers: 0,
            out_of_rotation: None,
        }
    }
}
