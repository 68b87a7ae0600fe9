//! Where a backend's memory use is read: a cgroup file, or the Docker stats API of its
//! container. This module owns one reading and its error; thresholds and how often to read
//! belong to the caller.

use std::path::PathBuf;
use std::time::Duration;

use bollard::query_parameters::StatsOptions;
use futures_util::StreamExt;
use thiserror::Error;

use super::actions::docker;
use crate::config::maintenance::{Containers, MemorySource};

/// Longest Docker stats reading: a one-shot answer is immediate on a healthy daemon.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why memory use could not be read.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum MemoryError {
    /// The cgroup file could not be read.
    #[error("memory: cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The cgroup file does not hold one integer.
    #[error("memory: {path} does not hold a byte count: {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The start of what it holds.
        content: String,
    },
    /// Docker could not be asked, or its answer has no memory usage.
    #[error("memory: docker stats of {container}: {reason}")]
    Docker {
        /// The container.
        container: String,
        /// Why.
        reason: String,
    },
}

impl MemorySource {
    /// Current bytes in use.
    pub async fn read(&self) -> Result<u64, MemoryError> {
        match self {
            MemorySource::Cgroup { path } => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| MemoryError::Read { path: path.clone(), reason: e.to_string() })?;
                text.trim().parse().map_err(|_| MemoryError::Parse {
                    path: path.clone(),
                    content: text.trim().chars().take(40).collect(),
                })
            }
            MemorySource::Docker { socket, container } => {
                within_timeout(container.clone(), docker_usage(socket, container)).await
            }
            MemorySource::DockerService { socket, service, project } => {
                within_timeout(
                    format!("service {service}"),
                    service_usage(socket, service, project.as_deref()),
                )
                .await
            }
        }
    }

    /// A short description for logs and `/status`.
    pub fn describe(&self) -> String {
        match self {
            MemorySource::Cgroup { path } => format!("cgroup {}", path.display()),
            MemorySource::Docker { container, .. } => format!("docker stats {container}"),
            MemorySource::DockerService { service, project: Some(project), .. } => {
                format!("docker stats of compose service {service} in project {project}")
            }
            MemorySource::DockerService { service, project: None, .. } => {
                format!("docker stats of compose service {service}")
            }
        }
    }
}

/// One Docker reading of `what`, bounded by [`DOCKER_TIMEOUT`].
async fn within_timeout(
    what: String,
    usage: impl std::future::Future<Output = Result<u64, String>>,
) -> Result<u64, MemoryError> {
    let fail = |reason: String| MemoryError::Docker { container: what.clone(), reason };
    match tokio::time::timeout(DOCKER_TIMEOUT, usage).await {
        Ok(result) => result.map_err(fail),
        Err(_) => Err(fail(format!("no answer within {}", humantime::format_duration(DOCKER_TIMEOUT)))),
    }
}

async fn connect(socket: &std::path::Path) -> Result<bollard::Docker, String> {
    docker::connect(socket, DOCKER_TIMEOUT).await.map_err(|e| format!("cannot use {}: {e}", socket.display()))
}

async fn docker_usage(socket: &std::path::Path, container: &str) -> Result<u64, String> {
    container_usage(&connect(socket).await?, container).await
}

/// The largest use among the service's containers: the one that leaks decides.
async fn service_usage(
    socket: &std::path::Path,
    service: &str,
    project: Option<&str>,
) -> Result<u64, String> {
    let client = connect(socket).await?;
    let selector =
        Containers::Services { services: vec![service.to_string()], project: project.map(str::to_string) };
    let found = docker::find(&client, &selector).await.map_err(|e| e.to_string())?;
    let mut largest = 0;
    for container in found {
        let usage = container_usage(&client, &container.name)
            .await
            .map_err(|e| format!("{}: {e}", container.name))?;
        largest = largest.max(usage);
    }
    Ok(largest)
}

