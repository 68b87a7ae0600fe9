//! Resilience: knowing whether an upstream can serve ([`health`]) so requests are held
//! instead of failed while it restarts, and answered as soon as it is back.

pub mod health;
pub mod probe;
pub mod prober;
pub mod retry;
pub mod retry_policy;
