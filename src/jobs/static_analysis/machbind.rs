//! Counting a Mach-O's bindings before goblin expands them.
//!
//! goblin's import reader (0.10, `mach/imports.rs`) turns each binding
//! opcode into an import held in memory, and one opcode
//! (`BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB`) into as many imports as
//! a 64-bit count in the file says: a Mach-O of a kilobyte made the job
//! allocate gigabytes and run for seconds (found by `fuzz/`, target
//! `executable`). So the same opcodes are walked here first, counting
//! without keeping anything, and the imports are read only when they are
//! few enough. The walk follows goblin's reading (the last
//! `LC_DYLD_INFO(_ONLY)`, its bind then its lazy-bind range, positions in
//! the bytes goblin parsed), and where it is unsure it counts more, never
//! fewer.

use goblin::mach::load_command::CommandVariant;
use goblin::mach::MachO;

/// The most bindings whose imports are read (each one is an allocation of
/// about a hundred bytes in goblin); a real executable has far fewer.
pub const MAX_BINDINGS: u64 = 100_000;

/// How many imports goblin would make of `m` (parsed from `data`), or a
/// number past `MAX_BINDINGS` as soon as that is certain.
pub fn count(m: &MachO<'_>, data: &[u8]) -> u64 {
    let info = m.load_commands.iter().rev().find_map(|c| match c.command {
        CommandVariant::DyldInfo(d) | CommandVariant::DyldInfoOnly(d) => Some(d),
        _ => None,
    });
    let Some(info) = info else {
        return 0;
    };
    let bound = walk(data, info.bind_off, info.bind_size);
    if bound > MAX_BINDINGS {
        return bound;
    }
    bound.saturating_add(walk(data, info.lazy_bind_off, info.lazy_bind_size))
}

/// The imports one range of binding opcodes makes, as goblin reads them
/// (it stops at the first opcode it cannot read).
fn walk(data: &[u8], off: u32, size: u32) -> u64 {
    let start = off as usize;
    let end = start.saturating_add(size as usize);
    let mut at = start;
    let mut n: u64 = 0;
    while at < end && n <= MAX_BINDINGS {
        let Some(&op) = data.get(at) else {
            break;
        };
        at += 1;
        let read = match op & 0xF0 {
            // SET_DYLIB_ORDINAL_ULEB, SET_ADDEND_SLEB,
            // SET_SEGMENT_AND_OFFSET_ULEB, ADD_ADDR_ULEB.
            0x20 | 0x60 | 0x70 | 0x80 => leb(data, &mut at).map(drop),
            // SET_SYMBOL_TRAILING_FLAGS_IMM: a NUL-terminated name.
            0x40 => data[at.min(data.len())..]
                .iter()
                .position(|&b| b == 0)
                .map(|nul| at += nul + 1),
            // DO_BIND, DO_BIND_ADD_ADDR_IMM_SCALED.
            0x90 | 0xB0 => {
                n += 1;
                Some(())
            }
            // DO_BIND_ADD_ADDR_ULEB: the import is made before the read.
            0xA0 => {
                n += 1;
                leb(data, &mut at).map(drop)
            }
            // DO_BIND_ULEB_TIMES_SKIPPING_ULEB: count, then skip.
            0xC0 => leb(data, &mut at).and_then(|times| {
                leb(data, &mut at)?;
                n = n.saturating_add(times);
                Some(())
            }),
            _ => Some(()),
        };
        if read.is_none() {
            break;
        }
    }
    n
}

/// One LEB128 number (at most ten bytes, as scroll reads them), or `None`
/// where goblin's read would fail.
fn leb(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *data.get(*at)?;
        *at += 1;
        if shift == 63 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_are_counted_as_goblin_expands_them() {
        // DONE, SET_SYMBOL "_f", DO_BIND, DO_BIND_ADD_ADDR_ULEB 0x81 0x01,
        // DO_BIND_ULEB_TIMES_SKIPPING_ULEB 3 0, ADD_ADDR_ULEB 5, DO_BIND.
        let ops = [
            0x00, 0x40, b'_', b'f', 0, 0x90, 0xA0, 0x81, 0x01, 0xC0, 3, 0, 0x80, 5, 0xB1,
        ];
        assert_eq!(walk(&ops, 0, ops.len() as u32), 1 + 1 + 3 + 1);
        // A range past the end stops where the bytes do.
        assert_eq!(walk(&ops, 0, u32::MAX), 6);
        assert_eq!(walk(&ops, u32::MAX, 10), 0);
        // An unfinished number or name ends the walk, as in goblin.
        assert_eq!(walk(&[0x90, 0xC0, 0xff], 0, 3), 1);
        assert_eq!(walk(&[0x90, 0x40, b'x'], 0, 3), 1);
    }

    #[test]
    fn a_huge_repeat_count_is_seen_without_expanding_it() {
        // DO_BIND_ULEB_TIMES_SKIPPING_ULEB with a count of 2^62, skip 8.
        let ops = [
            0xC0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 8,
        ];
        assert_eq!(walk(&ops, 0, ops.len() as u32), 1 << 62);
        // The largest count scroll reads, and one it refuses (as goblin
        // would: the walk stops there).
        let mut max = vec![0xC0];
        max.extend_from_slice(&[0xff; 9]);
        max.extend_from_slice(&[0x01, 0]);
        assert_eq!(walk(&max, 0, max.len() as u32), u64::MAX);
        let mut bad = vec![0xC0];
        bad.extend_from_slice(&[0xff; 9]);
        bad.extend_from_slice(&[0x02, 0]);
        assert_eq!(walk(&bad, 0, bad.len() as u32), 0);
        // Many single binds stop the walk once past the limit.
        let binds = vec![0x90u8; 1 << 20];
        assert_eq!(walk(&binds, 0, binds.len() as u32), MAX_BINDINGS + 1);
    }
}
