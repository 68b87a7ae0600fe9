//! A private `redis-server` on 127.0.0.1 (Debian's package; `e2e/setup.sh` installs it), for
//! the cluster tests: started on a free port without persistence, stopped (killed) on drop,
//! and stoppable and restartable on the same port mid-test.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::fixtures::poll_until;
use super::free_port;

/// A running (or stopped) redis-server.
pub struct RedisServer {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        let mut redis = RedisServer { child: None, addr: free_port() };
        redis.start_again().await;
        redis
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Starts it (again) on its port and waits until it answers PING.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server; e2e/setup.sh installs it)");
        self.child = Some(child);
        let url = self.url();
        poll_until(Duration::from_secs(10), Duration::from_millis(20), "redis-server answers", || {
            let url = url.clone();
            async move { ping(&url).await }
        })
        .await;
    }

    /// Kills it (as a crash would; its data is gone).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let Ok(Ok(mut c)) =
        tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
    else {
        return false;
    };
    matches!(redis::cmd("PING").query_async::<String>(&mut c).await, Ok(ref s) if s == "PONG")
}
