//! Property tests of the config's human units: what `check` prints for a duration or a size
//! reads back as the same value, a number with any accepted unit means that number times the
//! unit, a value too large for the type is refused rather than wrapped, and no text at all
//! makes either parser panic (a config file is user input).

use std::time::Duration;

use proptest::prelude::*;

use super::{ByteSize, HumanDuration};

/// Each accepted byte-size unit and what it multiplies by (nginx's bare `K`/`M`/`G` are
/// binary, `KB`/`MB`/`GB` decimal).
const SIZE_UNITS: [(&str, u64); 14] = [
    ("", 1),
    ("b", 1),
    ("B", 1),
    ("KB", 1_000),
    ("kb", 1_000),
    ("K", 1 << 10),
    ("Ki", 1 << 10),
    ("KiB", 1 << 10),
    ("MB", 1_000_000),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("GB", 1_000_000_000),
    ("g", 1 << 30),
    ("GiB", 1 << 30),
];

/// Duration units humantime accepts, with their length in seconds (sub-second units are
/// checked separately, in nanoseconds).
const DURATION_UNITS: [(&str, u64); 10] = [
    ("s", 1),
    ("sec", 1),
    ("seconds", 1),
    ("m", 60),
    ("min", 60),
    ("minutes", 60),
    ("h", 3600),
    ("hours", 3600),
    ("d", 86_400),
    ("w", 604_800),
];

const SUBSECOND_UNITS: [(&str, u64); 3] = [("ns", 1), ("us", 1_000), ("ms", 1_000_000)];

