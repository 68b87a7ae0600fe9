//! `[classes.NAME]` and `[[routes]]`: the built-in classes and their defaults, and each route
//! checked against the upstreams and classes it names.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::errors::{ConfigError, Locator};
use super::names::{check_name, list};
use crate::config::routes::{wildcards_are_segments, Route, RouteCache};
use crate::config::schema::{RawClass, RawRoute};
use crate::config::units::HumanDuration;
use crate::config::{ClassSpec, UpstreamSpec};

/// The built-in class names; each always exists.
pub(super) const BUILTIN_CLASSES: [&str; 3] = ["interactive", "run", "control"];

/// Dify's own nginx (`proxy_read_timeout` and `proxy_send_timeout`): the longest any request
/// may take through stock Dify. A shorter default would cut runs stock Dify finishes.
pub const DIFY_NGINX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Defaults for a class. `run` is Dify's long workflow/chat runs, `control` the cheap
/// stop-task calls; any other name starts from the `interactive` values. Every class may
/// wait as long as Dify's nginx allows: the proxy's own limits guard against a dead backend
/// (connect, stream idle, queue), never against a slow run.
pub(super) fn class_defaults(name: &str) -> ClassSpec {
    let secs = |s| HumanDuration(Duration::from_secs(s));
    // (queue timeout, weight, queued)
    let (queue, weight, queued) = match name {
        "run" => (60, 1, true),
        "control" => (10, 1, false),
        _ => (10, 4, true),
    };
    ClassSpec {
        name: name.to_string(),
        connect_timeout: secs(5),
        read_timeout: HumanDuration(DIFY_NGINX_TIMEOUT),
        // Dify pings every 10 s: three missed pings mean the stream is dead.
        stream_idle_timeout: secs(30),
        total_timeout: None,
        write_timeout: HumanDuration(DIFY_NGINX_TIMEOUT),
        queue_timeout: secs(queue),
        weight,
        queued,
        interactive: name == "interactive",
        index: 0,
    }
}

pub(super) fn build_classes(
    raw: &BTreeMap<String, RawClass>,
    at: &Locator<'_>,
) -> Result<BTreeMap<String, Arc<ClassSpec>>, ConfigError> {
    let mut classes: BTreeMap<String, Arc<ClassSpec>> =
        BUILTIN_CLASSES.into_iter().map(|name| (name.to_string(), Arc::new(class_defaults(name)))).collect();
    for (name, overrides) in raw {
        check_name(name).map_err(|m| at.unplaced(&format!("classes.{name}"), m))?;
        let base = class_defaults(name);
        let spec = ClassSpec {
            name: name.clone(),
            connect_timeout: overrides.connect_timeout.unwrap_or(base.connect_timeout),
            read_timeout: overrides.read_timeout.unwrap_or(base.read_timeout),
            stream_idle_timeout: overrides.stream_idle_timeout.unwrap_or(base.stream_idle_timeout),
            total_timeout: overrides.total_timeout.or(base.total_timeout),
            write_timeout: overrides.write_timeout.unwrap_or(base.write_timeout),
            queue_timeout: overrides.queue_timeout.unwrap_or(base.queue_timeout),
            weight: overrides.weight.unwrap_or(base.weight),
            queued: overrides.queued.unwrap_or(base.queued),
            interactive: overrides.interactive.unwrap_or(base.interactive),
            index: 0,
        };
        if spec.total_timeout.is_some_and(|t| t.0.is_zero()) {
            return Err(
                at.unplaced(&format!("classes.{name}.total_timeout"), "must be greater than 0".into())
            );
        }
        if !(1..=100).contains(&spec.weight) {
            return Err(at.unplaced(
                &format!("classes.{name}.weight"),
                format!("{} is out of range: expected 1..=100", spec.weight),
            ));
        }
        for (key, value) in [
            ("connect_timeout", spec.connect_timeout),
            ("read_timeout", spec.read_timeout),
            ("stream_idle_timeout", spec.stream_idle_timeout),
            ("write_timeout", spec.write_timeout),
            ("queue_timeout", spec.queue_timeout),
        ] {
            if value.0.is_zero() {
                return Err(at.unplaced(&format!("classes.{name}.{key}"), "must be greater than 0".into()));
            }
        }
        classes.insert(name.clone(), Arc::new(spec));
    }
    // Indices follow the (sorted) names; admission and latency signals are keyed by them.
    for (index, spec) in classes.values_mut().enumerate() {
        Arc::make_mut(spec).index = index;
    }
    Ok(classes)
}

pub(super) fn build_route(
    index: usize,
    raw: &RawRoute,
    upstreams: &BTreeMap<String, UpstreamSpec>,
    classes: &BTreeMap<String, Arc<ClassSpec>>,
    at: &Locator<'_>,
) -> Result<Route, ConfigError> {
    let key = |k: &str| Some(format!("routes[{index}].{k}"));
    let prefix = raw.prefix.get_ref();
    if !prefix.starts_with('/') {
        return Err(at.error(raw.prefix.span(), key("prefix"), format!("{prefix:?} must start with '/'")));
    }
    if !wildcards_are_segments(prefix) {
        return Err(at.error(
            raw.prefix.span(),
            key("prefix"),
            format!("{prefix:?}: `*` must be a whole segment (e.g. \"/console/api/apps/*/chat-messages\")"),
        ));
    }
    let suffix = match &raw.suffix {
        Some(s) if s.get_ref().is_empty() || !s.get_ref().starts_with('/') => {
            return Err(at.error(s.span(), key("suffix"), format!("{:?} must start with '/'", s.get_ref())))
        }
        Some(s) if s.get_ref().contains('*') => {
            return Err(at.error(
                s.span(),
                key("suffix"),
                format!("{:?}: wildcards belong in `prefix` (a `*` segment), not in `suffix`", s.get_ref()),
            ))
        }
        Some(s) => Some(s.get_ref().clone()),
        None => None,
    };
    let upstream = raw.upstream.get_ref();
    if !upstreams.contains_key(upstream) {
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        return Err(at.error(
            raw.upstream.span(),
            key("upstream"),
            format!(
                "route points to upstream {upstream:?}, which is not defined (defined: {})",
                list(&known)
            ),
        ));
    }
    let class = match &raw.class {
        None => classes.get("interactive").cloned(),
        Some(name) => classes.get(name.get_ref()).cloned(),
    };
    let Some(class) = class else {
        let known: Vec<&str> = classes.keys().map(String::as_str).collect();
        let span = raw.class.as_ref().map_or(0..0, Spanned::span);
        return Err(at.error(span, key("class"), format!("unknown class (defined: {})", list(&known))));
    };
    let methods = match &raw.methods {
        None => None,
        Some(spanned) => {
            let mut methods = Vec::new();
            for text in spanned.get_ref() {
                let method =
                    http::Method::from_bytes(text.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        at.error(spanned.span(), key("methods"), format!("{text:?} is not an HTTP method"))
                    })?;
                methods.push(method);
            }
            if methods.is_empty() {
                return Err(at.error(
                    spanned.span(),
                    key("methods"),
                    "an empty list matches nothing; omit the key to match every method".into(),
                ));
            }
            Some(methods)
        }
    };
    Ok(Route {
        name: raw.name.clone().unwrap_or_else(|| {
            format!("{prefix}{}", suffix.as_deref().map(|s| format!("*{s}")).unwrap_or_default())
        }),
        prefix: prefix.clone(),
        suffix,
        methods,
        upstream: upstream.clone(),
        class,
        retry_after_processing: raw.retry_after_processing,
        index,
        span: raw.prefix.span(),
        cache: RouteCache::default(),
    })
}
