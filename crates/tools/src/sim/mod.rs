//! A Dify API simulator: the test backend for integration tests, benches and the demo.
//!
//! It speaks Dify's wire format (its JSON envelopes and its event stream, as the real API
//! server's answers show in `tests/it/dify_e2e.rs`) and
//! reproduces how a self-hosted Dify `api` container behaves under load:
//!
//! - **gunicorn + gevent capacity**: at most `workers × worker_connections` connections are
//!   accepted and served at once; the rest wait un-accepted in the listen backlog. A
//!   connection holds its slot while open, keep-alive idle included, until
//!   `keepalive_timeout`.
//! - **Dify's overload answers**: when `db_connections` are in use, the 500 Dify answers
//!   when PostgreSQL is out of connections (its generic envelope, [`DIFY_UNHANDLED_ERROR`]); 429 `too_many_requests` beyond
//!   `app_max_active_requests` per app key.
//! - **Runs** (workflow, chat, completion) in blocking or streaming (SSE) mode, timed by a
//!   [`ServiceTime`] distribution, optionally slowed down by load. A run does not notice a
//!   client that left; it works to the end and is counted as `abandoned`.
//! - **Container lifecycle**: [`Simulator::stop`] kills everything at once,
//!   [`Simulator::restart`] keeps the port closed for a boot delay.
//!
//! Per-request control headers (for tests): `X-Sim-Service-Time: 1s`, `X-Sim-Events: N`,
//! `X-Sim-Fail: 503|reset` with `X-Sim-Fail-First: N`, and `X-Sim-Seed` / `X-Request-Id`
//! for deterministic bodies (see [`ids`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use dify_shaper_tools::sim::{SimConfig, Simulator};
//! let sim = Simulator::start(([127, 0, 0, 1], 0).into(), SimConfig::default()).await?;
//! println!("POST {}", sim.url("/v1/workflows/run"));
//! sim.stop().await;
//! # Ok(()) }
//! ```
//!
//! Files: `config` ([`SimConfig`]), `service_time` ([`ServiceTime`]), `server`
//! ([`Simulator`] lifecycle), `listener` (bind, capacity-gated accept), `conn` (one HTTP/1.1
//! connection, keep-alive idle close), `router` (paths, 404/405, fault injection hook),
//! `run` (run admission and blocking answers), `run_log` (`--run-log`: work started, per
//! request id), `stream` (SSE timeline), `payload` (Dify JSON
//! shapes), `upload`, `ws` (websocket echo), `endpoints` (health, ping, stop, parameters,
//! `/sim/*`), `envelope` (responses, Dify error envelope), `request` (body and header
//! parsing), `limits` (DB pool, per-app limit), `shared` (state and connection slots),
//! `body` (the response body type), `ids` (ids and determinism), `fault` (`X-Sim-Fail`), `stats`
//! ([`SimStats`]), `cli` ([`SimArgs`]).

mod accepted;
mod body;
pub mod cli;
mod config;
mod conn;
mod endpoints;
mod envelope;
mod fault;
pub mod ids;
mod limits;
mod listener;
mod payload;
mod request;
mod router;
mod run;
mod run_log;
mod server;
mod service_time;
mod shared;
mod stats;
mod stream;
mod upload;
mod ws;

pub use cli::SimArgs;
pub use config::SimConfig;
pub use envelope::{APP_TOO_MANY_REQUESTS, DIFY_UNHANDLED_ERROR};
pub use fault::{FAIL_FIRST_HEADER, FAIL_HEADER};
pub use payload::PING_FRAME;
pub use request::{EVENTS_HEADER, MAX_EVENTS, SERVICE_TIME_HEADER};
pub use server::Simulator;
pub use service_time::{ParseServiceTimeError, ServiceTime, MAX_SAMPLE};
pub use stats::{SimStats, MAX_TRACKED_PATHS, MAX_TRACKED_REQUEST_IDS};
pub use stream::EVENT_STREAM;
