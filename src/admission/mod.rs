//! Admission: the adaptive concurrency limit ([`limit`]) and the fair queue ([`queue`]).
pub mod limit;
pub mod queue;
