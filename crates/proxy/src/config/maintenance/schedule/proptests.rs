//! Property tests of [`Schedule::next_after`] against a brute-force reference: for random cron
//! expressions (lists, ranges, steps, optional seconds, day-of-month/day-of-week) in zones with
//! and without daylight saving time, and for `now` near the DST changes as often as not, the
//! next fire is strictly after `now`, falls on a wall-clock time the fields allow, and is the
//! earliest such time. The reference walks the time line minute by minute (skipping days and
//! hours the fields rule out, so a case stays cheap) and applies the module's DST rules:
//!
//! - a wall-clock time that occurs twice (fall back) fires once, at its first occurrence;
//! - a fixed time of day (one second, one minute, one hour) that does not exist that day
//!   (spring forward) fires at the first instant after the gap;
//! - any other pattern (a wildcard, step or list in the time of day) simply has no fire
//!   inside a gap, as in cron and croner: an hourly `30 * * * *` does not fire twice in the
//!   hour after the gap. (The module doc states the gap rule without this distinction.)

use std::collections::BTreeSet;
use std::sync::OnceLock;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use super::Schedule;

/// Zones with daylight saving time on both hemispheres, and without.
const ZONES: [&str; 6] =
    ["Europe/Berlin", "America/New_York", "Australia/Sydney", "UTC", "Asia/Tokyo", "Asia/Kolkata"];

/// How far ahead the reference looks before it gives up (the generated day fields make
/// every pattern fire well within it).
const WINDOW_DAYS: i64 = 400;

/// One cron field as generated: what it says, written out and as a set of values.
#[derive(Debug, Clone)]
enum Field {
    Star,
    One(u32),
    List(BTreeSet<u32>),
    Range(u32, u32),
    StarStep(u32),
    RangeStep(u32, u32, u32),
}

impl Field {
    fn render(&self) -> String {
        match self {
            Field::Star => "*".into(),
            Field::One(v) => v.to_string(),
            Field::List(vs) => vs.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            Field::Range(a, b) => format!("{a}-{b}"),
            Field::StarStep(n) => format!("*/{n}"),
            Field::RangeStep(a, b, n) => format!("{a}-{b}/{n}"),
        }
    }

    fn values(&self, lo: u32, hi: u32) -> BTreeSet<u32> {
        match self {
            Field::Star => (lo..=hi).collect(),
            Field::One(v) => BTreeSet::from([*v]),
            Field::List(vs) => vs.clone(),
            Field::Range(a, b) => (*a..=*b).collect(),
            Field::StarStep(n) => (lo..=hi).step_by(*n as usize).collect(),
            Field::RangeStep(a, b, n) => (*a..=*b).step_by(*n as usize).collect(),
        }
    }

    /// One value, not from a wildcard or step: croner's "fixed time" fields.
    fn fixed(&self) -> bool {
        match self {
            Field::One(_) => true,
            Field::List(vs) => vs.len() == 1,
            Field::Range(a, b) => a == b,
            Field::RangeStep(a, b, n) => a == b && *n == 1,
            Field::Star | Field::StarStep(_) => false,
        }
    }
}

/// A time-of-day field over `lo..=hi`, with `likely` values (the DST hours) drawn often.
fn time_field(lo: u32, hi: u32, likely: Vec<u32>) -> impl Strategy<Value = Field> {
    let value = prop_oneof![prop::sample::select(likely), lo..=hi];
    prop_oneof![
        3 => value.clone().prop_map(Field::One),
        1 => Just(Field::Star),
        1 => prop::collection::btree_set(lo..=hi, 1..4).prop_map(Field::List),
        1 => (value.clone(), 0..4u32).prop_map(move |(a, len)| Field::Range(a, (a + len).min(hi))),
        1 => (1..=hi.min(30)).prop_map(Field::StarStep),
        1 => (value, 0..12u32, 1..5u32).prop_map(move |(a, len, n)| Field::RangeStep(a, (a + len).min(hi), n)),
    ]
}

