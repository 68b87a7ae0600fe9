//! What the proxy takes from clients before a request exists: how many connections may be
//! open (in total and per client IP) and how a request header must arrive (in time, within a
//! size, no line too long). A client over a limit gets a short answer in Dify's envelope and
//! its connection is closed, a counter and a rate-limited log line say so, and nothing of it
//! reaches admission or the backend.
//!
//! [`gate`] wraps the proxy's listener application and counts connections; [`header_limits`]
//! is pingora's request-header hook; [`counts`] holds the numbers both keep (read by
//! `/status` and `/metrics`); [`throttle`] keeps their log lines few under attack.

pub mod counts;
pub mod gate;
pub mod header_limits;
pub mod throttle;
