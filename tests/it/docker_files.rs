//! The sidecar container files, tested without a Docker engine.
//!
//! - `docker/docker-compose.shaper.yaml` parses, names only services Dify's compose file has,
//!   wires nginx's `api` host to dify-shaper on the port nginx uses, mounts only paths that
//!   exist, and gives `docker stop` more time than the config's `shutdown_grace`;
//! - `docker/dify-shaper.toml` passes `check` (with the admin token the compose file requires,
//!   and fails without it), and its ports, hosts and container names match Dify's deployment;
//! - `docker/Dockerfile` is multi-stage, runs as a non-root user, copies sources that exist and
//!   that `.dockerignore` lets through, and its HEALTHCHECK command really succeeds against
//!   `/live` of the binary running the shipped config;
//! - that binary, on the shipped config, serves a workflow run from the simulator.
//!
//! Dify's side is `tests/fixtures/dify/compose-facts.yaml`: facts recorded from Dify's
//! repository (which commit is named there), so a Dify change shows up as one place to update.

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{closed_port, free_port, get, post_json};
use dify_shaper_tools::sim::{SimConfig, Simulator};
use http::StatusCode;
use serde_norway::Value as Yaml;

/// The admin token the tests give the binary, as the compose file does from `.env`.
const TOKEN: &str = "test-admin-token-0123456789";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn overlay() -> Yaml {
    serde_norway::from_str(&read("docker/docker-compose.shaper.yaml")).expect("the overlay parses as YAML")
}

fn facts() -> Yaml {
    serde_norway::from_str(&read("tests/fixtures/dify/compose-facts.yaml")).expect("facts parse")
}

fn shipped_config() -> toml::Value {
    toml::from_str(&read("docker/dify-shaper.toml")).expect("docker/dify-shaper.toml parses as TOML")
}

/// A string at `path` (keys separated by `.`) in a YAML document.
fn yaml_str<'a>(doc: &'a Yaml, path: &str) -> &'a str {
    let mut at = doc;
    for key in path.split('.') {
        at = at.get(key).unwrap_or_else(|| panic!("no {path} (at {key})"));
    }
    at.as_str().unwrap_or_else(|| panic!("{path} is not a string: {at:?}"))
}

/// The strings of a YAML sequence.
fn yaml_strings(value: &Yaml) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a sequence: {value:?}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}")).to_string())
        .collect()
}

fn toml_str<'a>(doc: &'a toml::Value, path: &str) -> &'a str {
    let mut at = doc;
    for key in path.split('.') {
        at = at.get(key).unwrap_or_else(|| panic!("no {path} (at {key})"));
    }
    at.as_str().unwrap_or_else(|| panic!("{path} is not a string: {at:?}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr}"))
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map(|(h, _)| h).unwrap_or_else(|| panic!("no host in {addr}"))
}

/// Replaces `${NAME:-default}` and `${NAME:?message}` with `value(NAME, default)`; the overlay
/// uses no other interpolation form.
fn interpolate(text: &str, value: impl Fn(&str, Option<&str>) -> String) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end =
            rest[start..].find('}').map(|e| start + e).unwrap_or_else(|| panic!("unclosed ${{ in {text}"));
        let inner = &rest[start + 2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner.split_once(":?").map_or(inner, |(name, _)| name), None),
        };
        out.push_str(&value(name, default));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The `dify-shaper` service of the overlay.
fn shaper_service(overlay: &Yaml) -> &Yaml {
    overlay.get("services").and_then(|s| s.get("dify-shaper")).expect("service dify-shaper")
}

