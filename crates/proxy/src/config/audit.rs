//! Warnings about a valid config that would still treat some of Dify's traffic worse than
//! stock Dify does: a route table row the router cannot place or puts in the wrong class, and a
//! class whose timeouts are shorter than Dify's own nginx allows.
//!
//! Dify's route table ships with the binary (`conf/dify-routes-1.12.1.tsv`: every route of
//! Dify's API server, which of them stream or run an app); a newer Dify is a data update, or
//! `dify-shaper check --dify-routes FILE`. `check` prints these warnings and `run` logs them;
//! neither refuses the config, because an operator may mean it.

use http::Method;

use super::load::DIFY_NGINX_TIMEOUT;
use super::Config;

/// Dify 1.12.1's routes (tab-separated: method, path, handler, long_running, source).
pub const DIFY_ROUTES: &str = include_str!("../../../../conf/dify-routes-1.12.1.tsv");

/// The class a row of Dify's route table needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// A long run (streams, or runs an app, workflow, model or tool): the `run` class.
    Run,
    /// A stop-task call, which must never wait behind the runs it stops: the `control` class.
    Control,
    /// Anything else: any class but `control`, which is never queued nor limited.
    Other,
}

/// One route of Dify's API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DifyRoute {
    /// HTTP method.
    pub method: Method,
    /// Flask's path, converters kept (`/v1/workflows/<string:workflow_id>/run`).
    pub pattern: String,
    /// Dify's handler class.
    pub handler: String,
    /// What class the row needs.
    pub needs: Needs,
}

impl DifyRoute {
    /// A concrete path for the pattern: every `<converter:name>` becomes a plausible value.
    pub fn sample_path(&self) -> String {
        let mut out = String::with_capacity(self.pattern.len() + 32);
        let mut rest = self.pattern.as_str();
        while let Some(open) = rest.find('<') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('>') else { break };
            let converter = rest[open + 1..open + close].split(':').next().unwrap_or_default();
            out.push_str(match converter {
                "uuid" => "5a0f6c1e-3b8d-4c2a-9e71-0d4b6a8f2c19",
                "int" => "7",
                "path" => "some/file.txt",
                _ => "x7",
            });
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// Parses a route table; comment lines (`#`) and the header row are skipped. A line that does
/// not have a method and a path is an error naming the line.
pub fn parse_routes(text: &str) -> Result<Vec<DifyRoute>, String> {
    let mut routes = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() || line.starts_with("method\t") {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let (Some(method), Some(path)) = (fields.first(), fields.get(1)) else {
            return Err(format!(
                "line {}: expected method<TAB>path<TAB>handler<TAB>long_running",
                number + 1
            ));
        };
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("line {}: {method:?} is not an HTTP method", number + 1))?;
        if !path.starts_with('/') {
            return Err(format!("line {}: path {path:?} must start with '/'", number + 1));
        }
        let handler = fields.get(2).copied().unwrap_or_default().to_string();
        let long_running = fields.get(3).is_some_and(|f| f.trim() == "yes");
        let is_stop = path.ends_with("/stop") && handler.contains("Stop");
        let needs = match (long_running, is_stop) {
            (true, _) => Needs::Run,
            (false, true) => Needs::Control,
            (false, false) => Needs::Other,
        };
        routes.push(DifyRoute { method, pattern: (*path).to_string(), handler, needs });
    }
    Ok(routes)
}

/// Rows of `table` that `config` routes where they do not belong, one warning each, naming the
/// row and what the router did with it.
pub fn route_warnings(config: &Config, table: &[DifyRoute]) -> Vec<String> {
    let mut warnings = Vec::new();
    for row in table {
        let path = row.sample_path();
        let Some(route) = config.router.route(&row.method, &path) else {
            warnings.push(format!(
                "Dify route {} {} ({}) matches no route: requests to it get 404 from dify-shaper",
                row.method, row.pattern, row.handler
            ));
            continue;
        };
        let class = route.class.name.as_str();
        let wrong = match row.needs {
            Needs::Run => class != "run",
            Needs::Control => class != "control",
            Needs::Other => class == "control",
        };
        if wrong {
            let wanted = match row.needs {
                Needs::Run => "the `run` class (it streams or runs an app)",
                Needs::Control => "the `control` class (a stop-task call must not wait behind runs)",
                Needs::Other => "a queued class, not `control` (which is never queued nor limited)",
            };
            warnings.push(format!(
                "Dify route {} {} ({}) goes to route {:?}, class {class:?}; it needs {wanted}",
                row.method, row.pattern, row.handler, route.name
            ));
        }
    }
    warnings
}

/// Classes used by a route whose timeouts are shorter than Dify's nginx allows, one warning per
/// route and key: such a route cuts requests that stock Dify finishes.
pub fn timeout_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    for route in config.router.routes() {
        let class = &route.class;
        let limits = [
            ("read_timeout", Some(class.read_timeout.0)),
            ("write_timeout", Some(class.write_timeout.0)),
            ("total_timeout", class.total_timeout.map(|t| t.0)),
        ];
        for (key, value) in limits {
            if let Some(value) = value.filter(|v| *v < DIFY_NGINX_TIMEOUT) {
                warnings.push(format!(
                    "route {:?} (class {:?}): classes.{}.{key} = {} is shorter than Dify's nginx \
                     allows ({}): a request running longer is cut with 504 upstream_timeout",
                    route.name,
                    class.name,
                    class.name,
                    humantime::format_duration(value),
                    humantime::format_duration(DIFY_NGINX_TIMEOUT),
                ));
            }
        }
    }
    warnings
}

