//! A sample's file type from its first bytes: enough to route analysis and
//! to give YARA rules the `filetype` variable. Never trusts the filename.

use super::spool::Content;

/// Reads the start of a received sample and names its type.
pub fn detect(content: &Content) -> String {
    from_magic(&content.head(512)).to_string()
}

pub fn from_magic(b: &[u8]) -> &'static str {
    let starts = |m: &[u8]| b.starts_with(m);
    if starts(b"MZ") {
        "pe"
    } else if starts(b"\x7fELF") {
        "elf"
    } else if starts(&[0xfe, 0xed, 0xfa, 0xce])
        || starts(&[0xfe, 0xed, 0xfa, 0xcf])
        || starts(&[0xce, 0xfa, 0xed, 0xfe])
        || starts(&[0xcf, 0xfa, 0xed, 0xfe])
        || starts(&[0xca, 0xfe, 0xba, 0xbe])
    {
        "macho"
    } else if starts(b"%PDF-") {
        "pdf"
    } else if starts(b"PK\x03\x04") {
        "zip"
    } else if starts(&[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1]) {
        "ole"
    } else if starts(b"Rar!\x1a\x07") {
        "rar"
    } else if starts(&[0x1f, 0x8b]) {
        "gzip"
    } else if starts(b"7z\xbc\xaf\x27\x1c") {
        "7z"
    } else if starts(b"dex\n") {
        "dex"
    } else if starts(b"#!") {
        "script"
    } else if !b.is_empty()
        && b.iter()
            .all(|&c| c == b'\t' || c == b'\n' || c == b'\r' || (0x20..0x7f).contains(&c))
    {
        "text"
    } else {
        "data"
    }
}

#[cfg(test)]
mod tests {
    use super::from_magic;

    #[test]
    fn common_types() {
        assert_eq!(from_magic(b"MZ\x90\x00"), "pe");
        assert_eq!(from_magic(b"\x7fELF\x02"), "elf");
        assert_eq!(from_magic(b"%PDF-1.7"), "pdf");
        assert_eq!(from_magic(b"#!/bin/sh\n"), "script");
        assert_eq!(from_magic(b"hello world\n"), "text");
        assert_eq!(from_magic(&[0, 1, 2, 3]), "data");
        assert_eq!(from_magic(b""), "data");
    }
}
