//! [`Simulator`]: a running simulated Dify API container and its lifecycle: start, stop
//! (a killed container: port closed, every connection dropped at once), restart with a
//! boot delay, live config changes, stats.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::SimConfig;
use super::listener;
use super::shared::Shared;
use super::stats::SimStats;

/// How long `stop()` waits for killed tasks to release their connection slots.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Pause between attempts to rebind the port after a restart.
const REBIND_RETRY: Duration = Duration::from_millis(100);

/// A running simulator. Cloning is cheap (shared handle); when the last clone is dropped the
/// simulator stops (listener closed, all connections and runs killed, no task left behind).
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Parent of every generation's kill token; cancelled on drop.
    root: CancellationToken,
    /// Serializes stop/restart.
    ops: tokio::sync::Mutex<()>,
    life: Mutex<Life>,
    serving: watch::Sender<bool>,
}

/// The current listener generation and/or a pending boot. Each has its own kill token.
#[derive(Default)]
struct Life {
    current: Option<Generation>,
    booting: Option<Generation>,
}

struct Generation {
    kill: CancellationToken,
    /// Stops accepting only (a child of `kill`).
    accept: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

impl Inner {
    fn life(&self) -> MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Simulator {
    /// Binds `addr` now (`127.0.0.1:0` picks a free port, see [`addr`](Self::addr)) and serves
    /// at once; `config.boot_delay` only applies to restarts.
    pub async fn start(addr: SocketAddr, config: SimConfig) -> io::Result<Simulator> {
        Self::start_with_run_log(addr, config, None).await
    }

    /// [`start`](Self::start), recording every run started and every upload stored in
    /// `run_log` (a file opened for appending) from the first connection on: see `--run-log`.
    pub async fn start_with_run_log(
        addr: SocketAddr,
        config: SimConfig,
        run_log: Option<std::fs::File>,
    ) -> io::Result<Simulator> {
        let listener = listener::bind(addr, config.backlog)?;
        let addr = listener.local_addr()?;
        let shared = Shared::new(config);
        if let Some(file) = run_log {
            shared.run_log.set(file);
        }
        let root = CancellationToken::new();
        let kill = root.child_token();
        let accept = kill.child_token();
        let task =
            tokio::spawn(listener::accept_loop(shared.clone(), listener, accept.clone(), kill.clone()));
        let inner = Arc::new(Inner {
            shared,
            addr,
            root,
            ops: tokio::sync::Mutex::new(()),
            life: Mutex::new(Life { current: Some(Generation { kill, accept, task }), booting: None }),
            serving: watch::Sender::new(true),
        });
        tracing::debug!(%addr, "sim started");
        Ok(Simulator { inner })
    }

    /// The bound address (the same across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://ADDR` followed by `path` (e.g. `sim.url("/health")`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.inner.addr, path)
    }

    /// Whether the port is bound and accepting (false while stopped or booting).
    pub fn is_serving(&self) -> bool {
        *self.inner.serving.borrow()
    }

