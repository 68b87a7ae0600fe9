//! The `command` action: `sh -c COMMAND` in its own process group, so a timeout kills
//! everything it started, not only the shell.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::{one_line, ActionError, Target};

/// How much of the end of stderr goes into the error.
const STDERR_TAIL: usize = 500;

/// How long stderr may still be read after the shell exited: a background process it left
/// behind can hold the pipe open forever, and the result must not wait for that.
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// Runs `command` (placeholders already filled) with a deadline.
pub(super) async fn run(command: &str, target: &Target, timeout: Duration) -> Result<(), ActionError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("DIFY_SHAPER_UPSTREAM", &target.upstream)
        .env("DIFY_SHAPER_SERVER", target.server.as_deref().unwrap_or(""))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own group: the whole tree can be killed with one killpg.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ActionError::CommandSpawn(e.to_string()))?;
    let mut group = GroupGuard::new(&child);
    let stderr = child.stderr.take().map(|s| tokio::spawn(tail(s)));

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(ActionError::CommandSpawn(format!("waiting for sh: {e}"))),
        Err(_) => {
            group.kill();
            // Reap the shell; SIGKILL makes this immediate.
            let _ = child.wait().await;
            if let Some(task) = stderr {
                task.abort();
            }
            return Err(ActionError::CommandTimeout(timeout));
        }
    };
    // The shell is reaped: its pgid may be reused from here on, so never signal it again.
    group.disarm();
    if status.success() {
        if let Some(task) = stderr {
            task.abort();
        }
        return Ok(());
    }
    let stderr = match stderr {
        Some(task) => match tokio::time::timeout(STDERR_GRACE, task).await {
            Ok(Ok(text)) => text,
            _ => String::new(),
        },
        None => String::new(),
    };
    Err(ActionError::CommandFailed { status: describe_status(status), stderr })
}

/// Kills the process group if the action is cancelled (its future dropped) while the shell
/// still runs; `kill_on_drop` alone would reach only the shell.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn new(child: &Child) -> Self {
        // The shell leads its group, so its pid is the group id.
        let pgid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
        GroupGuard { pgid }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (already gone) is fine.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `stream` to the end, keeping the last [`STDERR_TAIL`] bytes, as one line.
async fn tail<R: AsyncRead + Unpin>(mut stream: R) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * STDERR_TAIL {
                    kept.drain(..kept.len() - STDERR_TAIL);
                }
            }
        }
    }
    let start = kept.len().saturating_sub(STDERR_TAIL);
    let text = String::from_utf8_lossy(&kept[start..]);
    // A cut through a multi-byte character leaves a replacement character at the front.
    one_line(text.trim_start_matches('\u{FFFD}'))
}

/// `status 1` or `signal 9`.
fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::time::Instant;

    use super::*;
    use crate::config::maintenance::Action;

    fn cmd(command: &str, timeout: Duration) -> Action {
        Action::Command { command: command.to_string(), timeout }
    }

    fn target() -> Target {
        Target { upstream: "dify".into(), server: Some("10.0.0.5:5001".into()) }
    }

    #[tokio::test]
    async fn true_succeeds() {
        assert_eq!(cmd("true", Duration::from_secs(30)).run(&target()).await, Ok(()));
    }

    #[tokio::test]
    async fn failure_carries_status_and_stderr() {
        let action = cmd("echo first >&2; echo 'it broke' >&2; exit 3", Duration::from_secs(30));
        let err = action.run(&target()).await.expect_err("exit 3");
        assert_eq!(
            err,
            ActionError::CommandFailed { status: "status 3".into(), stderr: "first | it broke".into() }
        );
        assert_eq!(err.to_string(), "command exited with status 3: first | it broke");
    }

    #[tokio::test]
    async fn only_the_tail_of_stderr_is_kept() {
        let action = cmd(
            "i=0; while [ $i -lt 200 ]; do echo line$i >&2; i=$((i+1)); done; exit 1",
            Duration::from_secs(30),
        );
        let err = action.run(&target()).await.expect_err("exit 1").to_string();
        assert!(err.ends_with("line199"), "{err}");
        assert!(!err.contains("line0 "), "{err}");
        // 500 bytes of stderr, newlines shown as ` | `.
        assert!(err.len() < 800, "{}", err.len());
    }

    #[tokio::test]
    async fn timeout_returns_quickly() {
        let started = Instant::now();
        let err = cmd("sleep 30", Duration::from_millis(300)).run(&target()).await.expect_err("times out");
        assert_eq!(err, ActionError::CommandTimeout(Duration::from_millis(300)));
        assert_eq!(err.to_string(), "command timed out after 300ms (killed)");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        // The background sleep is a grandchild: killing only `sh` would leave it running.
        let command = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let err = cmd(&command, Duration::from_millis(1500)).run(&target()).await.expect_err("times out");
        assert!(matches!(err, ActionError::CommandTimeout(_)), "{err}");
        let pid: i32 = std::fs::read_to_string(&pid_file).expect("pid written").trim().parse().expect("pid");
        wait_gone(pid).await;
    }

    #[tokio::test]
    async fn cancelling_the_run_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let command = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let target = target();
        let action = cmd(&command, Duration::from_secs(60));
        let mut run = Box::pin(action.run(&target));
        // Drive the action until the grandchild's pid is on disk, then drop it mid-run, as a
        // caller's own deadline would.
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid: i32 = loop {
            tokio::select! {
                result = &mut run => panic!("ended early: {result:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if let Some(pid) = text.strip_suffix('\n').and_then(|t| t.parse().ok()) {
                break pid;
            }
            assert!(Instant::now() < deadline, "pid file never written");
        };
        drop(run);
        wait_gone(pid).await;
    }

    /// Waits (bounded) until `pid` no longer runs: absent, or a zombie nobody reaped yet.
    async fn wait_gone(pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state is the field after the parenthesised command name.
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            if stat.is_empty() || matches!(state, Some(Some('Z' | 'X'))) {
                return;
            }
            assert!(Instant::now() < deadline, "pid {pid} still running: {stat}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn placeholders_and_environment_reach_the_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let command = format!(
            "echo \"{{upstream}} {{server}} {{host}} {{port}} $DIFY_SHAPER_UPSTREAM $DIFY_SHAPER_SERVER\" > {}",
            out.display()
        );
        cmd(&command, Duration::from_secs(30)).run(&target()).await.expect("runs");
        assert_eq!(read(&out), "dify 10.0.0.5:5001 10.0.0.5 5001 dify 10.0.0.5:5001\n");

        let whole = Target { upstream: "dify".into(), server: None };
        cmd(&command, Duration::from_secs(30)).run(&whole).await.expect("runs");
        assert_eq!(read(&out), "dify    dify \n");
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("output written")
    }
}
