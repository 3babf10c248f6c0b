//! What goblin's Mach-O import and export readers would build, measured
//! first by walking the same bytes without keeping anything, so that they
//! run only where they finish in bounded memory and stack. Both were found
//! wanting by `fuzz/` (target `executable`), on samples of a kilobyte:
//!
//! - Bindings: goblin's import reader (0.10, `mach/imports.rs`) turns each
//!   binding opcode into an import held in memory, and one opcode
//!   (`BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB`) into as many imports
//!   as a 64-bit count in the file says: the job allocated gigabytes and
//!   ran for seconds. `count` follows goblin's reading (the last
//!   `LC_DYLD_INFO(_ONLY)`, its bind then its lazy-bind range) and, where
//!   unsure, counts more, never fewer.
//! - The export trie: goblin walks it recursively and trusts its child
//!   offsets, so a node that is its own descendant recursed until the
//!   stack overflowed, which no `catch_unwind` survives (the runner process
//!   died, and again on each retry); a node reached twice, or very many
//!   children, multiply what it builds. `export_trie` walks it iteratively
//!   and accepts only a tree of bounded depth, size and name length.

use std::collections::HashSet;
use std::ops::Range;

use goblin::mach::load_command::CommandVariant;
use goblin::mach::MachO;

/// The most bindings whose imports are read (each one is an allocation of
/// about a hundred bytes in goblin); a real executable has far fewer.
pub const MAX_BINDINGS: u64 = 100_000;

/// How many imports goblin's reader would make of `m` (parsed from
/// `data`), or a number past `MAX_BINDINGS` as soon as that is certain.
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

/// Nodes of an export trie walked at most.
const MAX_TRIE_NODES: usize = 200_000;
/// Depth of an export trie at most (goblin recurses once per level).
const MAX_TRIE_DEPTH: usize = 512;
/// Length of one exported name at most, and of all of them together.
const MAX_NAME: usize = 64 << 10;
const MAX_NAMES: usize = 64 << 20;

/// Whether goblin may walk `m`'s export trie (parsed from `data`), or why
/// not.
pub fn export_trie(m: &MachO<'_>, data: &[u8]) -> Result<(), String> {
    match trie_location(m, data) {
        Some(trie) => walk_trie(data, trie),
        None => Ok(()),
    }
}

/// The trie at `trie` in `data` is a tree within the bounds.
fn walk_trie(data: &[u8], trie: Range<usize>) -> Result<(), String> {
    let malformed = || "the export trie is malformed".to_string();
    let mut visited = HashSet::new();
    let mut names = 0usize;
    // (node, depth, length of the name so far)
    let mut todo = vec![(trie.start, 0usize, 0usize)];
    while let Some((node, depth, name)) = todo.pop() {
        // goblin ends a walk quietly at a node outside the trie.
        if node >= trie.end {
            continue;
        }
        if !visited.insert(node) {
            return Err("the export trie reaches a node twice".into());
        }
        if visited.len() > MAX_TRIE_NODES || depth > MAX_TRIE_DEPTH {
            return Err(format!(
                "the export trie has over {MAX_TRIE_NODES} nodes or {MAX_TRIE_DEPTH} levels"
            ));
        }
        names = names.saturating_add(name);
        if name > MAX_NAME || names > MAX_NAMES {
            return Err("the export trie's names are too long".into());
        }
        let mut at = node;
        let terminal = leb(data, &mut at).ok_or_else(malformed)?;
        if terminal != 0 {
            at = usize::try_from(terminal)
                .ok()
                .and_then(|t| at.checked_add(t))
                .ok_or_else(malformed)?;
        }
        let children = leb(data, &mut at).ok_or_else(malformed)?;
        // Each child takes two bytes at least (its edge's NUL, its offset).
        if children > (data.len().saturating_sub(at) / 2) as u64 {
            return Err(malformed());
        }
        for _ in 0..children {
            let edge = data
                .get(at..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
                .ok_or_else(malformed)?;
            at += edge + 1;
            let child = leb(data, &mut at)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| o.checked_add(trie.start))
                .ok_or_else(malformed)?;
            todo.push((child, depth + 1, name.saturating_add(edge)));
        }
    }
    Ok(())
}

/// Where goblin reads the export trie: the last `LC_DYLD_INFO(_ONLY)` or
/// `LC_DYLD_EXPORTS_TRIE`, if it lies inside `data` (else it reads none).
fn trie_location(m: &MachO<'_>, data: &[u8]) -> Option<Range<usize>> {
    let (start, size) = m
        .load_commands
        .iter()
        .filter_map(|c| match c.command {
            CommandVariant::DyldInfo(d) | CommandVariant::DyldInfoOnly(d) => {
                Some((d.export_off as usize, d.export_size as usize))
            }
            CommandVariant::DyldExportsTrie(l) => Some((l.dataoff as usize, l.datasize as usize)),
            _ => None,
        })
        .next_back()?;
    let end = start.checked_add(size)?;
    (end <= data.len() && start < end).then_some(start..end)
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

    /// A trie node: terminal size 0, then its children (edge, offset).
    fn node(children: &[(&str, u8)]) -> Vec<u8> {
        let mut n = vec![0, children.len() as u8];
        for (edge, to) in children {
            n.extend_from_slice(edge.as_bytes());
            n.push(0);
            n.push(*to);
        }
        n
    }

    #[test]
    fn an_export_trie_must_be_a_bounded_tree() {
        // Root at 0: "_a" -> 6. A terminal node at 6 (info: flags 0,
        // address 0x10) with no children.
        let mut tree = node(&[("_a", 6)]);
        tree.extend_from_slice(&[2, 0, 0x10, 0]);
        assert_eq!(walk_trie(&tree, 0..tree.len()), Ok(()));
        // A node that is its own child: goblin recursed until the stack
        // overflowed.
        let cycle = node(&[("_a", 0)]);
        assert!(walk_trie(&cycle, 0..cycle.len())
            .unwrap_err()
            .contains("twice"));
        // Two edges to one node: what goblin builds doubles per level.
        let mut shared = node(&[("_a", 10), ("_b", 10)]);
        shared.extend_from_slice(&[0, 0]);
        assert!(walk_trie(&shared, 0..shared.len())
            .unwrap_err()
            .contains("twice"));
        // More children than the bytes could hold: goblin allocated for
        // all of them first.
        let mut wide = vec![0u8, 0xff, 0xff, 0x03];
        wide.extend_from_slice(&[0; 16]);
        assert!(walk_trie(&wide, 0..wide.len()).is_err());
        // A child outside the trie ends that branch, as in goblin.
        let out = node(&[("_a", 100)]);
        assert_eq!(walk_trie(&out, 0..out.len()), Ok(()));
    }

    #[test]
    fn a_deep_export_trie_is_refused() {
        // A chain of nodes, each the only child of the one before.
        let mut chain = Vec::new();
        for i in 0..(MAX_TRIE_DEPTH + 2) {
            let next = (i + 1) * 8;
            chain.extend_from_slice(&[0, 1, b'x', 0]);
            let mut v = next;
            loop {
                let byte = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    chain.push(byte);
                    break;
                }
                chain.push(byte | 0x80);
            }
            while chain.len() < next {
                chain.push(0);
            }
        }
        assert!(walk_trie(&chain, 0..chain.len())
            .unwrap_err()
            .contains("levels"));
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
