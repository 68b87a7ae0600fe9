//! Configuration: the on-disk schema ([`schema`]), loading and validation into the runtime
//! [`Config`] ([`load`]), what a reload may change ([`changes`]), human units ([`units`]), and
//! the warnings about a valid config that would treat Dify's traffic worse than stock Dify
//! ([`audit`]).
//!
//! The runtime [`Config`] is immutable and shared as `Arc<Config>`; a reload builds a new one
//! and swaps it in whole. State that must survive a reload (upstream resolution, and later the
//! admission limiter and maintenance state) lives outside it, keyed by upstream name.

pub mod audit;
pub mod changes;
pub mod class;
pub mod cluster;
pub mod forwarding;
pub mod load;
pub mod maintenance;
mod model;
pub mod routes;
pub mod schema;
pub mod units;

pub use class::ClassSpec;
pub use load::{load_embedded, load_file, parse_str, ConfigError, Overrides};
pub use maintenance::{MaintenanceMode, MaintenanceSpec};
pub use model::{
    AdmissionGlobal, AdmissionSpec, Config, HealthSpec, LogSettings, RateLimitSpec, RetrySpec, ServerAddr,
    ServerSettings, SidecarSettings, TenantSettings, TenantSource, UpstreamSpec, DEFAULT_UPSTREAM_KEEPALIVE,
};
pub use schema::LogFormat;
pub use units::{ByteSize, HumanDuration};
