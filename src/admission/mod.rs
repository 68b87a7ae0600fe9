//! Admission: the adaptive concurrency limit ([`limit`]).
pub mod limit;
