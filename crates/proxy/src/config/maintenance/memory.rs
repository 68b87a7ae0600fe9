//! `memory` of a `[[maintenance]]` entry: where the backend's memory use is read, as
//! validated. Reading it is the maintenance memory module's job (`MemorySource::read` there).

use std::path::PathBuf;

use serde::Serialize;

/// Where the backend's memory use is read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MemorySource {
    /// A cgroup file holding one integer of bytes: v2 `memory.current` or v1
    /// `memory.usage_in_bytes`.
    Cgroup {
        /// The file.
        path: PathBuf,
    },
    /// The Docker stats API (one shot) of a container, reported as `docker stats` does:
    /// usage minus inactive page cache.
    Docker {
        /// Unix socket of the Docker daemon.
        socket: PathBuf,
        /// Container name or id.
        container: String,
    },
    /// The same, for the containers of a compose service found by their labels (as the
    /// `docker` action finds them): the largest use of its replicas.
    DockerService {
        /// Unix socket of the Docker daemon.
        socket: PathBuf,
        /// The compose service, e.g. `api`.
        service: String,
        /// Its compose project; `None`: the one dify-shaper's own container belongs to.
        project: Option<String>,
    },
}