/// A day field: mostly `*`, else values that every month (or week) has.
fn day_field(lo: u32, hi: u32) -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => Just(Field::Star),
        2 => (lo..=hi).prop_map(Field::One),
        1 => prop::collection::btree_set(lo..=hi, 1..4).prop_map(Field::List),
        1 => (lo..=hi, 0..5u32).prop_map(move |(a, len)| Field::Range(a, (a + len).min(hi))),
    ]
}

/// A generated cron expression.
#[derive(Debug, Clone)]
struct Cron {
    second: Option<u32>,
    minute: Field,
    hour: Field,
    dom: Field,
    month: Field,
    dow: Field,
}

impl Cron {
    fn expression(&self) -> String {
        let fields = [&self.minute, &self.hour, &self.dom, &self.month, &self.dow];
        let five = fields.iter().map(|f| f.render()).collect::<Vec<_>>().join(" ");
        match self.second {
            Some(s) => format!("{s} {five}"),
            None => five,
        }
    }

    fn fixed(&self) -> bool {
        self.minute.fixed() && self.hour.fixed()
    }

    /// Day of month and day of week as cron reads them: either matches when both are
    /// restricted, the restricted one when only one is.
    fn date_matches(&self, date: NaiveDate) -> bool {
        if !self.month.values(1, 12).contains(&date.month()) {
            return false;
        }
        let dom = self.dom.values(1, 31).contains(&date.day());
        let dow = self.dow.values(0, 6).contains(&date.weekday().num_days_from_sunday());
        match (matches!(self.dom, Field::Star), matches!(self.dow, Field::Star)) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }
}

/// A cron expression whose time-of-day fields favour the wall-clock time around `now`
/// (and the hours DST changes happen at), so that fires near a change are common.
fn cron_near(zone: Tz, now: DateTime<Utc>) -> impl Strategy<Value = Cron> {
    let local = now.with_timezone(&zone);
    let (h, m) = (local.hour(), local.minute());
    let hours = vec![h, (h + 1) % 24, (h + 23) % 24, 1, 2, 3];
    let minutes = vec![m, (m + 1) % 60, (m + 20) % 60, (m + 59) % 60, 0, 30];
    (
        prop_oneof![3 => Just(None), 1 => (0u32..60).prop_map(Some)],
        time_field(0, 59, minutes),
        time_field(0, 23, hours),
        day_field(1, 28),
        prop_oneof![4 => Just(Field::Star), 1 => day_field(1, 12)],
        day_field(0, 6),
    )
        .prop_map(|(second, minute, hour, dom, month, dow)| Cron {
            second,
            minute,
            hour,
            dom,
            month,
            dow,
        })
}

/// A zone, `now` in it, and a cron expression.
fn case() -> impl Strategy<Value = (Tz, DateTime<Utc>, Cron)> {
    zone_and_now().prop_flat_map(|(zone, now)| (Just(zone), Just(now), cron_near(zone, now)))
}

/// The UTC instants in 2024..=2028 where `zone`'s offset changes (computed once per zone).
fn transitions(zone: Tz) -> &'static [DateTime<Utc>] {
    static CACHE: OnceLock<Vec<(Tz, Vec<DateTime<Utc>>)>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        ZONES
            .iter()
            .filter_map(|name| name.parse::<Tz>().ok())
            .map(|tz| {
                let start = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().expect("valid");
                let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
                let found = (1..5 * 366 * 24)
                    .map(|h| start + Duration::hours(h))
                    .filter(|t| offset(*t) != offset(*t - Duration::hours(1)))
                    .collect();
                (tz, found)
            })
            .collect()
    });
    all.iter().find(|(tz, _)| *tz == zone).map_or(&[], |(_, t)| t.as_slice())
}

