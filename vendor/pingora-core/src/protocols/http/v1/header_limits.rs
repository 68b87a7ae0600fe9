// Added to pingora-core 0.9.1 by dify-shaper (vendor/README.md): limits on how a client
// sends a request header, which the stock server only bounds per read (a client that sends
// one header line every few seconds is never cut off) and at a fixed 1 MiB.

//! Limits on receiving an HTTP/1 request header, supplied by the application.

use bytes::Bytes;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;

/// Which request-header limit a client hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderLimitHit {
    /// The whole header did not arrive within [`RequestHeaderLimits::header_timeout`];
    /// `received` bytes of it had.
    Timeout {
        /// Bytes of the header received before the deadline.
        received: usize,
    },
    /// The header grew past [`RequestHeaderLimits::max_header_size`] before it was complete.
    TooLarge {
        /// Bytes received when the header was refused.
        received: usize,
    },
    /// One line (the request line or a header field) is longer than
    /// [`RequestHeaderLimits::max_header_line`].
    LineTooLong {
        /// Length of the longest offending line, in bytes.
        length: usize,
    },
}

/// Request-header limits of a server, read for every request (so they may change while
/// the server runs).
pub trait RequestHeaderLimits: Debug + Send + Sync {
    /// Longest time to receive a whole request header: from the connection's start for
    /// its first request, from the first byte for later requests on a kept-alive
    /// connection (the keep-alive timeout bounds the wait for that byte). `None`: no bound
    /// beyond the per-read timeouts.
    fn header_timeout(&self) -> Option<Duration>;

    /// Largest request header in bytes (request line, fields and the blank line).
    fn max_header_size(&self) -> usize;

    /// Longest single line of the header in bytes (the request line, or one field's name and
    /// value).
    fn max_header_line(&self) -> usize;

    /// Called once when a client hits a limit, before its connection is closed; returns the
    /// bytes to send it first (a whole HTTP response), or `None` to close without an answer.
    fn on_limit(&self, hit: HeaderLimitHit, peer: Option<SocketAddr>) -> Option<Bytes>;
}
