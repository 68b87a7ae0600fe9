//! When maintenance is due: a cron expression read in an IANA time zone, DST-correct.
//!
//! `"0 20 * * *"` in `Asia/Tokyo` means 20:00 wall-clock time in Tokyo every day, whatever
//! the server's own zone. Across DST changes (croner's rules, as cron does): a time that does
//! not exist that day (spring forward) fires at the first valid minute after the gap; a time
//! that exists twice (fall back) fires once, at its first occurrence.
//!
//! A sixth, leading field gives seconds (`"30 0 20 * * *"`); five fields mean second 0.

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use thiserror::Error;

/// A maintenance schedule.
#[derive(Clone)]
pub struct Schedule {
    cron: Cron,
    expression: String,
    zone: Tz,
}

/// Why a schedule was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("invalid cron expression {expression:?}: {reason}; expected 5 fields (or 6 with seconds first), e.g. \"0 20 * * *\"")]
    Cron {
        /// The expression.
        expression: String,
        /// The parser's reason.
        reason: String,
    },
    /// The zone is not an IANA name.
    #[error("unknown time zone {0:?}: expected an IANA name such as \"Asia/Tokyo\" or \"UTC\"")]
    Zone(String),
}

impl Schedule {
    /// Parses `expression` (standard 5-field cron) in IANA `zone`.
    pub fn new(expression: &str, zone: &str) -> Result<Self, ScheduleError> {
        let cron =
            CronParser::builder().seconds(Seconds::Optional).build().parse(expression.trim()).map_err(
                |e| ScheduleError::Cron { expression: expression.to_string(), reason: e.to_string() },
            )?;
        let zone: Tz = zone.trim().parse().map_err(|_| ScheduleError::Zone(zone.to_string()))?;
        Ok(Schedule { cron, expression: expression.trim().to_string(), zone })
    }

    /// The first time strictly after `now` when maintenance is due (in UTC).
    ///
    /// croner's search is checked: around DST changes it can answer an instant before `now`
    /// (asked during the second pass of a repeated hour, it names the first pass) or the end
    /// of a gap for a job whose time was not in the gap; such answers are skipped and the
    /// search goes on from them.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = now.with_timezone(&self.zone);
        // Each skip moves past one DST artefact; a year has two changes.
        for _ in 0..8 {
            let candidate = self.cron.find_next_occurrence(&from, false).ok()?;
            let at = candidate.with_timezone(&Utc);
            if at <= now {
                // `now` is in the second pass of a repeated hour, whose wall-clock times croner
                // reads as the first pass (already past, and fired then): go on from the end
                // of the repeat.
                from = self.end_of_repeat(now)?;
                continue;
            }
            if self.is_due_at(&candidate) {
                return Some(at);
            }
            from = candidate;
        }
        None
    }

    /// Just before the first wall-clock minute after `now` that exists only once.
    fn end_of_repeat(&self, now: DateTime<Utc>) -> Option<DateTime<Tz>> {
        use chrono::{TimeZone, Timelike};
        let wall = now.with_timezone(&self.zone).naive_local().with_second(0)?;
        (1..=240).map(|minutes| wall + chrono::Duration::minutes(minutes)).find_map(|w| {
            self.zone.from_local_datetime(&w).single().map(|t| t - chrono::Duration::seconds(1))
        })
    }

    /// Whether `local` is one of the schedule's times: its wall-clock time matches, or it is
    /// the end of a spring-forward gap that swallowed a time that matches.
    fn is_due_at(&self, local: &DateTime<Tz>) -> bool {
        use chrono::TimeZone;
        if self.cron.is_time_matching(local).unwrap_or(false) {
            return true;
        }
        // Walk back through the wall-clock seconds that do not exist (the gap, at most a few
        // hours anywhere): matching depends on the wall-clock fields only, read here as UTC.
        // Seconds, not minutes: a six-field schedule may name a second other than :00.
        let naive = local.naive_local();
        (1..=180 * 60)
            .map(|seconds| naive - chrono::Duration::seconds(seconds))
            .take_while(|wall| matches!(self.zone.from_local_datetime(wall), chrono::LocalResult::None))
            .any(|wall| self.cron.is_time_matching(&Utc.from_utc_datetime(&wall)).unwrap_or(false))
    }

    /// The time zone.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The cron expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.zone == other.zone
    }
}

impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Schedule", 2)?;
        // The config file's own keys, so `check` prints something that loads again.
        s.serialize_field("schedule", &self.expression)?;
        s.serialize_field("timezone", self.zone.name())?;
        s.end()
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?} in {})", self.expression, self.zone)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expression, self.zone)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().expect("valid time")
    }

    #[test]
    fn tokyo_at_20_is_11_utc() {
        let s = Schedule::new("0 20 * * *", "Asia/Tokyo").expect("valid");
        assert_eq!(s.next_after(utc(2026, 11, 26, 10, 0)), Some(utc(2026, 11, 26, 11, 0)));
        assert_eq!(s.next_after(utc(2026, 11, 26, 11, 0)), Some(utc(2026, 11, 27, 11, 0)), "strictly after");
    }

    #[test]
    fn spring_forward_gap_fires_after_the_gap() {
        // 02:30 does not exist in New York on 2026-03-08 (02:00 → 03:00 EDT).
        let s = Schedule::new("30 2 * * *", "America/New_York").expect("valid");
        let next = s.next_after(utc(2026, 3, 8, 5, 0)).expect("next");
        assert_eq!(next, utc(2026, 3, 8, 7, 0), "03:00 EDT = 07:00 UTC");
        // The day after, 02:30 EDT again.
        assert_eq!(s.next_after(next), Some(utc(2026, 3, 9, 6, 30)));
    }

    #[test]
    fn a_schedule_with_seconds_in_the_gap_fires_after_it() {
        // 02:49:01 does not exist in Sydney on 2026-10-04 (02:00 AEST → 03:00 AEDT): the
        // gap was once searched minute by minute, at :00 only, and the day was skipped.
        let s = Schedule::new("1 49 2 * * *", "Australia/Sydney").expect("valid");
        let now = Utc.with_ymd_and_hms(2026, 10, 3, 15, 49, 24).single().expect("valid time");
        assert_eq!(s.next_after(now), Some(utc(2026, 10, 3, 16, 0)), "03:00 AEDT = 16:00 UTC");
    }

    #[test]
    fn fall_back_overlap_fires_once() {
        // 01:30 happens twice in New York on 2026-11-01 (EDT, then EST): fire at the first.
        let s = Schedule::new("30 1 * * *", "America/New_York").expect("valid");
        let first = s.next_after(utc(2026, 11, 1, 4, 0)).expect("next");
        assert_eq!(first, utc(2026, 11, 1, 5, 30), "01:30 EDT");
        let second = s.next_after(first).expect("next");
        assert_eq!(second, utc(2026, 11, 2, 6, 30), "not again at 01:30 EST the same night");
    }

    #[test]
    fn an_optional_seconds_field() {
        let s = Schedule::new("30 0 20 * * *", "UTC").expect("valid");
        let next = s.next_after(utc(2026, 11, 26, 19, 0)).expect("next");
        assert_eq!(next, utc(2026, 11, 26, 20, 0) + chrono::Duration::seconds(30));
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        let e = Schedule::new("0 25 * * *", "UTC").expect_err("hour 25");
        assert!(e.to_string().contains("invalid cron expression \"0 25 * * *\""), "{e}");
        let e = Schedule::new("0 20 * * *", "Tokyo").expect_err("not IANA");
        assert_eq!(e, ScheduleError::Zone("Tokyo".into()));
        assert_eq!(
            Schedule::new("0 20 * * *", "Asia/Tokyo").map(|s| s.to_string()).ok().as_deref(),
            Some("0 20 * * * (Asia/Tokyo)")
        );
    }
}

#[cfg(test)]
mod proptests;
