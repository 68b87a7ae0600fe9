//! Per-request state carried through pingora's hooks: identity, the config snapshot and route
//! the request was matched with, timings for the access log and metrics, and guards released
//! at the end.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use tokio::time::Instant;

use super::envelope::ErrorReply;
use crate::admission::{Permit, Ticket};
use crate::config::routes::Route;
use crate::config::{ClassSpec, Config, RetrySpec};
use crate::downstream::counts::Permit as ClientPermit;
use crate::shutdown::ActiveGuard;
use crate::upstream::{Endpoint, EndpointLease, UpstreamState, Upstreams};

/// What the request was routed to.
#[derive(Debug)]
pub struct Routed {
    /// Where the route sits in the request's config snapshot (see [`RequestCtx::route`]): an
    /// index rather than a copy of its name, which would cost an allocation per request.
    pub route_index: usize,
    /// The upstream group.
    pub upstream: Arc<UpstreamState>,
    /// The traffic class.
    pub class: Arc<ClassSpec>,
    /// Whether the route allows retries after possible processing (or the method is idempotent).
    pub retry_after_processing: bool,
    /// The upstream group's `keepalive` in the request's snapshot (zero: a connection per
    /// request). It, `retry` and `ramp` are looked up once for the hooks that need them.
    pub keepalive: Duration,
    /// The upstream group's retry settings.
    pub retry: RetrySpec,
    /// The upstream group's health `ramp` (an endpoint that failed a connect comes back
    /// through it).
    pub ramp: Duration,
}

impl Routed {
    /// Where `method path` goes under `config`, or the refusal that answers it (a path that
    /// is not absolute, no route, an upstream not loaded). The refusals are worded here,
    /// while the path borrowed from the session is at hand (only they copy it).
    pub fn resolve(
        config: &Config,
        upstreams: &Upstreams,
        method: &Method,
        path: &str,
    ) -> Result<Routed, ErrorReply> {
        if !path.starts_with('/') {
            return Err(ErrorReply::bad_request("the request target must be an absolute path"));
        }
        let Some((index, route)) = config.router.find(method, path) else {
            return Err(ErrorReply::not_found(format!("no route for {method} {path}")));
        };
        let Some(upstream) = upstreams.get(&route.upstream) else {
            return Err(ErrorReply::internal(format!("upstream {} is not loaded", route.upstream)));
        };
        let spec = config.upstreams.get(&route.upstream);
        Ok(Routed {
            route_index: index,
            upstream,
            class: Arc::clone(&route.class),
            retry_after_processing: route.retry_after_processing || method.is_idempotent(),
            keepalive: spec.map_or(Duration::ZERO, |u| u.keepalive.0),
            retry: spec.map(|u| u.retry.clone()).unwrap_or_default(),
            ramp: spec.map_or(Duration::ZERO, |u| u.health.ramp.0),
        })
    }
}

