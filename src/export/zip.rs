//! A one-entry zip archive protected with traditional PKWARE encryption
//! (ZipCrypto), the form the field exchanges malware in (password
//! `infected`): weak as cryptography, but it keeps mail filters, virus
//! scanners and careless double-clicks away from the sample.
//!
//! Only framing and encryption: the caller feeds the sample through
//! `Encoder::data` in chunks of any size, so an archive of any size takes
//! constant memory. The entry is stored (no compression), which makes the
//! archive's length a function of the sample's and lets the answer carry a
//! Content-Length. Zip64 records are written only when a field would
//! overflow, so an ordinary sample gets the plainest archive every reader
//! knows.

use chrono::{DateTime, Datelike, Timelike, Utc};

/// The password every analyst expects on a malware zip.
pub const PASSWORD: &[u8] = b"infected";

/// Bytes of the encryption header in front of the data.
const CRYPT_HEADER: u64 = 12;
const LOCAL_HEADER: u64 = 30;
const CENTRAL_HEADER: u64 = 46;
const END_RECORD: u64 = 22;
const ZIP64_END_RECORD: u64 = 56;
const ZIP64_LOCATOR: u64 = 20;
/// The zip64 extended-information extra field with both sizes.
const ZIP64_EXTRA: u64 = 20;
/// Above this many data bytes some 32-bit field (the sizes, or the central
/// directory's offset past the data) could overflow, so zip64 is used.
/// The margin covers every header in front of the central directory.
const ZIP64_ABOVE: u64 = u32::MAX as u64 - 1024;

/// Encryption (bit 0) only. No data descriptor (bit 3): see `Encoder::new`.
const FLAGS: u16 = 1;
/// Stored, not deflated.
const METHOD: u16 = 0;
/// Made by Unix (so the external attributes hold a mode), spec version
/// 2.0 (encryption) or 4.5 (zip64).
const MADE_BY_UNIX: u16 = 3 << 8;
/// A regular file, rw-r--r--: unzip must never extract the sample
/// executable.
const UNIX_MODE: u32 = 0o100_644;

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
}

/// One step of CRC-32 as ZipCrypto's key schedule uses it (no pre- or
/// post-inversion).
fn crc_step(crc: u32, b: u8) -> u32 {
    CRC_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8)
}

/// The traditional PKWARE stream cipher (APPNOTE 6.1).
#[derive(Clone)]
pub struct ZipCrypto {
    keys: [u32; 3],
}

impl ZipCrypto {
    pub fn new(password: &[u8]) -> Self {
        let mut c = ZipCrypto {
            keys: [0x1234_5678, 0x2345_6789, 0x3456_7890],
        };
        for &b in password {
            c.update(b);
        }
        c
    }

    fn update(&mut self, plain: u8) {
        let [k0, k1, k2] = &mut self.keys;
        *k0 = crc_step(*k0, plain);
        *k1 = k1
            .wrapping_add(*k0 & 0xff)
            .wrapping_mul(134_775_813)
            .wrapping_add(1);
        *k2 = crc_step(*k2, (*k1 >> 24) as u8);
    }

    fn key_byte(&self) -> u8 {
        let t = (self.keys[2] | 2) & 0xffff;
        (t.wrapping_mul(t ^ 1) >> 8) as u8
    }

    /// Encrypts `buf` in place, continuing the stream.
    pub fn encrypt(&mut self, buf: &mut [u8]) {
        for b in buf {
            let plain = *b;
            *b = plain ^ self.key_byte();
            self.update(plain);
        }
    }

    /// Decrypts `buf` in place, continuing the stream (for tests).
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        for b in buf {
            let plain = *b ^ self.key_byte();
            *b = plain;
            self.update(plain);
        }
    }
}

/// Writes one encrypted, stored entry: `head`, then every byte of the
/// entry through `data`, then `tail`.
pub struct Encoder {
    name: Vec<u8>,
    size: u64,
    crc: u32,
    dos_time: u16,
    dos_date: u16,
    zip64: bool,
    cipher: ZipCrypto,
}

