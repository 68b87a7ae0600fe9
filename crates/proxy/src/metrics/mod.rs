//! Every Prometheus metric the proxy exports, defined in one place (`GET /metrics` on the
//! admin listener). Names are `dify_shaper_*` in base units (`_seconds`, `_total`).
//!
//! Two kinds:
//! - **per request**, recorded once when a request ends ([`Metrics::request_done`]): counts by
//!   route, class, upstream and status, the time to answer, the time to the first byte, the
//!   queue wait, retries, proxy errors by code;
//! - **state**, read at scrape time from the run-time state that already keeps it (admission
//!   snapshot, endpoint health, maintenance view, retry budget, reload counts): gauges, and
//!   counters those structures count anyway. Reading them at scrape time keeps the request
//!   path free of metric bookkeeping for them and can never drift from `/status`.
//!
//! Besides those, the standard `process_*` metrics of the proxy process (Linux: memory, CPU,
//! file descriptors, threads, start time), under their usual names so existing dashboards
//! and alerts find them.
//!
//! The state metrics and the text exposition are in [`scrape`] (it reads the shared state,
//! which holds these request metrics).
//!
//! Labels are bounded: routes and classes come from the config, statuses are HTTP codes,
//! upstreams and endpoints are configured, tenants are the top ten waiting (redacted keys).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub mod scrape;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::config::routes::RouteCache;

/// Request durations: Dify answers pings in milliseconds and runs workflows for 15 s or more.
const DURATION_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0];
/// Time to first byte: a ping or a cached answer in milliseconds, a model's first event in
/// a few hundred milliseconds to seconds (finer steps there, where latency targets sit), a
/// blocking workflow only when it is done (minutes).
const FIRST_BYTE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
    60.0, 120.0, 300.0,
];
/// Queue waits: most are zero; held requests wait through a restart (minutes).
const WAIT_BUCKETS: &[f64] =
    &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The standard process metrics the collector exports on Linux, under their usual unprefixed
/// names (existing process dashboards and alerts find them).
pub const PROCESS_METRICS: [&str; 7] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// The metrics recorded per request; the state metrics are built at scrape time.
#[derive(Debug)]
pub struct Metrics {
    /// Tells apart the instances (tests build several) so a route's [`RouteCache`] filled by one is
    /// never used to record for another.
    id: u64,
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    first_byte: HistogramVec,
    queue_wait: HistogramVec,
    retries: IntCounterVec,
    proxy_errors: IntCounterVec,
}

/// What one finished request reports.
#[derive(Debug, Clone, Copy)]
pub struct RequestDone<'a> {
    /// Route name (or prefix); `-` when unrouted.
    pub route: &'a str,
    /// Class; `-` when unrouted.
    pub class: &'a str,
    /// Upstream; `-` when unrouted.
    pub upstream: &'a str,
    /// Status sent to the client; `499` when the client left before one was sent.
    pub status: u16,
    /// Arrival to the end of the response.
    pub seconds: f64,
    /// Arrival to the first byte the user waits for (see
    /// [`RequestCtx::time_to_first_byte`](crate::proxy::ctx::RequestCtx::time_to_first_byte));
    /// `None` when the backend never answered.
    pub first_byte: Option<f64>,
    /// Time queued for admission, when it was admitted.
    pub queue_wait: Option<f64>,
    /// Attempts beyond the first.
    pub retries: u32,
    /// The envelope code when the proxy answered by itself.
    pub proxy_error: Option<&'a str>,
}