#[test]
fn overlay_references_only_real_dify_services() {
    let _machine = crate::common::shared_blocking();
    let overlay = overlay();
    let facts = facts();
    let known: BTreeSet<String> = facts["services"]
        .as_mapping()
        .expect("facts.services")
        .keys()
        .map(|k| k.as_str().expect("service name").to_string())
        .collect();
    let services = overlay["services"].as_mapping().expect("overlay services");
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        // The overlay adds exactly one service; every other entry extends one of Dify's.
        assert!(name == "dify-shaper" || known.contains(name), "overlay extends unknown service {name}");
        // depends_on: a list of names, or a map of name → condition.
        let deps: Vec<String> = match service.get("depends_on") {
            Some(Yaml::Mapping(map)) => map.keys().filter_map(|k| k.as_str().map(str::to_string)).collect(),
            Some(list) => yaml_strings(list),
            None => Vec::new(),
        };
        for dep in deps {
            assert!(
                dep == "dify-shaper" || known.contains(&dep),
                "{name} depends on {dep}, which Dify does not define"
            );
        }
        for link in service.get("links").map(yaml_strings).unwrap_or_default() {
            let target = link.split(':').next().unwrap_or_default();
            assert!(target == "dify-shaper" || known.contains(target), "{name} links unknown {target}");
        }
    }
    // Links resolve on a network both containers share: nginx has only `default`, and
    // dify-shaper declares no networks, so it is on `default` too.
    let nginx_networks = yaml_strings(&facts["services"]["nginx"]["networks"]);
    assert_eq!(nginx_networks, ["default"]);
    assert!(shaper_service(&overlay).get("networks").is_none(), "dify-shaper must stay on `default`");
    assert!(yaml_strings(&facts["services"]["api"]["networks"]).contains(&"default".to_string()));
}

#[test]
fn nginx_reaches_dify_shaper_on_the_port_it_uses_for_api() {
    let _machine = crate::common::shared_blocking();
    let overlay = overlay();
    let facts = facts();
    let config = shipped_config();

    // nginx proxies to `api_upstream` (host:port); the overlay makes that host name dify-shaper.
    let upstream = yaml_str(&facts, "services.nginx.api_upstream");
    let links = yaml_strings(&overlay["services"]["nginx"]["links"]);
    assert_eq!(links, [format!("dify-shaper:{}", host_of(upstream))], "nginx's alias for dify-shaper");
    assert_eq!(yaml_str(&facts, "services.nginx.socket_io_upstream_default"), upstream);

    // dify-shaper listens on that port …
    let listen = toml_str(&config, "server.listen");
    assert_eq!(host_of(listen), "0.0.0.0", "reachable from nginx's container");
    assert_eq!(port_of(listen), port_of(upstream));
    // … and forwards to the real API service and port, probing its health endpoint.
    let api_port = facts["services"]["api"]["port"].as_u64().expect("api port");
    let servers: Vec<&str> = config["upstreams"]["api"]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s.as_str().expect("server"))
        .collect();
    assert_eq!(servers, [format!("api:{api_port}")]);
    assert_eq!(toml_str(&config, "upstreams.api.health.path"), yaml_str(&facts, "services.api.health_path"));

    // Only the API's locations arrive, and every one of them has a route to `api`.
    let routes = config["routes"].as_array().expect("routes");
    let prefixes: BTreeSet<&str> = routes.iter().map(|r| r["prefix"].as_str().expect("prefix")).collect();
    for route in routes {
        assert_eq!(route["upstream"].as_str(), Some("api"), "route {route:?}");
    }
    let mut locations = yaml_strings(&facts["services"]["nginx"]["api_locations"]);
    locations.push(yaml_str(&facts, "services.nginx.socket_io_location").to_string());
    for location in &locations {
        assert!(prefixes.contains(location.as_str()), "no route for nginx location {location}");
    }
    // The catch-all keeps paths nginx's looser prefix match sends (e.g. /apidocs) going to api.
    assert!(prefixes.contains("/"), "catch-all route to api");
    assert!(config.get("upstreams").and_then(|u| u.as_table()).is_some_and(|u| u.len() == 1));
}

#[test]
fn admin_port_is_published_on_host_loopback_and_token_is_required() {
    let _machine = crate::common::shared_blocking();
    let overlay = overlay();
    let config = shipped_config();
    let shaper = shaper_service(&overlay);
    let admin = toml_str(&config, "server.admin");
    assert_eq!(host_of(admin), "0.0.0.0");
    let ports = yaml_strings(&shaper["ports"]);
    assert_eq!(ports.len(), 1, "only the admin port is published: {ports:?}");
    let published = interpolate(&ports[0], |_, default| default.unwrap_or_default().to_string());
    assert_eq!(published, format!("127.0.0.1:9090:{}", port_of(admin)));
    // The token comes from the environment, required (`:?`), never from the config file.
    let token = yaml_str(shaper, "environment.DIFY_SHAPER_ADMIN_TOKEN");
    assert!(token.starts_with("${DIFY_SHAPER_ADMIN_TOKEN:?"), "{token}");
    assert!(config["server"].get("admin_token").is_none(), "no token in the shipped file");
}

