//! FNV-1a, 64 bit: the stable, dependency-free hash behind schema fingerprints and model-file
//! checksums; and [`checksum64`], the same idea a word at a time, for large state files. Not
//! cryptographic: they detect corruption, not tampering.

/// FNV-1a 64 of `bytes`, continuing from `state` (start with [`FNV_OFFSET`]).
pub fn fnv1a64_from(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The FNV-1a 64 offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_from(FNV_OFFSET, bytes)
}

/// A checksum of `bytes`, eight bytes per step (several times faster than [`fnv1a64`] on
/// megabytes of checkpointed state): each little-endian word is xored in, multiplied by the
/// FNV prime and rotated; the tail and the length go through FNV-1a.
pub fn checksum64(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut h = FNV_OFFSET;
    for w in words.by_ref() {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(29);
    }
    let h = fnv1a64_from(h, words.remainder());
    fnv1a64_from(h, &(bytes.len() as u64).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn continues_across_chunks() {
        assert_eq!(fnv1a64_from(fnv1a64(b"foo"), b"bar"), fnv1a64(b"foobar"));
    }

    #[test]
    fn checksum_sees_every_byte_and_the_length() {
        let base: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        let sum = checksum64(&base);
        for i in [0, 7, 8, 500, 999, 1000] {
            let mut b = base.clone();
            b[i] ^= 1;
            assert_ne!(checksum64(&b), sum, "flip at {i}");
        }
        assert_ne!(checksum64(&base[..1000]), sum);
        assert_ne!(checksum64(&[0u8; 16]), checksum64(&[0u8; 8]));
        assert_eq!(checksum64(&base), sum);
    }
}
