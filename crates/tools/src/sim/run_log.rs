//! The run log (`dify-shaper sim --run-log FILE`): one JSON line per piece of work the
//! backend carried out — a run that passed admission, an upload whose file was stored —
//! keyed by the request's `X-Request-Id`. A chaos soak reads it to prove that no
//! non-idempotent request ran twice: the proxy's own records cannot show what the backend did.
//!
//! Each line is written with one unbuffered `write` on a file opened for appending, so a line
//! is in the kernel before the work goes on: a backend killed with SIGKILL a moment later
//! still has it on record, and several simulators (one after a restart) can share the file.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

/// Where started work is recorded; records nothing until a file is set.
#[derive(Default)]
pub(crate) struct RunLog {
    file: Mutex<Option<File>>,
}

impl RunLog {
    /// Records from now on into `file` (opened for appending by the caller).
    pub(crate) fn set(&self, file: File) {
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = Some(file);
    }

    /// Records that work of `kind` (`run`, `upload`) on `path` started for the request with
    /// `request_id`; `streaming` for a run answered as an event stream.
    pub(crate) fn record(&self, kind: &str, path: &str, request_id: Option<&str>, streaming: bool) {
        let mut guard = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(file) = guard.as_mut() else { return };
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let line = json!({
            "id": request_id,
            "kind": kind,
            "path": path,
            "streaming": streaming,
            "pid": std::process::id(),
            "at": at,
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        if let Err(e) = file.write_all(&bytes) {
            tracing::warn!(error = %e, "sim: could not write the run log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_one_json_line_per_call_once_a_file_is_set() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("runs.jsonl");
        let log = RunLog::default();
        log.record("run", "/v1/workflows/run", Some("before"), false);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open");
        log.set(file);
        log.record("run", "/v1/workflows/run", Some("r-1"), true);
        log.record("upload", "/v1/files/upload", None, false);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["id"], "r-1");
        assert_eq!(lines[0]["streaming"], true);
        assert_eq!(lines[1]["kind"], "upload");
        assert!(lines[1]["id"].is_null());
    }
}