impl Encoder {
    /// `crc` is the CRC-32 of the `size` bytes that will follow. It is
    /// needed up front: the encryption header's check byte is its high
    /// byte, and the local header carries it with the sizes. The other
    /// choice, a data descriptor after the data (check byte from the
    /// modification time), would save the caller a read of the sample,
    /// but leaves the local header without sizes, and a reader that
    /// streams the archive (never seeing the central directory) cannot
    /// find the end of an encrypted stored entry then.
    pub fn new(name: &str, size: u64, crc: u32, modified: DateTime<Utc>, password: &[u8]) -> Self {
        Self::with_zip64(name, size, crc, modified, password, size > ZIP64_ABOVE)
    }

    fn with_zip64(
        name: &str,
        size: u64,
        crc: u32,
        modified: DateTime<Utc>,
        password: &[u8],
        zip64: bool,
    ) -> Self {
        let (dos_time, dos_date) = dos_datetime(modified);
        Encoder {
            name: name.as_bytes().to_vec(),
            size,
            crc,
            dos_time,
            dos_date,
            zip64,
            cipher: ZipCrypto::new(password),
        }
    }

    fn stored_size(&self) -> u64 {
        self.size + CRYPT_HEADER
    }

    fn extra_len(&self) -> u64 {
        if self.zip64 {
            ZIP64_EXTRA
        } else {
            0
        }
    }

    fn version(&self) -> u16 {
        if self.zip64 {
            45
        } else {
            20
        }
    }

    /// Where the central directory starts.
    fn central_offset(&self) -> u64 {
        LOCAL_HEADER + self.name.len() as u64 + self.extra_len() + self.stored_size()
    }

    fn central_len(&self) -> u64 {
        CENTRAL_HEADER + self.name.len() as u64 + self.extra_len()
    }

    /// The CRC-32 the archive declares for the entry.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// The whole archive's length in bytes.
    pub fn archive_len(&self) -> u64 {
        let zip64 = if self.zip64 {
            ZIP64_END_RECORD + ZIP64_LOCATOR
        } else {
            0
        };
        self.central_offset() + self.central_len() + zip64 + END_RECORD
    }

    /// The local header and the encryption header, with fresh random
    /// bytes in the encryption header.
    pub fn head(&mut self) -> Vec<u8> {
        self.head_with(rand::random())
    }

