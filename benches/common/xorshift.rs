//! Pseudo-random sample bytes for the benchmarks (xorshift64, the low
//! byte of each step), the same for the same seed on every run.

/// `len` bytes from `seed` (made odd: a zero state would stay zero).
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