/// Every warning for `config` against Dify's route `table`.
pub fn warnings(config: &Config, table: &[DifyRoute]) -> Vec<String> {
    let mut all = timeout_warnings(config);
    all.extend(route_warnings(config, table));
    all
}

/// The built-in route table of the Dify version this release targets.
pub fn builtin_routes() -> Vec<DifyRoute> {
    // The table is compiled in and tested; a parse error here is a build defect, which the
    // unit test below catches, so an empty table is the safe fallback at run time.
    parse_routes(DIFY_ROUTES).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_embedded, parse_str, Overrides};

    #[test]
    fn builtin_table_parses_with_every_kind_of_row() {
        let table = parse_routes(DIFY_ROUTES).expect("the shipped table parses");
        assert!(table.len() > 600, "{} rows", table.len());
        assert!(table.iter().any(|r| r.needs == Needs::Run));
        assert!(table.iter().any(|r| r.needs == Needs::Control));
        let by_id = table.iter().find(|r| r.pattern == "/v1/workflows/<string:workflow_id>/run");
        assert_eq!(by_id.map(DifyRoute::sample_path).as_deref(), Some("/v1/workflows/x7/run"));
    }

    #[test]
    fn bad_rows_are_named() {
        let err = parse_routes("method\tpath\nFETCH ME\t/x\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err = parse_routes("GET\tv1/x\n").unwrap_err();
        assert!(err.contains("must start with '/'"), "{err}");
    }

    #[test]
    fn embedded_defaults_place_every_dify_route_in_its_class() {
        let config = load_embedded(&Overrides::default()).expect("embedded config");
        let warnings = warnings(&config, &builtin_routes());
        assert!(warnings.is_empty(), "{}", warnings.join("\n"));
    }

    #[test]
    fn a_misrouted_row_and_a_short_timeout_are_named() {
        let text = "[upstreams.api]\nservers = [\"127.0.0.1:1\"]\n[classes.run]\nread_timeout = \"10m\"\n\
                    [[routes]]\nprefix = \"/v1\"\nupstream = \"api\"\n\
                    [[routes]]\nprefix = \"/v1/workflows/run\"\nupstream = \"api\"\nclass = \"run\"\n";
        let config = parse_str(text, "t.toml", &Overrides::default()).expect("valid");
        let table = parse_routes(
            "POST\t/v1/chat-messages\tChatApi\tyes\tx.py\n\
             POST\t/v1/chat-messages/<string:task_id>/stop\tChatStopApi\t\tx.py\n\
             GET\t/console/api/ping\tPing\t\tx.py\n",
        )
        .expect("table");
        let route = route_warnings(&config, &table);
        assert_eq!(route.len(), 3, "{route:?}");
        assert!(
            route[0].contains("/v1/chat-messages (ChatApi)") && route[0].contains("`run`"),
            "{}",
            route[0]
        );
        assert!(route[1].contains("ChatStopApi") && route[1].contains("`control`"), "{}", route[1]);
        assert!(route[2].contains("matches no route"), "{}", route[2]);
        let timeouts = timeout_warnings(&config);
        assert_eq!(timeouts.len(), 1, "{timeouts:?}");
        assert!(
            timeouts[0].contains("\"/v1/workflows/run\"") && timeouts[0].contains("10m"),
            "{}",
            timeouts[0]
        );
    }
}