impl Metrics {
    /// Defines and registers the per-request metrics and the process collector.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "dify_shaper_requests_total",
                "Requests finished, by route, class, upstream and status (499: the client left \
                 before a status was sent)",
            ),
            &["route", "class", "upstream", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("dify_shaper_request_duration_seconds", "Arrival to the end of the response")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "class"],
        )?;
        let first_byte = HistogramVec::new(
            HistogramOpts::new(
                "dify_shaper_time_to_first_byte_seconds",
                "Arrival (queue included) to the first byte of the backend's answer: for an event \
                 stream the first body chunk sent to the client, otherwise the response header. \
                 Answers the proxy made itself are not observed",
            )
            .buckets(FIRST_BYTE_BUCKETS.to_vec()),
            &["route", "class", "upstream"],
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new("dify_shaper_queue_wait_seconds", "Time a request waited for admission")
                .buckets(WAIT_BUCKETS.to_vec()),
            &["upstream", "class"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new("dify_shaper_retries_total", "Upstream attempts beyond the first"),
            &["upstream"],
        )?;
        let proxy_errors = IntCounterVec::new(
            Opts::new(
                "dify_shaper_proxy_errors_total",
                "Answers the proxy generated itself, by envelope code",
            ),
            &["code"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(first_byte.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(proxy_errors.clone()))?;
        // Read from /proc at scrape time, like the state metrics; the module exists on Linux only.
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Metrics { id, registry, requests, duration, first_byte, queue_wait, retries, proxy_errors })
    }

    /// Records a finished request of the route whose series `slot` caches. Same series and
    /// values as [`Metrics::request_done`], without its per-call label lookups: each
    /// `with_label_values` hashes the labels, takes a lock and clones the child (and the
    /// status had to be formatted), four times per request on the hottest path. Every
    /// request recorded through one slot must carry the same route, class and upstream (one
    /// slot per configured route).
    pub fn request_done_in(&self, slot: &RouteCache, done: RequestDone<'_>) {
        let series = slot.get_or_init(|| self.series(done.route, done.class, done.upstream));
        let Some(series) = series.filter(|s| s.metrics == self.id) else {
            // Filled by another instance (only tests build several): record uncached.
            return self.request_done(done);
        };
        series.count_request(done.status);
        series.duration.observe(done.seconds);
        // The others are created on first use, as `with_label_values` does: a series that
        // never saw a value stays out of the exposition.
        if let Some(first_byte) = done.first_byte {
            let [route, class, upstream] = series.labels();
            series
                .first_byte
                .get_or_init(|| self.first_byte.with_label_values(&[route, class, upstream]))
                .observe(first_byte);
        }
        if let Some(wait) = done.queue_wait {
            let [_, class, upstream] = series.labels();
            series
                .queue_wait
                .get_or_init(|| self.queue_wait.with_label_values(&[upstream, class]))
                .observe(wait);
        }
        if done.retries > 0 {
            let [_, _, upstream] = series.labels();
            series
                .retries
                .get_or_init(|| self.retries.with_label_values(&[upstream]))
                .inc_by(u64::from(done.retries));
        }
        if let Some(code) = done.proxy_error {
            self.proxy_errors.with_label_values(&[code]).inc();
        }
    }

    /// The cached series of one route, class and upstream.
    fn series(&self, route: &str, class: &str, upstream: &str) -> RouteSeries {
        RouteSeries {
            metrics: self.id,
            route: route.to_string(),
            class: class.to_string(),
            upstream: upstream.to_string(),
            requests: self.requests.clone(),
            by_status: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
            duration: self.duration.with_label_values(&[route, class]),
            first_byte: OnceLock::new(),
            queue_wait: OnceLock::new(),
            retries: OnceLock::new(),
        }
    }

    /// Records a finished request.
    pub fn request_done(&self, done: RequestDone<'_>) {
        let status = done.status.to_string();
        self.requests.with_label_values(&[done.route, done.class, done.upstream, &status]).inc();
        self.duration.with_label_values(&[done.route, done.class]).observe(done.seconds);
        if let Some(first_byte) = done.first_byte {
            self.first_byte.with_label_values(&[done.route, done.class, done.upstream]).observe(first_byte);
        }
        if let Some(wait) = done.queue_wait {
            self.queue_wait.with_label_values(&[done.upstream, done.class]).observe(wait);
        }
        if done.retries > 0 {
            self.retries.with_label_values(&[done.upstream]).inc_by(u64::from(done.retries));
        }
        if let Some(code) = done.proxy_error {
            self.proxy_errors.with_label_values(&[code]).inc();
        }
    }
}

/// Statuses 100–599 get a cached counter each; anything else (never sent by a conforming
/// backend) is looked up per request.
const STATUS_SLOTS: usize = 500;

/// The per-request series of one route, class and upstream, resolved once.
#[derive(Debug)]
pub struct RouteSeries {
    /// The [`Metrics`] instance they belong to.
    metrics: u64,
    route: String,
    class: String,
    upstream: String,
    requests: IntCounterVec,
    by_status: Box<[OnceLock<IntCounter>]>,
    duration: Histogram,
    first_byte: OnceLock<Histogram>,
    queue_wait: OnceLock<Histogram>,
    retries: OnceLock<IntCounter>,
}

impl RouteSeries {
    /// Route, class and upstream.
    fn labels(&self) -> [&str; 3] {
        [&self.route, &self.class, &self.upstream]
    }

