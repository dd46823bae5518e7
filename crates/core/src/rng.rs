//! A small, seedable, lock-free pseudo-random source for jitter, sampling and
//! fault injection.

use std::sync::atomic::{AtomicU64, Ordering};

/// The SplitMix64 step (Steele, Lea and Flood, 2014): the Weyl sequence's next
/// state mixed by a bijective finaliser. Every 64-bit output appears once per
/// 2^64 states.
#[inline]
pub const fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded SplitMix64 generator that many threads may draw from at once: each
/// draw is one `fetch_add` on a Weyl counter and a mix, no lock.
///
/// The same seed gives the same sequence of draws; with several threads drawing,
/// each draw is still a distinct element of that sequence, only their
/// distribution among the threads depends on scheduling. Not for secrets.
///
/// ```
/// use heijunka_core::rng::SplitMix64;
///
/// let a = SplitMix64::new(7);
/// let b = SplitMix64::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let x = a.next_f64();
/// assert!((0.0..1.0).contains(&x));
/// assert!(a.below(10) < 10);
/// ```
#[derive(Debug)]
pub struct SplitMix64 {
    state: AtomicU64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// A generator seeded from std's per-process random hash keys and the time.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Self::new(h.finish())
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&self) -> u64 {
        // Relaxed: the counter orders nothing but itself; every draw gets its
        // own state because fetch_add is atomic.
        splitmix64(
            self.state
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed),
        )
    }

    /// A float uniformly in `[0, 1)` (53 random bits).
    #[inline]
    pub fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An integer uniformly in `[0, n)` (Lemire's multiply-shift; the bias is
    /// below 2^-64 × n). `0` when `n` is `0`.
    #[inline]
    pub fn below(&self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `true` with probability `p` (never for `p <= 0` or NaN, always for
    /// `p >= 1`).
    #[inline]
    pub fn chance(&self, p: f64) -> bool {
        self.next_f64() < p
    }
}

impl Default for SplitMix64 {
    fn default() -> Self {
        Self::from_entropy()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn known_sequence_and_ranges() {
        // The reference implementation's first output for seed 0
        // (https://prng.di.unimi.it/splitmix64.c).
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        let r = SplitMix64::new(1);
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[r.below(4) as usize] += 1;
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
        assert_eq!(r.below(0), 0);
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
    }
}
