//! A private `redis-server` on 127.0.0.1 (Debian's package; `e2e/setup.sh` installs it), for
//! the cluster tests: started on a free port without persistence, stopped (killed) on drop,
//! and stoppable and restartable on the same port mid-test; or with TLS only, its certificate
//! signed by a CA made for the test (with `openssl`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::fixtures::poll_until;
use super::free_port;

/// A running (or stopped) redis-server.
pub struct RedisServer {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// TLS only: the directory of its certificates (`ca.crt` signed `server.crt`).
    tls: Option<PathBuf>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        let mut redis = RedisServer { child: None, addr: free_port(), tls: None };
        redis.start_again().await;
        redis
    }

    /// Starts one that speaks TLS only, with a CA and a certificate for 127.0.0.1 made in
    /// `dir` (`ca.crt`, `server.crt`), and waits until its port accepts connections.
    pub async fn start_tls(dir: &Path) -> RedisServer {
        let sh = |script: &str| {
            let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("sh");
            assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=dify-shaper-test-ca \
            -keyout ca.key -out ca.crt");
        sh("openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr");
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
        sh("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
            -extfile san.ext -out server.crt");
        let mut redis = RedisServer { child: None, addr: free_port(), tls: Some(dir.to_path_buf()) };
        redis.start_again().await;
        redis
    }

    /// `redis://127.0.0.1:PORT/0`, or `rediss://…` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://{}/0", self.addr)
    }

    /// Starts it (again) on its port and waits until it answers PING.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.addr.port().to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(dir) => {
                let file = |name: &str| dir.join(name).display().to_string();
                command.args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"]).args([
                    "--tls-cert-file",
                    &file("server.crt"),
                    "--tls-key-file",
                    &file("server.key"),
                    "--tls-ca-cert-file",
                    &file("ca.crt"),
                ])
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server; e2e/setup.sh installs it)");
        self.child = Some(child);
        let (url, addr, tls) = (self.url(), self.addr, self.tls.is_some());
        poll_until(Duration::from_secs(10), Duration::from_millis(20), "redis-server answers", || {
            let url = url.clone();
            // The tests' own client has no TLS: a TLS server is up once its port accepts.
            async move {
                if tls {
                    tokio::net::TcpStream::connect(addr).await.is_ok()
                } else {
                    ping(&url).await
                }
            }
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
