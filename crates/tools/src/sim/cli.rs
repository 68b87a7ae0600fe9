//! `dify-shaper sim …`: command-line flags for the simulator ([`SimArgs`]) and the
//! foreground runner (until ctrl-c or SIGTERM; SIGHUP restarts it like a container restart).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::config::SimConfig;
use super::server::Simulator;
use super::service_time::ServiceTime;

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Flags of `dify-shaper sim`. Defaults match [`SimConfig::default`] and Dify's API port.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on (Dify's API listens on 5001).
    #[arg(long, default_value = "127.0.0.1:5001")]
    pub listen: SocketAddr,
    /// gunicorn workers (`SERVER_WORKER_AMOUNT`).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// gevent connections per worker; capacity is workers × worker-connections.
    #[arg(long, default_value_t = 10)]
    pub worker_connections: usize,
    /// Listen backlog for connections beyond capacity.
    #[arg(long, default_value_t = 1024)]
    pub backlog: u32,
    /// Run service time: `50ms`, `uniform:10s..20s`, `exp:15s`, `lognormal:15s,0.3`.
    #[arg(long, default_value = "50ms")]
    pub service_time: ServiceTime,
    /// PostgreSQL connection limit (excess requests get 500 "too many clients").
    #[arg(long)]
    pub db_connections: Option<usize>,
    /// `APP_MAX_ACTIVE_REQUESTS` per app key (excess runs get 429).
    #[arg(long)]
    pub app_max_active_requests: Option<usize>,
    /// Time a restart (SIGHUP) keeps the port closed, e.g. `30s`.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub boot_delay: Duration,
    /// Idle keep-alive connections are closed after this (gunicorn `keepalive`).
    #[arg(long, value_parser = duration, default_value = "2s")]
    pub keepalive_timeout: Duration,
    /// Node / answer-chunk events per streaming run.
    #[arg(long, default_value_t = 5)]
    pub stream_events: usize,
    /// Interval of `event: ping` in streams (`0s` disables).
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub ping_interval: Duration,
    /// Extra service time per other active run (CPU contention), e.g. `100ms`.
    #[arg(long, value_parser = duration)]
    pub slowdown_per_active: Option<Duration>,
    /// On SIGTERM, how long in-flight requests may finish before the process exits
    /// (gunicorn's `graceful_timeout`; `docker stop` sends SIGTERM).
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub graceful_timeout: Duration,
    /// Append a JSON line per run started and per upload stored, with its `X-Request-Id`,
    /// to this file (created if missing; kept across restarts and shared by successive
    /// simulators): what the backend really executed, e.g. to prove nothing ran twice.
    #[arg(long)]
    pub run_log: Option<std::path::PathBuf>,
}

impl SimArgs {
    /// The simulator configuration these flags describe.
    pub fn to_config(&self) -> SimConfig {
        SimConfig {
            workers: self.workers,
            worker_connections: self.worker_connections,
            backlog: self.backlog,
            service_time: self.service_time,
            db_connections: self.db_connections,
            app_max_active_requests: self.app_max_active_requests,
            boot_delay: self.boot_delay,
            keepalive_timeout: self.keepalive_timeout,
            stream_events: self.stream_events,
            ping_interval: self.ping_interval,
            slowdown_per_active: self.slowdown_per_active,
        }
    }

    /// Starts the simulator, logs its address, and runs until ctrl-c or SIGTERM. On SIGTERM it
    /// stops as gunicorn does: no new connections, in-flight requests finish for up to
    /// `--graceful-timeout`. On unix, SIGHUP restarts it with `--boot-delay` (port closed
    /// meanwhile), like `docker restart api`.
    pub async fn run(self) -> Result<(), io::Error> {
        let config = self.to_config();
        let run_log = match &self.run_log {
            Some(path) => {
                Some(std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open the run log {}: {e}", path.display()))
                })?)
            }
            None => None,
        };
        let sim = Simulator::start_with_run_log(self.listen, config.clone(), run_log).await?;
        tracing::info!(
            addr = %sim.addr(),
            capacity = config.capacity(),
            service_time = %config.service_time,
            "dify simulator listening"
        );
        if wait_for_shutdown(&sim).await? == Shutdown::Graceful {
            let shown = humantime::format_duration(self.graceful_timeout);
            tracing::info!(graceful_timeout = %shown, "SIGTERM: finishing in-flight requests");
            sim.drain(self.graceful_timeout).await;
        }
        tracing::info!("dify simulator shutting down");
        sim.stop().await;
        Ok(())
    }
}

/// How the simulator was asked to stop.
#[derive(Debug, PartialEq, Eq)]
enum Shutdown {
    /// ctrl-c: stop at once.
    Now,
    /// SIGTERM: let in-flight requests finish first.
    Graceful,
}

#[cfg(unix)]
async fn wait_for_shutdown(sim: &Simulator) -> io::Result<Shutdown> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.map(|()| Shutdown::Now),
            _ = term.recv() => return Ok(Shutdown::Graceful),
            _ = hup.recv() => {
                let delay = sim.config().boot_delay;
                let shown = humantime::format_duration(delay);
                tracing::info!(boot_delay = %shown, "SIGHUP: restarting simulator");
                sim.restart(delay).await;
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_shutdown(_sim: &Simulator) -> io::Result<Shutdown> {
    tokio::signal::ctrl_c().await.map(|()| Shutdown::Now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn defaults_equal_sim_config_default() {
        let cli = Cli::try_parse_from(["sim"]).map(|c| c.sim.to_config());
        let want = SimConfig::default();
        assert_eq!(cli.ok(), Some(want));
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "sim",
            "--listen",
            "0.0.0.0:6000",
            "--workers",
            "2",
            "--service-time",
            "lognormal:15s,0.3",
            "--db-connections",
            "4",
            "--boot-delay",
            "30s",
            "--slowdown-per-active",
            "100ms",
            "--run-log",
            "/tmp/runs.jsonl",
        ]);
        let Ok(cli) = cli else {
            panic!("flags should parse");
        };
        let c = cli.sim.to_config();
        assert_eq!(cli.sim.listen.port(), 6000);
        assert_eq!(c.capacity(), 20);
        assert_eq!(c.db_connections, Some(4));
        assert_eq!(c.boot_delay, Duration::from_secs(30));
        assert_eq!(c.slowdown_per_active, Some(Duration::from_millis(100)));
        assert!(matches!(c.service_time, ServiceTime::LogNormal { .. }));
        assert_eq!(cli.sim.run_log.as_deref(), Some(std::path::Path::new("/tmp/runs.jsonl")));
        assert!(Cli::try_parse_from(["sim", "--service-time", "soon"]).is_err());
    }
}
