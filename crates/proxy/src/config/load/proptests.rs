//! Property tests of the config loader, the first thing to read user input:
//!
//! - no text, whether random or TOML-shaped around the real keys, makes it panic, and every
//!   error it gives points inside the text;
//! - in a valid config that uses every table, setting any key to any TOML value (or removing
//!   it) either loads or is refused with an error that names that key (or, for a check between
//!   keys, one of its table), on the key's own line when the error is about the key itself;
//!   an unknown key is refused by name;
//! - a generated valid config loads with the values written, and what `check` prints from it
//!   loads again into the same effective config.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::{parse_str, ConfigError, Overrides};
use crate::config::{ByteSize, Config, HumanDuration};

fn load(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, "test.toml", &Overrides::default())
}

/// A valid config with every table the loader reads, as (header, [(key, value)]) in file
/// order. Array tables (`[[routes]]`, `[[maintenance]]`) appear once per element.
const BASE: &[(&str, &[(&str, &str)])] = &[
    (
        "[server]",
        &[
            ("listen", r#""127.0.0.1:8080""#),
            ("admin", r#""127.0.0.1:9090""#),
            ("threads", "2"),
            ("max_request_body", r#""100MiB""#),
            ("client_read_buffer", r#""8KiB""#),
            ("resolve_interval", r#""5s""#),
            ("upstream_keepalive_pool", "256"),
            ("shutdown_grace", r#""30s""#),
            ("forwarding", r#""trusted""#),
            ("trusted_proxies", r#"["10.0.0.0/8", "::1"]"#),
        ],
    ),
    ("[log]", &[("format", r#""text""#), ("level", r#""info""#), ("access_log", "true")]),
    ("[upstreams.api]", &[("servers", r#"["api:5001", "10.0.0.2:5001"]"#), ("keepalive", r#""0s""#)]),
    (
        "[upstreams.api.admission]",
        &[
            ("enabled", "true"),
            ("initial_limit", "4"),
            ("min_limit", "1"),
            ("max_limit", "1000"),
            ("max_queue", "1024"),
            ("latency_tolerance", "1.3"),
        ],
    ),
    (
        "[upstreams.api.health]",
        &[
            ("enabled", "true"),
            ("path", r#""/health""#),
            ("interval", r#""1s""#),
            ("timeout", r#""1s""#),
            ("rise", "2"),
            ("fall", "2"),
            ("ramp", r#""0s""#),
        ],
    ),
    (
        "[upstreams.api.retry]",
        &[
            ("budget_ratio", "0.2"),
            ("budget_min", "3"),
            ("max_retries", "2"),
            ("backoff_base", r#""100ms""#),
            ("backoff_max", r#""2s""#),
        ],
    ),
    ("[upstreams.web]", &[("servers", r#"["web:3000"]"#)]),
    (
        "[classes.run]",
        &[
            ("connect_timeout", r#""5s""#),
            ("read_timeout", r#""1h""#),
            ("stream_idle_timeout", r#""30s""#),
            ("total_timeout", r#""2h""#),
            ("write_timeout", r#""1h""#),
            ("queue_timeout", r#""60s""#),
            ("weight", "1"),
            ("queued", "true"),
            ("interactive", "false"),
        ],
    ),
    ("[classes.bulk]", &[("weight", "2")]),
    ("[admission]", &[("interactive_reserve", "0.1"), ("lifo_after", r#""2s""#)]),
    ("[tenants]", &[("header", r#""X-Tenant""#)]),
    ("[tenants.rate_limit]", &[("rate", "5.0"), ("burst", "10")]),
    ("[sidecar]", &[("reload_nginx", r#"["nginx"]"#), ("socket", r#""/var/run/docker.sock""#)]),
    (
        "[[routes]]",
        &[
            ("name", r#""v1""#),
            ("prefix", r#""/v1""#),
            ("methods", r#"["POST"]"#),
            ("upstream", r#""api""#),
            ("class", r#""run""#),
            ("retry_after_processing", "false"),
        ],
    ),
    ("[[routes]]", &[("prefix", r#""/""#), ("upstream", r#""web""#)]),
    (
        "[[routes]]",
        &[
            ("prefix", r#""/console/api/apps/""#),
            ("suffix", r#""/run""#),
            ("upstream", r#""api""#),
            ("class", r#""bulk""#),
        ],
    ),
    (
        "[[maintenance]]",
        &[
            ("upstream", r#""api""#),
            ("schedule", r#""0 20 * * *""#),
            ("timezone", r#""Asia/Tokyo""#),
            ("mode", r#""all""#),
            ("drain_timeout", r#""2m""#),
            ("restart_timeout", r#""5m""#),
            ("recover_timeout", r#""10m""#),
            ("ramp", r#""30s""#),
            ("manual_timeout", r#""1h""#),
            ("action", r#"{ kind = "command", command = "true" }"#),
        ],
    ),
    (
        "[maintenance.health]",
        &[
            ("successes", "3"),
            ("interval", r#""1s""#),
            ("timeout", r#""1s""#),
            ("request", r#""GET /console/api/setup""#),
        ],
    ),
];

/// Keys the base leaves out (their defaults apply) that a mutation may set, by header.
fn extra_keys(header: &str) -> &'static [&'static str] {
    match header {
        "[server]" => &["admin_token"],
        "[classes.bulk]" => &["queue_timeout", "queued", "interactive", "total_timeout", "connect_timeout"],
        "[[routes]]" => &["suffix", "methods", "class", "name", "retry_after_processing"],
        "[[maintenance]]" => &["hold_timeout"],
        "[maintenance.health]" => &["path"],
        _ => &[],
    }
}

/// The dotted name of a key in `header`'s table, as errors name it once indices are dropped.
fn dotted(header: &str, key: &str) -> String {
    format!("{}.{key}", header.trim_matches(|c| c == '[' || c == ']'))
}

/// `routes[2].prefix` → `routes.prefix`.
fn without_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut skipping = false;
    for c in key.chars() {
        match c {
            '[' => skipping = true,
            ']' => skipping = false,
            _ if !skipping => out.push(c),
            _ => {}
        }
    }
    out
}

fn parent(key: &str) -> &str {
    key.rsplit_once('.').map_or("", |(p, _)| p)
}

/// What is done to the base config.
#[derive(Debug, Clone)]
enum Edit {
    /// Sets `key` in the `table`-th table (replacing its line, or adding one) to `value`.
    Set { table: usize, key: String, value: String },
    /// Removes `key` from the `table`-th table.
    Remove { table: usize, key: String },
}

impl Edit {
    fn table(&self) -> usize {
        match self {
            Edit::Set { table, .. } | Edit::Remove { table, .. } => *table,
        }
    }

    fn key(&self) -> &str {
        match self {
            Edit::Set { key, .. } | Edit::Remove { key, .. } => key,
        }
    }
}

/// Where an edit landed: the 1-based lines of the edited key (if set) and of its table's
/// header.
#[derive(Debug, Clone, Copy, Default)]
struct Lines {
    key: Option<usize>,
    header: usize,
}

/// The base config with `edit` applied, and where the edit landed.
fn render(edit: Option<&Edit>) -> (String, Lines) {
    let mut lines: Vec<String> = Vec::new();
    let mut edited = Lines::default();
    for (i, (header, keys)) in BASE.iter().enumerate() {
        if !lines.is_empty() {
            lines.push(String::new());
        }
        lines.push((*header).to_string());
        let here = edit.filter(|e| e.table() == i);
        if here.is_some() {
            edited.header = lines.len();
        }
        let mut seen = false;
        for (key, value) in keys.iter() {
            match here {
                Some(e) if e.key() == *key => {
                    seen = true;
                    if let Edit::Set { value, .. } = e {
                        lines.push(format!("{key} = {value}"));
                        edited.key = Some(lines.len());
                    }
                }
                _ => lines.push(format!("{key} = {value}")),
            }
        }
        if let Some(Edit::Set { key, value, .. }) = here.filter(|_| !seen) {
            lines.push(format!("{key} = {value}"));
            edited.key = Some(lines.len());
        }
    }
    (lines.join("\n") + "\n", edited)
}

/// A TOML basic string holding `text` exactly.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x80 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Strings the config's parsers care about, and any other.
fn string_value() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "",
        " ",
        "0s",
        "1ms",
        "100ms",
        "1s",
        "30s",
        "5m",
        "1h",
        "2h",
        "25h",
        "1y",
        "18446744073709551615s",
        "soon",
        "0",
        "1KiB",
        "100MiB",
        "2MiB",
        "1GiB",
        "99999999999999GiB",
        "12 parsecs",
        "127.0.0.1:1",
        "0.0.0.0:80",
        "[::1]:5",
        "api:5001",
        "api",
        "host:0",
        "/",
        "/v1",
        "/v1/",
        "/a/*/b",
        "/a/x*",
        "v1",
        "/run",
        "*",
        "GET",
        "post",
        "PO ST",
        "* * * * *",
        "0 25 * * *",
        "30 0 20 * * *",
        "UTC",
        "Europe/Berlin",
        "Tokyo",
        "api",
        "web",
        "run",
        "bulk",
        "nope",
        "interactive",
        "control",
        "all",
        "rolling",
        "text",
        "json",
        "xml",
        "trusted",
        "append",
        "replace",
        "10.0.0.0/8",
        "10.0.0.0/33",
        "::1",
        "nginx",
        "X-Tenant",
        "Authorization",
        "bad header",
        "GET /x",
        "GET x",
        "é",
        "日本",
        "🦀",
        "a\nb",
        "\"",
        "\\",
        "\u{0}",
        "\u{7f}",
    ])
    .prop_map(str::to_string);
    prop_oneof![3 => known, 1 => any::<String>(), 1 => "[ -~]{0,12}"].prop_map(|s| toml_string(&s))
}

/// Any TOML value, written as it would appear after `key = `.
fn value() -> impl Strategy<Value = String> {
    let int = prop_oneof![
        any::<i64>(),
        -2i64..300,
        prop::sample::select(vec![
            0i64,
            1,
            2,
            100,
            101,
            256,
            257,
            1000,
            1001,
            1024,
            100_000,
            100_001,
            1_000_000,
            1_000_001,
            u32::MAX.into(),
            i64::MAX
        ]),
    ]
    .prop_map(|n| n.to_string());
    let float = prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
        prop::sample::select(vec![
            "0.0", "-0.0", "0.5", "1.0", "1.3", "10.0", "10.5", "1e300", "inf", "-inf", "nan"
        ])
        .prop_map(str::to_string),
    ];
    let scalar = prop_oneof![
        3 => string_value(),
        2 => int,
        1 => float,
        1 => any::<bool>().prop_map(|b| b.to_string()),
    ];
    let inline = prop::sample::select(vec![
        "{}",
        r#"{ kind = "none" }"#,
        r#"{ kind = "command" }"#,
        r#"{ kind = "docker", services = ["api"] }"#,
        r#"{ kind = "signal", pid = 1 }"#,
        r#"{ kind = "http", url = "ftp://x" }"#,
        "{ a = 1 }",
        r#"{ rate = 1.0, burst = 1 }"#,
    ])
    .prop_map(str::to_string);
    prop_oneof![
        6 => scalar.clone(),
        2 => prop::collection::vec(scalar, 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => inline,
    ]
}

/// A value of the type `key` holds (its base value says which), so most edits get past
/// the type check to the range and cross-reference checks.
fn value_like(table: usize, key: &str) -> BoxedStrategy<String> {
    let base = BASE[table].1.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let kind = base.unwrap_or(match key {
        "queued" | "interactive" | "retry_after_processing" => "true",
        "methods" => "[]",
        _ => "\"\"",
    });
    let small = prop_oneof![
        -1i64..3,
        0i64..2000,
        prop::sample::select(vec![100i64, 101, 256, 257, 100_000, 100_001, 1_000_000, 1_000_001])
    ]
    .prop_map(|n| n.to_string());
    match kind.as_bytes().first() {
        Some(b'"') => string_value().boxed(),
        Some(b't' | b'f') => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        Some(b'[') => {
            prop::collection::vec(string_value(), 0..3).prop_map(|v| format!("[{}]", v.join(", "))).boxed()
        }
        Some(b'{') => value().boxed(),
        _ if kind.contains('.') => prop_oneof![
            (-1.0f64..12.0).prop_map(|f| format!("{f:?}")),
            prop::sample::select(vec!["0.0", "0.5", "1.0", "1.3", "10.0", "10.5", "inf", "nan"])
                .prop_map(str::to_string),
        ]
        .boxed(),
        _ => small.boxed(),
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    (0..BASE.len()).prop_flat_map(|table| {
        let (header, keys) = BASE[table];
        let mut names: Vec<&'static str> = keys.iter().map(|(k, _)| *k).collect();
        names.extend(extra_keys(header));
        prop::sample::select(names).prop_flat_map(move |key| {
            let name = key.to_string();
            let remove = Edit::Remove { table, key: name.clone() };
            prop_oneof![
                6 => value_like(table, key).prop_map({ let key = name.clone(); move |value| Edit::Set { table, key: key.clone(), value } }),
                2 => value().prop_map({ let key = name.clone(); move |value| Edit::Set { table, key: key.clone(), value } }),
                1 => Just(remove),
            ]
        })
    })
}

/// Whether `error` names the key `edit` touched: the key itself, a key below it (a table
/// written inline), a key of the same table (a check between keys), or — for a removed
/// required key — the missing field in its message.
fn names_the_key(error: &ConfigError, edit: &Edit, edited: Lines) -> Result<(), String> {
    let target = dotted(BASE[edit.table()].0, edit.key());
    let ConfigError::Invalid { key, message, line, .. } = error else {
        return Err(format!("not an error about the file: {error}"));
    };
    let leaf = edit.key();
    let Some(key) = key.as_deref().map(without_indices) else {
        return if message.contains(&format!("`{leaf}`")) {
            Ok(())
        } else {
            Err(format!("no key named for {target}: {error}"))
        };
    };
    let related = key == target || key.starts_with(&format!("{target}.")) || parent(&key) == parent(&target);
    if !related {
        return Err(format!("names {key}, not {target}: {error}"));
    }
    // The error is about the edited key: it points at its line, or at its table's header
    // for a check of the table as a whole (an empty `servers` list). (`[[maintenance]]`
    // checks that have no span of their own point at the entry's `upstream` line by design.)
    if key == target && !target.starts_with("maintenance") {
        if let Some(expected) = edited.key {
            if *line != expected && *line != edited.header {
                return Err(format!("{target} is on line {expected}, the error says line {line}: {error}"));
            }
        }
    }
    Ok(())
}

/// Lines a TOML-shaped text is made of: headers and keys the loader knows (and some it does
/// not), values of every type, comments, blank and broken lines.
fn toml_ish_line() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        prop::sample::select(BASE.iter().map(|(h, _)| *h).collect::<Vec<_>>()).prop_map(str::to_string),
        "\\[{1,2}[a-z_.\"*]{0,12}\\]{0,2}",
    ];
    let mut keys: Vec<&'static str> =
        BASE.iter().flat_map(|(_, keys)| keys.iter().map(|(k, _)| *k)).collect();
    keys.extend(["admin_token", "suffix", "bogus", "a.b", "\"quoted key\"", "servers.x", "= ="]);
    let key = prop_oneof![prop::sample::select(keys).prop_map(str::to_string), "[a-z_.]{1,10}"];
    prop_oneof![
        2 => header,
        6 => (key, value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => Just(String::new()),
        1 => "#[^\n]{0,10}",
        1 => "[^\n]{0,20}",
    ]
}

/// Every error points inside the text: a line that exists, a column on it.
fn points_inside(error: &ConfigError, text: &str) -> Result<(), String> {
    let message = error.to_string();
    if !message.starts_with("test.toml:") {
        return Err(format!("does not name the file: {message}"));
    }
    if let ConfigError::Invalid { line, column, .. } = error {
        let lines: Vec<&str> = text.split('\n').collect();
        let Some(on) = lines.get(line.wrapping_sub(1)) else {
            return Err(format!("line {line} of {}: {message}", lines.len()));
        };
        if *column == 0 || *column > on.chars().count() + 1 {
            return Err(format!("column {column} of line {line} ({on:?}): {message}"));
        }
    }
    Ok(())
}

/// A generated valid config: what is written, to compare with what loads.
#[derive(Debug, Clone)]
struct Generated {
    upstreams: BTreeMap<String, GenUpstream>,
    classes: BTreeMap<String, (u32, u64)>,
    routes: Vec<GenRoute>,
    server: Vec<(&'static str, String)>,
    tenants: Option<(String, Option<(f64, u32)>)>,
    reserve: f64,
    maintenance: Option<(String, String, u64)>,
}

#[derive(Debug, Clone)]
struct GenUpstream {
    servers: Vec<String>,
    limits: (usize, usize, usize, usize, f64),
    health: (String, u64, u64, u32),
    retry: (f64, u32, u64, u64),
    keepalive: u64,
}

#[derive(Debug, Clone)]
struct GenRoute {
    prefix: String,
    suffix: Option<String>,
    methods: Option<Vec<&'static str>>,
    upstream: usize,
    class: usize,
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,10}"
}

fn upstream() -> impl Strategy<Value = GenUpstream> {
    let host = prop_oneof![
        "[a-z][a-z0-9.-]{0,12}",
        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        Just("[::1]".to_string()),
    ];
    let server = (host, 1u16..).prop_map(|(h, p)| format!("{h}:{p}"));
    let limits = (1usize..50, 0usize..50, 0usize..2000, 0usize..=1_000_000, 1.001f64..=10.0).prop_map(
        |(min, up, initial_up, queue, tolerance)| {
            let max = (min + up + initial_up).min(100_000);
            (min + up.min(initial_up), min, max, queue, tolerance)
        },
    );
    // A probe's timeout stays below the default `silent_timeout` (10s), which must exceed it.
    let health = ("/[a-z0-9/_-]{0,12}", 100u64..=300_000, 100u64..10_000, 1u32..=100);
    let retry = (0.0f64..=1.0, 0u32..=1000, 0u64..=60_000, 0u64..=60_000)
        .prop_map(|(ratio, min, a, b)| (ratio, min, a.min(b), a.max(b)));
    (prop::collection::vec(server, 1..4), limits, health, retry, 0u64..=300).prop_map(
        |(servers, limits, health, retry, keepalive)| GenUpstream {
            servers,
            limits,
            health,
            retry,
            keepalive,
        },
    )
}

fn generated() -> impl Strategy<Value = Generated> {
    let upstreams = prop::collection::btree_map(name(), upstream(), 1..4);
    let classes = prop::collection::btree_map(name(), (1u32..=100, 1u64..=86_400), 0..3);
    let route = (
        prop::collection::vec(prop::sample::select(vec!["v1", "api", "apps", "*", "run", "x-y"]), 0..4),
        any::<bool>(),
        prop::option::weighted(0.3, prop::sample::select(vec!["/stop", "/run"])),
        prop::option::weighted(0.3, prop::sample::subsequence(vec!["GET", "POST", "DELETE"], 1..=3)),
        any::<usize>(),
        any::<usize>(),
    )
        .prop_map(|(segments, slash, suffix, methods, upstream, class)| {
            let body = segments.join("/");
            let prefix = if body.is_empty() {
                "/".to_string()
            } else if slash {
                format!("/{body}/")
            } else {
                format!("/{body}")
            };
            GenRoute { prefix, suffix: suffix.map(str::to_string), methods, upstream, class }
        });
    let routes = prop::collection::vec(route, 1..6).prop_map(|routes| {
        // One route per path: the router refuses two for the same prefix and suffix.
        let mut seen = Vec::new();
        routes
            .into_iter()
            .filter(|r| {
                let path = (r.prefix.trim_end_matches('/').to_string(), r.suffix.clone());
                let fresh = !seen.contains(&path);
                seen.push(path);
                fresh
            })
            .collect()
    });
    let server = (
        prop::collection::vec(
            prop_oneof![
                (1u16..).prop_map(|p| format!("127.0.0.1:{p}")),
                (1u16..).prop_map(|p| format!("[::]:{p}")),
            ],
            1..3,
        ),
        1usize..=256,
        prop_oneof![any::<u64>(), 0u64..1 << 30],
        1024u64..=1 << 20,
        1u64..=3600,
        0usize..10_000,
        0u64..=600_000,
        prop::sample::select(vec!["trusted", "append", "replace"]),
    )
        .prop_map(|(listen, threads, body, buffer, resolve, pool, grace, forwarding)| {
            let listen = listen.iter().map(|a| toml_string(a)).collect::<Vec<_>>().join(", ");
            vec![
                ("listen", format!("[{listen}]")),
                ("threads", threads.to_string()),
                ("max_request_body", toml_string(&ByteSize(body).to_string())),
                ("client_read_buffer", toml_string(&ByteSize(buffer).to_string())),
                ("resolve_interval", toml_string(&HumanDuration(Duration::from_secs(resolve)).to_string())),
                ("upstream_keepalive_pool", pool.to_string()),
                ("shutdown_grace", toml_string(&HumanDuration(Duration::from_millis(grace)).to_string())),
                ("forwarding", toml_string(forwarding)),
            ]
        });
    let tenants = prop::option::of((
        prop::sample::select(vec!["X-Tenant", "Authorization", "x-app-id"]).prop_map(str::to_string),
        prop::option::of((0.001f64..1_000_000.0, 1u32..10_000)),
    ));
    let maintenance = prop::option::of((
        prop::sample::select(vec!["0 20 * * *", "*/15 * * * *", "30 0 3 * * 1-5"]).prop_map(str::to_string),
        prop::sample::select(vec!["UTC", "Asia/Tokyo", "Europe/Berlin", "America/New_York"])
            .prop_map(str::to_string),
        0u64..=3600,
    ));
    (upstreams, classes, routes, server, tenants, 0.0f64..=0.5, maintenance).prop_map(
        |(upstreams, classes, routes, server, tenants, reserve, maintenance)| Generated {
            upstreams,
            classes,
            routes,
            server,
            tenants,
            reserve,
            maintenance,
        },
    )
}

impl Generated {
    fn class_names(&self) -> Vec<String> {
        let mut names: Vec<String> = ["interactive", "run", "control"].map(String::from).to_vec();
        names.extend(self.classes.keys().cloned());
        names
    }

    fn upstream_name(&self, index: usize) -> &str {
        self.upstreams.keys().nth(index % self.upstreams.len()).map_or("", String::as_str)
    }

    fn class_name(&self, index: usize) -> String {
        let names = self.class_names();
        names[index % names.len()].clone()
    }

    fn text(&self) -> String {
        let mut out = String::from("[server]\n");
        for (key, value) in &self.server {
            out.push_str(&format!("{key} = {value}\n"));
        }
        for (name, u) in &self.upstreams {
            let servers = u.servers.iter().map(|s| toml_string(s)).collect::<Vec<_>>().join(", ");
            let (initial, min, max, queue, tolerance) = u.limits;
            let (path, interval, timeout, rise) = &u.health;
            let (ratio, budget_min, base, cap) = u.retry;
            let ms = |ms: u64| toml_string(&HumanDuration(Duration::from_millis(ms)).to_string());
            out.push_str(&format!(
                "\n[upstreams.{name}]\nservers = [{servers}]\nkeepalive = {}\n\
                 [upstreams.{name}.admission]\ninitial_limit = {initial}\nmin_limit = {min}\nmax_limit = {max}\n\
                 max_queue = {queue}\nlatency_tolerance = {tolerance:?}\n\
                 [upstreams.{name}.health]\npath = {}\ninterval = {}\ntimeout = {}\nrise = {rise}\nfall = {rise}\n\
                 [upstreams.{name}.retry]\nbudget_ratio = {ratio:?}\nbudget_min = {budget_min}\nbackoff_base = {}\nbackoff_max = {}\n",
                ms(u.keepalive * 1000),
                toml_string(&format!("/{}", path.trim_start_matches('/'))),
                ms(*interval),
                ms(*timeout),
                ms(base),
                ms(cap),
            ));
        }
        for (name, (weight, queue)) in &self.classes {
            out.push_str(&format!(
                "\n[classes.{name}]\nweight = {weight}\nqueue_timeout = {}\n",
                toml_string(&HumanDuration(Duration::from_secs(*queue)).to_string())
            ));
        }
        out.push_str(&format!("\n[admission]\ninteractive_reserve = {:?}\n", self.reserve));
        if let Some((header, rate)) = &self.tenants {
            out.push_str(&format!("\n[tenants]\nheader = {}\n", toml_string(header)));
            if let Some((rate, burst)) = rate {
                out.push_str(&format!("[tenants.rate_limit]\nrate = {rate:?}\nburst = {burst}\n"));
            }
        }
        for r in &self.routes {
            out.push_str(&format!(
                "\n[[routes]]\nprefix = {}\nupstream = {}\nclass = {}\n",
                toml_string(&r.prefix),
                toml_string(self.upstream_name(r.upstream)),
                toml_string(&self.class_name(r.class)),
            ));
            if let Some(suffix) = &r.suffix {
                out.push_str(&format!("suffix = {}\n", toml_string(suffix)));
            }
            if let Some(methods) = &r.methods {
                let list = methods.iter().map(|m| toml_string(m)).collect::<Vec<_>>().join(", ");
                out.push_str(&format!("methods = [{list}]\n"));
            }
        }
        if let Some((schedule, zone, drain)) = &self.maintenance {
            out.push_str(&format!(
                "\n[[maintenance]]\nupstream = {}\nschedule = {}\ntimezone = {}\ndrain_timeout = {}\n\
                 action = {{ kind = \"command\", command = \"true\" }}\n",
                toml_string(self.upstream_name(0)),
                toml_string(schedule),
                toml_string(zone),
                toml_string(&HumanDuration(Duration::from_secs(*drain)).to_string()),
            ));
        }
        out
    }
}

/// The effective config as `check` shows it, plus what printing leaves out on purpose.
fn effective(config: &Config) -> Result<serde_json::Value, TestCaseError> {
    serde_json::to_value(config).map_err(|e| TestCaseError::fail(format!("cannot serialise: {e}")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Text made of real and made-up tables, keys and values in any order never makes the
    /// loader panic, and its errors point inside the text.
    #[test]
    fn toml_shaped_text_never_panics(
        lines in prop::collection::vec(toml_ish_line(), 0..24),
        after_base in any::<bool>(),
    ) {
        let mut text = if after_base { render(None).0 } else { String::new() };
        text.push_str(&lines.join("\n"));
        if let Err(error) = load(&text) {
            points_inside(&error, &text).map_err(TestCaseError::fail)?;
        }
    }

    /// Random text, including invalid UTF-8 boundaries inside spans and control
    /// characters, never makes the loader panic.
    #[test]
    fn any_text_never_panics(text in any::<String>()) {
        if let Err(error) = load(&text) {
            points_inside(&error, &text).map_err(TestCaseError::fail)?;
        }
    }

    /// Any value for any key of a valid config loads or is refused naming that key.
    #[test]
    fn a_refused_value_names_its_key(edit in edit()) {
        let (text, lines) = render(Some(&edit));
        if let Err(error) = load(&text) {
            points_inside(&error, &text).map_err(TestCaseError::fail)?;
            names_the_key(&error, &edit, lines).map_err(|m| TestCaseError::fail(format!("{m}\n--- {edit:?}\n{text}")))?;
        }
    }

    /// A key the schema does not have is refused, naming it on its line.
    #[test]
    fn an_unknown_key_is_refused_by_name(table in 0..BASE.len(), key in "[a-z][a-z_]{0,10}", value in value()) {
        let (header, keys) = BASE[table];
        let known: Vec<&str> = keys.iter().map(|(k, _)| *k).chain(extra_keys(header).iter().copied()).collect();
        prop_assume!(!known.contains(&key.as_str()) && !ALSO_KNOWN.contains(&key.as_str()));
        let edit = Edit::Set { table, key: key.clone(), value };
        let (text, lines) = render(Some(&edit));
        let error = load(&text).map(|_| ()).map_err(|e| e.to_string());
        let expected = format!("test.toml:{}:1: {}: ", lines.key.unwrap_or(0), dotted(header, &key));
        prop_assert!(error.as_ref().is_err_and(|e| e.starts_with(&expected) && e.contains("unknown field")), "{:?}\n{}", error, text);
    }

    /// A generated valid config loads with the values written, and what `check` prints of it
    /// loads again into the same effective config.
    #[test]
    fn a_valid_config_loads_and_prints_back(config in generated()) {
        let text = config.text();
        let loaded = load(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(loaded.upstreams.keys().collect::<Vec<_>>(), config.upstreams.keys().collect::<Vec<_>>());
        for (name, u) in &config.upstreams {
            let spec = &loaded.upstreams[name];
            let servers: Vec<String> = spec.servers.iter().map(ToString::to_string).collect();
            prop_assert_eq!(&servers, &u.servers);
            let a = &spec.admission;
            prop_assert_eq!((a.initial_limit, a.min_limit, a.max_limit, a.max_queue, a.latency_tolerance), u.limits);
            prop_assert_eq!(spec.retry.budget_ratio, u.retry.0);
            prop_assert_eq!(spec.keepalive.0, Duration::from_secs(u.keepalive));
        }
        for (name, (weight, queue)) in &config.classes {
            let class = &loaded.classes[name];
            prop_assert_eq!((class.weight, class.queue_timeout.0), (*weight, Duration::from_secs(*queue)));
        }
        prop_assert_eq!(loaded.router.routes().len(), config.routes.len());
        for r in &config.routes {
            let found = loaded.router.routes().iter().find(|l| l.prefix == r.prefix && l.suffix == r.suffix);
            prop_assert!(found.is_some_and(|l| l.upstream == config.upstream_name(r.upstream)
                && l.class.name == config.class_name(r.class)
                && l.methods.as_ref().map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>()) == r.methods.clone().map(|m| m.to_vec())),
                "{:?} → {:?}", r, found);
        }
        let printed = toml::to_string_pretty(&loaded).map_err(|e| TestCaseError::fail(format!("cannot print: {e}")))?;
        let again = load(&printed).map_err(|e| TestCaseError::fail(format!("printed config refused: {e}\n{printed}")))?;
        prop_assert_eq!(effective(&again)?, effective(&loaded)?, "{}", printed);
        prop_assert_eq!(again.maintenance, loaded.maintenance);
        prop_assert_eq!(again.tenants.source, loaded.tenants.source);
    }
}

/// Keys valid somewhere in the base's tables that the unknown-key property must not use.
const ALSO_KNOWN: &[&str] = &["servers", "admission", "health", "retry", "rate_limit", "memory", "keepalive"];

#[test]
fn the_base_config_loads() {
    let (text, _) = render(None);
    let config = load(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.router.routes().len(), 3);
    assert!(config.maintenance.contains_key("api"));
    assert_eq!(config.classes["bulk"].weight, 2);
}

#[test]
fn edits_land_on_the_line_they_claim() {
    let edit = Edit::Set { table: 0, key: "threads".into(), value: "0".into() };
    let (text, lines) = render(Some(&edit));
    let line = lines.key.expect("set");
    assert_eq!(text.lines().nth(line - 1), Some("threads = 0"));
    assert_eq!(text.lines().nth(lines.header - 1), Some("[server]"));
    let error = load(&text).map(|_| ()).expect_err("0 threads");
    assert!(names_the_key(&error, &edit, lines).is_ok(), "{error}");
    let wrong = Lines { key: Some(line + 1), header: lines.header };
    assert!(names_the_key(&error, &edit, wrong).is_err(), "a wrong line is noticed");
    assert_eq!(without_indices("maintenance[0].health.path"), "maintenance.health.path");
    assert_eq!(toml_string("a\"\\\n\u{1}"), r#""a\"\\\n\u0001""#);
}