    fn head_with(&mut self, random: [u8; 11]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            (LOCAL_HEADER + self.name.len() as u64 + self.extra_len() + CRYPT_HEADER) as usize,
        );
        put32(&mut out, 0x0403_4b50);
        put16(&mut out, self.version());
        self.put_shared_fields(&mut out);
        out.extend_from_slice(&self.name);
        if self.zip64 {
            self.put_zip64_extra(&mut out);
        }
        let mut header = [0u8; CRYPT_HEADER as usize];
        header[..11].copy_from_slice(&random);
        header[11] = (self.crc >> 24) as u8;
        self.cipher.encrypt(&mut header);
        out.extend_from_slice(&header);
        out
    }

    /// The fields the local header and the central directory entry both
    /// carry, in the same order: flags to the extra field's length.
    fn put_shared_fields(&self, out: &mut Vec<u8>) {
        put16(out, FLAGS);
        put16(out, METHOD);
        put16(out, self.dos_time);
        put16(out, self.dos_date);
        put32(out, self.crc);
        if self.zip64 {
            put32(out, u32::MAX);
            put32(out, u32::MAX);
        } else {
            put32(out, self.stored_size() as u32);
            put32(out, self.size as u32);
        }
        put16(out, self.name.len() as u16);
        put16(out, self.extra_len() as u16);
    }

    /// Encrypts the next bytes of the entry in place.
    pub fn data(&mut self, chunk: &mut [u8]) {
        self.cipher.encrypt(chunk);
    }

    /// The central directory and the end records.
    pub fn tail(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity((self.archive_len() - self.central_offset()) as usize);
        put32(&mut out, 0x0201_4b50);
        put16(&mut out, MADE_BY_UNIX | self.version());
        put16(&mut out, self.version());
        self.put_shared_fields(&mut out);
        put16(&mut out, 0); // comment
        put16(&mut out, 0); // disk
        put16(&mut out, 0); // internal attributes: binary
        put32(&mut out, UNIX_MODE << 16);
        put32(&mut out, 0); // the local header's offset
        out.extend_from_slice(&self.name);
        if self.zip64 {
            self.put_zip64_extra(&mut out);
        }
        let central_offset = self.central_offset();
        let central_len = self.central_len();
        if self.zip64 {
            let record_at = central_offset + central_len;
            put32(&mut out, 0x0606_4b50);
            put64(&mut out, ZIP64_END_RECORD - 12);
            put16(&mut out, MADE_BY_UNIX | 45);
            put16(&mut out, 45);
            put32(&mut out, 0); // this disk
            put32(&mut out, 0); // the central directory's disk
            put64(&mut out, 1); // entries on this disk
            put64(&mut out, 1); // entries
            put64(&mut out, central_len);
            put64(&mut out, central_offset);
            put32(&mut out, 0x0706_4b50);
            put32(&mut out, 0); // the zip64 end record's disk
            put64(&mut out, record_at);
            put32(&mut out, 1); // disks
        }
        put32(&mut out, 0x0605_4b50);
        put16(&mut out, 0); // this disk
        put16(&mut out, 0); // the central directory's disk
        put16(&mut out, 1); // entries on this disk
        put16(&mut out, 1); // entries
        put32(&mut out, central_len as u32);
        put32(
            &mut out,
            if self.zip64 {
                u32::MAX
            } else {
                central_offset as u32
            },
        );
        put16(&mut out, 0); // comment
        out
    }

    fn put_zip64_extra(&self, out: &mut Vec<u8>) {
        put16(out, 0x0001);
        put16(out, (ZIP64_EXTRA - 4) as u16);
        put64(out, self.size);
        put64(out, self.stored_size());
    }
}