#[test]
fn stop_grace_period_exceeds_shutdown_grace() {
    let _machine = crate::common::shared_blocking();
    let overlay = overlay();
    let config = shipped_config();
    let stop = yaml_str(shaper_service(&overlay), "stop_grace_period");
    let stop = humantime::parse_duration(stop).expect("stop_grace_period");
    let grace = humantime::parse_duration(toml_str(&config, "server.shutdown_grace")).expect("grace");
    // Docker sends SIGKILL at stop_grace_period; leave pingora's drain a margin beyond its grace.
    assert!(stop >= grace + Duration::from_secs(5), "stop_grace_period {stop:?} vs shutdown_grace {grace:?}");
    assert_eq!(yaml_str(shaper_service(&overlay), "stop_signal"), "SIGTERM");
}

#[test]
fn maintenance_restarts_dify_api_and_worker_found_by_compose_labels() {
    let _machine = crate::common::shared_blocking();
    let facts = facts();
    let config = shipped_config();
    let entries = config["maintenance"].as_array().expect("[[maintenance]]");
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry["upstream"].as_str(), Some("api"));
    assert_eq!(entry["schedule"].as_str(), Some("0 20 * * *"));
    assert_eq!(entry["timezone"].as_str(), Some("Asia/Tokyo"));
    let action = &entry["action"];
    assert_eq!(action["kind"].as_str(), Some("docker"));
    // By service label, in the project dify-shaper itself runs in: no container names that
    // change with `-p` or scaling.
    assert!(action.get("containers").is_none() && action.get("project").is_none(), "{action:?}");
    let services: Vec<&str> =
        action["services"].as_array().expect("services").iter().filter_map(|c| c.as_str()).collect();
    assert_eq!(services, ["api", "worker"]);
    for service in services {
        assert!(facts["services"].get(service).is_some(), "{service} is a Dify service");
    }
    // The worker's warm shutdown gets minutes, within the restart timeout with api's grace.
    let seconds = |v: &toml::Value| {
        humantime::parse_duration(v.as_str().expect("a duration")).expect("duration").as_secs()
    };
    let worker = seconds(&action["stop_timeouts"]["worker"]);
    assert!(worker >= 120, "worker stop timeout {worker} s");
    assert!(worker + seconds(&action["stop_timeout"]) < seconds(&entry["restart_timeout"]));
    // The `docker` action needs the Engine API socket in the container.
    let volumes = yaml_strings(&shaper_service(&overlay())["volumes"]);
    assert!(
        volumes.iter().any(|v| v.starts_with("/var/run/docker.sock:/var/run/docker.sock")),
        "{volumes:?}"
    );
    // The `none` alternative is shown for operators who keep their own cron.
    assert!(read("docker/dify-shaper.toml").contains("# action = { kind = \"none\""));
}

#[test]
fn overlay_host_paths_exist() {
    let _machine = crate::common::shared_blocking();
    let overlay = overlay();
    let shaper = shaper_service(&overlay);
    let here = repo();
    let resolve = |text: &str| {
        interpolate(text, |name, default| match name {
            "DIFY_SHAPER_DIR" => here.display().to_string(),
            _ => default.unwrap_or_default().to_string(),
        })
    };
    let context = PathBuf::from(resolve(yaml_str(shaper, "build.context")));
    assert_eq!(context, here, "the build context is this repository");
    let dockerfile = context.join(yaml_str(shaper, "build.dockerfile"));
    assert!(dockerfile.is_file(), "{}", dockerfile.display());
    for volume in yaml_strings(&shaper["volumes"]) {
        // Interpolate first: a `${NAME:-default}` holds a colon of its own.
        let resolved = resolve(&volume);
        let source = resolved.split(':').next().unwrap_or_default().to_string();
        if source == "/var/run/docker.sock" {
            // The host's Docker socket: not part of this repository.
            continue;
        }
        assert!(Path::new(&source).exists(), "mounted host path {source} (from {volume}) does not exist");
        assert!(source.starts_with(&here.display().to_string()), "{source} outside this repository");
    }

    // The default DIFY_SHAPER_DIR fits the documented layout: dify/ and dify-shaper/ side by
    // side, compose run from dify/docker (relative paths resolve from the project directory).
    let layout = tempfile::tempdir().expect("temp dir");
    let project_dir = layout.path().join("dify").join("docker");
    std::fs::create_dir_all(&project_dir).expect("mkdir");
    std::os::unix::fs::symlink(&here, layout.path().join("dify-shaper")).expect("symlink");
    let default_dir =
        interpolate(yaml_str(shaper, "build.context"), |_, d| d.unwrap_or_default().to_string());
    let config_mount = yaml_strings(&shaper["volumes"])[0].clone();
    let config_mount = interpolate(&config_mount, |_, d| d.unwrap_or_default().to_string());
    let config_source = config_mount.split(':').next().unwrap_or_default();
    assert!(project_dir.join(&default_dir).join("docker/Dockerfile").is_file(), "default {default_dir}");
    assert!(project_dir.join(config_source).is_file(), "default config mount {config_source}");
}

