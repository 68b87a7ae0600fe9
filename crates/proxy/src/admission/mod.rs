//! Admission: keep the backend at the concurrency it can take, and the excess waiting here —
//! visible, bounded, fair and cheap — instead of in gunicorn's listen backlog.
//!
//! - [`limit`]: the adaptive concurrency limit (pure, clock-injected);
//! - [`queue`]: the fair queue (classes by weight, tenants round robin, adaptive LIFO);
//! - [`controller`]: [`Admission`], tying both to requests ([`Permit`], [`Refusal`]);
//! - [`patience`]: how long a waiter may wait (queue timeout, client deadline, learned
//!   patience); [`policy`]: the settings it runs with; [`ewma`]: running averages;
//! - [`tenant`]: who a request belongs to, and per-tenant rate limits.

pub mod controller;
pub mod ewma;
pub mod limit;
pub mod patience;
pub mod policy;
pub mod queue;
pub mod refusal;
pub mod tenant;

pub use controller::{Admission, AdmissionStatus, Permit, Ticket};
pub use limit::Outcome;
pub use policy::{AdmissionPolicy, ClassPolicy};
pub use refusal::Refusal;
