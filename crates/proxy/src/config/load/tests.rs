//! Config loading: valid files, and every bad-config case naming its line and key.

use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, "test.toml", &Overrides::default())
}

fn err(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("config should be rejected:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const VALID: &str = r#"
[server]
listen = "127.0.0.1:8080"

[upstreams.api]
servers = ["api:5001"]

[upstreams.web]
servers = ["web:3000", "10.0.0.2:3000"]

[[routes]]
prefix = "/v1"
upstream = "api"

[[routes]]
prefix = "/"
upstream = "web"
"#;

#[test]
fn a_valid_config_loads() {
    let config = load(VALID).expect("valid");
    assert_eq!(config.server.listen, vec!["127.0.0.1:8080".parse().expect("addr")]);
    assert_eq!(config.upstreams["web"].servers.len(), 2);
    assert_eq!(config.router.routes().len(), 2);
    assert!(config.classes.contains_key("run"));
}

#[test]
fn embedded_defaults_and_overrides() {
    let overrides = Overrides {
        listen: Some("127.0.0.1:1".parse().expect("addr")),
        admin: Some("127.0.0.1:2".parse().expect("addr")),
        upstream: Some("http://127.0.0.1:7000".into()),
        admin_token: None,
        redis: None,
    };
    let config = load_embedded(&overrides).expect("embedded defaults are valid");
    assert_eq!(config.upstreams["api"].servers[0].to_string(), "127.0.0.1:7000");
    assert_eq!(config.server.admin.port(), 2);
    assert_eq!(config.server.listen[0].port(), 1);
    let run = config.router.route(&http::Method::POST, "/v1/workflows/run").expect("route");
    assert_eq!(run.class.name, "run");
    let stop = config.router.route(&http::Method::POST, "/v1/workflows/tasks/t1/stop").expect("route");
    assert_eq!(stop.class.name, "control");
    // A probe is not user traffic: it must not wait behind runs nor count as interactive.
    let probe = config.router.route(&http::Method::GET, "/health").expect("route");
    assert_eq!(probe.class.name, "control");
    let other = config.router.route(&http::Method::GET, "/console/api/apps").expect("route");
    assert_eq!(other.upstream, "api");
}

#[test]
fn upstream_override_needs_an_api_upstream() {
    let text = VALID.replace("upstreams.api", "upstreams.backend").replace("\"api\"", "\"backend\"");
    let overrides = Overrides { upstream: Some("http://127.0.0.1:1".into()), ..Overrides::default() };
    let e = parse_str(&text, "t", &overrides).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("--upstream") && e.contains("`api`"), "{e}");
    assert!(parse_upstream_url("https://x:1").is_err());
    assert_eq!(parse_upstream_url("http://api").map(|a| a.to_string()), Ok("api:80".into()));
    assert!(parse_upstream_url("http://api:5001/v1").is_err());
}

#[test]
fn unknown_key_names_line_and_key() {
    let e = err("[server]\nlisten = \"127.0.0.1:8080\"\nlisten_port = 8080\n");
    assert!(e.starts_with("test.toml:3:1: "), "{e}");
    assert!(e.contains("unknown field `listen_port`"), "{e}");
}

#[test]
fn bad_address_names_line_and_key() {
    let e = err("[server]\n\nlisten = \"localhost\"\n");
    assert!(e.starts_with("test.toml:3:10: server.listen: "), "{e}");
    assert!(e.contains("expected IP:PORT"), "{e}");
    let e = err("[upstreams.api]\nservers = [\"api\"]\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n");
    assert!(e.starts_with("test.toml:2:12: upstreams.api.servers: "), "{e}");
    assert!(e.contains("missing port"), "{e}");
}

#[test]
fn bad_duration_names_line_and_key() {
    let e = err("[classes.run]\nread_timeout = \"10 parsecs\"\n");
    assert!(e.starts_with("test.toml:2:16: classes.run.read_timeout: "), "{e}");
    assert!(e.contains("invalid duration"), "{e}");
    let e = err("[server]\nshutdown_grace = 30\n");
    assert!(e.starts_with("test.toml:2:"), "{e}");
}

#[test]
fn duplicate_route_names_line() {
    let text = format!("{VALID}\n[[routes]]\nprefix = \"/v1/\"\nupstream = \"web\"\n");
    let e = err(&text);
    let line = text.lines().position(|l| l == "prefix = \"/v1/\"").expect("line") + 1;
    assert!(e.starts_with(&format!("test.toml:{line}:10: routes[2].prefix: ")), "{e}");
    assert!(e.contains("overlaps"), "{e}");
}

#[test]
fn route_to_missing_upstream_names_line() {
    let text = VALID.replace("upstream = \"web\"", "upstream = \"webb\"");
    let e = err(&text);
    let line = text.lines().position(|l| l == "upstream = \"webb\"").expect("line") + 1;
    assert!(e.starts_with(&format!("test.toml:{line}:12: routes[1].upstream: ")), "{e}");
    assert!(e.contains("\"webb\", which is not defined (defined: api, web)"), "{e}");
}

#[test]
fn other_semantic_errors() {
    assert!(err("[[routes]]\nprefix = \"v1\"\nupstream = \"api\"\n").contains("must start with '/'"));
    assert!(err("[server]\nthreads = 0\n").contains("server.threads: 0 is out of range"));
    let e = err("[upstreams.api]\nservers = []\n");
    assert!(e.contains("at least one server"), "{e}");
    let e = err(&VALID.replace("prefix = \"/v1\"", "prefix = \"/v1\"\nclass = \"bulk\""));
    assert!(e.contains("unknown class"), "{e}");
    let e = err("[server]\nmax_request_body = \"12 parsecs\"\n");
    assert!(e.contains("server.max_request_body") && e.contains("invalid size"), "{e}");
    let e = err("[server\nlisten = 1");
    assert!(e.starts_with("test.toml:1:"), "{e}");
}

#[test]
fn min_limit_defaults_to_two_unless_the_operator_set_the_limit_lower() {
    let admission = |lines: &str| {
        let text = format!("{VALID}\n[upstreams.api.admission]\n{lines}\n");
        let config = load(&text).unwrap_or_else(|e| panic!("{lines}: {e}"));
        let spec = &config.upstreams["api"].admission;
        (spec.min_limit, spec.initial_limit, spec.max_limit)
    };
    assert_eq!(admission(""), (2, 4, 1000));
    assert_eq!(admission("initial_limit = 1\nmax_limit = 1"), (1, 1, 1), "a limit pinned at one stays valid");
    assert_eq!(admission("initial_limit = 1"), (1, 1, 1000));
    assert_eq!(admission("min_limit = 1"), (1, 4, 1000));
    assert_eq!(admission("min_limit = 3"), (3, 4, 1000));
    // A floor the operator wrote is kept, and bounds that contradict it are still an error.
    let e = err(&format!("{VALID}\n[upstreams.api.admission]\nmin_limit = 3\ninitial_limit = 2\n"));
    assert!(e.contains("upstreams.api.admission.initial_limit: 2 must be within"), "{e}");
}

/// `VALID` with `lines` added to its `[server]` table.
fn with_server(lines: &str) -> String {
    VALID.replace("listen = \"127.0.0.1:8080\"\n", &format!("listen = \"127.0.0.1:8080\"\n{lines}\n"))
}

#[test]
fn client_limits_at_zero_or_absurd_are_refused_where_they_are_written() {
    let cases = [
        ("max_connections = 0", "server.max_connections: 0 is out of range"),
        ("max_connections = 5000000", "server.max_connections: 5000000 is out of range"),
        (
            "max_connections = 10\nmax_connections_per_ip = 11",
            "server.max_connections_per_ip: 11 is out of range",
        ),
        ("max_connections_per_ip = 0", "server.max_connections_per_ip: 0 is out of range"),
        ("request_header_timeout = \"0s\"", "server.request_header_timeout: 0s is out of range"),
        ("request_header_timeout = \"2h\"", "server.request_header_timeout: 2h is out of range"),
        ("max_request_header = \"0B\"", "server.max_request_header: 0B is out of range"),
        ("max_request_header = \"1GiB\"", "server.max_request_header: 1GiB is out of range"),
        ("max_request_header_line = \"64KiB\"", "server.max_request_header_line: 64KiB is out of range"),
        ("body_read_timeout = \"0s\"", "server.body_read_timeout: 0s is out of range"),
        ("keepalive_timeout = \"2h\"", "server.keepalive_timeout: 2h is out of range"),
    ];
    for (line, expected) in cases {
        let e = err(&with_server(line));
        assert!(e.contains(expected), "{line}: {e}");
        // Pointed at the key's own line, not the top of the file.
        assert!(!e.starts_with("test.toml:1:"), "{line}: {e}");
    }
    // The per-IP default follows a lower total; zero keep-alive means none.
    let config = load(&with_server("max_connections = 100\nkeepalive_timeout = \"0s\"")).expect("valid");
    assert_eq!(config.server.max_connections_per_ip, 100);
    assert!(config.server.keepalive_timeout.0.is_zero());
    assert_eq!(load(VALID).expect("valid").server.max_connections_per_ip, 1024);
}

#[test]
fn tenant_source_is_resolved_at_load() {
    use crate::config::TenantSource;
    let config = load(&format!("{VALID}\n[tenants]\nheader = \"X-Tenant\"\n")).expect("valid");
    assert_eq!(config.tenants.source, TenantSource::Header(http::HeaderName::from_static("x-tenant")));
    let config = load(&format!("{VALID}\n[tenants]\nheader = \"Authorization\"\n")).expect("valid");
    assert_eq!(config.tenants.source, TenantSource::BearerToken, "authorization means the bearer key");
    assert_eq!(load(VALID).expect("valid").tenants.source, TenantSource::BearerToken);
}

const MAINTENANCE: &str = r#"
[[maintenance]]
upstream = "api"
schedule = "0 20 * * *"
timezone = "Asia/Tokyo"
drain_timeout = "2m"
action = { kind = "command", command = "docker compose -p dify restart api worker" }
[maintenance.memory]
container = "docker-api-1"
threshold = "4GiB"
[maintenance.health]
successes = 3
request = "GET /console/api/setup"
"#;

#[test]
fn maintenance_entries_load_and_print_back() {
    let config = load(&format!("{VALID}{MAINTENANCE}")).expect("valid");
    let spec = config.maintenance_spec("api");
    assert_eq!(spec.schedule.as_ref().map(ToString::to_string).as_deref(), Some("0 20 * * * (Asia/Tokyo)"));
    assert_eq!(spec.drain_timeout.0, Duration::from_secs(120));
    assert_eq!(spec.hold_timeout.0, Duration::from_secs(120 + 300 + 600), "the whole cycle by default");
    assert!(
        matches!(&spec.action, Some(crate::config::maintenance::Action::Command { timeout, .. }) if *timeout == Duration::from_secs(300))
    );
    let manual = config.maintenance_spec("web");
    assert!(manual.schedule.is_none() && manual.action.is_none(), "manual control only");
    let printed = toml::to_string_pretty(&config).expect("`check` can print it");
    let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.maintenance_spec("api"), spec, "printed back as it was read");
}

