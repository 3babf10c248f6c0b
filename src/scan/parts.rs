//! The rules split into parts, so that one large sample is scanned on
//! several cores at once: each part is a rule set of its own, compiled
//! from whole namespaces (a file's rules, with any other file of the same
//! stem), so a rule sees the same namespace, global rules and neighbours
//! in its part as in the whole set, and a sample matches the same rules.
//! Only large samples use the parts (`RuleSet::scan`): every part reads
//! every byte, so for a sample scanned on one core the whole set costs
//! less than its parts one after another.
//!
//! The compiled form handed to workers (and kept in the cache) is the
//! whole set then the parts, serialized one after another, behind a
//! header that gives their count and lengths.

/// Opens the compiled form; the trailing byte is its version.
const MAGIC: &[u8; 16] = b"sandgnat-parts\n\x01";

/// The most parts a rule set is split into: beyond the cores a node has,
/// more parts only add scans' fixed costs.
pub const MAX_PARTS: usize = 64;

/// Which part each source goes to, for `parts` parts: sources sharing a
/// namespace stay together; groups go, largest first, to the part with
/// the fewest bytes so far, so the parts' scans take about as long. A
/// result holds source indices in their original order, and no part is
/// empty (fewer parts than asked when there are fewer namespaces).
pub fn assign(namespaces: &[(&str, usize)], parts: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, (namespace, size)) in namespaces.iter().enumerate() {
        let g = *index.entry(namespace).or_insert_with(|| {
            groups.push((0, Vec::new()));
            groups.len() - 1
        });
        groups[g].0 += size;
        groups[g].1.push(i);
    }
    let parts = parts.clamp(1, MAX_PARTS).min(groups.len().max(1));
    // Largest first; ties by first source, so the split is the same on
    // every node given the same files.
    groups.sort_by(|a, b| b.0.cmp(&a.0).then(a.1[0].cmp(&b.1[0])));
    let mut out: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); parts];
    for (size, members) in groups {
        let lightest = (0..parts)
            .min_by_key(|&p| (out[p].0, p))
            .unwrap_or_default();
        out[lightest].0 += size;
        out[lightest].1.extend(members);
    }
    out.into_iter()
        .map(|(_, mut members)| {
            members.sort_unstable();
            members
        })
        .filter(|m| !m.is_empty())
        .collect()
}

/// The parts' serialized rule sets as one compiled form.
pub fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = parts.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + 8 * parts.len() + body);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// The parts of a compiled form made by [`join`], or why it is not one.
pub fn split(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a compiled rule set of this version")?;
    let (count, mut rest) = rest.split_at_checked(4).ok_or("truncated header")?;
    let count = u32::from_le_bytes(count.try_into().map_err(|_| "truncated header")?) as usize;
    if count == 0 || count > MAX_PARTS {
        return Err(format!("{count} parts (1 to {MAX_PARTS} expected)"));
    }
    let mut lengths = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, after) = rest.split_at_checked(8).ok_or("truncated header")?;
        let len = u64::from_le_bytes(len.try_into().map_err(|_| "truncated header")?);
        lengths.push(usize::try_from(len).map_err(|_| "a part longer than memory")?);
        rest = after;
    }
    let mut out = Vec::with_capacity(count);
    for len in lengths {
        let (part, after) = rest.split_at_checked(len).ok_or("a part is cut short")?;
        out.push(part);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last part", rest.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_never_split_and_parts_are_balanced() {
        let sources = [
            ("a", 100),
            ("b", 40),
            ("a", 10),
            ("c", 60),
            ("d", 50),
            ("b", 5),
        ];
        let parts = assign(&sources, 2);
        assert_eq!(parts.len(), 2);
        for ns in ["a", "b"] {
            let holding: Vec<_> = parts
                .iter()
                .filter(|p| p.iter().any(|&i| sources[i].0 == ns))
                .collect();
            assert_eq!(holding.len(), 1, "namespace {ns} in more than one part");
        }
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..sources.len()).collect::<Vec<_>>());
        let sizes: Vec<usize> = parts
            .iter()
            .map(|p| p.iter().map(|&i| sources[i].1).sum())
            .collect();
        // a = 110 alone; b + c + d = 155 beside it.
        assert_eq!(sizes.iter().sum::<usize>(), 265);
        assert!(sizes.iter().all(|&s| s >= 110), "{sizes:?}");
    }

    #[test]
    fn never_more_parts_than_namespaces_nor_an_empty_one() {
        assert_eq!(assign(&[("a", 1), ("a", 2)], 4), vec![vec![0, 1]]);
        assert_eq!(assign(&[("a", 1), ("b", 2)], 0).len(), 1);
        assert_eq!(assign(&[("a", 1), ("b", 2), ("c", 3)], 2).len(), 2);
    }

    #[test]
    fn the_compiled_form_reads_back_and_refuses_damage() {
        let parts = vec![b"first".to_vec(), Vec::new(), b"third part".to_vec()];
        let joined = join(&parts);
        let back = split(&joined).unwrap();
        assert_eq!(back, vec![&b"first"[..], &b""[..], &b"third part"[..]]);
        assert!(split(&joined[..joined.len() - 1]).is_err());
        let mut longer = joined.clone();
        longer.push(0);
        assert!(split(&longer).is_err());
        assert!(split(b"sandgnat-parts\n\x02").is_err());
        let mut zero = MAGIC.to_vec();
        zero.extend_from_slice(&0u32.to_le_bytes());
        assert!(split(&zero).is_err());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(split(&huge).is_err());
    }
}