/// `now`: anywhere in 2025..=2027, or within a few hours (or days) of a DST change.
fn now_in(zone: Tz) -> impl Strategy<Value = DateTime<Utc>> {
    let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single().expect("valid");
    let anywhere = (0i64..3 * 365 * 86_400).prop_map(move |s| start + Duration::seconds(s));
    let changes = transitions(zone).to_vec();
    if changes.is_empty() {
        return anywhere.boxed();
    }
    let near =
        (prop::sample::select(changes), -2 * 3600i64..2 * 3600, prop_oneof![3 => Just(0i64), 1 => 0i64..3])
            .prop_map(|(change, secs, days)| change + Duration::seconds(secs) - Duration::days(days));
    prop_oneof![1 => anywhere, 3 => near].boxed()
}

fn zone_and_now() -> impl Strategy<Value = (Tz, DateTime<Utc>)> {
    prop::sample::select(ZONES.to_vec())
        .prop_map(|name| name.parse::<Tz>().expect("a known zone"))
        .prop_flat_map(|zone| (Just(zone), now_in(zone)))
}

/// Whether `now` lies in the second pass of a repeated hour (fall back): its wall-clock time
/// already happened once, an hour earlier.
fn in_second_pass(zone: Tz, now: DateTime<Utc>) -> bool {
    let naive = now.with_timezone(&zone).naive_local();
    zone.from_local_datetime(&naive).earliest().is_some_and(|first| first.with_timezone(&Utc) < now)
}

/// Whether `t` is where a gap ends: the wall-clock second before it does not exist.
fn ends_a_gap(zone: Tz, t: DateTime<Utc>) -> bool {
    let wall = t.with_timezone(&zone).naive_local() - Duration::seconds(1);
    zone.from_local_datetime(&wall).earliest().is_none()
}

/// Which known bug, if any, explains `next` (see the ignored tests at the end).
fn known_bug(cron: &Cron, zone: Tz, now: DateTime<Utc>, next: Option<DateTime<Utc>>) -> Option<&'static str> {
    let next = next?;
    if in_second_pass(zone, now) && next <= now {
        return Some("a time before now in the repeated hour");
    }
    // A fixed time of day fired at the end of a gap although that day's time exists.
    let (hour, minute) = (*cron.hour.values(0, 23).first()?, *cron.minute.values(0, 59).first()?);
    let exists = next
        .with_timezone(&zone)
        .date_naive()
        .and_hms_opt(hour, minute, cron.second.unwrap_or(0))
        .is_some_and(|wall| zone.from_local_datetime(&wall).earliest().is_some());
    (cron.fixed() && ends_a_gap(zone, next) && exists).then_some("a fixed time fired at the end of a gap")
}

/// The first instant after the gap that swallowed the wall-clock time `wall`.
fn end_of_gap(zone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    // Walking the wall clock forward, the first time that exists is where the gap ends.
    (1..=3 * 3600)
        .map(|s| wall + Duration::seconds(s))
        .find_map(|w| zone.from_local_datetime(&w).earliest())
        .map(|t| t.with_timezone(&Utc))
}

