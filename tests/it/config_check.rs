//! `dify-shaper check FILE` (or `--config FILE`, `DIFY_SHAPER_CONFIG`): exit 0 and the effective
//! config for a good file, with a warning per route that would treat Dify's traffic worse than
//! stock Dify; exit 1 and a message naming file, line, column and key for each kind of bad
//! config.

use std::process::Command;

fn check(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).expect("write");
    let out =
        Command::new(env!("CARGO_BIN_EXE_dify-shaper")).arg("check").arg(&path).output().expect("run check");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

fn rejected(config: &str, expect_prefix: &str, expect_text: &str) {
    let (ok, _, stderr) = check(config);
    assert!(!ok, "accepted:\n{config}");
    assert!(stderr.contains(&format!("FILE:{expect_prefix}")), "want FILE:{expect_prefix} in: {stderr}");
    assert!(stderr.contains(expect_text), "want {expect_text:?} in: {stderr}");
}

const BASE: &str =
    "[upstreams.api]\nservers = [\"127.0.0.1:5001\"]\n\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n";

#[test]
fn shipped_config_is_valid_and_printed() {
    let _machine = crate::common::shared_blocking();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/dify-shaper.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_dify-shaper")).arg("check").arg(path).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("OK. Effective config"), "{stdout}");
    assert!(stdout.contains("servers = [\"plugin_daemon:5002\"]"), "{stdout}");
    // The printed effective config is itself a valid config.
    let effective: String = stdout.lines().skip(1).collect::<Vec<_>>().join("\n");
    let (ok, _, stderr) = check(&effective);
    assert!(ok, "effective config does not re-load: {stderr}");
}

#[test]
fn unknown_key() {
    let _machine = crate::common::shared_blocking();
    rejected(
        &format!("{BASE}\n[server]\nlisten = \"0.0.0.0:8080\"\ntimeout = \"5s\"\n"),
        "10:1: ",
        "unknown field `timeout`",
    );
}

#[test]
fn bad_address() {
    let _machine = crate::common::shared_blocking();
    rejected(
        &format!("[server]\nadmin = \"localhost:99999\"\n{BASE}"),
        "2:9: server.admin: ",
        "invalid socket address",
    );
    rejected("[upstreams.api]\nservers = [\"api:http\"]\n", "2:12: upstreams.api.servers: ", "invalid port");
}

#[test]
fn bad_duration() {
    let _machine = crate::common::shared_blocking();
    rejected(
        &format!("{BASE}[classes.run]\nread_timeout = \"ten minutes\"\n"),
        "8:16: classes.run.read_timeout: ",
        "invalid duration",
    );
}

#[test]
fn duplicate_route() {
    let _machine = crate::common::shared_blocking();
    rejected(
        &format!("{BASE}\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n"),
        "9:10: routes[1].prefix: ",
        "overlaps",
    );
}

#[test]
fn overlapping_route() {
    let _machine = crate::common::shared_blocking();
    let config = format!("{BASE}\n[[routes]]\nprefix = \"/v1\"\nupstream = \"api\"\n\n[[routes]]\nprefix = \"/v1/\"\nmethods = [\"POST\"]\nupstream = \"api\"\n");
    rejected(&config, "13:10: routes[2].prefix: ", "overlaps route \"/v1\"");
}

#[test]
fn route_to_missing_upstream() {
    let _machine = crate::common::shared_blocking();
    rejected(
        &format!("{BASE}\n[[routes]]\nprefix = \"/e/\"\nupstream = \"plugin_daemon\"\n"),
        "10:12: routes[1].upstream: ",
        "not defined",
    );
}

#[test]
fn unreadable_file_and_syntax_error() {
    let _machine = crate::common::shared_blocking();
    let out = Command::new(env!("CARGO_BIN_EXE_dify-shaper"))
        .args(["check", "/nonexistent/dify-shaper.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
    rejected("[server\n", "1:", "");
}

fn check_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dify-shaper"));
    cmd.env_remove("DIFY_SHAPER_CONFIG").env("DIFY_SHAPER_ADMIN_TOKEN", "test-token");
    cmd
}

/// Dify's whole route table against every config we ship: each long-running route in the
/// `run` class, each stop-task route in `control`, every row placed. `check` prints a warning
/// per row it cannot place, so a clean stderr is the assertion.
#[test]
fn shipped_configs_place_every_dify_route_in_its_class() {
    let _machine = crate::common::shared_blocking();
    for config in ["conf/dify-shaper.toml", "docker/dify-shaper.toml"] {
        let path = format!("{}/{config}", env!("CARGO_MANIFEST_DIR"));
        let out = check_cmd().args(["check", &path]).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{config}: {stderr}");
        assert!(!stderr.contains("warning"), "{config}:\n{stderr}");
    }
    let out = check_cmd().arg("check").output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "embedded: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("# embedded defaults: OK"));
    assert!(!stderr.contains("warning"), "embedded:\n{stderr}");
}

/// The route table in the repository is the one the real Dify kit ships (when it is here).
#[test]
fn route_table_matches_the_real_dify_kit() {
    let _machine = crate::common::shared_blocking();
    let kit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/dify/routes-1.12.1.tsv");
    let Ok(theirs) = std::fs::read_to_string(&kit) else {
        eprintln!("skipped: {} is absent (the real Dify kit is not on this machine)", kit.display());
        return;
    };
    let ours = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/dify-routes-1.12.1.tsv"))
        .expect("conf/dify-routes-1.12.1.tsv");
    assert_eq!(ours, theirs, "conf/dify-routes-1.12.1.tsv differs from the kit's table");
}

#[test]
fn short_timeouts_and_unplaced_dify_routes_are_warnings_naming_the_route() {
    let _machine = crate::common::shared_blocking();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("short.toml");
    std::fs::write(
        &config,
        format!("{BASE}\n[[routes]]\nname = \"runs\"\nprefix = \"/v1/workflows/run\"\nupstream = \"api\"\nclass = \"run\"\n\n[classes.run]\nread_timeout = \"10m\"\n"),
    )
    .expect("write");
    let table = dir.path().join("routes.tsv");
    std::fs::write(
        &table,
        "method\tpath\thandler\tlong_running\tsource\n\
         POST\t/v1/workflows/run\tWorkflowRunApi\tyes\tx.py\n\
         POST\t/v1/chat-messages\tChatApi\tyes\tx.py\n",
    )
    .expect("write");
    // `--config` and DIFY_SHAPER_CONFIG name the file as `run` takes it.
    let out = check_cmd()
        .args(["check", "--dify-routes"])
        .arg(&table)
        .env("DIFY_SHAPER_CONFIG", &config)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "warnings do not refuse the config: {stderr}");
    assert!(
        stderr.contains(
            "route \"runs\" (class \"run\"): classes.run.read_timeout = 10m is shorter than Dify's nginx"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("Dify route POST /v1/chat-messages (ChatApi) goes to route \"/\", class \"interactive\"; it needs the `run` class"),
        "{stderr}"
    );
    assert!(!stderr.contains("WorkflowRunApi"), "a well-placed row is not named: {stderr}");
    let by_flag = check_cmd().args(["check", "--config"]).arg(&config).output().expect("run");
    assert!(String::from_utf8_lossy(&by_flag.stderr).contains("read_timeout = 10m"));
    assert!(String::from_utf8_lossy(&by_flag.stdout).contains("OK. Effective config"));
}