    /// Counts one request in `dify_shaper_requests_total` with `status`.
    fn count_request(&self, status: u16) {
        let counter = || {
            let [route, class, upstream] = self.labels();
            self.requests.with_label_values(&[route, class, upstream, &status.to_string()])
        };
        match usize::from(status).checked_sub(100).and_then(|i| self.by_status.get(i)) {
            Some(slot) => slot.get_or_init(counter).inc(),
            None => counter().inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    fn done(status: u16, first_byte: Option<f64>) -> RequestDone<'static> {
        RequestDone {
            route: "/v1",
            class: "run",
            upstream: "api",
            status,
            seconds: 0.2,
            first_byte,
            queue_wait: None,
            retries: 0,
            proxy_error: None,
        }
    }

    fn text(metrics: &Metrics) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&metrics.registry.gather(), &mut out).expect("encode");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn request_metrics_render_in_text_format() {
        let metrics = Metrics::new().expect("metrics");
        metrics.request_done(RequestDone {
            queue_wait: Some(0.1),
            retries: 2,
            proxy_error: Some("server_busy"),
            ..done(503, None)
        });
        let text = text(&metrics);
        assert!(
            text.contains(
                r#"dify_shaper_requests_total{class="run",route="/v1",status="503",upstream="api"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"dify_shaper_retries_total{upstream="api"} 2"#));
        assert!(text.contains(r#"dify_shaper_proxy_errors_total{code="server_busy"} 1"#));
        assert!(text.contains("dify_shaper_queue_wait_seconds_bucket"));
        assert!(
            !text.contains("dify_shaper_time_to_first_byte_seconds_count"),
            "the proxy's own answer is no backend latency: {text}"
        );
    }

    #[test]
    fn time_to_first_byte_is_observed_by_route_class_and_upstream() {
        let metrics = Metrics::new().expect("metrics");
        metrics.request_done(done(200, Some(0.375)));
        metrics.request_done(done(200, Some(12.0)));
        let text = text(&metrics);
        let series = r#"{class="run",route="/v1",upstream="api"}"#;
        assert!(text.contains(&format!("dify_shaper_time_to_first_byte_seconds_count{series} 2")), "{text}");
        assert!(
            text.contains(&format!("dify_shaper_time_to_first_byte_seconds_sum{series} 12.375")),
            "{text}"
        );
        let bucket = |le: &str| {
            format!(
                r#"dify_shaper_time_to_first_byte_seconds_bucket{{class="run",route="/v1",upstream="api",le="{le}"}}"#
            )
        };
        assert!(text.contains(&format!("{} 0", bucket("0.25"))), "{text}");
        assert!(text.contains(&format!("{} 1", bucket("0.5"))), "{text}");
        assert!(text.contains(&format!("{} 2", bucket("15"))), "{text}");
        assert!(text.contains(&format!("{} 2", bucket("300"))), "{text}");
        assert!(text.contains(&format!("{} 2", bucket("+Inf"))), "{text}");
    }

    #[test]
    fn a_client_that_left_counts_as_499() {
        let metrics = Metrics::new().expect("metrics");
        let left = crate::proxy::outcome::recorded_status(None);
        metrics.request_done(done(left, None));
        let text = text(&metrics);
        assert!(
            text.contains(
                r#"dify_shaper_requests_total{class="run",route="/v1",status="499",upstream="api"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains(r#"status="0""#), "{text}");
    }

    #[test]
    fn a_route_slot_records_what_the_label_lookups_record() {
        let requests = [
            done(200, Some(0.375)),
            RequestDone {
                queue_wait: Some(0.1),
                retries: 2,
                proxy_error: Some("server_busy"),
                ..done(503, None)
            },
            done(499, None),
            done(200, Some(1.5)),
        ];
        let (cached, uncached) = (Metrics::new().expect("metrics"), Metrics::new().expect("metrics"));
        let slot = RouteCache::default();
        for request in requests {
            cached.request_done_in(&slot, request);
            uncached.request_done(request);
        }
        // The process metrics (memory) differ between any two reads.
        let ours = |m: &Metrics| {
            text(m).lines().filter(|l| l.contains("dify_shaper_")).collect::<Vec<_>>().join("\n")
        };
        assert_eq!(ours(&cached), ours(&uncached));
        // A slot another instance filled still records, uncached, into this one.
        let other = Metrics::new().expect("metrics");
        other.request_done_in(&slot, done(200, None));
        assert!(text(&other).contains(
            r#"dify_shaper_requests_total{class="run",route="/v1",status="200",upstream="api"} 1"#
        ));
        assert!(text(&cached).contains(
            r#"dify_shaper_requests_total{class="run",route="/v1",status="200",upstream="api"} 2"#
        ));
    }

    #[test]
    fn series_are_created_on_first_use_through_a_slot_too() {
        let metrics = Metrics::new().expect("metrics");
        metrics.request_done_in(&RouteCache::default(), done(200, None));
        let text = text(&metrics);
        for absent in [
            "dify_shaper_time_to_first_byte_seconds_count",
            "dify_shaper_queue_wait_seconds_count",
            "dify_shaper_retries_total{",
        ] {
            assert!(!text.contains(absent), "{absent} without a value: {text}");
        }
        assert!(text.contains("dify_shaper_request_duration_seconds_count"), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exported() {
        let metrics = Metrics::new().expect("metrics");
        let families = metrics.registry.gather();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        for name in PROCESS_METRICS {
            assert!(names.contains(&name), "{name} is not exported: {names:?}");
        }
        let rss = families
            .iter()
            .find(|f| f.name() == "process_resident_memory_bytes")
            .and_then(|f| f.get_metric().first())
            .map_or(0.0, |m| m.get_gauge().get_value());
        assert!(rss > 0.0, "resident memory read from /proc: {rss}");
    }
}
