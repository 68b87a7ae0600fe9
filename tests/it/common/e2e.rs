//! Real-backend fixtures for `tests/it/gunicorn_e2e.rs`: a throwaway PostgreSQL cluster and gunicorn
//! (gevent workers) serving `e2e/app.py`, both as child processes on 127.0.0.1 / a private
//! unix socket, stopped and deleted on drop. What they need is installed by `e2e/setup.sh`
//! (`make test` runs it); without it every fixture fails with a message saying so.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::free_port;

/// Where the suite's tools are: PostgreSQL's binaries, the venv and who runs PostgreSQL.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Directory holding `initdb`, `postgres` and `pg_isready`.
    pub pg_bin: PathBuf,
    /// The Python venv with gunicorn, gevent and psycopg.
    pub venv: PathBuf,
    /// uid and gid PostgreSQL runs as when the tests run as root (it refuses root).
    pub run_as: Option<(u32, u32)>,
}

const HOW_TO: &str = "the end-to-end suite needs PostgreSQL's server binaries and a Python venv with \
                      gunicorn, gevent and psycopg: run `bash e2e/setup.sh` (`make test` runs it \
                      before `cargo test`; it needs apt and PyPI the first time)";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Finds the tools `e2e/setup.sh` installs, or panics saying what is missing and how to get
/// it. A missing tool is a failure, never a skip: the suite is part of `make test`.
pub fn tools() -> Tools {
    let venv = std::env::var_os("DIFY_SHAPER_E2E_VENV")
        .map(PathBuf::from)
        .map_or_else(|| repo().join("target/e2e-venv"), |v| if v.is_absolute() { v } else { repo().join(v) });
    let stamp = venv.join(".e2e-ready");
    assert!(
        stamp.is_file() && venv.join("bin/gunicorn").is_file(),
        "{HOW_TO}. Missing: a finished venv at {} (no {})",
        venv.display(),
        stamp.display()
    );
    let pg_bin = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        // The newest major version, as setup.sh picks.
        .max_by_key(|bin| {
            bin.parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        });
    let pg_bin = pg_bin.unwrap_or_else(|| panic!("{HOW_TO}. Missing: /usr/lib/postgresql/*/bin/initdb"));
    // The effective uid is the owner of /proc/self.
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    let run_as = root.then(|| {
        passwd_entry("postgres").unwrap_or_else(|| panic!("{HOW_TO}. Missing: the user `postgres`"))
    });
    Tools { pg_bin, venv, run_as }
}

/// uid and gid of `user` from /etc/passwd.
fn passwd_entry(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&user) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// Signals `child` with `signal`, waits up to `grace` for it to exit, then kills it.
fn stop_child(child: &mut Child, signal: Signal, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), signal);
    // Drop cannot await: a bounded blocking poll, only on the way out.
    let deadline = std::time::SystemTime::now() + grace;
    while std::time::SystemTime::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A throwaway PostgreSQL cluster: `initdb` in a temp dir, `postgres` on a unix socket in
/// that dir (no TCP), run as the unprivileged `postgres` user when the tests run as root.
pub struct Postgres {
    child: Child,
    dir: tempfile::TempDir,
    /// The port (names the socket file; nothing listens on TCP).
    pub port: u16,
    /// `max_connections` it was started with (superuser_reserved_connections = 0, so that
    /// many runs at once and no more).
    pub max_connections: u32,
}