    /// Returns once the port is bound and accepting again (at once when already serving).
    /// Never returns while the simulator stays stopped.
    pub async fn wait_serving(&self) {
        let mut rx = self.inner.serving.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Kills the "container": closes the listener (connecting is refused, connections
    /// waiting in the backlog are reset) and drops every open connection at once (in-flight
    /// requests see EOF/reset, streams are cut, runs count as `killed`). Returns when the
    /// port is closed and every connection slot is released. Idempotent.
    pub async fn stop(&self) {
        let _op = self.inner.ops.lock().await;
        self.stop_locked().await;
    }

    async fn stop_locked(&self) {
        let gens: Vec<Generation> = {
            let mut life = self.inner.life();
            let gens: Vec<Generation> =
                [life.current.take(), life.booting.take()].into_iter().flatten().collect();
            for g in &gens {
                g.kill.cancel();
            }
            self.inner.serving.send_replace(false);
            gens
        };
        for g in gens {
            let _ = g.task.await;
        }
        let mut open = self.inner.shared.watch_open();
        let released = tokio::time::timeout(STOP_GRACE, open.wait_for(|&n| n == 0)).await;
        if released.is_err() {
            tracing::warn!(
                open = self.inner.shared.open_connections(),
                "sim stop: connection slots still held after grace period"
            );
        }
        tracing::debug!(addr = %self.inner.addr, "sim stopped");
    }

    /// Stops (as [`stop`](Self::stop)), then rebinds the same port after `boot_delay` and
    /// serves again. Returns once stopped, without waiting for the boot: use
    /// [`wait_serving`](Self::wait_serving). Until the boot completes, connecting is refused.
    pub async fn restart(&self, boot_delay: Duration) {
        let _op = self.inner.ops.lock().await;
        self.stop_locked().await;
        let kill = self.inner.root.child_token();
        let task = tokio::spawn(boot(
            Arc::downgrade(&self.inner),
            self.inner.shared.clone(),
            self.inner.addr,
            boot_delay,
            kill.clone(),
        ));
        let accept = kill.child_token();
        self.inner.life().booting = Some(Generation { kill, accept, task });
    }

    /// Restarts the way `docker restart` restarts gunicorn (SIGTERM, graceful): stops
    /// accepting at once (new connections are refused), lets in-flight requests finish, their
    /// answers written, for up to `grace`, kills what is left, and serves again after
    /// `boot_delay`. Returns once the old generation is gone (not waiting for the boot).
    pub async fn restart_graceful(&self, grace: Duration, boot_delay: Duration) {
        self.drain(grace).await;
        self.restart(boot_delay).await;
    }

    /// Stops accepting at once (new connections are refused) and waits, up to `grace`, until
    /// in-flight requests are done and their answers written: gunicorn's graceful stop on
    /// SIGTERM. What is left is cut by the [`stop`](Self::stop) or restart that follows.
    pub async fn drain(&self, grace: Duration) {
        {
            let _op = self.inner.ops.lock().await;
            if let Some(current) = &self.inner.life().current {
                current.accept.cancel();
            }
            self.inner.serving.send_replace(false);
        }
        let deadline = tokio::time::Instant::now() + grace;
        // A run leaves `active` when its answer is handed to the connection, a moment before
        // the answer is written: wait for the writes too, or the restart cuts them.
        let busy = || self.stats().active > 0 || self.inner.shared.requests_in_flight() > 0;
        while busy() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A copy of the current configuration.
    pub fn config(&self) -> SimConfig {
        self.inner.shared.config()
    }

    /// Changes the configuration of the running simulator. Capacity changes apply to the
    /// next `accept()` at once (e.g. `workers` 1 → 4 admits waiting connections); limits,
    /// timings and service time apply to new requests; `backlog` applies at the next
    /// (re)bind.
    pub fn set_config(&self, f: impl FnOnce(&mut SimConfig)) {
        self.inner.shared.update_config(f);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        let mut s = self.inner.shared.stats.snapshot();
        s.open_connections = self.inner.shared.open_connections() as u64;
        s
    }

    /// Clears the counters (gauges such as `active` stay).
    pub fn reset_stats(&self) {
        self.inner.shared.stats.reset();
    }

    /// How many requests with `X-Request-Id: id` reached the backend (any path, any
    /// outcome). Counts up to [`MAX_TRACKED_REQUEST_IDS`](super::MAX_TRACKED_REQUEST_IDS)
    /// distinct ids.
    pub fn count_for_request_id(&self, id: &str) -> u64 {
        self.inner.shared.stats.count_for_request_id(id)
    }
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.inner.addr)
            .field("serving", &self.is_serving())
            .finish()
    }
}

/// The boot of a restarted container: wait, rebind (retrying while the port is busy), then
/// install the new generation — unless stopped meanwhile.
async fn boot(
    inner: Weak<Inner>,
    shared: Arc<Shared>,
    addr: SocketAddr,
    delay: Duration,
    kill: CancellationToken,
) {
    tokio::select! {
        () = kill.cancelled() => return,
        () = tokio::time::sleep(delay) => {}
    }
    let listener = loop {
        match listener::bind(addr, shared.config().backlog) {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "sim restart: bind failed, retrying");
                tokio::select! {
                    () = kill.cancelled() => return,
                    () = tokio::time::sleep(REBIND_RETRY) => {}
                }
            }
        }
    };
    let Some(inner) = inner.upgrade() else { return };
    {
        let mut life = inner.life();
        if kill.is_cancelled() {
            return;
        }
        let accept = kill.child_token();
        let task = tokio::spawn(listener::accept_loop(shared, listener, accept.clone(), kill.clone()));
        life.current = Some(Generation { kill, accept, task });
        life.booting = None;
        inner.serving.send_replace(true);
    }
    tracing::debug!(%addr, "sim serving again after restart");
}