async fn container_usage(client: &bollard::Docker, container: &str) -> Result<u64, String> {
    // one-shot skips the second sample Docker otherwise waits ~1s for (CPU deltas only).
    let options = StatsOptions { stream: false, one_shot: true };
    let stats = client
        .stats(container, Some(options))
        .next()
        .await
        .ok_or("empty answer")?
        .map_err(|e| e.to_string())?;
    let memory = stats.memory_stats.unwrap_or_default();
    let usage = memory.usage.ok_or("no memory usage reported (is the container running?)")?;
    // What `docker stats` subtracts: cgroup v1 `total_inactive_file`, v2 `inactive_file`;
    // old daemons only had `cache`. Never more than the usage itself.
    let cache = memory.stats.as_ref().and_then(|s| {
        ["total_inactive_file", "inactive_file", "cache"].iter().find_map(|key| s.get(*key).copied())
    });
    Ok(match cache {
        Some(cache) if cache < usage => usage - cache,
        _ => usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maintenance::actions::fake_docker::FakeDocker;

    #[tokio::test]
    async fn cgroup_file_is_read_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.current");
        std::fs::write(&path, "734003200\n").expect("write");
        let source = MemorySource::Cgroup { path: path.clone() };
        assert_eq!(source.read().await, Ok(734_003_200));
        assert_eq!(source.describe(), format!("cgroup {}", path.display()));
    }

    #[tokio::test]
    async fn missing_and_garbled_cgroup_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.current");
        let err = MemorySource::Cgroup { path: path.clone() }.read().await.expect_err("missing");
        let text = err.to_string();
        assert!(text.starts_with(&format!("memory: cannot read {}: ", path.display())), "{text}");
        assert!(text.contains("No such file"), "{text}");

        std::fs::write(&path, "max\n").expect("write");
        let err = MemorySource::Cgroup { path: path.clone() }.read().await.expect_err("garbled");
        assert_eq!(
            err.to_string(),
            format!("memory: {} does not hold a byte count: \"max\"", path.display())
        );
    }

    fn docker(fake: &FakeDocker, container: &str) -> MemorySource {
        MemorySource::Docker { socket: fake.socket.clone(), container: container.into() }
    }

    #[tokio::test]
    async fn docker_reports_usage_without_inactive_page_cache() {
        let fake = FakeDocker::start(&["docker-api-1", "cgv1"]).await;
        // cgroup v2: 500 MiB − 100 MiB inactive_file.
        assert_eq!(docker(&fake, "docker-api-1").read().await, Ok(400 * 1024 * 1024));
        // cgroup v1: 300 MiB − 50 MiB total_inactive_file.
        assert_eq!(docker(&fake, "cgv1").read().await, Ok(250 * 1024 * 1024));
        let stats: Vec<String> = fake.requests().into_iter().filter(|r| r.contains("/stats")).collect();
        assert_eq!(stats[0], "GET /containers/docker-api-1/stats?stream=false&one-shot=true");
        assert_eq!(docker(&fake, "docker-api-1").describe(), "docker stats docker-api-1");
    }

    #[tokio::test]
    async fn a_compose_service_reports_its_largest_replica() {
        let fake = FakeDocker::start(&["dify-api-1", "dify-api-2", "dify-worker-1"]).await;
        let service = |name: &str| MemorySource::DockerService {
            socket: fake.socket.clone(),
            service: name.into(),
            project: Some("dify".into()),
        };
        // Every replica reports 500 MiB − 100 MiB inactive page cache in the fake.
        assert_eq!(service("api").read().await, Ok(400 * 1024 * 1024));
        let stats: Vec<String> = fake.requests().into_iter().filter(|r| r.contains("/stats")).collect();
        assert_eq!(stats.len(), 2, "both replicas read: {stats:?}");
        assert_eq!(service("api").describe(), "docker stats of compose service api in project dify");
        let err = service("beat").read().await.expect_err("no container");
        assert!(
            err.to_string().starts_with(
                "memory: docker stats of service beat: docker: no container of compose service \"beat\""
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn docker_errors_name_the_container() {
        let fake = FakeDocker::start(&["stopped"]).await;
        let err = docker(&fake, "nope").read().await.expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "memory: docker stats of nope: Docker responded with status code 404: No such container: nope"
        );
        let err = docker(&fake, "stopped").read().await.expect_err("not running");
        assert_eq!(
            err.to_string(),
            "memory: docker stats of stopped: no memory usage reported (is the container running?)"
        );
    }
}
