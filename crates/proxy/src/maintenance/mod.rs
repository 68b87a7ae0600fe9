//! Scheduled and manual maintenance: drain an upstream before its restart, restart it (or
//! wait for an external restart), hold new requests meanwhile, and release them — ramped —
//! once it is healthy.
//!
//! - when a restart is due is the config's
//!   ([`Schedule`](crate::config::maintenance::Schedule): cron in an IANA zone, DST-correct);
//! - [`state`]: the pure phase machine (Serving → Draining → Restarting → Recovering →
//!   Ramping → Serving, plus a manual Drained), every phase with a deadline;
//! - [`controller`]: one upstream's controller — triggers, effects on admission and replica
//!   rotation, the status view and operator commands;
//! - [`handle`]: the narrow handle on an upstream group that the controller acts through
//!   (hold and release, drain and restore a replica, in-flight counts);
//! - [`actions`]: running what restarts the backend; [`gate`]: the health gate and restart watch;
//!   [`group`]: one cycle for every replica in front of the upstream (a lease through Redis);
//!   [`memory`]: reading the backend's memory use; [`service`]: the ticking background service;
//!   [`view`]: what `/status` shows of it.

pub mod actions;
pub mod controller;
pub mod gate;
pub mod group;
pub mod handle;
pub mod memory;
pub mod service;
pub mod state;
pub mod view;