/// MS-DOS time and date (two-second resolution, 1980 to 2107).
fn dos_datetime(t: DateTime<Utc>) -> (u16, u16) {
    let year = t.year().clamp(1980, 2107);
    let (month, day, hour, minute, second) = if year == t.year() {
        (t.month(), t.day(), t.hour(), t.minute(), t.second())
    } else if year == 1980 {
        (1, 1, 0, 0, 0)
    } else {
        (12, 31, 23, 59, 58)
    };
    let time = (hour << 11) | (minute << 5) | (second / 2);
    let date = (((year - 1980) as u32) << 9) | (month << 5) | day;
    (time as u16, date as u16)
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn archive(data: &[u8], zip64: bool, chunk: usize) -> Vec<u8> {
        let crc = crc32fast::hash(data);
        let when = DateTime::parse_from_rfc3339("2026-11-22T10:20:31Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut enc = Encoder::with_zip64("entry", data.len() as u64, crc, when, PASSWORD, zip64);
        // Fixed random bytes: the tests compare archives and passwords.
        let mut out = enc.head_with([7; 11]);
        for piece in data.chunks(chunk) {
            let mut piece = piece.to_vec();
            enc.data(&mut piece);
            out.extend_from_slice(&piece);
        }
        out.extend_from_slice(&enc.tail());
        assert_eq!(out.len() as u64, enc.archive_len());
        out
    }

    fn sample() -> Vec<u8> {
        (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn the_cipher_round_trips_and_the_check_byte_is_the_crcs_high_byte() {
        let data = sample();
        let zip = archive(&data, false, 4096);
        let name_len = u16::from_le_bytes([zip[26], zip[27]]) as usize;
        let start = 30 + name_len;
        let mut body = zip[start..start + 12 + data.len()].to_vec();
        assert_ne!(&body[12..], &data[..]);
        let mut c = ZipCrypto::new(PASSWORD);
        c.decrypt(&mut body);
        assert_eq!(body[11], (crc32fast::hash(&data) >> 24) as u8);
        assert_eq!(&body[12..], &data[..]);
        // The wrong password gives other bytes.
        let mut wrong = zip[start..start + 12].to_vec();
        ZipCrypto::new(b"infecte").decrypt(&mut wrong);
        assert_ne!(wrong[11], body[11]);
    }

    #[test]
    fn chunking_does_not_change_the_archive() {
        let data = sample();
        assert_eq!(archive(&data, false, 1), archive(&data, false, 65_536));
    }

    #[test]
    fn zip64_starts_only_where_32_bit_fields_could_overflow() {
        let when = Utc::now();
        let small = Encoder::new("x", 128 << 20, 0, when, PASSWORD);
        assert!(!small.zip64);
        let big = Encoder::new("x", 1 << 40, 0, when, PASSWORD);
        assert!(big.zip64);
        assert_eq!(
            big.archive_len(),
            30 + 1 + 20 + 12 + (1u64 << 40) + 46 + 1 + 20 + 56 + 20 + 22
        );
        let tail = big.tail();
        // The end record points at the zip64 records, which point at the
        // central directory right after the data.
        let eocd = &tail[tail.len() - 22..];
        assert_eq!(&eocd[16..20], &u32::MAX.to_le_bytes());
        let loc = &tail[tail.len() - 42..tail.len() - 22];
        let record_at = u64::from_le_bytes(loc[8..16].try_into().unwrap());
        assert_eq!(record_at, 30 + 1 + 20 + 12 + (1u64 << 40) + 46 + 1 + 20);
        let record = &tail[tail.len() - 98..tail.len() - 42];
        let cd_at = u64::from_le_bytes(record[48..56].try_into().unwrap());
        assert_eq!(cd_at, 30 + 1 + 20 + 12 + (1u64 << 40));
    }

    #[test]
    fn dos_times_are_clamped_to_what_the_format_holds() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            dos_datetime(t("2026-11-22T10:20:31Z")),
            ((10 << 11) | (20 << 5) | 15, (46 << 9) | (11 << 5) | 22)
        );
        assert_eq!(dos_datetime(t("1970-01-01T00:00:00Z")), (0, (1 << 5) | 1));
    }

    /// Python's zipfile, Info-ZIP unzip and 7-Zip read both forms, with
    /// the password and not without it.
    #[test]
    fn readers_open_the_plain_and_the_zip64_form() {
        let data = sample();
        let want = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&data))
        };
        for zip64 in [false, true] {
            let dir = std::env::temp_dir()
                .join(format!("sandgnat-zip-unit-{}-{zip64}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("a.zip");
            std::fs::write(&path, archive(&data, zip64, 8192)).unwrap();
            let script = "import sys, zipfile, hashlib\n\
                 z = zipfile.ZipFile(sys.argv[1])\n\
                 i = z.infolist()[0]\n\
                 assert i.flag_bits & 1 and i.compress_type == 0\n\
                 try:\n    z.read('entry', pwd=b'wrong'); sys.exit('read with a wrong password')\n\
                 except (RuntimeError, zipfile.BadZipFile): pass\n\
                 print(hashlib.sha256(z.read('entry', pwd=b'infected')).hexdigest())";
            let readers: [(&str, Vec<&str>); 3] = [
                ("python3", vec!["-c", script]),
                ("unzip", vec!["-p", "-P", "infected"]),
                ("7z", vec!["x", "-so", "-pinfected"]),
            ];
            for (program, args) in readers {
                let out = Command::new(program)
                    .args(&args)
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{program}, zip64={zip64}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let got = if program == "python3" {
                    String::from_utf8_lossy(&out.stdout).trim().to_owned()
                } else {
                    use sha2::Digest;
                    hex::encode(sha2::Sha256::digest(&out.stdout))
                };
                assert_eq!(got, want, "{program}, zip64={zip64}");
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
