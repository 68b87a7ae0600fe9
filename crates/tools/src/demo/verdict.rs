//! The demo's verdict: one plain-language paragraph computed from the two columns — what got
//! through each way, why the rest failed, and what waiting in dify-shaper's queue cost. No
//! claim in it is fixed text: each sentence is chosen and filled from the numbers.

use std::time::Duration;

use super::report::{latency, seconds, Column};
use super::scenario::Scenario;
use super::stats::Summary;

/// Line width of the paragraph.
const WIDTH: usize = 96;

/// The verdict for `direct` and `shaped` under `scenario`, wrapped to `WIDTH` (96) columns.
pub fn verdict(scenario: &Scenario, direct: &Column, shaped: &Column) -> String {
    let (d, s) = (&direct.summary, &shaped.summary);
    let mut sentences = vec![successes(scenario, d, s)];
    sentences.push(format!("Direct, {}.", failures(d, "no request failed")));
    sentences.push(format!(
        "Through dify-shaper, {}.",
        failures(s, "no request failed: the excess waited in its queue instead")
    ));
    if let Some(text) = gave_up_in_queue(s, shaped.wasted_runs) {
        sentences.push(text);
    }
    if let Some(restart) = scenario.restart {
        sentences.push(restart_effect(restart.at, restart.boot, d, s));
    }
    if let Some(text) = waiting_cost(d, s) {
        sentences.push(text);
    }
    if direct.wasted_runs > shaped.wasted_runs {
        sentences.push(format!(
            "The backend also spent {} of its runs direct on clients that had already gone, against {} \
             through dify-shaper.",
            direct.wasted_runs, shaped.wasted_runs
        ));
    }
    wrap(&sentences.join(" "), WIDTH)
}

/// Who got more answers, with the counts.
fn successes(scenario: &Scenario, d: &Summary, s: &Summary) -> String {
    let share = |x: &Summary| format!("{} of {} ({:.0}%)", x.ok, x.sent, 100.0 * x.success_ratio());
    // Within a request or 2 %, the difference is noise of the timing on a shared machine.
    let tolerance = (d.sent.max(s.sent) / 50).max(1);
    let capacity = format!("a backend that serves about {:.0} runs/s", scenario.capacity_per_sec());
    if s.ok > d.ok + tolerance {
        format!(
            "Through dify-shaper {} requests succeeded, against {} sent straight to the same kind of \
             backend: {} more answers from {capacity}, offered {:.0}/s.",
            share(s),
            share(d),
            s.ok - d.ok,
            scenario.rate
        )
    } else if d.ok > s.ok + tolerance {
        format!(
            "This time fewer requests succeeded through dify-shaper ({}) than direct ({}), on {capacity}; \
             on a busy machine timings shift, so run the demo again, and see the numbers below.",
            share(s),
            share(d)
        )
    } else {
        format!(
            "About as many requests succeeded through dify-shaper ({}) as direct ({}): {capacity} \
             serves what it can either way, and the difference is in how the rest failed.",
            share(s),
            share(d)
        )
    }
}

/// "N got …, M …" for the error kinds present, or `none` when nothing failed.
fn failures(x: &Summary, none: &str) -> String {
    let kinds = [
        (x.too_many_clients, "got Dify's 500 \"too many clients\" (PostgreSQL was full)"),
        (x.busy, "got a fast 503 server_busy (never sent to Dify, so safe to retry)"),
        (x.unavailable, "got another 502/503/504"),
        (x.refused, "found the port closed or had their connection reset"),
        (x.timed_out, "gave up waiting for an answer"),
        (x.other, "got another error"),
    ];
    let parts: Vec<String> =
        kinds.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
    match parts.len() {
        0 => none.to_string(),
        1 => parts.concat(),
        n => format!("{} and {}", parts[..n - 1].join(", "), parts[n - 1]),
    }
}

/// Clients that gave up through dify-shaper mostly waited in its queue, not in Dify: say so
/// when the backend's count of runs for departed clients shows it.
fn gave_up_in_queue(s: &Summary, wasted_runs: u64) -> Option<String> {
    if s.timed_out == 0 || wasted_runs as usize >= s.timed_out {
        return None;
    }
    let cost = match wasted_runs {
        0 => "none of them cost the backend a run".to_string(),
        n => format!("only {n} of them cost the backend a run"),
    };
    Some(format!(
        "Those who gave up through dify-shaper were waiting in its queue, not in Dify's backlog: {cost}."
    ))
}

/// What the restart cost each way: connections that found no backend.
fn restart_effect(at: Duration, boot: Duration, d: &Summary, s: &Summary) -> String {
    let when = format!("When the backend restarted at {} ({} boot)", seconds(at), seconds(boot));
    if s.refused == 0 && s.unavailable == 0 {
        let direct = if d.refused > 0 {
            format!("{} direct requests found it down, while", d.refused)
        } else {
            "direct requests happened to miss it, and".to_string()
        };
        format!("{when}, {direct} dify-shaper held its requests until the backend was back.")
    } else {
        format!(
            "{when}, {} direct and {} shaped requests failed to reach it.",
            d.refused + d.unavailable,
            s.refused + s.unavailable
        )
    }
}

