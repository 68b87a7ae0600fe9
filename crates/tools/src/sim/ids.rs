//! Ids, timestamps and randomness of one request, deterministic when the request says so.
//!
//! **Determinism rule.** When a request carries `X-Sim-Seed` (any string) or, failing that,
//! `X-Request-Id`, everything random about its answer (UUIDs, the sampled service time,
//! `created_at`/`finished_at`) is derived from that value: two identical requests with the same
//! id get byte-identical bodies, directly or through a proxy. Timestamps are then
//! `SIM_EPOCH + (hash % 1 day)`, not the wall clock. Without either header, ids are random
//! and timestamps are the wall clock. (`elapsed_time` reports the planned service time, which
//! also depends on `slowdown_per_active` and thus on load when that is configured.)

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Base of deterministic timestamps (2023-11-14T22:13:20Z).
pub const SIM_EPOCH: i64 = 1_700_000_000;

/// Header that seeds a request's randomness (takes precedence over `X-Request-Id`).
pub const SEED_HEADER: &str = "x-sim-seed";

/// The request id header the proxy forwards.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// 64-bit FNV-1a: stable across Rust versions and platforms (unlike `DefaultHasher`).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The seed of a request, if it asked for determinism.
pub(crate) fn seed_of(headers: &HeaderMap) -> Option<u64> {
    headers.get(SEED_HEADER).or_else(|| headers.get(REQUEST_ID_HEADER)).map(|v| fnv1a(v.as_bytes()))
}

/// Randomness and clock of one request.
pub(crate) struct Entropy {
    rng: StdRng,
    created_at: i64,
}

impl Entropy {
    /// Seeded when `seed` is `Some`, else random with the wall clock.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        match seed {
            Some(s) => Entropy { rng: StdRng::seed_from_u64(s), created_at: SIM_EPOCH + (s % 86_400) as i64 },
            None => Entropy {
                rng: StdRng::from_rng(rand::thread_rng())
                    .unwrap_or_else(|_| StdRng::seed_from_u64(rand::random())),
                created_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(SIM_EPOCH),
            },
        }
    }

    /// The request's random generator.
    pub(crate) fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Unix seconds at which the request "started".
    pub(crate) fn created_at(&self) -> i64 {
        self.created_at
    }

    /// A UUID v4 string from the request's generator.
    pub(crate) fn uuid(&mut self) -> String {
        let mut b: [u8; 16] = self.rng.gen();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = |r: std::ops::Range<usize>| -> String { b[r].iter().map(|x| format!("{x:02x}")).collect() };
        format!("{}-{}-{}-{}-{}", h(0..4), h(4..6), h(6..8), h(8..10), h(10..16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_entropy_is_deterministic() {
        let mut a = Entropy::new(Some(5));
        let mut b = Entropy::new(Some(5));
        assert_eq!(a.uuid(), b.uuid());
        assert_eq!(a.created_at(), b.created_at());
        let mut c = Entropy::new(Some(6));
        assert_ne!(Entropy::new(Some(5)).uuid(), c.uuid());
    }

    #[test]
    fn uuid_has_v4_shape() {
        let u = Entropy::new(None).uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn seed_prefers_sim_seed_header() {
        let mut h = HeaderMap::new();
        assert_eq!(seed_of(&h), None);
        h.insert(REQUEST_ID_HEADER, http::HeaderValue::from_static("abc"));
        assert_eq!(seed_of(&h), Some(fnv1a(b"abc")));
        h.insert(SEED_HEADER, http::HeaderValue::from_static("xyz"));
        assert_eq!(seed_of(&h), Some(fnv1a(b"xyz")));
    }
}
