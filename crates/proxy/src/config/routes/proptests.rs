//! Property tests of routing against brute-force references, over routes and paths drawn from
//! a small alphabet of segments so that prefixes, wildcards and suffixes overlap often:
//!
//! - a route matches a path exactly when a segment-by-segment reading of the module's rules
//!   says so (whole segments, `*` = one non-empty segment, a trailing `/` = anything below,
//!   a suffix after at least one more character, methods when listed);
//! - the router picks, among the routes that match, the most specific one (longest prefix
//!   plus suffix, then a route naming methods), and among equally specific ones the first in
//!   the file;
//! - a clash (two routes for the same paths and methods) is found whatever the file order,
//!   exactly when two routes have the same prefix (ignoring a trailing `/`) and suffix and
//!   share a method, and such routes do share requests.

use http::Method;
use proptest::prelude::*;

use super::{wildcards_are_segments, Route, RouteCache, Router};

const SEGMENTS: [&str; 6] = ["a", "b", "ab", "v1", "run", "*"];
const PATH_SEGMENTS: [&str; 8] = ["a", "b", "ab", "v1", "run", "stop", "x", ""];
const SUFFIXES: [&str; 3] = ["/stop", "/run", "/a"];
const METHODS: [Method; 3] = [Method::GET, Method::POST, Method::PUT];

/// A route as generated; `index` is its place in the file.
#[derive(Debug, Clone)]
struct Spec {
    prefix: String,
    suffix: Option<String>,
    methods: Option<Vec<Method>>,
}

fn spec() -> impl Strategy<Value = Spec> {
    let prefix = (prop::collection::vec(prop::sample::select(SEGMENTS.to_vec()), 0..4), any::<bool>())
        .prop_map(|(segments, slash)| {
            let body = segments.join("/");
            match (body.is_empty(), slash) {
                (true, _) => "/".to_string(),
                (false, true) => format!("/{body}/"),
                (false, false) => format!("/{body}"),
            }
        });
    let suffix =
        prop::option::weighted(0.3, prop::sample::select(SUFFIXES.to_vec()).prop_map(str::to_string));
    let methods = prop::option::weighted(0.4, prop::sample::subsequence(METHODS.to_vec(), 1..=2));
    (prefix, suffix, methods).prop_map(|(prefix, suffix, methods)| Spec { prefix, suffix, methods })
}

fn route(index: usize, spec: &Spec) -> Route {
    Route {
        name: format!("r{index}"),
        prefix: spec.prefix.clone(),
        suffix: spec.suffix.clone(),
        methods: spec.methods.clone(),
        upstream: format!("u{index}"),
        class: super::tests::class("interactive"),
        retry_after_processing: false,
        index,
        span: index..index + 1,
        cache: RouteCache::default(),
    }
}

fn request() -> impl Strategy<Value = (Method, String)> {
    let path = (prop::collection::vec(prop::sample::select(PATH_SEGMENTS.to_vec()), 0..6), any::<bool>())
        .prop_map(|(segments, slash)| format!("/{}{}", segments.join("/"), if slash { "/" } else { "" }));
    (prop::sample::select(METHODS.to_vec()), path)
}

/// The reference matcher: the path's segments against the prefix's, then the suffix in what
/// is left.
fn reference_matches(spec: &Spec, method: &Method, path: &str) -> bool {
    if spec.methods.as_ref().is_some_and(|m| !m.contains(method)) {
        return false;
    }
    let below = spec.prefix.ends_with('/');
    let body = if below { &spec.prefix[..spec.prefix.len() - 1] } else { spec.prefix.as_str() };
    let pattern: Vec<&str> = body.split('/').collect();
    let segments: Vec<&str> = path.split('/').collect();
    // A prefix ending in `/` needs that `/`: one more (possibly empty) segment in the path.
    let needed = pattern.len() + usize::from(below);
    if segments.len() < needed {
        return false;
    }
    let same = pattern.iter().zip(&segments).all(|(p, s)| if *p == "*" { !s.is_empty() } else { p == s });
    if !same {
        return false;
    }
    let rest = if below {
        segments[pattern.len()..].join("/")
    } else if segments.len() == pattern.len() {
        String::new()
    } else {
        format!("/{}", segments[pattern.len()..].join("/"))
    };
    match &spec.suffix {
        None => true,
        Some(suffix) => rest.len() > suffix.len() && rest.ends_with(suffix.as_str()),
    }
}

