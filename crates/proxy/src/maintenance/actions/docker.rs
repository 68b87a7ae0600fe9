//! The `docker` action: container restarts through the Docker Engine API on a unix socket —
//! named containers, or every container of compose services found by their labels — and the
//! connection helper the Docker memory source shares.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions, RestartContainerOptions};
use bollard::{Docker, API_DEFAULT_VERSION};

use super::ActionError;
use crate::config::maintenance::Containers;

/// Connects to the daemon at `socket` and agrees on an API version, bounded by `timeout`.
///
/// bollard defaults to its newest API version, which older daemons reject ("client version
/// is too new"); asking `/version` first makes it step down to the daemon's. (bollard 0.21
/// actually drops the `/v1.xx` prefix when building URLs, so the daemon answers in its own
/// version anyway; negotiating keeps that true if a later bollard sends the prefix.)
///
/// `socket` is the unix socket's path (`unix://` optional), or `tcp://host:port` /
/// `http://host:port` for an Engine API behind a socket proxy that allows only what
/// dify-shaper calls.
pub async fn connect(socket: &Path, timeout: Duration) -> Result<Docker, String> {
    let endpoint = socket.to_str().ok_or("socket path is not UTF-8")?;
    // bollard's own timeout is whole seconds; ours (below) is the one that matters.
    let seconds = timeout.as_secs().saturating_add(1);
    let tcp = endpoint.strip_prefix("tcp://").or_else(|| endpoint.strip_prefix("http://"));
    let docker = match tcp {
        Some(address) => {
            Docker::connect_with_http(&format!("http://{address}"), seconds, API_DEFAULT_VERSION)
        }
        None => {
            let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
            Docker::connect_with_unix(path, seconds, API_DEFAULT_VERSION)
        }
    }
    .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(format!("asking the API version: {e}")),
        Err(_) => Err(format!(
            "no answer to the API version request within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// How long Docker lets each container stop before it SIGKILLs it.
pub(crate) struct Grace<'a> {
    /// For every container not named below.
    pub(crate) default: Duration,
    /// By compose service, or by container name when the action names containers.
    pub(crate) by_name: &'a BTreeMap<String, Duration>,
}

impl Grace<'_> {
    fn of(&self, key: &str) -> Duration {
        self.by_name.get(key).copied().unwrap_or(self.default)
    }
}

/// A container the action restarts, and the key its stop timeout is looked up by (its
/// service, or its own name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Container name (without Docker's leading `/`).
    pub name: String,
    /// Service or name.
    pub key: String,
}

/// The compose labels Docker Compose puts on every container it creates.
const PROJECT_LABEL: &str = "com.docker.compose.project";
const SERVICE_LABEL: &str = "com.docker.compose.service";

/// The containers `containers` means now, in restart order. Named ones are taken as they
/// are (Docker says at restart time if one does not exist); services are looked up by their
/// compose labels, and a service without a container is an error, not a silent no-op.
pub async fn find(docker: &Docker, containers: &Containers) -> Result<Vec<Found>, ActionError> {
    let (services, project) = match containers {
        Containers::Named { containers } => {
            return Ok(containers.iter().map(|c| Found { name: c.clone(), key: c.clone() }).collect())
        }
        Containers::Services { services, project } => (services, project),
    };
    let project = match project {
        Some(project) => project.clone(),
        None => own_project(docker).await?,
    };
    let mut found = Vec::new();
    for service in services {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{PROJECT_LABEL}={project}"), format!("{SERVICE_LABEL}={service}")],
        )]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let list = docker.list_containers(Some(options)).await.map_err(|e| {
            ActionError::DockerLookup(format!("listing the containers of service {service}: {e}"))
        })?;
        let mut names: Vec<String> = list
            .into_iter()
            .filter_map(|c| c.names?.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_string())
            .collect();
        if names.is_empty() {
            return Err(ActionError::DockerNoMatch(format!(
                "no container of compose service {service:?} in project {project:?} (labels {PROJECT_LABEL}, {SERVICE_LABEL})"
            )));
        }
        names.sort();
        found.extend(names.into_iter().map(|name| Found { name, key: service.clone() }));
    }
    Ok(found)
}

