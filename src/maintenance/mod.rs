//! Scheduled maintenance (issue #5, in progress): when the nightly restart is due
//! ([`schedule`]), the drain → restart → recover → ramp cycle ([`state`]), what restarts the
//! backend ([`actions`]) and where its memory use is read ([`memory`]). Wiring them to
//! admission (hold/ramp), the admin API and `ctl` comes next.

pub mod actions;
pub mod memory;
pub mod schedule;
pub mod state;
