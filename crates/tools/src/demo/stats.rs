//! What one request ended as ([`Observation`], classified into a [`Kind`]) and the [`Summary`] of
//! one side of the demo: counts by kind, goodput and latency percentiles of the successes.

use std::time::Duration;

use crate::loadgen::envelope_code;

/// How a request ended, in the words an operator of Dify would use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A 2xx answer.
    Ok,
    /// Dify's 500 when PostgreSQL refuses a connection ("sorry, too many clients already").
    TooManyClients,
    /// dify-shaper's 503 `server_busy`: refused before it reached Dify, because it could not
    /// be served before its client would give up (safe to retry).
    Busy,
    /// Any other 502, 503 or 504: a gateway error or `upstream_unavailable`.
    Unavailable,
    /// No answer: the connection was refused or reset (the backend port was closed).
    Refused,
    /// The client gave up waiting and closed its connection.
    TimedOut,
    /// Any other answer (another 500, a 4xx).
    Other,
}

impl Kind {
    /// Classifies a finished exchange: the status and body of an answer, or `None` when no
    /// answer came (`timed_out`: the client's patience ran out first).
    pub fn of(answer: Option<(u16, &[u8])>, timed_out: bool) -> Kind {
        match answer {
            Some((status, _)) if (200..300).contains(&status) => Kind::Ok,
            Some((500, body)) if is_database_refusal(body) => Kind::TooManyClients,
            Some((503, body)) if envelope_code(body).as_deref() == Some("server_busy") => Kind::Busy,
            Some((502..=504, _)) => Kind::Unavailable,
            Some(_) => Kind::Other,
            None if timed_out => Kind::TimedOut,
            None => Kind::Refused,
        }
    }
}

/// Whether an error body is what PostgreSQL's connection limit reaches the client as: Dify's
/// generic envelope (`code` `unknown`), or an older message naming the limit.
fn is_database_refusal(body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"too many clients";
    envelope_code(body).as_deref() == Some("unknown")
        || body.windows(NEEDLE.len()).any(|w| w.eq_ignore_ascii_case(NEEDLE))
}

/// What happened to one request, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// When it was sent, since the first request.
    pub sent_at: Duration,
    /// How it ended.
    pub kind: Kind,
    /// From sending to the end of the answer (or to giving up, or to the connection error).
    pub latency: Duration,
}

/// The numbers of one side of the demo.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Requests sent.
    pub sent: usize,
    /// 2xx answers.
    pub ok: usize,
    /// Dify's 500 "too many clients".
    pub too_many_clients: usize,
    /// dify-shaper's 503 `server_busy`.
    pub busy: usize,
    /// Other 502/503/504 answers.
    pub unavailable: usize,
    /// Refused or reset connections.
    pub refused: usize,
    /// Clients that gave up.
    pub timed_out: usize,
    /// Any other non-2xx answer.
    pub other: usize,
    /// Successful answers per second, from the first request to the last success.
    pub goodput: f64,
    /// Median latency of the successes.
    pub p50: Option<Duration>,
    /// 99th percentile latency of the successes.
    pub p99: Option<Duration>,
}

impl Summary {
    /// Summarises `outcomes` (any order).
    pub fn of(outcomes: &[Observation]) -> Summary {
        let mut s = Summary { sent: outcomes.len(), ..Summary::default() };
        let mut latencies = Vec::new();
        let mut last_success = Duration::ZERO;
        for o in outcomes {
            match o.kind {
                Kind::Ok => {
                    s.ok += 1;
                    latencies.push(o.latency);
                    last_success = last_success.max(o.sent_at + o.latency);
                }
                Kind::TooManyClients => s.too_many_clients += 1,
                Kind::Busy => s.busy += 1,
                Kind::Unavailable => s.unavailable += 1,
                Kind::Refused => s.refused += 1,
                Kind::TimedOut => s.timed_out += 1,
                Kind::Other => s.other += 1,
            }
        }
        latencies.sort_unstable();
        s.p50 = percentile(&latencies, 0.50);
        s.p99 = percentile(&latencies, 0.99);
        s.goodput = if last_success.is_zero() { 0.0 } else { s.ok as f64 / last_success.as_secs_f64() };
        s
    }

    /// Requests that did not succeed.
    pub fn errors(&self) -> usize {
        self.sent - self.ok
    }

