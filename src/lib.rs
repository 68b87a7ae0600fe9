//! dify-shaper: a pingora reverse proxy that shapes load in front of a self-hosted Dify.
//!
//! Modules are public so integration tests and benches can drive the pieces directly.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod housekeeping;
pub mod lifecycle;
pub mod loadgen;
pub mod maintenance;
pub mod metrics;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod resilience;
pub mod server;
pub mod shutdown;
pub mod sidecar;
pub mod sim;
pub mod telemetry;
pub mod upstream;