/// Per-request context (`ProxyHttp::CTX`).
#[derive(Debug)]
pub struct RequestCtx {
    /// `X-Request-Id`, taken or generated.
    pub request_id: String,
    /// The same id as a header value, made once for the upstream request and the response.
    pub request_id_value: Option<HeaderValue>,
    /// When the request header was read.
    pub started: Instant,
    /// The config snapshot this request uses from start to end (a reload mid-request does
    /// not change its route or timeouts).
    pub config: Option<Arc<Config>>,
    /// The route decision.
    pub routed: Option<Routed>,
    /// The tenant as it may appear in logs (`app-…abcd`); kept only when the access log is on.
    pub tenant: Option<String>,
    /// Time spent waiting for admission.
    pub queue_wait: Duration,
    /// The endpoint of the latest attempt.
    pub endpoint: Option<Endpoint>,
    /// Counts the request in flight to the endpoint of the latest attempt.
    pub endpoint_lease: Option<EndpointLease>,
    /// Upstream attempts made (connects tried).
    pub attempts: u32,
    /// When the latest peer was chosen (start of connect).
    pub peer_chosen_at: Option<Instant>,
    /// Connect time of the connection used (zero when reused).
    pub connect: Option<Duration>,
    /// Time to the upstream's response header.
    pub first_byte: Option<Duration>,
    /// Time to the first response body chunk handed to the client connection, for an event
    /// stream (the only answer timed by it; see [`Self::time_to_first_byte`]).
    pub first_body_sent: Option<Duration>,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// An error answer chosen by a hook, written by `fail_to_proxy` or `request_filter`.
    pub reply: Option<ErrorReply>,
    /// The admission slot, held until the response (stream included) is done.
    pub permit: Option<Permit>,
    /// What the slot was asked for with, to queue again for a replay.
    pub ticket: Option<Ticket>,
    /// When the slot was granted.
    pub admitted_at: Option<Instant>,
    /// Time from admission to the upstream's response header (the limiter's latency signal).
    pub first_byte_after_admission: Option<Duration>,
    /// The upstream's response status.
    pub upstream_status: Option<u16>,
    /// Whether the upstream answered with an event stream.
    pub streaming: bool,
    /// Whether the request asked for a streaming answer (picks the stream idle timeout).
    pub wants_stream: bool,
    /// Retries spent from the budget (after a 429/503 that proves nothing was processed).
    pub budget_retries: u32,
    /// Set when a hook decided to retry on its own authority; `error_while_proxy` keeps it.
    pub retry_decided: bool,
    /// A backoff to sleep before the next attempt (set where a hook cannot sleep itself).
    pub pending_backoff: Option<Duration>,
    /// Counts the request as in progress until the context drops (the shutdown drain).
    pub active: Option<ActiveGuard>,
    /// A trusted proxy's client's place under `server.max_connections_per_ip`, held until the
    /// context drops.
    pub client_permit: Option<ClientPermit>,
}

impl RequestCtx {
    /// The wait a user feels, from arrival (queue included) to the first byte of the answer
    /// from the backend. For an event stream that is its first body chunk: the header comes
    /// as soon as a worker takes the run, the events that carry the answer later. Otherwise
    /// the response header, which a blocking answer only sends once it is done. `None` when
    /// the backend never answered (the proxy's own answers are not its latency) or a stream
    /// ended before any event.
    pub fn time_to_first_byte(&self) -> Option<Duration> {
        if self.streaming {
            self.first_body_sent
        } else {
            self.first_byte
        }
    }

    /// The route the request matched, from its config snapshot.
    pub fn route(&self) -> Option<&Route> {
        let routed = self.routed.as_ref()?;
        self.config.as_ref()?.router.get(routed.route_index)
    }

    /// The route, class and upstream names the request is recorded under; `-` when unrouted.
    pub fn labels(&self) -> (&str, &str, &str) {
        match (self.route(), &self.routed) {
            (Some(route), Some(routed)) => {
                (route.name.as_str(), routed.class.name.as_str(), routed.upstream.name())
            }
            _ => ("-", "-", "-"),
        }
    }

    /// A context for a request that has not been looked at yet.
    pub fn new() -> Self {
        RequestCtx {
            request_id: String::new(),
            request_id_value: None,
            started: Instant::now(),
            config: None,
            routed: None,
            tenant: None,
            queue_wait: Duration::ZERO,
            endpoint: None,
            endpoint_lease: None,
            attempts: 0,
            peer_chosen_at: None,
            connect: None,
            first_byte: None,
            first_body_sent: None,
            bytes_in: 0,
            bytes_out: 0,
            reply: None,
            permit: None,
            ticket: None,
            admitted_at: None,
            first_byte_after_admission: None,
            upstream_status: None,
            streaming: false,
            wants_stream: false,
            budget_retries: 0,
            retry_decided: false,
            pending_backoff: None,
            active: None,
            client_permit: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
