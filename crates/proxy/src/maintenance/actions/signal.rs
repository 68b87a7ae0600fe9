//! The `signal` action: `kill(2)` to a pid given directly or read from a pid file.

use std::path::Path;

use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::ActionError;
use crate::config::maintenance::Action;

/// Sends `signal` to `pid`, or to the pid in `pid_file` (placeholders already filled).
pub(super) async fn send(pid: Option<u32>, pid_file: Option<&Path>, signal: &str) -> Result<(), ActionError> {
    let parsed = Action::parse_signal(signal).map_err(ActionError::SignalConfig)?;
    let pid = match (pid, pid_file) {
        (Some(pid), None) => pid,
        (None, Some(file)) => read_pid_file(file).await?,
        (Some(_), Some(_)) => return Err(ActionError::SignalConfig("both pid and pid_file are set".into())),
        (None, None) => return Err(ActionError::SignalConfig("neither pid nor pid_file is set".into())),
    };
    // 0 and values beyond i32 (negative once cast) would address process groups or every
    // process there is; only a single positive pid is ever meant.
    let raw = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ActionError::SignalConfig(format!("pid {pid} is not a single process id")))?;
    kill(Pid::from_raw(raw), parsed).map_err(|e| ActionError::SignalSend {
        signal: parsed.as_str().to_string(),
        pid,
        reason: e.desc().to_string(),
    })
}

async fn read_pid_file(path: &Path) -> Result<u32, ActionError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| ActionError::PidFileRead { path: path.to_path_buf(), reason: e.to_string() })?;
    text.trim().parse().map_err(|_| ActionError::PidFileBad {
        path: path.to_path_buf(),
        content: text.trim().chars().take(40).collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Stdio;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::{Child, Command};

    use super::*;
    use crate::maintenance::actions::Target;

    /// A shell that writes `got` to `out` and exits 0 on HUP; returns once the trap is set.
    async fn trapper(out: &Path) -> Child {
        let script = format!(
            "trap 'echo got > {}; exit 0' HUP; echo ready; while :; do sleep 0.05; done",
            out.display()
        );
        // A shell cannot trap a signal that was ignored when it started (POSIX), and a test
        // run under `nohup` starts everything with HUP ignored: `env` resets it first.
        let mut child = Command::new("env")
            .args(["--default-signal=HUP", "sh", "-c"])
            .arg(script)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sh");
        // `ready` is printed after the trap is installed, so HUP cannot hit the default action.
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let read = reader.read_line(&mut line);
        tokio::time::timeout(Duration::from_secs(20), read).await.expect("ready in time").expect("read");
        assert_eq!(line.trim(), "ready");
        child
    }

    async fn expect_trapped(mut child: Child, out: &Path) {
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("exits in time")
            .expect("wait");
        assert!(status.success(), "{status}");
        assert_eq!(std::fs::read_to_string(out).expect("trap ran"), "got\n");
    }

    fn signal(pid: Option<u32>, pid_file: Option<PathBuf>, signal: &str) -> Action {
        Action::Signal { pid, pid_file, signal: signal.into() }
    }

    #[tokio::test]
    async fn hup_by_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let child = trapper(&out).await;
        let pid = child.id().expect("running");
        signal(Some(pid), None, "HUP").run(&Target::default()).await.expect("sent");
        expect_trapped(child, &out).await;
    }

    #[tokio::test]
    async fn sighup_by_pid_file_with_placeholder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let child = trapper(&out).await;
        std::fs::write(dir.path().join("dify.pid"), format!("{}\n", child.id().expect("running")))
            .expect("write");
        let action = signal(None, Some(dir.path().join("{upstream}.pid")), "SIGHUP");
        action.run(&Target { upstream: "dify".into(), server: None }).await.expect("sent");
        expect_trapped(child, &out).await;
    }

    #[tokio::test]
    async fn bad_names_and_targets_are_errors() {
        let err = signal(Some(1), None, "FOO").run(&Target::default()).await.expect_err("bad name");
        assert!(err.to_string().starts_with("signal: unknown signal \"FOO\": expected"), "{err}");
        let err = signal(None, None, "HUP").run(&Target::default()).await.expect_err("no pid");
        assert_eq!(err.to_string(), "signal: neither pid nor pid_file is set");
        let err = signal(Some(0), None, "HUP").run(&Target::default()).await.expect_err("pid 0");
        assert_eq!(err.to_string(), "signal: pid 0 is not a single process id");
        let err = signal(Some(u32::MAX), None, "HUP").run(&Target::default()).await.expect_err("negative");
        assert!(matches!(err, ActionError::SignalConfig(_)), "{err}");
    }

    #[tokio::test]
    async fn missing_and_bad_pid_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pid");
        let err =
            signal(None, Some(missing.clone()), "HUP").run(&Target::default()).await.expect_err("missing");
        let text = err.to_string();
        assert!(text.starts_with(&format!("signal: cannot read pid file {}: ", missing.display())), "{text}");
        assert!(text.contains("No such file"), "{text}");

        let bad = dir.path().join("bad.pid");
        std::fs::write(&bad, "not-a-pid\n").expect("write");
        let err = signal(None, Some(bad.clone()), "HUP").run(&Target::default()).await.expect_err("bad");
        assert_eq!(
            err.to_string(),
            format!("signal: pid file {} does not hold a pid: \"not-a-pid\"", bad.display())
        );
    }

    #[tokio::test]
    async fn vanished_process_is_named() {
        let mut child = Command::new("true").spawn().expect("spawn");
        let pid = child.id().expect("pid");
        child.wait().await.expect("reaped");
        // Reaped, so the pid is free (reuse within this test is vanishingly unlikely).
        let err = signal(Some(pid), None, "TERM").run(&Target::default()).await.expect_err("gone");
        assert_eq!(err.to_string(), format!("signal: cannot send SIGTERM to pid {pid}: No such process"));
    }
}