/// The compose project of the container this process runs in: Docker names a container's
/// host after its id, and Compose labels the container with its project.
async fn own_project(docker: &Docker) -> Result<String, ActionError> {
    let hostname = tokio::fs::read_to_string("/etc/hostname").await.unwrap_or_default().trim().to_string();
    let unknown = |why: String| {
        ActionError::DockerLookup(format!(
            "cannot tell which compose project to restart services of ({why}): set `project`"
        ))
    };
    if hostname.is_empty() {
        return Err(unknown("no /etc/hostname".into()));
    }
    let me = docker
        .inspect_container(&hostname, None::<InspectContainerOptions>)
        .await
        .map_err(|e| unknown(format!("not running in a container named by its id {hostname:?}: {e}")))?;
    me.config
        .and_then(|c| c.labels)
        .and_then(|mut labels| labels.remove(PROJECT_LABEL))
        .ok_or_else(|| unknown(format!("container {hostname} has no {PROJECT_LABEL} label")))
}

/// Which containers an action would restart now, as far as the engine can say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preview {
    /// These, in restart order.
    Containers(Vec<String>),
    /// None: the action would fail when it runs (one line saying why).
    NoMatch(String),
    /// The engine could not be asked from here (not reachable, or not inside the compose
    /// project the action means); one line saying why.
    Unknown(String),
}

/// Connects and says which containers the action would restart now, for start-up and
/// `check`.
pub(crate) async fn preview(socket: &Path, containers: &Containers, timeout: Duration) -> Preview {
    let docker = match connect(socket, timeout).await {
        Ok(docker) => docker,
        Err(reason) => return Preview::Unknown(format!("docker: cannot use {}: {reason}", socket.display())),
    };
    match tokio::time::timeout(timeout, find(&docker, containers)).await {
        Ok(Ok(found)) => Preview::Containers(found.into_iter().map(|f| f.name).collect()),
        Ok(Err(e @ ActionError::DockerNoMatch(_))) => Preview::NoMatch(e.to_string()),
        Ok(Err(e)) => Preview::Unknown(e.to_string()),
        Err(_) => {
            Preview::Unknown(format!("docker: no answer within {}", humantime::format_duration(timeout)))
        }
    }
}

