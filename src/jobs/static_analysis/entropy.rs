//! Shannon entropy in bits per byte (0 for a run of one byte value, 8 for
//! uniformly random bytes): packed or encrypted code shows up as a whole
//! file, or a section, close to 8.

/// Byte counts, fed in pieces so a large sample never has to be in memory.
#[derive(Clone)]
pub struct Histogram {
    counts: [u64; 256],
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; 256],
            total: 0,
        }
    }
}

impl Histogram {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.counts[b as usize] += 1;
        }
        self.total += bytes.len() as u64;
    }

    /// Bits per byte, rounded to four decimals; 0 for no bytes.
    pub fn entropy(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let n = self.total as f64;
        let h: f64 = self
            .counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                -p * p.log2()
            })
            .sum();
        (h * 10_000.0).round() / 10_000.0
    }
}

/// The entropy of one slice.
pub fn of(bytes: &[u8]) -> f64 {
    let mut h = Histogram::default();
    h.update(bytes);
    h.entropy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_known_values() {
        assert_eq!(of(b""), 0.0);
        assert_eq!(of(&[7u8; 1000]), 0.0);
        assert_eq!(of(b"abababab"), 1.0);
        let all: Vec<u8> = (0..=255u8).cycle().take(256 * 16).collect();
        assert_eq!(of(&all), 8.0);
        // Fed in pieces, the same as at once.
        let mut h = Histogram::default();
        h.update(&all[..100]);
        h.update(&all[100..]);
        assert_eq!(h.entropy(), 8.0);
    }
}