/// The reference pick: most specific by (prefix + suffix length, names methods), first in
/// the file among equals.
fn reference_route(specs: &[Spec], method: &Method, path: &str) -> Option<usize> {
    let key = |s: &Spec| (s.prefix.len() + s.suffix.as_ref().map_or(0, String::len), s.methods.is_some());
    let mut best: Option<usize> = None;
    for (i, spec) in specs.iter().enumerate() {
        if reference_matches(spec, method, path) && best.is_none_or(|b| key(spec) > key(&specs[b])) {
            best = Some(i);
        }
    }
    best
}

fn normalized(prefix: &str) -> &str {
    if prefix.len() > 1 {
        prefix.trim_end_matches('/')
    } else {
        prefix
    }
}

fn clash(a: &Spec, b: &Spec) -> bool {
    let methods = match (&a.methods, &b.methods) {
        (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
        _ => true,
    };
    normalized(&a.prefix) == normalized(&b.prefix) && a.suffix == b.suffix && methods
}

/// The routes less each one that clashes with one before it: a file the router accepts.
fn without_clashes(specs: Vec<Spec>) -> Vec<Spec> {
    let mut kept: Vec<Spec> = Vec::with_capacity(specs.len());
    for spec in specs {
        if !kept.iter().any(|k| clash(k, &spec)) {
            kept.push(spec);
        }
    }
    kept
}

fn reference_clash(specs: &[Spec]) -> bool {
    (0..specs.len()).any(|j| (0..j).any(|i| clash(&specs[i], &specs[j])))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    /// `Route::matches` agrees with the segment-by-segment reading of the rules.
    #[test]
    fn a_route_matches_what_the_reference_matches(spec in spec(), requests in prop::collection::vec(request(), 1..16)) {
        prop_assert!(wildcards_are_segments(&spec.prefix));
        let route = route(0, &spec);
        for (method, path) in &requests {
            prop_assert_eq!(route.matches(method, path), reference_matches(&spec, method, path), "{:?} {} {}", spec, method, path);
        }
    }

    /// The router's pick is the reference's: the most specific match, the file's order
    /// among equals.
    #[test]
    fn the_most_specific_route_wins(
        specs in prop::collection::vec(spec(), 1..7).prop_map(without_clashes),
        requests in prop::collection::vec(request(), 1..24),
    ) {
        let router = Router::new(specs.iter().enumerate().map(|(i, s)| route(i, s)).collect());
        prop_assert!(router.is_ok(), "{:?}", specs);
        let Ok(router) = router else { return Ok(()) };
        for (method, path) in &requests {
            let found = router.find(method, path);
            prop_assert_eq!(found.map(|(_, r)| r.index), reference_route(&specs, method, path), "{} {} in {:?}", method, path, specs);
            if let Some((position, r)) = found {
                prop_assert_eq!(router.get(position).map(|g| g.index), Some(r.index));
            }
        }
    }

    /// A clash is found whatever the order of the routes in the file, exactly when the
    /// reference finds one; the routes it names are both in the file and do share a request.
    #[test]
    fn clashes_are_found_in_any_order(
        (specs, order) in prop::collection::vec(spec(), 1..7)
            .prop_flat_map(|specs| { let n = specs.len(); (Just(specs), Just((0..n).collect::<Vec<_>>()).prop_shuffle()) }),
    ) {
        let build = |order: &[usize]| Router::new(order.iter().map(|i| route(*i, &specs[*i])).collect());
        let identity: Vec<usize> = (0..specs.len()).collect();
        let in_file = build(&identity);
        let shuffled = build(&order);
        prop_assert_eq!(in_file.is_err(), reference_clash(&specs), "{:?}", specs);
        prop_assert_eq!(shuffled.is_err(), in_file.is_err(), "{:?} in order {:?}", specs, order);
        if let Err(found) = in_file {
            let later = &specs[found.index];
            let earlier = specs[..found.index].iter().find(|s| clash(s, later));
            prop_assert!(earlier.is_some(), "routes[{}] clashes with no earlier route", found.index);
            prop_assert_eq!(found.span, found.index..found.index + 1, "the span of the later route's prefix");
            // Both match a request built from the shared prefix and suffix.
            if let Some(earlier) = earlier {
                let path = format!(
                    "{}/x/y{}",
                    normalized(&later.prefix).replace('*', "id").trim_end_matches('/'),
                    later.suffix.as_deref().unwrap_or(""),
                );
                let method = METHODS
                    .iter()
                    .find(|m| [earlier, later].iter().all(|s| s.methods.as_ref().is_none_or(|ms| ms.contains(m))));
                prop_assert!(method.is_some(), "no shared method");
                if let Some(method) = method {
                    prop_assert!(reference_matches(earlier, method, &path) && reference_matches(later, method, &path), "{} {}", method, path);
                }
            }
        }
    }
}
