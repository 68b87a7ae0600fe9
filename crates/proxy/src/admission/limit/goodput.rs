//! What each level of the limit delivered: good answers per second, counted against the clock
//! while the level was fully used. While requests wait in our queue, this — not latency —
//! is what their clients get.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// Most levels remembered: the limit's range is bounded, but a misconfigured `max` should
/// not make memory unbounded.
const MAX_LEVELS: usize = 1024;
/// How long a level's goodput is averaged over before older counts fade.
const LEVEL_SPAN: Duration = Duration::from_secs(60);
/// Answers at a level before its goodput is measured.
const MIN_ANSWERS: usize = 8;

/// What one level delivered.
#[derive(Debug, Clone, Copy)]
struct Level {
    /// Good answers counted at this level, and the seconds they were counted over (both
    /// halved once the span passes [`LEVEL_SPAN`], so older measurements fade).
    good: f64,
    span: f64,
    /// When it was last measured.
    at: Instant,
}

impl Level {
    /// Good answers per second.
    fn goodput(&self) -> f64 {
        self.good / self.span.max(1e-9)
    }

    /// Relative standard error of the goodput, as for a count of random arrivals.
    fn noise(&self) -> f64 {
        1.0 / self.good.max(1.0).sqrt()
    }
}

/// Goodput by level, and the count running for the current one.
#[derive(Debug, Default)]
pub(super) struct Goodput {
    levels: BTreeMap<usize, Level>,
    /// Answers count from here: about one typical duration after the limit changed, once the
    /// backend runs at the new level (the answers before it still show the old one).
    from: Option<Instant>,
    answers: usize,
    good: usize,
}

impl Goodput {
    /// Counts one answer (good or not) for the current level.
    pub(super) fn add(&mut self, now: Instant, good: bool) {
        if self.from.is_some_and(|from| now < from) {
            return;
        }
        self.answers += 1;
        self.good += usize::from(good);
    }

    /// Starts counting afresh from `from` (the limit changed).
    pub(super) fn restart(&mut self, from: Instant) {
        self.from = Some(from);
        self.answers = 0;
        self.good = 0;
    }

    /// Adds what was counted to `level`'s total, when there is enough to say, and starts
    /// counting afresh.
    pub(super) fn record(&mut self, level: usize, now: Instant) {
        let Some(from) = self.from.filter(|_| self.answers >= MIN_ANSWERS) else {
            return;
        };
        let span = now.duration_since(from).as_secs_f64();
        if span <= 0.0 || (self.levels.len() >= MAX_LEVELS && !self.levels.contains_key(&level)) {
            return;
        }
        let entry = self.levels.entry(level).or_insert(Level { good: 0.0, span: 0.0, at: now });
        entry.good += self.good as f64;
        entry.span += span;
        if entry.span > LEVEL_SPAN.as_secs_f64() {
            entry.good /= 2.0;
            entry.span /= 2.0;
        }
        entry.at = now;
        self.restart(now);
    }

    /// Forgets levels not measured for `memory`.
    pub(super) fn forget(&mut self, now: Instant, memory: Duration) {
        if self.levels.first_key_value().is_some_and(|(_, l)| now.duration_since(l.at) > memory) {
            self.levels.retain(|_, l| now.duration_since(l.at) <= memory);
        }
    }

    /// Whether going from level `low` up to `high` paid: goodput rose by at least `gain` of
    /// what a linear backend would have added (`Some(true)`), or clearly fell short of it
    /// (`Some(false)`), each beyond the two measurements' noise (two standard errors). `None`
    /// while either is unmeasured or the difference is within the noise (15 s workflows that
    /// spread by a third need many answers to tell one level from the next; until then the
    /// latency signal decides).
    pub(super) fn paid(&self, high: usize, low: usize, gain: f64) -> Option<bool> {
        let (h, l) = (self.levels.get(&high)?, self.levels.get(&low)?);
        let noise = 2.0 * (h.noise().powi(2) + l.noise().powi(2)).sqrt();
        let expected = gain * linear_gain(high, low);
        let rose = h.goodput() / l.goodput().max(1e-9) - 1.0;
        if rose > expected + noise {
            Some(true)
        } else if rose < expected - noise {
            Some(false)
        } else {
            None
        }
    }

    /// Like [`Self::paid`] without the noise: whether `high` has delivered more than `low` by
    /// `gain` of a linear backend's step so far. `None` while either is unmeasured.
    pub(super) fn delivered_more(&self, high: usize, low: usize, gain: f64) -> Option<bool> {
        let (h, l) = (self.levels.get(&high)?, self.levels.get(&low)?);
        Some(h.goodput() > l.goodput() * (1.0 + gain * linear_gain(high, low)))
    }

    /// Whether the level counting now has so far delivered at least what `low` did, once it
    /// has enough answers to say (`None` before that, or while `low` is unmeasured).
    pub(super) fn running_matches(&self, low: usize, now: Instant) -> Option<bool> {
        let from = self.from.filter(|_| self.answers >= MIN_ANSWERS)?;
        let span = now.duration_since(from).as_secs_f64();
        let low = self.levels.get(&low)?;
        (span > 0.0).then(|| self.good as f64 / span >= low.goodput())
    }

    /// The measured level below `level` that delivered the most (the lower on a tie): a step
    /// up is judged against the best the backend did with less, not against one level that
    /// may have been measured in a transient.
    pub(super) fn best_below(&self, level: usize) -> Option<usize> {
        self.levels
            .range(..level)
            .fold(None, |best: Option<(usize, f64)>, (l, v)| match best {
                Some((_, g)) if g >= v.goodput() => best,
                _ => Some((*l, v.goodput())),
            })
            .map(|(l, _)| l)
    }

    /// The nearest measured level above `level`.
    pub(super) fn measured_above(&self, level: usize) -> Option<usize> {
        self.levels.range(level + 1..).next().map(|(l, _)| *l)
    }
}

/// The relative gain of going from `low` to `high` on a backend that scales linearly.
pub(super) fn linear_gain(high: usize, low: usize) -> f64 {
    (high as f64 - low as f64) / low.max(1) as f64
}
