//! The demo's side-by-side table: one [`Column`] per way of reaching the backend, one row per
//! number a Dify operator cares about.

use std::fmt::Write as _;
use std::time::Duration;

use super::stats::Summary;

/// One side of the demo: what the clients saw, and what the backend behind it did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Column {
    /// What the clients saw.
    pub summary: Summary,
    /// Runs the backend started.
    pub backend_runs: u64,
    /// Runs the backend finished for clients that had already gone (wasted work).
    pub wasted_runs: u64,
}

/// Width of the row labels.
const LABEL: usize = 36;
/// Width of each value column.
const VALUE: usize = 21;

/// The table for `direct` and `shaped`; `patience` names the client timeout row.
pub fn table(direct: &Column, shaped: &Column, patience: Duration) -> String {
    let (d, s) = (&direct.summary, &shaped.summary);
    let mut rows: Vec<(String, String, String)> = vec![
        ("requests sent".into(), d.sent.to_string(), s.sent.to_string()),
        ("ok (2xx)".into(), with_share(d.ok, d.sent), with_share(s.ok, s.sent)),
        ("errors".into(), with_share(d.errors(), d.sent), with_share(s.errors(), s.sent)),
    ];
    let gave_up = format!("  client gave up ({})", seconds(patience));
    let kinds = [
        ("  500 too many clients (PostgreSQL)", d.too_many_clients, s.too_many_clients),
        ("  503 busy (never sent to Dify)", d.busy, s.busy),
        ("  502/503/504 other", d.unavailable, s.unavailable),
        ("  connection refused / reset", d.refused, s.refused),
        (gave_up.as_str(), d.timed_out, s.timed_out),
        ("  other errors", d.other, s.other),
    ];
    for (label, a, b) in kinds {
        rows.push((label.to_string(), a.to_string(), b.to_string()));
    }
    rows.push(("goodput (ok/s)".into(), format!("{:.1}", d.goodput), format!("{:.1}", s.goodput)));
    rows.push(("latency of ok, p50".into(), latency(d.p50), latency(s.p50)));
    rows.push(("latency of ok, p99".into(), latency(d.p99), latency(s.p99)));
    rows.push((
        "backend runs (for clients gone)".into(),
        format!("{} ({})", direct.backend_runs, direct.wasted_runs),
        format!("{} ({})", shaped.backend_runs, shaped.wasted_runs),
    ));

    let mut out = String::new();
    let _ = writeln!(out, "{:LABEL$}{:>VALUE$}{:>VALUE$}", "", "direct", "through dify-shaper");
    let _ = writeln!(out, "{}", "-".repeat(LABEL + 2 * VALUE));
    for (label, a, b) in rows {
        let _ = writeln!(out, "{label:LABEL$}{a:>VALUE$}{b:>VALUE$}");
    }
    out
}

fn with_share(n: usize, of: usize) -> String {
    if of == 0 {
        return n.to_string();
    }
    format!("{n} ({:.0}%)", 100.0 * n as f64 / of as f64)
}

/// A latency for people: `850 ms`, `1.24 s`, or `-` when there is none.
pub fn latency(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d < Duration::from_secs(1) => format!("{} ms", d.as_millis()),
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
    }
}

/// Whole or fractional seconds: `10 s`, `2.5 s`.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::stats::{Kind, Observation};

    fn column(kinds: &[(Kind, u64)], runs: u64, wasted: u64) -> Column {
        let outcomes: Vec<Observation> = kinds
            .iter()
            .enumerate()
            .map(|(i, &(kind, ms))| Observation {
                sent_at: Duration::from_millis(100 * i as u64),
                kind,
                latency: Duration::from_millis(ms),
            })
            .collect();
        Column { summary: Summary::of(&outcomes), backend_runs: runs, wasted_runs: wasted }
    }

    #[test]
    fn the_table_has_every_row_and_both_columns() {
        let direct = column(&[(Kind::Ok, 900), (Kind::TooManyClients, 3), (Kind::Refused, 1)], 1, 0);
        let shaped = column(&[(Kind::Ok, 900), (Kind::Ok, 2500), (Kind::Busy, 5)], 2, 1);
        let text = table(&direct, &shaped, Duration::from_secs(10));
        for needle in [
            "direct",
            "through dify-shaper",
            "requests sent",
            "ok (2xx)",
            "500 too many clients",
            "503 busy",
            "refused / reset",
            "client gave up (10 s)",
            "goodput (ok/s)",
            "p50",
            "p99",
            "backend runs",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        let ok_row = text.lines().find(|l| l.starts_with("ok (2xx)")).unwrap_or_default();
        assert!(ok_row.contains("1 (33%)") && ok_row.contains("2 (67%)"), "{ok_row}");
        let p99 = text.lines().find(|l| l.contains("p99")).unwrap_or_default();
        assert!(p99.contains("900 ms") && p99.contains("2.50 s"), "{p99}");
        assert!(text.lines().any(|l| l.starts_with("backend runs") && l.contains("2 (1)")), "{text}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(latency(None), "-");
        assert_eq!(latency(Some(Duration::from_millis(850))), "850 ms");
        assert_eq!(latency(Some(Duration::from_millis(1240))), "1.24 s");
        assert_eq!(seconds(Duration::from_secs(10)), "10 s");
        assert_eq!(seconds(Duration::from_millis(2500)), "2.5 s");
    }
}
