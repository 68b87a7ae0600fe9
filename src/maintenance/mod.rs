//! Scheduled maintenance (issue #5, in progress): when the nightly restart is due
//! ([`schedule`]) and the drain → restart → recover → ramp cycle ([`state`]). Wiring them to
//! admission (hold/ramp), the restart actions, the admin API and `ctl` comes next.

pub mod schedule;
pub mod state;