impl Postgres {
    /// Creates a cluster and starts it with `max_connections` (every connection counts: the
    /// app connects as a superuser and no slot is reserved), waiting until `pg_isready`.
    pub async fn start(max_connections: u32) -> Postgres {
        let tools = tools();
        let dir = tempfile::Builder::new().prefix("dify-shaper-e2e-pg").tempdir().expect("temp dir");
        if let Some((uid, gid)) = tools.run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the pg temp dir");
        }
        let data = dir.path().join("data");
        let initdb = pg_command(&tools, "initdb", dir.path())
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(initdb.status.success(), "initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
        let port = free_port().port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log file");
        if let Some((uid, gid)) = tools.run_as {
            std::os::unix::fs::chown(dir.path().join("postgres.log"), Some(uid), Some(gid)).expect("chown");
        }
        let child = pg_command(&tools, "postgres", dir.path())
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!("max_connections={max_connections}"))
            .args(["-c", "superuser_reserved_connections=0"])
            // A test database: durability costs only time here.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "shared_buffers=16MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        let mut pg = Postgres { child, dir, port, max_connections };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = pg.child.try_wait() {
                panic!("postgres exited ({status}):\n{}", pg.logs());
            }
            let ready = tokio::process::Command::new(tools.pg_bin.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(pg.dir.path())
                .arg("-p")
                .arg(port.to_string())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if ready {
                return pg;
            }
            assert!(Instant::now() < deadline, "postgres not ready within 30 s:\n{}", pg.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// libpq connection string for the app.
    pub fn dsn(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres", self.dir.path().display(), self.port)
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

/// `program` from PostgreSQL's bin dir, as the unprivileged user when running as root.
fn pg_command(tools: &Tools, program: &str, cwd: &Path) -> Command {
    let mut cmd = Command::new(tools.pg_bin.join(program));
    if let Some((uid, gid)) = tools.run_as {
        // std drops root's supplementary groups when it switches uid.
        cmd.uid(uid).gid(gid);
    }
    // The repo may not be readable by `postgres`; PostgreSQL wants a usable cwd.
    cmd.current_dir(cwd).env_remove("PGDATA");
    cmd
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown (pg_ctl stop -m fast): backends are ended.
        stop_child(&mut self.child, Signal::SIGINT, Duration::from_secs(10));
    }
}

/// gunicorn with gevent workers serving `e2e/app.py`, on 127.0.0.1 at an ephemeral port, in
/// its own process group (master and workers are killed together on drop).
pub struct Gunicorn {
    child: Option<Child>,
    /// Its address (kept across restarts).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    workers: usize,
    worker_connections: usize,
    dsn: String,
}

impl Gunicorn {
    /// Starts `workers` gevent workers of `worker_connections` each against `pg` and waits
    /// until `/health` answers.
    pub async fn start(workers: usize, worker_connections: usize, pg: &Postgres) -> Gunicorn {
        let dir = tempfile::Builder::new().prefix("dify-shaper-e2e-gunicorn").tempdir().expect("temp dir");
        let mut gunicorn =
            Gunicorn { child: None, addr: free_port(), dir, workers, worker_connections, dsn: pg.dsn() };
        gunicorn.start_again().await;
        gunicorn
    }

    /// Starts it again (after [`Gunicorn::stop`] or [`Gunicorn::kill`]) on the same address
    /// and waits until `/health` answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "gunicorn is already running");
        let tools = tools();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gunicorn.log"))
            .expect("log file");
        let child = Command::new(tools.venv.join("bin/gunicorn"))
            .args(["-k", "gevent", "-w", &self.workers.to_string()])
            .args(["--worker-connections", &self.worker_connections.to_string()])
            .args(["-b", &self.addr.to_string()])
            .arg("--pid")
            .arg(self.pid_file())
            .arg("--chdir")
            .arg(repo().join("e2e"))
            .args(["--log-level", "warning", "--graceful-timeout", "30", "app:app"])
            .env("E2E_PG_DSN", &self.dsn)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gunicorn");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("gunicorn exited ({status}):\n{}", self.logs());
            }
            if self.health_pid().await.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gunicorn did not answer /health within 30 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pid of the worker answering `/health`, if it answers 200 within 2 s.
    pub async fn health_pid(&self) -> Option<u64> {
        match tokio::time::timeout(Duration::from_secs(2), super::try_get(self.addr, "/health")).await {
            Ok(Ok((http::StatusCode::OK, _, body))) => {
                serde_json::from_slice::<serde_json::Value>(&body).ok()?["pid"].as_u64()
            }
            _ => None,
        }
    }

    /// The master's pid file (for a maintenance action's `kill -HUP $(cat …)`).
    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("gunicorn.pid")
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, as `docker stop`/`restart` sends: gunicorn closes its listener, lets the
    /// workers finish what they hold, and exits. Waits (bounded) until it has.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            assert!(Instant::now() < deadline, "gunicorn did not stop within 40 s:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Workers orphaned by an early master exit would hold the port.
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    }

    /// SIGKILL to master and workers at once (a crash: in-flight requests are lost).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// An uncoordinated restart: [`Gunicorn::stop`], `boot` with the port closed (a container
    /// restarting, Dify importing its modules), then [`Gunicorn::start_again`].
    pub async fn restart(&mut self, boot: Duration) {
        self.stop().await;
        tokio::time::sleep(boot).await;
        self.start_again().await;
    }

    /// SIGHUP: gunicorn's graceful reload (new workers, old ones finish and exit; the
    /// listener stays open). Returns without waiting.
    pub fn reload(&self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGHUP);
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gunicorn.log")).unwrap_or_default()
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: gunicorn's quick shutdown; the master ends and reaps its workers (a
            // worker outliving its master is reparented to an init that may never reap it).
            stop_child(&mut child, Signal::SIGQUIT, Duration::from_secs(10));
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        }
    }
}
