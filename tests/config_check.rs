//! `dify-shaper check FILE`: exit 0 and the effective config for a good file; exit 1 and a
//! message naming file, line, column and key for each kind of bad config.

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
    rejected(
        &format!("{BASE}\n[server]\nlisten = \"0.0.0.0:8080\"\ntimeout = \"5s\"\n"),
        "10:1: ",
        "unknown field `timeout`",
    );
}

#[test]
fn bad_address() {
    rejected(
        &format!("[server]\nadmin = \"localhost:99999\"\n{BASE}"),
        "2:9: server.admin: ",
        "invalid socket address",
    );
    rejected("[upstreams.api]\nservers = [\"api:http\"]\n", "2:12: upstreams.api.servers: ", "invalid port");
}

#[test]
fn bad_duration() {
    rejected(
        &format!("{BASE}[classes.run]\nread_timeout = \"ten minutes\"\n"),
        "8:16: classes.run.read_timeout: ",
        "invalid duration",
    );
}

#[test]
fn duplicate_route() {
    rejected(
        &format!("{BASE}\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n"),
        "9:10: routes[1].prefix: ",
        "overlaps",
    );
}

#[test]
fn overlapping_route() {
    let config = format!("{BASE}\n[[routes]]\nprefix = \"/v1\"\nupstream = \"api\"\n\n[[routes]]\nprefix = \"/v1/\"\nmethods = [\"POST\"]\nupstream = \"api\"\n");
    rejected(&config, "13:10: routes[2].prefix: ", "overlaps route \"/v1\"");
}

#[test]
fn route_to_missing_upstream() {
    rejected(
        &format!("{BASE}\n[[routes]]\nprefix = \"/e/\"\nupstream = \"plugin_daemon\"\n"),
        "10:12: routes[1].upstream: ",
        "not defined",
    );
}

#[test]
fn unreadable_file_and_syntax_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_dify-shaper"))
        .args(["check", "/nonexistent/dify-shaper.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
    rejected("[server\n", "1:", "");
}
