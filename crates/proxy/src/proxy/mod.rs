//! The HTTP proxy: pingora's [`ProxyHttp`](pingora::proxy::ProxyHttp) implementation
//! ([`service`]) and the small pieces it calls — resolving the route, admission, the choice of endpoint
//! and peer, the retry policy's adapters, header policy, the Dify error envelope, redaction,
//! the end of a request (permit, metrics) and the access log.

pub mod access_log;
pub mod admit;
mod client_limits;
pub mod ctx;
pub mod envelope;
mod finish;
pub mod headers;
pub mod outcome;
mod peer;
mod rate_limit;
mod retry;
pub mod service;
pub mod sse;
pub mod timer_anchor;

pub use service::DifyProxy;