#[test]
fn maintenance_errors_name_line_and_key() {
    let bad = |entry: &str| err(&format!("{VALID}\n[[maintenance]]\nupstream = \"api\"\n{entry}"));
    let e = bad("schedule = \"0 25 * * *\"\naction = { kind = \"none\" }\n");
    assert!(e.starts_with("test.toml:21:12: maintenance[0].schedule: invalid cron expression"), "{e}");
    let e = bad("schedule = \"0 20 * * *\"\ntimezone = \"Tokyo\"\naction = { kind = \"none\" }\n");
    assert!(e.starts_with("test.toml:22:12: maintenance[0].timezone: unknown time zone \"Tokyo\""), "{e}");
    let e = bad("action = { kind = \"docker\", command = \"x\" }\n");
    assert!(e.contains("maintenance[0].action.command: does not apply to kind = \"docker\""), "{e}");
    let e = bad("action = { kind = \"signal\" }\n");
    assert!(e.contains("set exactly one of `pid` and `pid_file`"), "{e}");
    let e = bad("action = { kind = \"signal\", pid = 1, signal = \"NOPE\" }\n");
    assert!(e.contains("maintenance[0].action.signal"), "{e}");
    let e = bad("schedule = \"0 20 * * *\"\n");
    assert!(e.contains("needs an `action`"), "{e}");
    let e = bad("mode = \"rolling\"\naction = { kind = \"none\" }\n");
    assert!(e.contains("maintenance[0].mode"), "{e}");
    let e = err(&format!("{VALID}\n[[maintenance]]\nupstream = \"nope\"\n"));
    assert!(e.starts_with("test.toml:20:12: maintenance[0].upstream: no upstream named \"nope\""), "{e}");
    let e =
        err(&format!("{VALID}\n[[maintenance]]\nupstream = \"api\"\n[[maintenance]]\nupstream = \"api\"\n"));
    assert!(e.contains("already has a [[maintenance]] entry"), "{e}");
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let text = VALID.replace("[server]\n", "[server]\nadmin = \"0.0.0.0:9090\"\n");
    let e = err(&text);
    assert!(e.starts_with("test.toml:3:1: server.admin: 0.0.0.0:9090 is reachable from other hosts"), "{e}");
    let with_token = VALID.replace("[server]\n", "[server]\nadmin = \"0.0.0.0:9090\"\nadmin_token = \"t\"\n");
    assert_eq!(load(&with_token).expect("valid").server.admin_token.as_deref(), Some("t"));
    // The environment's token (passed in by the CLI) serves when the file sets none; the
    // file's wins; a blank one is none.
    let from_env = |token: &str, text: &str| {
        let overrides = Overrides { admin_token: Some(token.into()), ..Overrides::default() };
        parse_str(text, "test.toml", &overrides).map(|c| c.server.admin_token)
    };
    assert_eq!(from_env("e", &text).expect("valid").as_deref(), Some("e"));
    assert_eq!(from_env("e", &with_token).expect("valid").as_deref(), Some("t"));
    assert!(from_env("  ", &text).is_err(), "a blank token is no token");
}