/// Texts that look like a unit value, to reach deeper than random bytes do.
fn unit_like() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "0",
        "1",
        "12",
        "999",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999",
        " ",
        "  ",
        ".",
        "-",
        "+",
        "_",
        "e",
        "KiB",
        "MiB",
        "GiB",
        "k",
        "M",
        "G",
        "B",
        "b",
        "ms",
        "s",
        "m",
        "h",
        "d",
        "w",
        "y",
        "months",
        "years",
        "ns",
        "us",
        "µs",
        "1h 30m",
        "\t",
        "\n",
        "é",
        "٣",
        "𝟙",
    ]);
    prop::collection::vec(pieces, 0..6).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever size a config holds, what `check` prints reads back as the same size.
    #[test]
    fn a_printed_size_reads_back(
        size in prop_oneof![
            any::<u64>(),
            // Whole KiB, MiB and GiB, which print with a unit.
            (0u64..1 << 24, 1u32..=3).prop_map(|(n, k)| n << (10 * k)),
        ].prop_map(ByteSize),
    ) {
        prop_assert_eq!(ByteSize::parse(&size.to_string()), Ok(size));
    }

    /// `N<unit>` (with or without spaces) is N times the unit, or refused as too large when
    /// that does not fit in 64 bits — never wrapped.
    #[test]
    fn a_size_is_its_number_times_its_unit(
        number in prop_oneof![any::<u64>(), 0u64..100_000],
        unit in prop::sample::select(SIZE_UNITS.to_vec()),
        space in prop::sample::select(vec!["", " ", "  "]),
        pad in prop::sample::select(vec!["", " ", "\t"]),
    ) {
        let (unit, multiplier) = unit;
        let text = format!("{pad}{number}{space}{unit}{pad}");
        match number.checked_mul(multiplier) {
            Some(bytes) => prop_assert_eq!(ByteSize::parse(&text), Ok(ByteSize(bytes)), "{:?}", text),
            None => {
                let err = ByteSize::parse(&text).expect_err("an overflowing size is refused");
                prop_assert!(err.contains("too large"), "{text:?}: {err}");
            }
        }
    }

    /// A number too long for 64 bits is refused whatever its unit.
    #[test]
    fn a_size_past_64_bits_is_refused(extra in 1u64..1_000_000, unit in prop::sample::select(SIZE_UNITS.to_vec())) {
        let too_big = u128::from(u64::MAX) + u128::from(extra);
        let text = format!("{too_big}{}", unit.0);
        prop_assert!(ByteSize::parse(&text).is_err(), "{text:?} was accepted");
    }

    /// No text makes the size parser panic; what it accepts prints and reads back the same,
    /// and what it refuses is explained with the text quoted.
    #[test]
    fn any_text_is_a_size_or_an_explained_error(text in prop_oneof![any::<String>(), unit_like()]) {
        match ByteSize::parse(&text) {
            Ok(size) => prop_assert_eq!(ByteSize::parse(&size.to_string()), Ok(size)),
            Err(err) => prop_assert!(err.contains(&format!("{text:?}")), "{text:?}: {err}"),
        }
    }

    /// Whatever duration a config holds, what `check` prints reads back as the same duration.
    #[test]
    fn a_printed_duration_reads_back(
        secs in prop_oneof![0u64..100_000, 0u64..10_000_000_000, any::<u64>()],
        nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
    ) {
        let duration = HumanDuration(Duration::new(secs, nanos));
        prop_assert_eq!(HumanDuration::parse(&duration.to_string()), Ok(duration));
    }

    /// `N<unit> M<unit> …` is the sum of its parts, or an error when the sum does not fit.
    #[test]
    fn a_duration_is_the_sum_of_its_parts(
        parts in prop::collection::vec(
            (prop_oneof![0u64..10_000, any::<u64>()], prop::sample::select(DURATION_UNITS.to_vec())),
            1..4,
        ),
        subsecond in prop::option::of((0u64..1_000, prop::sample::select(SUBSECOND_UNITS.to_vec()))),
    ) {
        let mut text = parts.iter().map(|(n, (unit, _))| format!("{n}{unit}")).collect::<Vec<_>>().join(" ");
        let mut total: Option<u128> = Some(0);
        for (n, (_, secs)) in &parts {
            total = total.and_then(|t| t.checked_add(u128::from(*n) * u128::from(*secs) * 1_000_000_000));
        }
        if let Some((n, (unit, nanos))) = subsecond {
            text.push_str(&format!(" {n}{unit}"));
            total = total.map(|t| t + u128::from(n * nanos));
        }
        let fits = total.filter(|t| *t / 1_000_000_000 <= u128::from(u64::MAX));
        match (HumanDuration::parse(&text), fits) {
            (Ok(parsed), Some(nanos)) => prop_assert_eq!(parsed.0.as_nanos(), nanos, "{:?}", text),
            (Err(err), None) => prop_assert!(err.contains("invalid duration"), "{err}"),
            (got, expected) => prop_assert!(false, "{text:?}: parsed {got:?}, expected {expected:?} ns"),
        }
    }

    /// No text makes the duration parser panic; what it accepts prints and reads back the
    /// same, and what it refuses is explained with the text quoted.
    #[test]
    fn any_text_is_a_duration_or_an_explained_error(text in prop_oneof![any::<String>(), unit_like()]) {
        match HumanDuration::parse(&text) {
            Ok(duration) => prop_assert_eq!(HumanDuration::parse(&duration.to_string()), Ok(duration)),
            Err(err) => prop_assert!(err.contains(&format!("{text:?}")), "{text:?}: {err}"),
        }
    }

    /// Through serde as the loader uses them: an integer size is bytes, a negative or
    /// fractional one is an error, and nothing panics.
    #[test]
    fn sizes_and_durations_deserialize_from_any_toml_value(value in toml_scalar()) {
        #[derive(serde::Deserialize)]
        struct Sized {
            #[allow(dead_code)]
            v: ByteSize,
        }
        #[derive(serde::Deserialize)]
        struct Timed {
            #[allow(dead_code)]
            v: HumanDuration,
        }
        let text = format!("v = {value}");
        let size = toml::from_str::<Sized>(&text);
        if let Ok(n) = value.parse::<i64>() {
            prop_assert_eq!(size.is_ok(), n >= 0, "{}", text);
        }
        let _ = toml::from_str::<Timed>(&text);
    }
}

/// A TOML scalar as written in a file: integers, floats, strings of unit-like text.
fn toml_scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-1e6f64..1e6).prop_map(|f| format!("{f:?}")),
        unit_like().prop_map(|s| format!("{s:?}")),
        Just("true".to_string()),
        Just("[1, 2]".to_string()),
    ]
}

/// Bounds the property above relies on, written out.
#[test]
fn sixty_four_bit_edges() {
    assert_eq!(ByteSize::parse("18446744073709551615"), Ok(ByteSize(u64::MAX)));
    assert!(ByteSize::parse("18446744073709551616").is_err());
    assert!(ByteSize::parse("17179869184GiB").is_err(), "2^34 GiB = 2^64 bytes");
    assert_eq!(ByteSize::parse("17179869183GiB"), Ok(ByteSize(17_179_869_183 << 30)));
    assert_eq!(ByteSize(u64::MAX).to_string(), "18446744073709551615B");
}
