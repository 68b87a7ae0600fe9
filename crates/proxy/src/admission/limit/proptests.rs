//! Property tests of the adaptive limit under arbitrary sequences of answers (every outcome,
//! any latency, duration and in-flight level, on several signals), stall probes, demand, time
//! passing and settings changes: nothing panics, the limit stays within the settings in force
//! (and its inner value finite and positive), and each change moves it the way its reason
//! says — a cut down, and never below half in one overload step; growth up, a stall probe by
//! at most one.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::{AdaptiveLimit, Change, LimitSettings, Outcome, Sample};

#[derive(Debug, Clone)]
enum Op {
    Answer { signal: usize, latency_ms: u64, extra_ms: u64, outcome: Outcome, in_flight: usize },
    Stall { in_flight: usize, standing_ms: u64 },
    Demand(usize),
    Wait(u64),
    Settings { min: usize, span: usize, initial: usize },
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Success),
        1 => Just(Outcome::Overload),
        1 => Just(Outcome::Refused),
        1 => Just(Outcome::Throttled),
        1 => Just(Outcome::Timeout),
        1 => Just(Outcome::Abandoned),
        1 => Just(Outcome::Ignore),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let latency = prop_oneof![1u64..50, 50u64..2000, 0u64..120_000];
    prop_oneof![
        12 => (0usize..4, latency, 0u64..5000, outcome(), 1usize..80).prop_map(|(signal, latency_ms, extra_ms, outcome, in_flight)| {
            Op::Answer { signal, latency_ms, extra_ms, outcome, in_flight }
        }),
        2 => (0usize..80, 0u64..600_000).prop_map(|(in_flight, standing_ms)| Op::Stall { in_flight, standing_ms }),
        2 => (0usize..200).prop_map(Op::Demand),
        3 => prop_oneof![0u64..1000, 0u64..200_000].prop_map(Op::Wait),
        1 => (1usize..20, 0usize..60, 0usize..100).prop_map(|(min, span, initial)| Op::Settings { min, span, initial }),
    ]
}

fn settings(min: usize, span: usize, initial: usize) -> LimitSettings {
    LimitSettings { initial, min, max: min + span, ..LimitSettings::default() }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    /// The limit stays in bounds and moves the way each change says.
    #[test]
    fn the_limit_stays_in_bounds_and_moves_as_its_reason_says(
        (min, span, initial) in (1usize..10, 0usize..60, 0usize..80),
        ops in prop::collection::vec(op(), 0..300),
    ) {
        let mut now = Instant::now();
        let mut limit = AdaptiveLimit::new(settings(min, span, initial));
        for op in ops {
            let before = limit.limit();
            let change = match op {
                Op::Answer { signal, latency_ms, extra_ms, outcome, in_flight } => {
                    let latency = Duration::from_millis(latency_ms);
                    let duration = latency + Duration::from_millis(extra_ms);
                    // The answer started its whole duration ago (the clock starts late enough).
                    now += duration;
                    let sample = Sample { signal, started: now - duration, latency, duration, outcome, in_flight };
                    limit.on_sample(sample, now)
                }
                Op::Stall { in_flight, standing_ms } => {
                    now += Duration::from_millis(standing_ms);
                    limit.on_stall(in_flight, now - Duration::from_millis(standing_ms), now)
                }
                Op::Demand(n) => {
                    limit.note_demand(n);
                    None
                }
                Op::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    None
                }
                Op::Settings { min, span, initial } => {
                    limit.set_settings(settings(min, span, initial));
                    None
                }
            };
            let after = limit.limit();
            let s = limit.settings();
            prop_assert!((s.min..=s.max).contains(&after), "{} outside {}..={}", after, s.min, s.max);
            prop_assert!(limit.limit.is_finite() && limit.limit > 0.0, "inner limit {}", limit.limit);
            prop_assert!(limit.ceiling().is_none_or(|c| c > 0), "ceiling {:?}", limit.ceiling());
            match change {
                Some(Change::Overload) => {
                    prop_assert!(after <= before, "overload cut {} → {}", before, after);
                    prop_assert!(2 * after + 2 >= before, "overload cut {} → {}: more than half in one step", before, after);
                }
                Some(Change::Latency) => prop_assert!(after <= before, "latency cut {} → {}", before, after),
                Some(Change::Grow) => prop_assert!(after >= before, "growth {} → {}", before, after),
                Some(Change::Stall) => prop_assert!(after >= before && after <= before + 1, "stall probe {} → {}", before, after),
                Some(Change::Rebase) | None => {}
            }
            if change.is_some() {
                prop_assert_eq!(limit.last_change(), change);
            }
        }
    }
}