/// `server.forwarding` and `server.trusted_proxies`: defaults, printing, and errors that name
/// the place in the file.
mod forwarding_tests {
    use super::*;
    use crate::config::forwarding::{ForwardingMode, TrustedProxies};

    #[test]
    fn defaults_trust_loopback_and_private_ranges_and_are_printed() {
        let config = load_embedded(&Overrides::default()).expect("embedded defaults");
        assert_eq!(config.server.forwarding, ForwardingMode::Trusted);
        assert_eq!(config.server.trusted_proxies, TrustedProxies::defaults());
        let printed = toml::to_string_pretty(&config).expect("print");
        assert!(printed.contains("forwarding = \"trusted\""), "{printed}");
        let ranges = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];
        for range in ranges {
            assert!(printed.contains(&format!("\"{range}\"")), "{range} missing:\n{printed}");
        }
        assert!(printed.contains("trusted_proxies = ["), "{printed}");
    }

    #[test]
    fn modes_and_ranges_load() {
        let text =
            "[server]\nforwarding = \"append\"\ntrusted_proxies = [\"203.0.113.0/24\", \"2001:db8::1\"]\n";
        let config = load(text).expect("valid");
        assert_eq!(config.server.forwarding, ForwardingMode::Append);
        let ranges: Vec<String> =
            config.server.trusted_proxies.ranges().iter().map(|n| n.to_string()).collect();
        assert_eq!(ranges, ["203.0.113.0/24", "2001:db8::1/128"]);
        let config = load("[server]\nforwarding = \"replace\"\ntrusted_proxies = []\n").expect("valid");
        assert_eq!(config.server.forwarding, ForwardingMode::Replace);
        assert!(config.server.trusted_proxies.ranges().is_empty(), "an empty list trusts no one");
    }

    #[test]
    fn a_bad_range_names_line_column_and_key() {
        let e = err("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n");
        assert!(
            e.starts_with("test.toml:2:34: server.trusted_proxies: \"10.0.0.0/33\" is not an address range"),
            "{e}"
        );
        let e = err("[server]\nlisten = \"127.0.0.1:8080\"\n\ntrusted_proxies = [\n  \"nginx\",\n]\n");
        assert!(e.starts_with("test.toml:5:3: server.trusted_proxies: \"nginx\""), "{e}");
        let e = err("[server]\ntrusted_proxies = \"10.0.0.0/8\"\n");
        assert!(e.starts_with("test.toml:2:19: server.trusted_proxies: "), "{e}");
    }

    #[test]
    fn an_unknown_mode_names_line_column_and_the_choices() {
        let e = err("[server]\nforwarding = \"prepend\"\n");
        assert!(e.starts_with("test.toml:2:14: server.forwarding: "), "{e}");
        assert!(e.contains("`trusted`") && e.contains("`append`") && e.contains("`replace`"), "{e}");
    }
}

