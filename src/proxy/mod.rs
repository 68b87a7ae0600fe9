//! The HTTP proxy: pingora's [`ProxyHttp`](pingora::proxy::ProxyHttp) implementation
//! ([`service`]) and the small pieces it calls — routing, header policy, the Dify error
//! envelope, redaction and the access log.

pub mod access_log;
pub mod admit;
pub mod ctx;
pub mod envelope;
pub mod headers;
pub mod outcome;
pub mod redact;
pub mod routing;
pub mod service;
pub mod sse;
pub mod timer_anchor;

pub use service::DifyProxy;
