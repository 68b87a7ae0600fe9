//! dify-shaper: a pingora reverse proxy that shapes load in front of a self-hosted Dify.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod sim;
