//! The progress line on stderr while the load runs: elapsed time against the longest the run
//! can take, and per side what was sent, answered OK, failed and is still waiting. On a
//! terminal it redraws in place (`\r`); otherwise (a pipe, a CI log) it prints one line per
//! few seconds, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::load::Live;
use crate::sim::Simulator;

/// Redraw interval on a terminal.
const TICK: Duration = Duration::from_millis(200);
/// Line interval when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Width of the bar in characters.
const BAR: usize = 24;

/// What the progress line watches.
#[derive(Debug)]
pub struct Progress {
    /// When the first request went out.
    pub start: Instant,
    /// The longest the run can take.
    pub longest: Duration,
    /// Requests each side sends.
    pub total: usize,
    /// Counters of the direct side.
    pub direct: Arc<Live>,
    /// Counters of the side through dify-shaper.
    pub shaped: Arc<Live>,
    /// The backend behind dify-shaper (to show when it is restarting).
    pub backend: Simulator,
}

impl Progress {
    /// Draws until `done` is cancelled, then finishes the line.
    pub async fn run(self, done: CancellationToken) {
        let tty = std::io::stderr().is_terminal();
        let every = if tty { TICK } else { LOG_EVERY };
        let mut ticker = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = done.cancelled() => break,
                _ = ticker.tick() => self.draw(tty),
            }
        }
        self.draw(tty);
        if tty {
            eprintln!();
        }
    }

    fn draw(&self, tty: bool) {
        let line = self.line(self.start.elapsed());
        let mut err = std::io::stderr().lock();
        // A closed stderr only loses the progress line.
        let _ = if tty { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
        let _ = err.flush();
    }

    fn line(&self, elapsed: Duration) -> String {
        let shown = elapsed.min(self.longest);
        let filled = (BAR as f64 * shown.as_secs_f64() / self.longest.as_secs_f64().max(1e-9)) as usize;
        let bar = format!("{}{}", "=".repeat(filled.min(BAR)), " ".repeat(BAR - filled.min(BAR)));
        let note = if self.backend.is_serving() { "" } else { "  (backend restarting)" };
        format!(
            "[{bar}] {:>4.1}/{:.0}s  direct {}  |  dify-shaper {}{note}",
            shown.as_secs_f64(),
            self.longest.as_secs_f64(),
            side(&self.direct, self.total),
            side(&self.shaped, self.total),
        )
    }
}

fn side(live: &Live, total: usize) -> String {
    format!(
        "{}/{total} sent, {} ok, {} failed, {} waiting",
        live.sent.load(Ordering::Relaxed),
        live.ok.load(Ordering::Relaxed),
        live.failed.load(Ordering::Relaxed),
        live.waiting()
    )
}
