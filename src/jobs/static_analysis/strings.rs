//! Printable ASCII runs (as `strings -n 6` finds them), gathered while the
//! sample streams past: analysts look for URLs, paths and mutex names
//! first. Bounded: at most `MAX_SHOWN` strings of at most `MAX_LEN`
//! characters are kept; the rest are only counted. UTF-16 strings are not
//! looked for.

pub const MIN_LEN: usize = 6;
pub const MAX_SHOWN: usize = 100;
pub const MAX_LEN: usize = 120;

#[derive(Default)]
pub struct Strings {
    run: Vec<u8>,
    run_len: usize,
    pub total: u64,
    pub shown: Vec<String>,
}

fn printable(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b)
}

impl Strings {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if printable(b) {
                if self.run.len() < MAX_LEN {
                    self.run.push(b);
                }
                self.run_len += 1;
            } else {
                self.end_run();
            }
        }
    }

    fn end_run(&mut self) {
        if self.run_len >= MIN_LEN {
            self.total += 1;
            if self.shown.len() < MAX_SHOWN {
                // Printable ASCII is valid UTF-8.
                self.shown
                    .push(String::from_utf8_lossy(&self.run).into_owned());
            }
        }
        self.run.clear();
        self.run_len = 0;
    }

    /// Ends the last run (the sample's end is a boundary too).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.end_run();
        (self.total, self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_across_pieces_counted_and_capped() {
        let mut s = Strings::default();
        s.update(b"\x00short\x00http://exa");
        s.update(b"mple.test/x\x00");
        s.update(&[b'A'; 500]);
        let (total, shown) = s.finish();
        assert_eq!(total, 2);
        assert_eq!(shown[0], "http://example.test/x");
        assert_eq!(shown[1].len(), MAX_LEN);
    }
}