    /// The share of requests that succeeded (0 when nothing was sent).
    pub fn success_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.ok as f64 / self.sent as f64
        }
    }
}

/// The nearest-rank percentile `p` (0..=1) of ascending `sorted` values: the smallest value
/// with at least `p` of them at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let rank = (sorted.len() as f64 * p.clamp(0.0, 1.0)).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn outcome(sent: u64, kind: Kind, latency: u64) -> Observation {
        Observation { sent_at: ms(sent), kind, latency: ms(latency) }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&values, 0.5), Some(ms(50)));
        assert_eq!(percentile(&values, 0.99), Some(ms(99)));
        assert_eq!(percentile(&values, 1.0), Some(ms(100)));
        assert_eq!(percentile(&values, 0.0), Some(ms(1)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&[ms(1), ms(2), ms(3)], 0.5), Some(ms(2)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn outcomes_are_classified_by_status_body_and_fate() {
        let pg = br#"{"code":"internal_server_error","message":"(psycopg2.OperationalError) FATAL:  sorry, too many clients already","status":500}"#;
        assert_eq!(
            Kind::of(Some((500, crate::sim::DIFY_UNHANDLED_ERROR.as_bytes())), false),
            Kind::TooManyClients
        );
        let own = br#"{"code":"internal_server_error","message":"The server encountered an internal error","status":500}"#;
        assert_eq!(
            Kind::of(Some((500, own)), false),
            Kind::Other,
            "a run's own failure is not the database's"
        );
        assert_eq!(Kind::of(Some((200, b"{}")), false), Kind::Ok);
        assert_eq!(Kind::of(Some((201, b"")), false), Kind::Ok);
        assert_eq!(Kind::of(Some((500, pg)), false), Kind::TooManyClients);
        assert_eq!(Kind::of(Some((500, b"{\"code\":\"internal_server_error\"}")), false), Kind::Other);
        assert_eq!(Kind::of(Some((503, br#"{"code":"server_busy","status":503}"#)), false), Kind::Busy);
        assert_eq!(Kind::of(Some((503, br#"{"code":"upstream_unavailable"}"#)), false), Kind::Unavailable);
        assert_eq!(Kind::of(Some((503, b"<html>")), false), Kind::Unavailable);
        assert_eq!(Kind::of(Some((502, b"")), false), Kind::Unavailable);
        assert_eq!(Kind::of(Some((504, b"")), false), Kind::Unavailable);
        assert_eq!(Kind::of(Some((429, b"")), false), Kind::Other);
        assert_eq!(Kind::of(None, true), Kind::TimedOut);
        assert_eq!(Kind::of(None, false), Kind::Refused);
    }

    #[test]
    fn summary_counts_kinds_and_measures_successes_only() {
        let outcomes = [
            outcome(0, Kind::Ok, 1000),
            outcome(100, Kind::Ok, 3000),
            outcome(200, Kind::TooManyClients, 5),
            outcome(300, Kind::Refused, 1),
            outcome(400, Kind::TimedOut, 10_000),
            outcome(500, Kind::Unavailable, 2),
            outcome(600, Kind::Other, 2),
            outcome(650, Kind::Busy, 2),
            outcome(700, Kind::Ok, 1300),
        ];
        let s = Summary::of(&outcomes);
        assert_eq!((s.sent, s.ok, s.errors()), (9, 3, 6));
        let kinds = (s.too_many_clients, s.busy, s.refused, s.timed_out, s.unavailable, s.other);
        assert_eq!(kinds, (1, 1, 1, 1, 1, 1));
        assert_eq!(s.p50, Some(ms(1300)));
        assert_eq!(s.p99, Some(ms(3000)));
        // The last success ends at 3.1 s: 3 successes in 3.1 s.
        assert!((s.goodput - 3.0 / 3.1).abs() < 1e-9, "{}", s.goodput);
        assert!((s.success_ratio() - 3.0 / 9.0).abs() < 1e-9);
    }

    #[test]
    fn an_empty_or_failed_run_has_no_latency() {
        let s = Summary::of(&[outcome(0, Kind::Refused, 1)]);
        assert_eq!((s.p50, s.p99, s.goodput), (None, None, 0.0));
        assert_eq!(Summary::of(&[]).success_ratio(), 0.0);
    }
}