/// Restarts `containers` (placeholders already filled) in order; stops at the first failure.
pub(super) async fn restart(
    socket: &Path,
    containers: &Containers,
    grace: &Grace<'_>,
    timeout: Duration,
) -> Result<(), ActionError> {
    if matches!(containers, Containers::Named { containers } if containers.is_empty()) {
        return Err(ActionError::DockerConnect {
            socket: socket.to_path_buf(),
            reason: "no containers to restart".into(),
        });
    }
    let docker = connect(socket, timeout)
        .await
        .map_err(|reason| ActionError::DockerConnect { socket: socket.to_path_buf(), reason })?;
    let found = match tokio::time::timeout(timeout, find(&docker, containers)).await {
        Ok(found) => found?,
        Err(_) => {
            return Err(ActionError::DockerLookup(format!(
                "no answer to the container list within {}",
                humantime::format_duration(timeout)
            )))
        }
    };
    for Found { name, key } in found {
        let t = i32::try_from(grace.of(&key).as_secs()).unwrap_or(i32::MAX);
        let options = RestartContainerOptions { t: Some(t), signal: None };
        match tokio::time::timeout(timeout, docker.restart_container(&name, Some(options))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(ActionError::DockerRestart { container: name, reason: e.to_string() });
            }
            Err(_) => return Err(ActionError::DockerTimeout { container: name, timeout }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::config::maintenance::Action;
    use crate::maintenance::actions::fake_docker::FakeDocker;
    use crate::maintenance::actions::Target;

    fn action(fake: &FakeDocker, containers: &[&str], timeout: Duration) -> Action {
        Action::Docker {
            socket: fake.socket.clone(),
            containers: Containers::Named { containers: containers.iter().map(|c| c.to_string()).collect() },
            stop_timeout: Duration::from_secs(25),
            stop_timeouts: BTreeMap::new(),
            timeout,
        }
    }

    fn services(fake: &FakeDocker, services: &[&str], project: &str) -> Action {
        Action::Docker {
            socket: fake.socket.clone(),
            containers: Containers::Services {
                services: services.iter().map(|s| s.to_string()).collect(),
                project: Some(project.into()),
            },
            stop_timeout: Duration::from_secs(30),
            stop_timeouts: BTreeMap::from([("worker".to_string(), Duration::from_secs(240))]),
            timeout: Duration::from_secs(300),
        }
    }

    #[tokio::test]
    async fn services_are_found_by_compose_labels_with_their_own_stop_timeouts() {
        let fake =
            FakeDocker::start(&["dify-worker-1", "dify-api-2", "dify-api-1", "other-api-1", "dify-web-1"])
                .await;
        services(&fake, &["api", "worker"], "dify").run(&Target::default()).await.expect("restarted");
        let restarts: Vec<String> = fake.requests().into_iter().filter(|r| r.contains("/restart")).collect();
        assert_eq!(
            restarts,
            vec![
                "POST /containers/dify-api-1/restart?t=30",
                "POST /containers/dify-api-2/restart?t=30",
                "POST /containers/dify-worker-1/restart?t=240",
            ],
            "every replica of each service, services in order, none of another project"
        );
    }

    #[tokio::test]
    async fn an_engine_behind_a_tcp_socket_proxy_is_reached_by_url() {
        let fake = FakeDocker::start(&["dify-api-1"]).await;
        let Action::Docker { containers, .. } = services(&fake, &["api"], "dify") else { unreachable!() };
        for endpoint in [format!("tcp://{}", fake.tcp), format!("http://{}", fake.tcp)] {
            assert_eq!(
                preview(Path::new(&endpoint), &containers, Duration::from_secs(5)).await,
                Preview::Containers(vec!["dify-api-1".to_string()]),
                "{endpoint}"
            );
        }
        let unix = format!("unix://{}", fake.socket.display());
        assert!(matches!(
            preview(Path::new(&unix), &containers, Duration::from_secs(5)).await,
            Preview::Containers(_)
        ));
    }

    #[tokio::test]
    async fn a_service_without_containers_is_an_error_before_anything_restarts() {
        let fake = FakeDocker::start(&["dify-api-1"]).await;
        let err =
            services(&fake, &["api", "worker"], "dify").run(&Target::default()).await.expect_err("no worker");
        assert_eq!(
            err.to_string(),
            "docker: no container of compose service \"worker\" in project \"dify\" (labels com.docker.compose.project, com.docker.compose.service)"
        );
        assert!(!fake.requests().iter().any(|r| r.contains("/restart")), "{:?}", fake.requests());
        let Action::Docker { socket, containers, .. } = services(&fake, &["api"], "dify") else {
            unreachable!()
        };
        assert_eq!(
            preview(&socket, &containers, Duration::from_secs(5)).await,
            Preview::Containers(vec!["dify-api-1".to_string()])
        );
        let Action::Docker { socket, containers, .. } = services(&fake, &["worker"], "dify") else {
            unreachable!()
        };
        assert!(matches!(preview(&socket, &containers, Duration::from_secs(5)).await, Preview::NoMatch(_)));
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
            containers: Containers::Named { containers: vec!["x".into()] },
            stop_timeout: Duration::from_secs(10),
            stop_timeouts: BTreeMap::new(),
            timeout: Duration::from_secs(5),
        };
        let err = action.run(&Target::default()).await.expect_err("no socket");
        let text = err.to_string();
        assert!(text.starts_with(&format!("docker: cannot use {}: ", socket.display())), "{text}");
    }
}
