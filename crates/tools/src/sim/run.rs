//! The run endpoints (`/v1/workflows/run`, `/v1/chat-messages`, `/v1/completion-messages`):
//! Dify's admission order (DB connection → body validation → `APP_MAX_ACTIVE_REQUESTS`),
//! the service time, and the blocking answer.
//!
//! Like a gevent greenlet, a run does not notice that its client left: the work goes on in
//! its own task, keeping its connection slot, DB connection and app slot to the planned end,
//! and is then counted as `abandoned`. `stop()` kills it (`killed`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::body::SimBody;
use super::conn::ConnCtx;
use super::envelope;
use super::ids::{self, Entropy};
use super::limits::{AppGuard, DbGuard};
use super::payload::{self, RunKind, RunSpec};
use super::request::{self, Overrides, ReadError, RunParams};
use super::stats::ActiveGuard;
use super::stream;

/// A run that passed admission: its answer spec and everything it holds while working.
pub(crate) struct Run {
    pub(crate) ctx: Arc<ConnCtx>,
    pub(crate) spec: RunSpec,
    pub(crate) ping_interval: Duration,
    /// The PostgreSQL connection; a blocking run gives it back before its answer is handed
    /// over (see [`blocking`]).
    db: Option<DbGuard>,
    _held: (ActiveGuard, AppGuard),
}

/// Handles a run request.
pub(crate) async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>, kind: RunKind) -> Response<SimBody> {
    let cfg = ctx.shared.config();
    let path = req.uri().path().to_owned();
    let overrides = match Overrides::parse(req.headers()) {
        Ok(o) => o,
        Err(msg) => return envelope::invalid_param(&msg),
    };
    let seed = ids::seed_of(req.headers());
    let request_id = request::header(req.headers(), ids::REQUEST_ID_HEADER).map(str::to_owned);
    let app_key = request::app_key(req.headers());
    let body = match request::read_body(req.into_body(), request::MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(ReadError::TooLarge) => {
            return envelope::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Request body too large.",
            )
        }
        Err(ReadError::Io) => return envelope::invalid_param("incomplete request body"),
    };
    // Dify authenticates the app key against PostgreSQL before anything else.
    let Some(db) = ctx.shared.limits.try_db(cfg.db_connections) else {
        return envelope::db_refused();
    };
    let params = match RunParams::parse(&body) {
        Ok(p) => p,
        Err(msg) => return envelope::invalid_param(&msg),
    };
    let Some(app) = ctx.shared.limits.try_app(&app_key, cfg.app_max_active_requests) else {
        return envelope::app_limited();
    };
    let active = ActiveGuard::new(ctx.shared.stats.clone());
    ctx.shared.stats.on_run_started(&path);
    ctx.shared.run_log.record("run", &path, request_id.as_deref(), params.streaming);

    let mut entropy = Entropy::new(seed);
    let base = overrides.service_time.unwrap_or_else(|| cfg.service_time.sample(entropy.rng()));
    let others = u32::try_from(active.active_at_start.saturating_sub(1)).unwrap_or(u32::MAX);
    let slowdown = cfg.slowdown_per_active.map(|d| d.saturating_mul(others)).unwrap_or_default();
    let spec = RunSpec::new(
        kind,
        base.saturating_add(slowdown),
        overrides.events.unwrap_or(cfg.stream_events),
        &mut entropy,
        params.inputs,
        params.conversation_id,
    );
    let run = Run { ctx, spec, ping_interval: cfg.ping_interval, db: Some(db), _held: (active, app) };
    if params.streaming {
        let (ctx, spec, ping_interval) = (Arc::clone(&run.ctx), run.spec.clone(), run.ping_interval);
        stream::respond(ctx, spec, ping_interval, run)
    } else {
        blocking(run).await
    }
}

/// Works for the service time in a task of its own, then hands the JSON answer over.
async fn blocking(mut run: Run) -> Response<SimBody> {
    let (tx, rx) = oneshot::channel::<Bytes>();
    let kill = run.ctx.kill.clone();
    let task_kill = kill.clone();
    tokio::spawn(async move {
        let stats = run.ctx.shared.stats.clone();
        tokio::select! {
            biased;
            () = task_kill.cancelled() => {
                stats.on_killed();
                return;
            }
            () = tokio::time::sleep(run.spec.service) => {}
        }
        let answer = Bytes::from(payload::blocking(&run.spec).to_string());
        // Flask pops the app context (SQLAlchemy's session goes back to the pool) when the
        // view returns, before gunicorn writes the answer; releasing after the hand-over
        // instead let a request sent the moment the answer arrived find the connection still
        // taken — a 500 "too many clients" Dify does not give. The run itself (counted in
        // `active`, which a graceful restart waits for) ends only once the answer is handed
        // over.
        drop(run.db.take());
        if tx.send(answer).is_err() {
            stats.on_abandoned();
        }
        drop(run);
    });
    match rx.await {
        Ok(answer) => envelope::with_type(StatusCode::OK, envelope::JSON, SimBody::full(answer)),
        // Killed by stop(): never answer, the connection is being dropped.
        Err(_) if kill.is_cancelled() => std::future::pending().await,
        // The run task panicked.
        Err(_) => {
            envelope::error(StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error", "The run failed.")
        }
    }
}
