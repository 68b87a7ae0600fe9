//! dify-shaper as a container in Dify's compose project: once it is up, it tells the nginx of
//! its project to reload (`[sidecar] reload_nginx`).
//!
//! Why: Dify's nginx proxies to `http://api:5001`, a host it resolves only when it loads its
//! config, and the compose overlay makes `api` mean dify-shaper for nginx. A dify-shaper
//! container recreated with a new address (a new image, `up --force-recreate`), or started
//! after nginx at boot, would leave nginx sending to an address nobody listens on. A reload
//! (`nginx -s reload`, run in the nginx container through the Engine API) makes nginx resolve
//! again; it is graceful, so requests in flight through nginx finish. A signal to the
//! container would not do: Dify runs nginx under `sh -c`, which a SIGHUP ends.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::Docker;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::app::App;
use crate::config::maintenance::Containers;
use crate::maintenance::actions::docker::{connect, find};

/// Longest wait for the engine, and for one reload.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The start-up task.
pub struct Sidecar {
    app: Arc<App>,
}

impl Sidecar {
    /// The task for `app`'s config.
    pub fn new(app: Arc<App>) -> Self {
        Sidecar { app }
    }
}

#[async_trait]
impl BackgroundService for Sidecar {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let settings = self.app.config().sidecar.clone();
        if settings.reload_nginx.is_empty() {
            return;
        }
        let services = Containers::Services { services: settings.reload_nginx.clone(), project: None };
        let docker = match connect(&settings.socket, TIMEOUT).await {
            Ok(docker) => docker,
            Err(e) => {
                tracing::warn!(socket = %settings.socket.display(), error = %e, "sidecar: cannot reach the Docker engine to reload nginx");
                return;
            }
        };
        let found = match tokio::time::timeout(TIMEOUT, find(&docker, &services)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "sidecar: no nginx to reload");
                return;
            }
            Err(_) => {
                tracing::warn!("sidecar: the Docker engine did not list the nginx containers in time");
                return;
            }
        };
        for container in found {
            match tokio::time::timeout(TIMEOUT, reload(&docker, &container.name)).await {
                Ok(Ok(())) => {
                    tracing::info!(container = %container.name, "sidecar: nginx reloaded (it resolves dify-shaper's address again)")
                }
                Ok(Err(e)) => {
                    tracing::warn!(container = %container.name, error = %e, "sidecar: nginx reload failed")
                }
                Err(_) => {
                    tracing::warn!(container = %container.name, "sidecar: nginx reload did not finish in time")
                }
            }
        }
    }
}

/// Runs `nginx -s reload` in `container`; its output on failure.
async fn reload(docker: &Docker, container: &str) -> Result<(), String> {
    let options = CreateExecOptions {
        cmd: Some(vec!["nginx", "-s", "reload"]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(container, options).await.map_err(|e| e.to_string())?;
    let mut output = String::new();
    if let StartExecResults::Attached { output: mut stream, .. } =
        docker.start_exec(&exec.id, None).await.map_err(|e| e.to_string())?
    {
        while let Some(Ok(chunk)) = stream.next().await {
            output.push_str(&chunk.to_string());
        }
    }
    let inspected = docker.inspect_exec(&exec.id).await.map_err(|e| e.to_string())?;
    match inspected.exit_code {
        Some(0) => Ok(()),
        code => Err(format!("exit code {code:?}: {}", output.trim())),
    }
}
