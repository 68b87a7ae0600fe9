//! dify-shaper: a pingora reverse proxy that shapes load in front of a self-hosted Dify —
//! the proxy library. The `dify-shaper` binary (the workspace's root package) is its command
//! line; the simulator, load generator and demo live in `dify-shaper-tools`, which uses this
//! crate and is not used by it.
//!
//! Modules are public so the binary, integration tests and benches can drive the pieces
//! directly.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod downstream;
pub mod housekeeping;
pub mod lifecycle;
pub mod maintenance;
pub mod metrics;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod resilience;
pub mod server;
pub mod shutdown;
pub mod sidecar;
pub mod telemetry;
pub mod upstream;
