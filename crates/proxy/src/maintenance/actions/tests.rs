//! Tests of what the action kinds share: placeholders, descriptions, signal names, the
//! serialized form. Each kind's own tests sit beside it.

use std::collections::BTreeMap;

use super::*;

fn rolling() -> Target {
    Target { upstream: "dify".into(), server: Some("10.0.0.5:5001".into()) }
}

#[test]
fn placeholders_fill_in_one_pass() {
    assert_eq!(fill("{upstream}/{server}/{host}/{port}", &rolling()), "dify/10.0.0.5:5001/10.0.0.5/5001");
    assert_eq!(
        fill("{upstream}-{server}-{host}-{port}", &Target { upstream: "u".into(), server: None }),
        "u---"
    );
    // Unknown braces stay; a value holding a placeholder is not expanded again.
    assert_eq!(
        fill("{a} {upstream} {", &Target { upstream: "{server}".into(), server: None }),
        "{a} {server} {"
    );
    assert_eq!(
        fill("{host}:{port}", &Target { upstream: "u".into(), server: Some("[::1]:8080".into()) }),
        "::1:8080"
    );
    assert_eq!(fill("{host}|{port}", &Target { upstream: "u".into(), server: Some("api".into()) }), "api|");
}

#[test]
fn descriptions() {
    let d = Duration::from_secs(5);
    let command = Action::Command { command: "docker compose -p dify restart api".into(), timeout: d };
    assert_eq!(command.describe(), "command \"docker compose -p dify restart api\"");
    let docker = Action::Docker {
        socket: "/var/run/docker.sock".into(),
        containers: Containers::Named { containers: vec!["docker-api-1".into(), "docker-worker-1".into()] },
        stop_timeout: d,
        stop_timeouts: BTreeMap::new(),
        timeout: d,
    };
    assert_eq!(docker.describe(), "docker restart docker-api-1, docker-worker-1");
    let services = Action::Docker {
        socket: "/var/run/docker.sock".into(),
        containers: Containers::Services { services: vec!["api".into(), "worker".into()], project: None },
        stop_timeout: d,
        stop_timeouts: BTreeMap::new(),
        timeout: d,
    };
    assert_eq!(
        services.describe(),
        "docker restart compose services api, worker of project (this container's)"
    );
    let http =
        Action::Http { method: "POST".into(), url: "http://ops/restart".into(), headers: vec![], timeout: d };
    assert_eq!(http.describe(), "http POST http://ops/restart");
    let by_pid = Action::Signal { pid: Some(42), pid_file: None, signal: "HUP".into() };
    assert_eq!(by_pid.describe(), "signal HUP to pid 42");
    let by_file = Action::Signal { pid: None, pid_file: Some("/run/x.pid".into()), signal: "USR2".into() };
    assert_eq!(by_file.describe(), "signal USR2 to pid in /run/x.pid");
    assert_eq!(
        Action::None { window: Duration::from_secs(300) }.describe(),
        "none (external restart within 5m)"
    );
}

#[test]
fn signal_names() {
    use nix::sys::signal::Signal;
    assert_eq!(Action::parse_signal("HUP"), Ok(Signal::SIGHUP));
    assert_eq!(Action::parse_signal("SIGHUP"), Ok(Signal::SIGHUP));
    assert_eq!(Action::parse_signal(" usr2 "), Ok(Signal::SIGUSR2));
    assert_eq!(Action::parse_signal("TERM"), Ok(Signal::SIGTERM));
    let err = Action::parse_signal("RELOAD").expect_err("not a signal");
    assert!(err.starts_with("unknown signal \"RELOAD\": expected a name such as \"HUP\""), "{err}");
    assert!(Action::parse_signal("").is_err());
    assert!(Action::parse_signal("1").is_err());
}

#[test]
fn serialized_form_is_tagged_with_readable_durations() {
    let docker = Action::Docker {
        socket: "/var/run/docker.sock".into(),
        containers: Containers::Named { containers: vec!["docker-api-1".into()] },
        stop_timeout: Duration::from_secs(10),
        stop_timeouts: BTreeMap::new(),
        timeout: Duration::from_secs(120),
    };
    assert_eq!(
        serde_json::to_value(&docker).expect("serializes"),
        serde_json::json!({
            "kind": "docker",
            "socket": "/var/run/docker.sock",
            "containers": ["docker-api-1"],
            "stop_timeout": "10s",
            "timeout": "2m",
        })
    );
    let services = Action::Docker {
        socket: "/var/run/docker.sock".into(),
        containers: Containers::Services {
            services: vec!["api".into(), "worker".into()],
            project: Some("dify".into()),
        },
        stop_timeout: Duration::from_secs(30),
        stop_timeouts: BTreeMap::from([("worker".to_string(), Duration::from_secs(240))]),
        timeout: Duration::from_secs(300),
    };
    assert_eq!(
        serde_json::to_value(&services).expect("serializes"),
        serde_json::json!({
            "kind": "docker",
            "socket": "/var/run/docker.sock",
            "services": ["api", "worker"],
            "project": "dify",
            "stop_timeout": "30s",
            "stop_timeouts": {"worker": "4m"},
            "timeout": "5m",
        })
    );
    let none =
        serde_json::to_value(Action::None { window: Duration::from_millis(1500) }).expect("serializes");
    assert_eq!(none, serde_json::json!({"kind": "none", "window": "1s 500ms"}));
}

#[tokio::test]
async fn none_returns_at_once() {
    assert_eq!(Action::None { window: Duration::from_secs(3600) }.run(&rolling()).await, Ok(()));
}