#[test]
fn shipped_config_passes_check_only_with_a_token() {
    let _machine = crate::common::shared_blocking();
    let path = repo().join("docker/dify-shaper.toml");
    let with = Command::new(env!("CARGO_BIN_EXE_dify-shaper"))
        .arg("check")
        .arg(&path)
        .env("DIFY_SHAPER_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run check");
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    let stdout = String::from_utf8_lossy(&with.stdout);
    assert!(stdout.contains("OK. Effective config"), "{stdout}");
    assert!(!stdout.contains(TOKEN), "check must not print the token");

    let without = Command::new(env!("CARGO_BIN_EXE_dify-shaper"))
        .arg("check")
        .arg(&path)
        .env_remove("DIFY_SHAPER_ADMIN_TOKEN")
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert_eq!(without.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("DIFY_SHAPER_ADMIN_TOKEN"), "{stderr}");
}

/// One Dockerfile instruction: keyword (upper case), arguments, and the stage it belongs to.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
    stage: usize,
}

/// Joins continuation lines, drops comments and parser directives, and numbers the stages.
fn dockerfile() -> Vec<Instruction> {
    let text = read("docker/Dockerfile");
    let mut instructions = Vec::new();
    let mut stage = 0;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (pending.is_empty() && trimmed.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let full = std::mem::take(&mut pending);
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((full.as_str(), ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage += 1;
        }
        instructions.push(Instruction { keyword, args: args.trim().to_string(), stage });
    }
    instructions
}

/// The HEALTHCHECK's exec-form command (after the options).
fn healthcheck_command(instructions: &[Instruction]) -> Vec<String> {
    let check = instructions.iter().find(|i| i.keyword == "HEALTHCHECK").expect("HEALTHCHECK");
    let json = check.args.split_once("CMD ").map(|(_, j)| j).expect("HEALTHCHECK ... CMD [...]");
    serde_json::from_str(json).expect("exec-form HEALTHCHECK command")
}

/// Minimal `.dockerignore` matching for the patterns this repository uses: `name`, `dir/`,
/// `dir/*`, `*.ext`, and `!` exceptions; the last matching pattern wins.
fn docker_ignored(path: &str) -> bool {
    let mut ignored = false;
    for line in read(".dockerignore").lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (negate, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        let pattern = pattern.trim_end_matches('/');
        let matches = if let Some(dir) = pattern.strip_suffix("/*") {
            path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
        } else if let Some(ext) = pattern.strip_prefix('*') {
            !path.contains('/') && path.ends_with(ext)
        } else {
            assert!(!pattern.contains('*'), "unsupported .dockerignore pattern {line}");
            path == pattern || path.starts_with(&format!("{pattern}/"))
        };
        if matches {
            ignored = !negate;
        }
    }
    ignored
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_live_healthcheck() {
    let _machine = crate::common::shared_blocking();
    let instructions = dockerfile();
    let froms: Vec<&Instruction> = instructions.iter().filter(|i| i.keyword == "FROM").collect();
    let stage = |name: &str| -> usize {
        froms
            .iter()
            .find(|f| f.args.ends_with(&format!(" AS {name}")))
            .unwrap_or_else(|| panic!("no stage {name}: {froms:?}"))
            .stage
    };
    // The stages that need no registry come before the builder: the classic builder builds
    // every stage up to its target, so `--target runtime-local` must not reach `builder`.
    let (base, local, builder, runtime) =
        (stage("runtime-base"), stage("runtime-local"), stage("builder"), stage("runtime"));
    assert!(base < local && local < builder && builder < runtime, "{froms:?}");
    assert!(froms[base - 1].args.starts_with("${BASE_IMAGE} "), "{froms:?}");
    let default_base = instructions
        .iter()
        .find(|i| i.keyword == "ARG" && i.stage == 0 && i.args.starts_with("BASE_IMAGE="))
        .expect("ARG BASE_IMAGE before the first FROM");
    assert_eq!(default_base.args, "BASE_IMAGE=debian:bookworm-slim");
    assert!(
        froms[builder - 1].args.starts_with("rust:")
            && froms[builder - 1].args.contains("-bookworm AS builder")
    );
    assert_eq!(froms[local - 1].args, "runtime-base AS runtime-local");
    assert_eq!(froms[runtime - 1].args, "runtime-base AS runtime");
    assert_eq!(froms.last().map(|f| f.stage), Some(runtime), "the default target is the registry build");
    let runtime = base;
    let in_runtime = |keyword: &str| -> Vec<&Instruction> {
        instructions.iter().filter(|i| i.stage == runtime && i.keyword == keyword).collect()
    };

    // The builder installs pingora's build tools and builds exactly what Cargo.lock says.
    let builder_runs: String = instructions
        .iter()
        .filter(|i| i.stage == builder && i.keyword == "RUN")
        .map(|i| i.args.as_str())
        .collect();
    assert!(builder_runs.contains("cmake") && builder_runs.contains("build-essential"));
    assert!(builder_runs.contains("cargo build --release --locked"));

    // Non-root user in the runtime stage.
    let users = in_runtime("USER");
    assert_eq!(users.len(), 1);
    let user = users[0].args.split(':').next().unwrap_or_default();
    assert!(!user.is_empty() && user != "root" && user != "0", "USER {user}");
    let local_user = instructions.iter().rfind(|i| i.stage == local && i.keyword == "USER");
    assert_eq!(
        local_user.map(|u| u.args.as_str()),
        Some(users[0].args.as_str()),
        "runtime-local ends as that user"
    );

    // COPY sources exist and reach the build context; the binary and config land where
    // ENTRYPOINT and CMD expect them.
    let mut destinations = Vec::new();
    for copy in instructions.iter().filter(|i| i.keyword == "COPY") {
        let parts: Vec<&str> = copy.args.split_whitespace().collect();
        let (dest, sources) = parts.split_last().expect("COPY src… dest");
        destinations.push(dest.to_string());
        if sources.iter().any(|s| s.starts_with("--from=")) {
            continue;
        }
        for source in sources.iter().filter(|s| !s.starts_with("--")) {
            assert!(repo().join(source).exists(), "COPY source {source} does not exist");
            assert!(!docker_ignored(source), "COPY source {source} is excluded by .dockerignore");
        }
    }
    assert!(destinations.contains(&"/usr/local/bin/dify-shaper".to_string()), "{destinations:?}");
    assert!(
        destinations.contains(&"/usr/local/bin/".to_string()),
        "runtime-local's binary: {destinations:?}"
    );
    assert!(destinations.contains(&"/etc/dify-shaper/dify-shaper.toml".to_string()), "{destinations:?}");
    for heavy in ["target", "target/release/dify-shaper", ".git", "tests/it/docker_files.rs"] {
        assert!(docker_ignored(heavy), "{heavy} should be excluded from the build context");
    }

    let entrypoint: Vec<String> =
        serde_json::from_str(&in_runtime("ENTRYPOINT")[0].args).expect("exec-form ENTRYPOINT");
    assert_eq!(entrypoint, ["dify-shaper"]);
    let cmd: Vec<String> = serde_json::from_str(&in_runtime("CMD")[0].args).expect("exec-form CMD");
    assert_eq!(cmd, ["run", "--config", "/etc/dify-shaper/dify-shaper.toml"]);
    assert_eq!(in_runtime("STOPSIGNAL")[0].args, "SIGTERM");

    // EXPOSE names the proxy and admin ports of the shipped config.
    let config = shipped_config();
    let exposed: BTreeSet<u16> =
        in_runtime("EXPOSE")[0].args.split_whitespace().map(|p| p.parse().expect("port")).collect();
    let wanted: BTreeSet<u16> =
        [port_of(toml_str(&config, "server.listen")), port_of(toml_str(&config, "server.admin"))].into();
    assert_eq!(exposed, wanted);

    // The HEALTHCHECK asks /live on the admin port, with nothing the slim image lacks; the
    // compose file repeats the same command.
    let command = healthcheck_command(&instructions);
    assert_eq!(command[0], "bash");
    let script = command.last().expect("script");
    assert!(script.contains("GET /live "), "{script}");
    assert!(script.contains(&format!("/dev/tcp/127.0.0.1/{}", port_of(toml_str(&config, "server.admin")))));
    assert!(!script.contains("curl") && !script.contains("wget"), "{script}");
    let compose_test = yaml_strings(&shaper_service(&overlay())["healthcheck"]["test"]);
    assert_eq!(compose_test[0], "CMD");
    assert_eq!(compose_test[1..], command[..], "compose healthcheck = Dockerfile HEALTHCHECK");
}

/// The binary running `docker/dify-shaper.toml` itself, with listen/admin/upstream moved to
/// 127.0.0.1 (the flags the CLI offers for that) and the token in the environment, as the
/// compose file sets it.
struct Shaper {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Shaper {
    async fn start(upstream: SocketAddr) -> Shaper {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("shaper.log");
        let (addr, admin) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_dify-shaper"))
            .arg("run")
            .arg("--config")
            .arg(repo().join("docker/dify-shaper.toml"))
            .args(["--listen", &addr.to_string(), "--admin", &admin.to_string()])
            .args(["--upstream", &format!("http://{upstream}")])
            .env("DIFY_SHAPER_ADMIN_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn dify-shaper");
        let mut shaper = Shaper { child, addr, admin, log, _dir: dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = shaper.child.try_wait() {
                panic!("dify-shaper exited ({status}):\n{}", shaper.logs());
            }
            let live = tokio::net::TcpStream::connect(admin).await.is_ok()
                && tokio::net::TcpStream::connect(addr).await.is_ok();
            if live {
                return shaper;
            }
            assert!(tokio::time::Instant::now() < deadline, "not up:\n{}", shaper.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the Dockerfile's HEALTHCHECK command with its port replaced; true on exit 0.
async fn healthcheck(command: &[String], admin_port: u16) -> bool {
    let script = command.last().expect("script").replace("/9090 ", &format!("/{admin_port} "));
    let status = tokio::process::Command::new(&command[0])
        .args(&command[1..command.len() - 1])
        .arg(script)
        .stdin(Stdio::null())
        .status();
    tokio::time::timeout(Duration::from_secs(10), status)
        .await
        .expect("healthcheck within 10 s")
        .expect("run the healthcheck")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_config_serves_a_workflow_run_and_its_healthcheck_passes() {
    let _machine = crate::common::shared().await;
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default())
        .await
        .expect("simulator");
    let shaper = Shaper::start(sim.addr()).await;

    let (status, _, body) = post_json(
        shaper.addr,
        "/v1/workflows/run",
        r#"{"inputs":{},"response_mode":"blocking","user":"docker-test"}"#,
        &[("authorization", "Bearer app-dockertest000000")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}\n{}", String::from_utf8_lossy(&body), shaper.logs());

    // The container's HEALTHCHECK, exactly as written, against the running binary …
    let command = healthcheck_command(&dockerfile());
    assert!(healthcheck(&command, shaper.admin.port()).await, "healthcheck failed:\n{}", shaper.logs());
    // … and it fails when nothing listens there.
    let (_reserved, closed) = closed_port();
    assert!(!healthcheck(&command, closed.port()).await, "healthcheck passed on a closed port");

    // With the token set, /status needs it; /live does not.
    let (status, _, _) = get(shaper.admin, "/status").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = common::fetch(
        shaper.admin,
        common::request("GET", shaper.admin, "/status")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let status_json = common::json(&body);
    assert!(
        status_json.to_string().contains("docker restart compose services api, worker"),
        "the docker action shows in /status"
    );
}