/// The reference: the earliest fire strictly after `now` within [`WINDOW_DAYS`].
fn reference_next(cron: &Cron, zone: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let second = cron.second.unwrap_or(0);
    let minutes = cron.minute.values(0, 59);
    let hours = cron.hour.values(0, 23);
    let end = now + Duration::days(WINDOW_DAYS);
    if cron.fixed() {
        // One time of day: per matching date, its instant (the first of two, or the end of
        // the gap when that day skips it).
        let (hour, minute) = (*hours.first()?, *minutes.first()?);
        let first_day = now.with_timezone(&zone).date_naive() - Duration::days(1);
        return (0..=WINDOW_DAYS + 2)
            .map(|d| first_day + Duration::days(d))
            .filter(|date| cron.date_matches(*date))
            .filter_map(|date| {
                let wall = date.and_hms_opt(hour, minute, second)?;
                match zone.from_local_datetime(&wall).earliest() {
                    Some(t) => Some(t.with_timezone(&Utc)),
                    // croner checks the date again where the gap ends.
                    None => end_of_gap(zone, wall)
                        .filter(|t| cron.date_matches(t.with_timezone(&zone).date_naive())),
                }
            })
            .find(|t| *t > now && *t <= end);
    }
    // Any other pattern: every minute (at the pattern's second) whose wall-clock time the
    // fields allow, at the first occurrence of that time only; a gap has none.
    let mut t = now.with_second(second)?.with_nanosecond(0)?;
    if t <= now {
        t += Duration::minutes(1);
    }
    while t <= end {
        let local = t.with_timezone(&zone);
        if !cron.date_matches(local.date_naive()) {
            // Skip the rest of the day, leaving a margin for a 23-hour day.
            let left = 1440 - i64::from(local.hour() * 60 + local.minute());
            t += Duration::minutes((left - 120).max(1));
            continue;
        }
        if !hours.contains(&local.hour()) {
            // The zones' offsets change on the hour: the rest of this hour does not match.
            t += Duration::minutes(60 - i64::from(local.minute()));
            continue;
        }
        let first = zone.from_local_datetime(&local.naive_local()).earliest();
        if minutes.contains(&local.minute()) && first.is_some_and(|f| f.with_timezone(&Utc) == t) {
            return Some(t);
        }
        t += Duration::minutes(1);
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// The next fire is strictly after `now`, allowed by the fields, and the earliest such
    /// time under the DST rules above.
    #[test]
    fn next_fire_is_the_earliest_allowed_time_after_now((zone, now, cron) in case()) {
        let expression = cron.expression();
        let schedule = Schedule::new(&expression, zone.name())
            .unwrap_or_else(|e| panic!("{expression:?} is a valid expression: {e}"));
        let next = schedule.next_after(now);
        // Known bugs, kept as ignored tests below; everything else is checked.
        if known_bug(&cron, zone, now, next).is_some() {
            return Ok(());
        }
        let expected = reference_next(&cron, zone, now);
        match (next, expected) {
            (Some(next), Some(expected)) => {
                prop_assert!(next > now, "{expression:?} in {zone}: {next} is not after {now}");
                prop_assert_eq!(next, expected, "{:?} in {} after {}", expression, zone, now);
            }
            // Beyond the reference's window: still after it.
            (Some(next), None) => prop_assert!(next > now + Duration::days(WINDOW_DAYS), "{expression:?} in {zone} after {now}: {next}, reference none"),
            (None, expected) => prop_assert!(false, "{expression:?} in {zone} after {now}: none, reference {expected:?}"),
        }
    }

    /// Fires planned one after another (as the controller chains them) strictly increase, and
    /// each is on a wall-clock time the fields allow (or the end of a gap for a fixed time).
    #[test]
    fn chained_fires_increase_and_match_the_fields((zone, now, cron) in case()) {
        prop_assume!(!in_second_pass(zone, now));
        let schedule = Schedule::new(&cron.expression(), zone.name()).expect("valid");
        let mut at = now;
        for _ in 0..4 {
            let next = schedule.next_after(at);
            if known_bug(&cron, zone, at, next).is_some() {
                break;
            }
            let Some(next) = next else { break };
            prop_assert!(next > at, "{} in {zone}: {next} after {at}", cron.expression());
            let local = next.with_timezone(&zone);
            let second = cron.second.unwrap_or(0);
            let on_fields = cron.date_matches(local.date_naive())
                && cron.hour.values(0, 23).contains(&local.hour())
                && cron.minute.values(0, 59).contains(&local.minute())
                && local.second() == second;
            // A fixed time a gap swallowed fires where the gap ends.
            let after_gap = || cron.fixed() && ends_a_gap(zone, next);
            prop_assert!(on_fields || after_gap(), "{} in {zone}: {local} is not on the fields", cron.expression());
            at = next;
        }
    }

    /// No expression or zone text makes `Schedule::new` panic; an accepted one prints as it
    /// was written and reads back equal.
    #[test]
    fn any_expression_is_a_schedule_or_an_error(
        expression in prop_oneof![
            any::<String>(),
            prop::collection::vec(
                prop::sample::select(vec!["*", "0", "5", "59", "60", "23", "24", "31", "32", "1-5", "5-1", "*/0", "*/7", ",", "L", "#", "?", "MON", "JAN", "@daily", " ", "-1"]),
                0..8,
            ).prop_map(|p| p.join(" ")),
        ],
        zone in prop_oneof![prop::sample::select(ZONES.to_vec()).prop_map(str::to_string), any::<String>()],
    ) {
        if let Ok(schedule) = Schedule::new(&expression, &zone) {
            prop_assert_eq!(schedule.expression(), expression.trim());
            let again = Schedule::new(schedule.expression(), schedule.zone().name());
            prop_assert_eq!(again.as_ref().ok(), Some(&schedule));
        }
    }
}

#[test]
fn the_reference_agrees_with_the_modules_own_examples() {
    let utc = |y, mo, d, h, mi| Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().expect("valid");
    let fixed = |m, h| Cron {
        second: None,
        minute: Field::One(m),
        hour: Field::One(h),
        dom: Field::Star,
        month: Field::Star,
        dow: Field::Star,
    };
    let ny: Tz = "America/New_York".parse().expect("zone");
    assert_eq!(reference_next(&fixed(30, 2), ny, utc(2026, 3, 8, 5, 0)), Some(utc(2026, 3, 8, 7, 0)));
    assert_eq!(reference_next(&fixed(30, 1), ny, utc(2026, 11, 1, 5, 30)), Some(utc(2026, 11, 2, 6, 30)));
    let hourly = Cron { minute: Field::One(30), hour: Field::Star, ..fixed(0, 0) };
    assert_eq!(
        reference_next(&hourly, ny, utc(2026, 3, 8, 6, 45)),
        Some(utc(2026, 3, 8, 7, 30)),
        "no fire in the gap"
    );
    assert_eq!(
        reference_next(&hourly, ny, utc(2026, 11, 1, 5, 45)),
        Some(utc(2026, 11, 1, 7, 30)),
        "01:30 fires once"
    );
}

/// A schedule asked for its next fire during the second pass of a repeated hour (the proxy
/// started, or its config was reloaded, between 01:00 and 02:00 EST on the night New York
/// falls back) must not answer the first pass's 01:30 EDT (croner's answer): an instant an
/// hour in the past would start a maintenance cycle at once although 01:30 already fired.
#[test]
fn a_fire_in_the_repeated_hour_is_not_before_now() {
    let schedule = Schedule::new("30 1 * * *", "America/New_York").expect("valid");
    // 01:15 EST, the second 01:15 of the night.
    let now = Utc.with_ymd_and_hms(2026, 11, 1, 6, 15, 0).single().expect("valid");
    let next = schedule.next_after(now);
    assert!(next.is_some_and(|n| n > now), "next_after({now}) = {next:?}");
    assert_eq!(next, Utc.with_ymd_and_hms(2026, 11, 2, 6, 30, 0).single(), "01:30 EST of the next day");
}

/// On the night clocks spring forward, a daily job in the hour before the gap fires once:
/// after its 01:00 EST fire, croner's search steps onto 02:00, inside the gap, and snaps a
/// fixed-time job to the gap's end (03:00 EDT) without checking that 02:00 was its time —
/// a second maintenance restart an hour after the first. In Berlin, `30 1 * * *` would fire
/// at 01:30 CET and again at 03:00 CEST.
#[test]
fn a_daily_fire_before_the_gap_is_not_repeated_after_it() {
    let utc = |y, mo, d, h, mi| Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().expect("valid");
    let schedule = Schedule::new("0 1 * * *", "America/New_York").expect("valid");
    // 01:00 EST on 2026-03-08, the fire before the gap (02:00 → 03:00 EDT).
    let fired = utc(2026, 3, 8, 6, 0);
    assert_eq!(schedule.next_after(fired), Some(utc(2026, 3, 9, 5, 0)), "01:00 EDT the next day");
    let berlin = Schedule::new("30 1 * * *", "Europe/Berlin").expect("valid");
    assert_eq!(
        berlin.next_after(utc(2026, 3, 29, 0, 30)),
        Some(utc(2026, 3, 29, 23, 30)),
        "01:30 CEST the next day"
    );
}