#[test]
fn docker_actions_select_compose_services_or_named_containers() {
    use crate::config::maintenance::{Action, Containers};
    let with = |action: &str| format!("{VALID}\n[[maintenance]]\nupstream = \"api\"\naction = {action}\n");
    let config = load(&with(
        r#"{ kind = "docker", services = ["api", "worker"], stop_timeout = "30s", stop_timeouts = { worker = "3m" } }"#,
    ))
    .expect("services");
    let Some(Action::Docker { containers, stop_timeout, stop_timeouts, .. }) =
        &config.maintenance_spec("api").action
    else {
        panic!("a docker action");
    };
    assert_eq!(
        containers,
        &Containers::Services { services: vec!["api".into(), "worker".into()], project: None }
    );
    assert_eq!(*stop_timeout, Duration::from_secs(30));
    assert_eq!(stop_timeouts.get("worker"), Some(&Duration::from_secs(180)));
    let printed = toml::to_string_pretty(&config).expect("`check` can print it");
    let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.maintenance_spec("api").action, config.maintenance_spec("api").action, "printed back");

    let named = load(&with(r#"{ kind = "docker", containers = ["docker-api-1"] }"#)).expect("names");
    assert!(matches!(
        &named.maintenance_spec("api").action,
        Some(Action::Docker { containers: Containers::Named { .. }, .. })
    ));

    let bad = |action: &str| err(&with(action));
    let e = bad(r#"{ kind = "docker" }"#);
    assert!(e.contains("action.services: kind = \"docker\" needs `services`"), "{e}");
    let e = bad(r#"{ kind = "docker", services = ["api"], containers = ["x"] }"#);
    assert!(e.contains("set one of `containers` and `services`, not both"), "{e}");
    let e = bad(r#"{ kind = "docker", containers = ["x"], project = "dify" }"#);
    assert!(e.contains("action.project: applies to `services` only"), "{e}");
    let e = bad(r#"{ kind = "docker", services = [] }"#);
    assert!(e.contains("action.services: must list at least one name"), "{e}");
    let e = bad(r#"{ kind = "docker", services = ["api"], stop_timeouts = { worker = "1m" } }"#);
    assert!(e.contains("\"worker\" is not one of the containers or services restarted"), "{e}");
    let e =
        bad(r#"{ kind = "docker", services = ["api"], timeout = "20s", stop_timeouts = { api = "30s" } }"#);
    assert!(e.contains("api: 30s must be shorter than the action's timeout (20s)"), "{e}");
}

#[test]
fn a_memory_trigger_reads_a_compose_service() {
    use crate::config::maintenance::MemorySource;
    let with = |memory: &str| {
        format!(
            "{VALID}\n[[maintenance]]\nupstream = \"api\"\naction = {{ kind = \"docker\", services = [\"api\"] }}\n[maintenance.memory]\nthreshold = \"4GiB\"\n{memory}\n"
        )
    };
    let config = load(&with("service = \"api\"\nproject = \"dify\"")).expect("a service");
    let memory = config.maintenance_spec("api").memory.expect("memory trigger");
    assert_eq!(
        memory.source,
        MemorySource::DockerService {
            socket: "/var/run/docker.sock".into(),
            service: "api".into(),
            project: Some("dify".into())
        }
    );
    let printed = toml::to_string_pretty(&config).expect("`check` can print it");
    let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.maintenance_spec("api").memory.map(|m| m.source), Some(memory.source), "printed back");

    let e = err(&with("service = \"api\"\ncontainer = \"docker-api-1\""));
    assert!(e.contains("set exactly one of `cgroup` (a file), `container`"), "{e}");
    let e = err(&with("container = \"docker-api-1\"\nproject = \"dify\""));
    assert!(e.contains("memory.project: applies to `service` only"), "{e}");
}
