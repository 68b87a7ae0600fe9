//! `[[routes]]`, validated: path prefix (+ optional suffix and methods) → upstream group and traffic class.
//!
//! Like nginx `location` prefixes, the most specific route wins: longer prefix+suffix first,
//! then routes that name methods before routes for every method. Prefixes match whole path
//! segments (`/v1` matches `/v1` and `/v1/…`, not `/v1beta`); a prefix that ends in `/`
//! matches anything below it. A `*` segment in a prefix matches exactly one non-empty path
//! segment, so Dify's `/console/api/apps/<app_id>/chat-messages` is the prefix
//! `/console/api/apps/*/chat-messages` and its stop call `…/chat-messages/*/stop` is more
//! specific than it. Two routes that would match exactly the same requests are a config error
//! rather than a silent first-wins.

use std::any::Any;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use http::Method;
use serde::Serialize;

use super::ClassSpec;

/// One validated route.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// Name for logs and `/status`.
    pub name: String,
    /// Path prefix (starts with `/`); a `*` segment stands for any one segment.
    pub prefix: String,
    /// Optional path suffix (starts with `/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Methods the route is limited to; `None` means all.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_methods")]
    pub methods: Option<Vec<Method>>,
    /// Upstream group name.
    pub upstream: String,
    /// Traffic class.
    #[serde(serialize_with = "serialize_class")]
    pub class: Arc<ClassSpec>,
    /// Whether non-idempotent requests may be retried after possible processing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retry_after_processing: bool,
    /// Position in the config file's `[[routes]]` list.
    #[serde(skip)]
    pub index: usize,
    /// Byte span of the prefix in the config source (for error messages).
    #[serde(skip)]
    pub span: Range<usize>,
    /// What the runtime caches for this route on its first request (its metric series).
    #[serde(skip)]
    pub cache: RouteCache,
}

/// Per-route state the runtime caches on a route's first request (the metrics keep the
/// route's series there, sparing a label lookup per request). It lives with the route in the
/// config snapshot, so a reload — which may rename routes or move them to another class or
/// upstream — starts empty. The config neither reads nor fills it.
#[derive(Debug, Clone, Default)]
pub struct RouteCache(OnceLock<Arc<dyn Any + Send + Sync>>);

impl RouteCache {
    /// The cached value, made by `init` on first use; `None` when a value of another type
    /// was cached first.
    pub fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.0.get_or_init(|| Arc::new(init())).downcast_ref::<T>()
    }
}

fn serialize_methods<S: serde::Serializer>(m: &Option<Vec<Method>>, s: S) -> Result<S::Ok, S::Error> {
    let names: Vec<&str> = m.iter().flatten().map(Method::as_str).collect();
    names.serialize(s)
}

fn serialize_class<S: serde::Serializer>(c: &Arc<ClassSpec>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&c.name)
}

impl Route {
    /// Whether this route applies to `method` and `path` (path without query string).
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        let Some(rest) = strip_pattern(&self.prefix, path) else {
            return false;
        };
        let segment_ok = self.prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/');
        if !segment_ok {
            return false;
        }
        match &self.suffix {
            None => true,
            // The suffix must follow at least one more character after the prefix, so
            // `/v1/chat-messages/` + `/stop` needs a task id in between.
            Some(suffix) => rest.len() > suffix.len() && rest.ends_with(suffix.as_str()),
        }
    }

    fn specificity(&self) -> (usize, bool) {
        let len = self.prefix.len() + self.suffix.as_ref().map_or(0, String::len);
        (len, self.methods.is_some())
    }

    /// Prefix without a trailing slash (except the root), for clash detection.
    fn normalized_prefix(&self) -> &str {
        if self.prefix.len() > 1 {
            self.prefix.trim_end_matches('/')
        } else {
            &self.prefix
        }
    }

    fn methods_overlap(&self, other: &Route) -> bool {
        match (&self.methods, &other.methods) {
            (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
            _ => true,
        }
    }
}

