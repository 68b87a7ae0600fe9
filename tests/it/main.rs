//! The integration tests: one binary (linking pingora once, not once per area), a module per
//! area over one shared harness (`common`). Each test starts what it needs on 127.0.0.1 —
//! the dify-shaper binary, the simulator, real gunicorn + PostgreSQL, the real Dify API — and
//! stops it; tests that measure take the machine whole (`common::exclusive`).
//!
//! Run one area with its module path, e.g. `cargo test --test it dify_e2e:: -- --nocapture`.

mod common;

mod admission;
mod client_limits;
mod cluster;
mod cluster_maintenance;
mod config_check;
mod crash;
mod ctl;
mod demo;
mod dify_e2e;
mod docker_files;
mod gunicorn_e2e;
mod maintenance;
mod metrics;
mod outage;
mod proxy_transparency;
mod proxy_upload;
mod reload;
mod replicas;
mod retries;
mod shutdown;
mod sim_capacity;
mod sim_endpoints;
mod sim_lifecycle;
mod sim_limits;
mod sim_stream;
mod stream_failures;
