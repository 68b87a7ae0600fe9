//! dify-shaper itself for the demo: this same executable run as a child `run --config FILE`
//! on ephemeral 127.0.0.1 ports, with the embedded defaults pointed at the backend — exactly
//! what a user would start. The child is killed when its handle drops, so every way out of
//! the demo (an error, Ctrl-C, a panic) takes it along.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use dify_shaper::config::load::EMBEDDED_DEFAULTS;
use dify_shaper::resilience::probe::{ask, Answer};

/// A cold start on a busy 2-core machine takes a few seconds; this is the bound.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the child's log is shown when it fails to start.
const LOG_TAIL_LINES: usize = 20;

/// The running child proxy.
#[derive(Debug)]
pub struct ProxyChild {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    log: PathBuf,
    /// Holds the config and the log; removed on drop, after the child is gone.
    _dir: tempfile::TempDir,
}

impl ProxyChild {
    /// Starts the proxy in front of `upstream` and returns once it accepts connections.
    pub async fn start(upstream: SocketAddr) -> Result<ProxyChild, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix("dify-shaper-demo.")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let (addr, admin) = (free_port()?, free_port()?);
        let config = dir.path().join("dify-shaper.toml");
        std::fs::write(&config, config_text(addr, admin, upstream))
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let log = dir.path().join("dify-shaper.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let child = Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(&config)
            // The config says `warn`; RUST_LOG would win over it, so pin it.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start dify-shaper: {e}"))?;
        let mut proxy = ProxyChild { child, addr, admin, log, _dir: dir };
        proxy.wait_live().await?;
        Ok(proxy)
    }

    async fn wait_live(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("dify-shaper exited at start ({status}):\n{}", self.log_tail()));
            }
            if live(self.admin).await && TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "dify-shaper did not come up within {}s:\n{}",
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines the child logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ProxyChild {
    fn drop(&mut self) {
        // SIGKILL: the demo's proxy holds nothing worth a graceful drain, and the wait that
        // follows must not block an exit for the length of a shutdown grace.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The embedded defaults (what `dify-shaper run` uses without a config), on the demo's ports,
/// with the upstream `api` at the backend and quiet logs.
fn config_text(addr: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# Written by `dify-shaper demo`: the embedded defaults, on demo ports.");
    let _ = writeln!(text, "[server]\nlisten = \"{addr}\"\nadmin = \"{admin}\"\n");
    let _ = writeln!(text, "[log]\nlevel = \"warn\"\naccess_log = false\n");
    let servers = format!("servers = [\"{upstream}\"]");
    text.push_str(&EMBEDDED_DEFAULTS.replace("servers = [\"127.0.0.1:5001\"]", &servers));
    text
}

/// A port the OS just handed out (free a moment ago; the child binds it right away).
fn free_port() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind a port: {e}"))?;
    listener.local_addr().map_err(|e| format!("cannot read a bound port: {e}"))
}

/// Whether the admin API answers `GET /live` with 200 (the health prober's one-shot request).
async fn live(admin: SocketAddr) -> bool {
    let host = admin.to_string();
    ask(admin, &host, "GET", "/live", Duration::from_secs(2)).await == Answer::Status(200)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dify_shaper::config::{parse_str, Overrides};

    #[test]
    fn the_demo_config_is_valid_and_points_at_the_backend() {
        let (addr, admin, upstream): (SocketAddr, SocketAddr, SocketAddr) = (
            "127.0.0.1:18080".parse().expect("addr"),
            "127.0.0.1:19090".parse().expect("addr"),
            "127.0.0.1:15001".parse().expect("addr"),
        );
        let text = config_text(addr, admin, upstream);
        assert!(text.contains("servers = [\"127.0.0.1:15001\"]"), "{text}");
        let config = parse_str(&text, "demo.toml", &Overrides::default()).expect("valid config");
        assert_eq!(config.server.listen, vec![addr]);
        assert_eq!(config.server.admin, admin);
    }
}
