//! Streaming runs (`response_mode: streaming`): `200 text/event-stream`, frames spread over
//! the service time, each written and flushed on its own, `event: ping` every
//! `ping_interval`.
//!
//! Timeline with service time `T` and `N` events (`X-Sim-Service-Time`, `X-Sim-Events`):
//! - workflow: `workflow_started` at 0, then the `2N` node events evenly spaced, the `k`-th
//!   (`k = 1..=2N`: `node_started` of node 0, `node_finished` of node 0, `node_started` of
//!   node 1, …) at `k·T/(2N)`, and `workflow_finished` right after the last one, at `T`.
//!   E.g. `T = 1200ms`, `N = 3`: events at 0, 200, 400, …, 1200 ms.
//! - chat / completion: `message` chunk `i` (`i = 0..N`) at `(i+1)·T/N`, `message_end` right
//!   after the last one, at `T`.
//!
//! When the client leaves, the run keeps going silently to `T` and counts as `abandoned`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL};
use http::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::{SimBody, StreamItem};
use super::conn::ConnCtx;
use super::envelope;
use super::payload::{self, RunKind, RunSpec, PING_FRAME};

/// `Content-Type` of Dify's streams (Flask `mimetype="text/event-stream"`).
pub const EVENT_STREAM: &str = "text/event-stream; charset=utf-8";

/// Frames buffered between the producer and the connection.
const CHANNEL_FRAMES: usize = 16;

/// Starts the producer and answers with the stream head. `held` (the run, with the slots it
/// holds) is dropped when the run ends, whether its client stayed or not.
pub(crate) fn respond<H: Send + 'static>(
    ctx: Arc<ConnCtx>,
    spec: RunSpec,
    ping_interval: Duration,
    held: H,
) -> Response<SimBody> {
    let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
    tokio::spawn(produce(ctx, spec, ping_interval, held, tx));
    let mut r = envelope::with_type(StatusCode::OK, EVENT_STREAM, SimBody::stream(rx));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The run was killed by `stop()`.
struct Killed;

async fn produce<H>(
    ctx: Arc<ConnCtx>,
    spec: RunSpec,
    ping_interval: Duration,
    held: H,
    tx: mpsc::Sender<StreamItem>,
) {
    let stats = ctx.shared.stats.clone();
    let mut em = Emitter {
        tx,
        kill: ctx.kill.clone(),
        start: Instant::now(),
        ping: (!ping_interval.is_zero()).then_some(ping_interval),
        next_ping: None,
        gone: false,
    };
    em.next_ping = em.ping.map(|p| em.start + p);
    match timeline(&spec, &mut em).await {
        Err(Killed) => stats.on_killed(),
        Ok(()) if em.gone => stats.on_abandoned(),
        Ok(()) => {}
    }
    drop(held);
}

async fn timeline(spec: &RunSpec, em: &mut Emitter) -> Result<(), Killed> {
    let n = spec.events;
    let frame = |v: Value| payload::sse(&v);
    match spec.kind {
        RunKind::Workflow => {
            em.at(Duration::ZERO, || frame(payload::workflow_started(spec))).await?;
            for i in 0..n {
                em.at(spec.node_start_at(i), || frame(payload::node_started(spec, i))).await?;
                em.at(spec.node_finish_at(i), || frame(payload::node_finished(spec, i))).await?;
            }
            em.at(spec.service, || frame(payload::workflow_finished(spec))).await?;
        }
        RunKind::Chat | RunKind::Completion => {
            for i in 0..n {
                em.at(spec.tick(i + 1, n), || frame(payload::message_chunk(spec, i))).await?;
            }
            em.at(spec.service, || frame(payload::message_end(spec))).await?;
        }
    }
    em.finish().await
}

/// Sends frames at their offsets, interleaving pings, noticing a gone client.
struct Emitter {
    tx: mpsc::Sender<StreamItem>,
    kill: CancellationToken,
    start: Instant,
    ping: Option<Duration>,
    next_ping: Option<Instant>,
    /// The client is gone: keep the timeline, send nothing.
    gone: bool,
}

impl Emitter {
    /// Sends the frame built by `make` at `start + offset` (pings due before go first).
    async fn at(&mut self, offset: Duration, make: impl FnOnce() -> Bytes) -> Result<(), Killed> {
        let due = self.start + offset;
        while let (Some(p), Some(every)) = (self.next_ping, self.ping) {
            if p >= due {
                break;
            }
            self.sleep_until(p).await?;
            self.send(Some(Bytes::from_static(PING_FRAME))).await?;
            self.next_ping = Some(p + every);
        }
        self.sleep_until(due).await?;
        if self.gone {
            return Ok(());
        }
        self.send(Some(make())).await
    }

    /// Ends the stream normally.
    async fn finish(&mut self) -> Result<(), Killed> {
        self.send(None).await
    }

    async fn sleep_until(&self, t: Instant) -> Result<(), Killed> {
        tokio::select! {
            biased;
            () = self.kill.cancelled() => Err(Killed),
            () = tokio::time::sleep_until(t) => Ok(()),
        }
    }

    async fn send(&mut self, item: StreamItem) -> Result<(), Killed> {
        if self.gone || self.tx.is_closed() {
            self.gone = true;
            return Ok(());
        }
        tokio::select! {
            biased;
            () = self.kill.cancelled() => Err(Killed),
            r = self.tx.send(item) => {
                self.gone |= r.is_err();
                Ok(())
            }
        }
    }
}
