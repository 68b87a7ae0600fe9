//! The `docker` action: container restarts through the Docker Engine API on a unix socket,
//! and the connection helper the Docker memory source shares.

use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::RestartContainerOptions;
use bollard::{Docker, API_DEFAULT_VERSION};

use super::ActionError;

/// Connects to the daemon at `socket` and agrees on an API version, bounded by `timeout`.
///
/// bollard defaults to its newest API version, which older daemons reject ("client version
/// is too new"); asking `/version` first makes it step down to the daemon's. (bollard 0.21
/// actually drops the `/v1.xx` prefix when building URLs, so the daemon answers in its own
/// version anyway; negotiating keeps that true if a later bollard sends the prefix.)
pub(crate) async fn connect(socket: &Path, timeout: Duration) -> Result<Docker, String> {
    let path = socket.to_str().ok_or("socket path is not UTF-8")?;
    // bollard's own timeout is whole seconds; ours (below) is the one that matters.
    let seconds = timeout.as_secs().saturating_add(1);
    let docker = Docker::connect_with_unix(path, seconds, API_DEFAULT_VERSION).map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(format!("asking the API version: {e}")),
        Err(_) => Err(format!(
            "no answer to the API version request within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// Restarts `containers` (placeholders already filled) in order; stops at the first failure.
pub(super) async fn restart(
    socket: &Path,
    containers: &[String],
    stop_timeout: Duration,
    timeout: Duration,
) -> Result<(), ActionError> {
    if containers.is_empty() {
        return Err(ActionError::DockerConnect {
            socket: socket.to_path_buf(),
            reason: "no containers to restart".into(),
        });
    }
    let docker = connect(socket, timeout)
        .await
        .map_err(|reason| ActionError::DockerConnect { socket: socket.to_path_buf(), reason })?;
    let t = i32::try_from(stop_timeout.as_secs()).unwrap_or(i32::MAX);
    for container in containers {
        let options = RestartContainerOptions { t: Some(t), signal: None };
        match tokio::time::timeout(timeout, docker.restart_container(container, Some(options))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(ActionError::DockerRestart {
                    container: container.clone(),
                    reason: e.to_string(),
                })
            }
            Err(_) => return Err(ActionError::DockerTimeout { container: container.clone(), timeout }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::maintenance::actions::fake_docker::FakeDocker;
    use crate::maintenance::actions::{Action, Target};

    fn action(fake: &FakeDocker, containers: &[&str], timeout: Duration) -> Action {
        Action::Docker {
            socket: fake.socket.clone(),
            containers: containers.iter().map(|c| c.to_string()).collect(),
            stop_timeout: Duration::from_secs(25),
            timeout,
        }
    }

    #[tokio::test]
    async fn restarts_in_order_with_stop_timeout() {
        let fake = FakeDocker::start(&["docker-api-1", "docker-worker-1"]).await;
        let target = Target { upstream: "api".into(), server: None };
        let action = action(&fake, &["docker-{upstream}-1", "docker-worker-1"], Duration::from_secs(30));
        action.run(&target).await.expect("restarted");
        let restarts: Vec<String> = fake.requests().into_iter().filter(|r| r.contains("/restart")).collect();
        assert_eq!(
            restarts,
            vec![
                "POST /containers/docker-api-1/restart?t=25",
                "POST /containers/docker-worker-1/restart?t=25"
            ]
        );
    }

    #[tokio::test]
    async fn unknown_container_is_named_and_stops_the_sequence() {
        let fake = FakeDocker::start(&["docker-api-1"]).await;
        let action = action(&fake, &["nope", "docker-api-1"], Duration::from_secs(30));
        let err = action.run(&Target::default()).await.expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "docker: restarting container nope: Docker responded with status code 404: No such container: nope"
        );
        assert!(!fake.requests().iter().any(|r| r.contains("docker-api-1")), "{:?}", fake.requests());
    }

    #[tokio::test]
    async fn slow_restart_times_out() {
        let fake = FakeDocker::start(&["hang"]).await;
        let started = Instant::now();
        let err = action(&fake, &["hang"], Duration::from_millis(300)).run(&Target::default()).await;
        assert_eq!(
            err.expect_err("timeout").to_string(),
            "docker: restarting container hang timed out after 300ms"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn missing_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("docker.sock");
        let action = Action::Docker {
            socket: socket.clone(),
            containers: vec!["x".into()],
            stop_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        };
        let err = action.run(&Target::default()).await.expect_err("no socket");
        let text = err.to_string();
        assert!(text.starts_with(&format!("docker: cannot use {}: ", socket.display())), "{text}");
    }
}
