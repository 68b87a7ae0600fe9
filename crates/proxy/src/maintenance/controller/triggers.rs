//! The two triggers a maintenance cycle starts from besides an operator's command: the
//! schedule (a cron expression, started `lead` early) and the memory reading of the backend
//! (above its threshold, at most once per `min_interval`). Readings run as spawned tasks
//! collected on a later tick, so a tick never blocks.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::inner::Inner;
use super::Maintenance;
use crate::maintenance::group::StartRequest;
use crate::maintenance::handle::UpstreamHandle;
use crate::maintenance::state::Phase;
use crate::maintenance::view::Trigger;

impl Maintenance {
    /// Starts the scheduled cycle once its lead time has come (and plans the next one).
    pub(super) fn check_schedule<G: UpstreamHandle>(
        &self,
        inner: &mut Inner,
        group: &Arc<G>,
        wall: DateTime<Utc>,
    ) {
        let Some(next) = inner.next_scheduled else { return };
        let lead = chrono::Duration::from_std(inner.spec.lead()).unwrap_or_default();
        if wall < next - lead {
            return;
        }
        let after = inner.spec.schedule.as_ref().and_then(|s| s.next_after(next));
        inner.next_scheduled = after;
        if inner.machine.phase() == Phase::Serving {
            let request =
                StartRequest { trigger: Trigger::Schedule, occurrence: Some(next), hold_only: false };
            match self.linked().cloned() {
                Some(link) => self.acquire(inner, &link, request),
                None => self.start(inner, group, Trigger::Schedule, Some(next)),
            }
        } else {
            tracing::warn!(upstream = %self.name, phase = ?inner.machine.phase(), scheduled = %next, "maintenance: scheduled restart skipped, another cycle is running");
        }
    }

    /// Collects a finished memory reading (starting a cycle above the threshold, at most once
    /// per `min_interval`) and starts the next reading when one is due.
    pub(super) fn check_memory<G: UpstreamHandle>(&self, inner: &mut Inner, group: &Arc<G>, now: Instant) {
        let Some(memory) = inner.spec.memory.clone() else { return };
        if let Some(rx) = inner.memory.reading.as_mut() {
            match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Err(oneshot::error::TryRecvError::Closed) => inner.memory.reading = None,
                Ok(result) => {
                    inner.memory.reading = None;
                    match result {
                        Ok(bytes) => {
                            inner.memory.last_bytes = Some(bytes);
                            inner.memory.last_error = None;
                            let allowed = inner
                                .memory
                                .last_restart
                                .is_none_or(|t| now.duration_since(t) >= memory.min_interval.0);
                            if bytes > memory.threshold.0
                                && allowed
                                && inner.machine.phase() == Phase::Serving
                            {
                                tracing::warn!(upstream = %self.name, bytes, threshold = memory.threshold.0, "maintenance: memory above the threshold");
                                inner.memory.last_restart = Some(now);
                                let request = StartRequest {
                                    trigger: Trigger::Memory,
                                    occurrence: None,
                                    hold_only: false,
                                };
                                match self.linked().cloned() {
                                    Some(link) => self.acquire(inner, &link, request),
                                    None => self.start(inner, group, Trigger::Memory, None),
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(upstream = %self.name, error = %e, "maintenance: cannot read memory use");
                            inner.memory.last_error = Some(e);
                        }
                    }
                }
            }
        }
        if inner.memory.next_read.is_some_and(|t| now < t) {
            return;
        }
        inner.memory.next_read = Some(now + memory.interval.0);
        let (tx, rx) = oneshot::channel();
        inner.memory.reading = Some(rx);
        tokio::spawn(async move {
            let _ = tx.send(memory.source.read().await.map_err(|e| e.to_string()));
        });
    }
}
