//! The share of overload answers at each in-flight level, and over all of them: what tells a
//! 5xx that comes with the level (overload) from one that lower loads show as well (a
//! request's own failing).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// Most levels remembered: the limit's range is bounded, but a misconfigured `max` should
/// not make memory unbounded.
const MAX_LEVELS: usize = 1024;
/// Answers at a level before its error share is trusted.
const MIN_ANSWERS: u32 = 5;
/// Answers over all levels before their share stands in for the levels below.
const MIN_ANSWERS_OVERALL: u32 = 20;
/// Answers after which a share becomes a moving average.
const WINDOW: u32 = 50;

/// The share of overload answers among some answers.
#[derive(Debug, Clone, Copy)]
struct Share {
    answers: u32,
    share: f64,
    at: Instant,
}

impl Share {
    fn new(now: Instant) -> Self {
        Share { answers: 0, share: 0.0, at: now }
    }

    fn note(&mut self, good: bool, now: Instant) {
        self.answers = self.answers.saturating_add(1);
        // A running mean over the first answers, then a slow average: enough answers to tell
        // 2 % from 10 % without remembering each one.
        let weight = 1.0 / f64::from(self.answers.min(WINDOW));
        self.share += (if good { 0.0 } else { 1.0 } - self.share) * weight;
        self.at = now;
    }
}

/// Overload shares by the in-flight level answers were admitted at.
#[derive(Debug, Default)]
pub(super) struct ErrorShares {
    by_level: BTreeMap<usize, Share>,
    all: Option<Share>,
}

impl ErrorShares {
    /// Notes one answer admitted at `in_flight`: good, or an overload outcome.
    pub(super) fn note(&mut self, in_flight: usize, good: bool, now: Instant) {
        self.all.get_or_insert_with(|| Share::new(now)).note(good, now);
        if self.by_level.len() >= MAX_LEVELS && !self.by_level.contains_key(&in_flight) {
            return;
        }
        self.by_level.entry(in_flight).or_insert_with(|| Share::new(now)).note(good, now);
    }

    /// Forgets levels not answered at for `memory`.
    pub(super) fn forget(&mut self, now: Instant, memory: Duration) {
        if self.by_level.first_key_value().is_some_and(|(_, e)| now.duration_since(e.at) > memory) {
            self.by_level.retain(|_, e| now.duration_since(e.at) <= memory);
        }
    }

    /// Whether overload answers are more than `share` of the answers at `in_flight`, once
    /// there are enough of them to say.
    pub(super) fn steady_share(&self, in_flight: usize, share: f64) -> bool {
        self.by_level.get(&in_flight).is_some_and(|e| e.answers >= MIN_ANSWERS && e.share > share)
    }

    /// See [`super::AdaptiveLimit::overload_counts`].
    pub(super) fn overload_counts(&self, in_flight: usize) -> bool {
        // Alone in flight, there is no concurrency to take back: a 5xx there is not ours to
        // cure (a database filled by others, or the request's own failing).
        if in_flight <= 1 {
            return false;
        }
        let below = self
            .by_level
            .range(..in_flight)
            .filter(|(_, e)| e.answers >= MIN_ANSWERS)
            .map(|(_, e)| e.share)
            .reduce(f64::min);
        // Nothing known below (the limit was just cut there): the share over all levels, once
        // there are enough answers to say.
        let overall = self.all.filter(|a| a.answers >= MIN_ANSWERS_OVERALL).map(|a| a.share);
        let Some(background) = below.or(overall) else {
            return true;
        };
        if background < 0.02 {
            return true;
        }
        self.by_level
            .get(&in_flight)
            .is_some_and(|e| e.answers >= MIN_ANSWERS && e.share > 2.0 * background + 0.05)
    }
}
