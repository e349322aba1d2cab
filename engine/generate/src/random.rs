//! Deterministic randomness: independent ChaCha8 streams drawn from one seed and a few parts
//! (user, day, episode), stable ids derived from names or other ids, and the small
//! distributions the generator draws from.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Independent random streams drawn from one seed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Users = 1,
    Classes = 2,
    Normal = 3,
    Anomaly = 4,
    Plan = 5,
    Novelty = 6,
    NoveltyDay = 7,
    Teams = 8,
    Company = 9,
    Rollout = 10,
}

/// SplitMix64's finalizer.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mixes several words into one well-spread word.
pub(crate) fn mix(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0x243f_6a88_85a3_08d3, |h, &w| splitmix(h ^ splitmix(w)))
}

/// The random stream for (seed, stream, parts): the same inputs always give the same stream.
pub(crate) fn stream_rng(seed: u64, stream: Stream, parts: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(&[seed, stream as u64, mix(parts)]))
}

/// A version-4 UUID from two random words.
pub(crate) fn uuid_from(hi: u64, lo: u64) -> u128 {
    let v = (u128::from(hi) << 64) | u128::from(lo);
    (v & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

/// A random version-4 UUID.
pub(crate) fn random_uuid(rng: &mut ChaCha8Rng) -> u128 {
    uuid_from(rng.random(), rng.random())
}

/// A UUID derived from another one and a purpose, for the ids that need no randomness of
/// their own (correlation ids, request ids).
pub(crate) fn derived_uuid(id: u128, purpose: u64) -> u128 {
    let a = mix(&[id as u64, (id >> 64) as u64, purpose]);
    uuid_from(a, splitmix(a ^ purpose))
}

/// A stable UUID from a name (FNV-1a mixed), for catalog ids.
pub(crate) fn name_uuid(name: &str, purpose: u64) -> u128 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    uuid_from(mix(&[h, purpose]), mix(&[h, purpose, 1]))
}

/// A Duo-style key: `prefix` then upper-case letters and digits, 20 characters in all.
pub(crate) fn duo_key(prefix: &str, a: u64, b: u64) -> String {
    const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut s = String::with_capacity(20);
    s.push_str(prefix);
    let p = prefix.bytes().fold(0u64, |h, c| (h << 8) | u64::from(c));
    let mut x = mix(&[p, a, b]);
    let mut y = mix(&[p, b, a, 7]);
    while s.len() < 20 {
        s.push(char::from(ALPHABET[(x % 36) as usize]));
        x /= 36;
        if x < 36 {
            x = y;
            y = splitmix(y);
        }
    }
    s
}

/// Uniform in [0, 1).
pub(crate) fn unit(rng: &mut ChaCha8Rng) -> f64 {
    rng.random::<f64>()
}

/// Uniform integer in [lo, hi] (lo when the range is empty).
pub(crate) fn between(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        lo
    } else {
        lo + rng.random_range(0..=hi - lo)
    }
}

/// Uniform index below `n` (0 when `n` is 0).
pub(crate) fn index(rng: &mut ChaCha8Rng, n: usize) -> usize {
    if n == 0 { 0 } else { rng.random_range(0..n) }
}

/// A standard normal draw (Box-Muller).
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - unit(rng);
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Poisson draw with mean `lambda` (Knuth below 30, a rounded normal above).
pub(crate) fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
    if !lambda.is_finite() || lambda <= 0.0 {
        return 0;
    }
    if lambda < 30.0 {
        let limit = (-lambda).exp();
        let mut k = 0u32;
        let mut p = unit(rng);
        while p > limit && k < 1000 {
            k += 1;
            p *= unit(rng);
        }
        k
    } else {
        let x = lambda + lambda.sqrt() * normal(rng);
        x.round().clamp(0.0, 1_000_000.0) as u32
    }
}

/// Picks an index by weights.
pub(crate) fn weighted(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return index(rng, weights.len());
    }
    let mut r = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if r < u64::from(w) {
            return i;
        }
        r -= u64::from(w);
    }
    weights.len().saturating_sub(1)
}

/// Shuffles in place (Fisher-Yates), deterministically for a given stream.
pub(crate) fn shuffle<T>(rng: &mut ChaCha8Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}
