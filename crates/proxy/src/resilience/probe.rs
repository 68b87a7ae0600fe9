//! Active health probes, one endpoint at a time (the background [`super::prober`] sends
//! them): every upstream endpoint gets `GET <path>` every `interval`; an
//! answer below 500 within `timeout` counts as up (a 404 from Dify's web UI still proves the
//! process serves), a refused connection or a 5xx as down, and an accepted connection with no
//! answer in time as "busy" — no change, since a saturated gunicorn parks it in its backlog. Results feed [`super::health::GroupHealth`] and, through it, admission:
//! while a group cannot serve, its requests are held; when it is back, admission ramps up.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// Answered below 500.
    Up,
    /// Refused or failed the connection, closed it, or answered 5xx.
    Down,
    /// Accepted the connection but did not answer in time. Under load gunicorn leaves new
    /// connections in its listen backlog, so this proves nothing either way: no change.
    Busy,
}

/// Probes `addr` once with `GET path`.
pub async fn probe(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> ProbeResult {
    match ask(addr, host, "GET", path, timeout).await {
        Answer::Status(status) if status < 500 => ProbeResult::Up,
        Answer::Status(_) | Answer::Refused => ProbeResult::Down,
        Answer::NoAnswer => ProbeResult::Busy,
    }
}

/// What one request to an endpoint got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A status line.
    Status(u16),
    /// The connection was refused, reset or closed without a status line.
    Refused,
    /// Connected, but no status line within the timeout.
    NoAnswer,
}

/// Sends `METHOD path` (no body) to `addr` and reads the status line.
pub async fn ask(addr: SocketAddr, host: &str, method: &str, path: &str, timeout: Duration) -> Answer {
    let connect = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await;
    let Ok(Ok(mut stream)) = connect else { return Answer::Refused };
    let exchange = async {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: dify-shaper-health\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream.read(&mut head[len..]).await.ok()?;
            if n == 0 {
                return None;
            }
            len += n;
        }
        let line = std::str::from_utf8(&head[..len]).ok()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse::<u16>().ok()
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Some(status)) => Answer::Status(status),
        Ok(None) => Answer::Refused,
        Err(_) => Answer::NoAnswer,
    }
}
