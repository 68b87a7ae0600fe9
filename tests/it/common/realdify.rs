//! The real Dify API server (Dify 1.12.1's own api/, unmodified, under gunicorn + gevent with
//! its own PostgreSQL and Redis) through the kit in `../shared/dify/realdify`, for the
//! end-to-end tests. Every command is bounded in time; the server is stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Dify's bundled PostgreSQL password (the kit's fixed test credential).
const PG_PASSWORD: &str = "difyai123456";

/// A running real Dify API server; stopped when dropped.
pub struct RealDify {
    script: PathBuf,
    home: PathBuf,
    /// Where the API listens.
    pub api: SocketAddr,
    pg_port: u16,
    /// The kit's settings it was started with: a restart must boot the same Dify (the kit's
    /// defaults are one worker).
    env: Vec<(String, String)>,
}

fn env_port(name: &str, default: u16) -> u16 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl RealDify {
    /// The kit beside the project, or `None` (after printing one line saying the test is
    /// skipped) when `../shared/dify` is absent: a clone of the project alone has no Dify.
    pub fn kit() -> Option<PathBuf> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/dify/realdify");
        if script.exists() {
            Some(script)
        } else {
            eprintln!("skipped: {} is absent (no real Dify on this machine)", script.display());
            None
        }
    }

    /// Installs (when needed: the first time takes minutes) and starts the real Dify API.
    pub async fn start(script: PathBuf) -> RealDify {
        Self::start_with(script, &[]).await
    }

    /// Like [`Self::start`], with the kit's settings in `env` (`DIFY_WORKERS`,
    /// `DIFY_PG_MAX_CONNECTIONS`, …) for the start.
    pub async fn start_with(script: PathBuf, env: &[(&str, &str)]) -> RealDify {
        let home = std::env::var_os("DIFY_HOME")
            .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/realdify"), PathBuf::from);
        let dify = RealDify {
            script,
            home,
            api: SocketAddr::from(([127, 0, 0, 1], env_port("DIFY_API_PORT", 18105))),
            pg_port: env_port("DIFY_PG_PORT", 18110),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        if !dify.home.join("venv/bin/gunicorn").exists() || !dify.home.join("dify.env").exists() {
            eprintln!("real Dify: installing into {} (a few minutes the first time)", dify.home.display());
            dify.run(&["install"], Duration::from_secs(1200)).await;
        }
        dify.run_with(&["start"], env, Duration::from_secs(180)).await;
        dify
    }

    /// Runs `realdify ARGS`, bounded by `limit`; panics with its output when it fails.
    pub async fn run(&self, args: &[&str], limit: Duration) -> String {
        self.run_with(args, &[], limit).await
    }

    /// Runs `realdify ARGS` with `env` added, bounded by `limit`.
    pub async fn run_with(&self, args: &[&str], env: &[(&str, &str)], limit: Duration) -> String {
        let mut cmd = tokio::process::Command::new(&self.script);
        cmd.args(args).env("DIFY_HOME", &self.home).envs(env.iter().copied()).kill_on_drop(true);
        let output = tokio::time::timeout(limit, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("realdify {args:?} did not finish within {limit:?}"))
            .unwrap_or_else(|e| panic!("cannot run realdify: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "realdify {args:?} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// The API key of the published echo app (`Start(text) → End(result = text)`).
    pub async fn key(&self) -> String {
        last_line(&self.run(&["key"], Duration::from_secs(120)).await)
    }

    /// The API key of an app whose run GETs `url` through Dify's HTTP Request node and
    /// returns the body as `result`.
    pub async fn key_http(&self, url: &str) -> String {
        last_line(&self.run(&["key-http", url], Duration::from_secs(120)).await)
    }

    /// `realdify restart-api`: SIGTERM to gunicorn, wait for it to exit, a real boot, with
    /// the settings it was started with.
    pub async fn restart_api(&self) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.run_with(&["restart-api"], &env, Duration::from_secs(240)).await;
    }

    /// One value from Dify's own database.
    pub async fn query(&self, sql: &str) -> String {
        let psql = psql();
        let mut cmd = tokio::process::Command::new(&psql);
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.pg_port.to_string(),
            "-U",
            "postgres",
            "-d",
            "dify",
            "-tAc",
            sql,
        ])
        .env("PGPASSWORD", PG_PASSWORD)
        .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("psql within 30 s")
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", psql.display()));
        assert!(output.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Workflow runs Dify recorded for the end user `user` (the `user` field of the run request).
    pub async fn runs_of(&self, user: &str) -> u64 {
        let user = user.replace('\'', "''");
        let count = self
            .query(&format!(
                "SELECT count(*) FROM workflow_runs WHERE created_by_role = 'end_user' AND created_by IN \
                 (SELECT id FROM end_users WHERE session_id = '{user}')"
            ))
            .await;
        count.parse().unwrap_or_else(|_| panic!("count of runs: {count:?}"))
    }
}

impl Drop for RealDify {
    fn drop(&mut self) {
        // Synchronous on purpose: the runtime may be shutting down; the kit stops by pid file.
        let _ = std::process::Command::new("timeout")
            .arg("120")
            .arg(&self.script)
            .arg("stop")
            .env("DIFY_HOME", &self.home)
            .output();
    }
}

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or_default().trim().to_string()
}

/// `psql` on PATH, or the newest PostgreSQL's.
fn psql() -> PathBuf {
    if let Ok(found) = which("psql") {
        return found;
    }
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.flatten().map(|e| e.path().join("bin/psql")).filter(|p| p.exists()).collect())
        .unwrap_or_default();
    bins.sort();
    bins.pop().unwrap_or_else(|| PathBuf::from("psql"))
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()).ok_or(())
}