/// What is left of `path` after `pattern`, whose `*` segments each take one non-empty
/// segment of the path; `None` when the path does not start with the pattern.
fn strip_pattern<'p>(pattern: &str, path: &'p str) -> Option<&'p str> {
    let mut rest = path;
    let mut pieces = pattern.split('*');
    // `split` always yields a first piece: the literal before any wildcard.
    rest = rest.strip_prefix(pieces.next().unwrap_or_default())?;
    for literal in pieces {
        let segment_end = rest.find('/').unwrap_or(rest.len());
        if segment_end == 0 {
            return None;
        }
        rest = rest[segment_end..].strip_prefix(literal)?;
    }
    Some(rest)
}

/// Whether every `*` in a prefix stands alone as a whole segment (`/a/*/b`, `/a/*`), the only
/// form [`Route::matches`] gives a meaning to.
pub fn wildcards_are_segments(prefix: &str) -> bool {
    prefix.split('/').all(|segment| segment == "*" || !segment.contains('*'))
}

/// Two routes that match the same requests.
#[derive(Debug)]
pub struct RouteClash {
    /// The later route's index in the file.
    pub index: usize,
    /// Its prefix's span.
    pub span: Range<usize>,
    /// Explanation.
    pub message: String,
}

/// Routes in match order.
#[derive(Debug, Default, Serialize)]
#[serde(transparent)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Orders routes by specificity and rejects duplicates/overlaps.
    pub fn new(mut routes: Vec<Route>) -> Result<Router, RouteClash> {
        for (i, later) in routes.iter().enumerate() {
            for earlier in &routes[..i] {
                let same_path = earlier.normalized_prefix() == later.normalized_prefix()
                    && earlier.suffix == later.suffix;
                if same_path && earlier.methods_overlap(later) {
                    return Err(RouteClash {
                        index: later.index,
                        span: later.span.clone(),
                        message: format!(
                            "route {:?} overlaps route {:?} (routes[{}]): both match the same paths and methods; remove one or split them by `methods`",
                            later.name, earlier.name, earlier.index
                        ),
                    });
                }
            }
        }
        // Stable sort: among equally specific routes the file order is kept.
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        Ok(Router { routes })
    }

    /// The most specific route for the request, if any.
    pub fn route(&self, method: &Method, path: &str) -> Option<&Route> {
        self.find(method, path).map(|(_, route)| route)
    }

    /// The most specific route for the request and its position in match order: what a
    /// request keeps to find its route again in the same snapshot without copying it.
    pub fn find(&self, method: &Method, path: &str) -> Option<(usize, &Route)> {
        self.routes.iter().enumerate().find(|(_, r)| r.matches(method, path))
    }

    /// The route at `index` in match order.
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// All routes in match order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use std::time::Duration;

    /// A class named `name` with one-second timeouts (routing reads only its name).
    pub(super) fn class(name: &str) -> Arc<ClassSpec> {
        let d = HumanDuration(Duration::from_secs(1));
        Arc::new(ClassSpec {
            name: name.into(),
            connect_timeout: d,
            read_timeout: d,
            stream_idle_timeout: d,
            total_timeout: None,
            write_timeout: d,
            queue_timeout: d,
            weight: 1,
            queued: true,
            interactive: false,
            index: 0,
        })
    }

    fn route(
        index: usize,
        prefix: &str,
        suffix: Option<&str>,
        methods: Option<&[Method]>,
        upstream: &str,
    ) -> Route {
        Route {
            name: format!("r{index}"),
            prefix: prefix.into(),
            suffix: suffix.map(Into::into),
            methods: methods.map(<[Method]>::to_vec),
            upstream: upstream.into(),
            class: class("interactive"),
            retry_after_processing: false,
            index,
            span: 0..0,
            cache: RouteCache::default(),
        }
    }

    #[test]
    fn most_specific_route_wins() {
        let router = Router::new(vec![
            route(0, "/", None, None, "web"),
            route(1, "/v1", None, None, "api"),
            route(2, "/v1/chat-messages/", Some("/stop"), None, "stop"),
            route(3, "/e/", None, None, "plugin"),
            route(4, "/v1/files", None, Some(&[Method::POST]), "upload"),
        ])
        .expect("valid routes");
        let to = |m: Method, p: &str| router.route(&m, p).map(|r| r.upstream.as_str());
        assert_eq!(to(Method::GET, "/"), Some("web"));
        assert_eq!(to(Method::GET, "/apps"), Some("web"));
        assert_eq!(to(Method::POST, "/v1/workflows/run"), Some("api"));
        assert_eq!(to(Method::GET, "/v1"), Some("api"));
        assert_eq!(to(Method::GET, "/v1beta"), Some("web"), "prefixes match whole segments");
        assert_eq!(to(Method::POST, "/v1/chat-messages/abc/stop"), Some("stop"));
        assert_eq!(to(Method::POST, "/v1/chat-messages/stop"), Some("api"), "a task id must sit between");
        assert_eq!(to(Method::POST, "/v1/chat-messages"), Some("api"));
        assert_eq!(to(Method::POST, "/e/plugin/x"), Some("plugin"));
        assert_eq!(to(Method::POST, "/v1/files/upload"), Some("upload"));
        assert_eq!(to(Method::GET, "/v1/files/upload"), Some("api"));
    }

    #[test]
    fn wildcard_segments_match_one_segment() {
        let router = Router::new(vec![
            route(0, "/", None, None, "web"),
            route(1, "/console/api/apps/*/chat-messages", None, Some(&[Method::POST]), "run"),
            route(2, "/console/api/apps/*/chat-messages/*/stop", None, None, "stop"),
            route(3, "/v1/workflows/*/run", None, None, "run-by-id"),
            route(4, "/v1/workflows/run", None, None, "run"),
        ])
        .expect("valid routes");
        let to = |m: Method, p: &str| router.route(&m, p).map(|r| r.upstream.as_str());
        assert_eq!(to(Method::POST, "/console/api/apps/3f2a/chat-messages"), Some("run"));
        assert_eq!(to(Method::GET, "/console/api/apps/3f2a/chat-messages"), Some("web"));
        assert_eq!(to(Method::POST, "/console/api/apps/3f2a/chat-messages/t1/stop"), Some("stop"));
        assert_eq!(to(Method::POST, "/console/api/apps//chat-messages"), Some("web"), "* needs a segment");
        assert_eq!(to(Method::POST, "/console/api/apps/a/b/chat-messages"), Some("web"), "* is one segment");
        assert_eq!(to(Method::POST, "/v1/workflows/wf-1/run"), Some("run-by-id"));
        assert_eq!(to(Method::POST, "/v1/workflows/run"), Some("run"));
        assert_eq!(to(Method::POST, "/v1/workflows/wf-1/runs"), Some("web"), "whole segments only");
        assert!(wildcards_are_segments("/a/*/b/*"));
        assert!(!wildcards_are_segments("/a/x*/b"));
    }

    #[test]
    fn no_route_without_catch_all() {
        let router = Router::new(vec![route(0, "/v1", None, None, "api")]).expect("valid");
        assert!(router.route(&Method::GET, "/console/api/ping").is_none());
    }

    #[test]
    fn duplicate_and_overlapping_routes_are_rejected() {
        let dup = Router::new(vec![route(0, "/v1", None, None, "a"), route(1, "/v1", None, None, "b")]);
        assert_eq!(dup.map(|_| ()).unwrap_err().index, 1);
        let slash = Router::new(vec![route(0, "/v1", None, None, "a"), route(1, "/v1/", None, None, "b")]);
        assert!(slash.is_err(), "/v1 and /v1/ match the same requests below /v1/");
        let methods = Router::new(vec![
            route(0, "/v1", None, Some(&[Method::GET, Method::POST]), "a"),
            route(1, "/v1", None, Some(&[Method::POST]), "b"),
        ]);
        assert!(methods.is_err());
        let split = Router::new(vec![
            route(0, "/v1", None, Some(&[Method::GET]), "a"),
            route(1, "/v1", None, Some(&[Method::POST]), "b"),
        ]);
        assert!(split.is_ok(), "disjoint methods do not overlap");
    }
}

#[cfg(test)]
mod proptests;