/// The latency price of queueing, when there is one worth mentioning: at the median, or in
/// the tail (a queue shows there first).
fn waiting_cost(d: &Summary, s: &Summary) -> Option<String> {
    let (dp50, sp50, dp99, sp99) = (d.p50?, s.p50?, d.p99?, s.p99?);
    let slower = |shaped: Duration, direct: Duration, factor: f64| {
        shaped.as_secs_f64() > factor * direct.as_secs_f64()
    };
    Some(if slower(sp50, dp50, 1.2) || slower(sp99, dp99, 1.5) {
        format!(
            "The price is waiting: successes took {} at the median and {} at p99 through \
             dify-shaper, against {} and {} direct, time spent queued rather than failing.",
            latency(Some(sp50)),
            latency(Some(sp99)),
            latency(Some(dp50)),
            latency(Some(dp99))
        )
    } else {
        format!(
            "Successes were about as fast both ways (median {} through dify-shaper, {} direct; \
             p99 {} and {}).",
            latency(Some(sp50)),
            latency(Some(dp50)),
            latency(Some(sp99)),
            latency(Some(dp99))
        )
    })
}

/// Greedy word wrap to `width` columns.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if line_len > 0 && line_len + 1 + len > width {
            out.push('\n');
            line_len = 0;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scenario::DemoArgs;
    use crate::demo::stats::{Kind, Observation};

    fn scenario(restart: bool) -> Scenario {
        let args = DemoArgs { duration: None, rate: None, no_restart: !restart, quick: false };
        Scenario::from_args(&args).expect("valid")
    }

    /// A column with `n` outcomes of each given kind; successes take `ok_ms`.
    fn column(counts: &[(Kind, usize)], ok_ms: u64, wasted: u64) -> Column {
        let mut outcomes = Vec::new();
        for &(kind, n) in counts {
            for _ in 0..n {
                let latency = Duration::from_millis(if kind == Kind::Ok { ok_ms } else { 1 });
                outcomes.push(Observation {
                    sent_at: Duration::from_millis(125 * outcomes.len() as u64),
                    kind,
                    latency,
                });
            }
        }
        let summary = Summary::of(&outcomes);
        Column { summary, backend_runs: summary.ok as u64, wasted_runs: wasted }
    }

    #[test]
    fn a_better_shaped_run_says_so_with_its_numbers() {
        let direct = column(&[(Kind::Ok, 70), (Kind::TooManyClients, 60), (Kind::Refused, 30)], 1000, 3);
        let shaped = column(&[(Kind::Ok, 110), (Kind::Busy, 50)], 4000, 0);
        let text = verdict(&scenario(true), &direct, &shaped).replace('\n', " ");
        assert!(text.contains("110 of 160 (69%)"), "{text}");
        assert!(text.contains("70 of 160 (44%)"), "{text}");
        assert!(text.contains("40 more answers"), "{text}");
        assert!(text.contains("60 got Dify's 500"), "{text}");
        assert!(text.contains("30 found the port closed"), "{text}");
        assert!(text.contains("50 got a fast 503"), "{text}");
        assert!(text.contains("30 direct requests found it down"), "{text}");
        assert!(text.contains("held its requests"), "{text}");
        assert!(text.contains("The price is waiting"), "{text}");
        assert!(text.contains("4.00 s at the median"), "{text}");
        assert!(text.contains("3 of its runs"), "{text}");
        assert!(!text.contains("waiting in its queue"), "nobody gave up through dify-shaper: {text}");
    }

    #[test]
    fn the_verdict_follows_the_numbers() {
        let direct = column(&[(Kind::Ok, 100), (Kind::TooManyClients, 60)], 1000, 0);
        let same = column(&[(Kind::Ok, 101), (Kind::Busy, 59)], 1050, 0);
        let text = verdict(&scenario(false), &direct, &same).replace('\n', " ");
        assert!(text.contains("About as many"), "{text}");
        assert!(text.contains("about as fast"), "{text}");
        assert!(!text.contains("restarted"), "no restart, no restart sentence: {text}");
        assert!(!text.contains("runs direct on clients"), "{text}");

        let worse = column(&[(Kind::Ok, 50), (Kind::Busy, 110)], 1000, 0);
        let text = verdict(&scenario(false), &direct, &worse).replace('\n', " ");
        assert!(text.contains("fewer requests succeeded through dify-shaper"), "{text}");

        let patient = column(&[(Kind::Ok, 100), (Kind::TimedOut, 60)], 3000, 2);
        let text = verdict(&scenario(false), &direct, &patient).replace('\n', " ");
        assert!(text.contains("60 gave up waiting"), "{text}");
        assert!(text.contains("only 2 of them cost the backend a run"), "{text}");

        // Same median, but a queue's tail: the price is named.
        let mut tail = column(&[(Kind::Ok, 101), (Kind::Busy, 59)], 1000, 0);
        tail.summary.p99 = Some(Duration::from_secs(9));
        let text = verdict(&scenario(false), &direct, &tail).replace('\n', " ");
        assert!(text.contains("The price is waiting"), "{text}");
        assert!(text.contains("9.00 s at p99"), "{text}");

        let clean = column(&[(Kind::Ok, 160)], 1000, 0);
        let text = verdict(&scenario(true), &direct, &clean).replace('\n', " ");
        assert!(text.contains("Through dify-shaper, no request failed"), "{text}");
        assert!(text.contains("direct requests happened to miss it"), "{text}");
    }

    #[test]
    fn failures_list_only_what_happened() {
        let x = column(&[(Kind::TimedOut, 2), (Kind::Other, 1)], 0, 0).summary;
        assert_eq!(failures(&x, "none"), "2 gave up waiting for an answer and 1 got another error");
        assert_eq!(failures(&Summary::default(), "none"), "none");
    }

    #[test]
    fn wrapping_keeps_words_whole() {
        let text = wrap("aaa bbb ccc ddd", 7);
        assert_eq!(text, "aaa bbb\nccc ddd");
        assert!(wrap(&"word ".repeat(100), 20).lines().all(|l| l.len() <= 20));
    }
}
