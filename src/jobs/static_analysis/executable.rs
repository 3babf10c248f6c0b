//! Executable headers through `goblin`: architecture, type, entry point,
//! sections (with their entropy), libraries, imports and exports of ELF,
//! PE and Mach-O files, as JSON. Everything reported is bounded (the
//! `MAX_*` caps; totals are given beside truncated lists) and nothing
//! here trusts an offset or a size from the file: section bytes are read
//! only where they lie inside the buffer.

use goblin::elf::Elf;
use goblin::mach::{Mach, MachO, SingleArch};
use goblin::pe::PE;
use serde_json::{json, Value};

use super::entropy;
use super::imphash::{self, Import};

pub const MAX_SECTIONS: usize = 64;
pub const MAX_LIBRARIES: usize = 128;
pub const MAX_IMPORTS: usize = 1000;
pub const MAX_EXPORTS: usize = 200;
/// Slices of a fat Mach-O described.
pub const MAX_SLICES: usize = 4;

/// Which parser a file type needs, if any.
pub fn parse(file_type: &str, data: &[u8]) -> Option<Result<Value, String>> {
    let parsed = match file_type {
        "elf" => Elf::parse(data).map(|e| elf(&e, data)),
        "pe" => {
            // Malware is often malformed on purpose: recover what can be.
            let mut opts = goblin::pe::options::ParseOptions::default();
            opts.parse_mode = goblin::options::ParseMode::Permissive;
            PE::parse_with_opts(data, &opts).map(|p| pe(&p, data))
        }
        "macho" => Mach::parse(data).map(|m| mach(&m, data)),
        _ => return None,
    };
    Some(parsed.map_err(|e| e.to_string()))
}

/// Runs one of goblin's readers that panic on some hostile input, so that
/// a panic costs that one field and not every other field of the header
/// (the job's own guard, in `analyse`, would drop them all). Known: goblin
/// 0.10 indexes a Mach-O's segments with the segment number its bind
/// opcodes give, unchecked (`mach/imports.rs`), found by `fuzz/`.
fn contained<T>(read: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).ok()
}

/// The bytes of `[offset, offset + size)` if they lie inside `data`.
fn slice(data: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    data.get(start..end)
}

/// A list capped at `max`, with its full length beside it.
fn capped<T: serde::Serialize>(items: Vec<T>, max: usize) -> (Vec<T>, usize) {
    let total = items.len();
    let mut items = items;
    items.truncate(max);
    (items, total)
}

fn elf_arch(machine: u16) -> String {
    use goblin::elf::header::*;
    match machine {
        EM_386 => "x86".into(),
        EM_X86_64 => "x86_64".into(),
        EM_ARM => "arm".into(),
        EM_AARCH64 => "aarch64".into(),
        EM_MIPS => "mips".into(),
        EM_PPC => "powerpc".into(),
        EM_PPC64 => "powerpc64".into(),
        EM_RISCV => "riscv".into(),
        EM_SPARCV9 => "sparc64".into(),
        EM_S390 => "s390".into(),
        other => machine_to_str(other).to_ascii_lowercase(),
    }
}

pub fn elf(e: &Elf<'_>, data: &[u8]) -> Value {
    use goblin::elf::section_header::{
        sht_to_str, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS,
    };
    let sections: Vec<Value> = e
        .section_headers
        .iter()
        .filter(|s| s.sh_type != 0)
        .map(|s| {
            let flags = [(SHF_ALLOC, 'a'), (SHF_WRITE, 'w'), (SHF_EXECINSTR, 'x')]
                .iter()
                .filter(|(bit, _)| s.sh_flags & u64::from(*bit) != 0)
                .map(|(_, c)| *c)
                .collect::<String>();
            let bytes = (s.sh_type != SHT_NOBITS)
                .then(|| slice(data, s.sh_offset, s.sh_size))
                .flatten();
            json!({
                "name": e.shdr_strtab.get_at(s.sh_name).unwrap_or(""),
                "type": sht_to_str(s.sh_type),
                "address": format!("{:#x}", s.sh_addr),
                "size": s.sh_size,
                "flags": flags,
                "entropy": bytes.map(entropy::of),
            })
        })
        .collect();
    let name = |st_name: usize| e.dynstrtab.get_at(st_name).filter(|n| !n.is_empty());
    let imports: Vec<&str> = e
        .dynsyms
        .iter()
        .filter(|s| s.st_shndx == 0)
        .filter_map(|s| name(s.st_name))
        .collect();
    let exports: Vec<&str> = e
        .dynsyms
        .iter()
        .filter(|s| s.st_shndx != 0 && !s.is_import())
        .filter(|s| {
            let bind = s.st_bind();
            bind == goblin::elf::sym::STB_GLOBAL || bind == goblin::elf::sym::STB_WEAK
        })
        .filter_map(|s| name(s.st_name))
        .collect();
    let (sections, sections_total) = capped(sections, MAX_SECTIONS);
    let (libraries, libraries_total) = capped(e.libraries.clone(), MAX_LIBRARIES);
    let (imports, imports_total) = capped(imports, MAX_IMPORTS);
    let (exports, exports_total) = capped(exports, MAX_EXPORTS);
    json!({
        "format": "elf",
        "bits": if e.is_64 { 64 } else { 32 },
        "endian": if e.little_endian { "little" } else { "big" },
        "arch": elf_arch(e.header.e_machine),
        "type": goblin::elf::header::et_to_str(e.header.e_type),
        "entry": format!("{:#x}", e.entry),
        "interpreter": e.interpreter,
        "soname": e.soname,
        "stripped": e.syms.is_empty(),
        "libraries": libraries, "libraries_total": libraries_total,
        "imports": imports, "imports_total": imports_total,
        "exports": exports, "exports_total": exports_total,
        "sections": sections, "sections_total": sections_total,
    })
}

fn pe_arch(machine: u16) -> String {
    use goblin::pe::header::*;
    match machine {
        COFF_MACHINE_X86 => "x86".into(),
        COFF_MACHINE_X86_64 => "x86_64".into(),
        COFF_MACHINE_ARM | COFF_MACHINE_ARMNT | COFF_MACHINE_THUMB => "arm".into(),
        COFF_MACHINE_ARM64 => "aarch64".into(),
        COFF_MACHINE_IA64 => "ia64".into(),
        other => format!("machine {other:#06x}"),
    }
}

fn subsystem(n: u16) -> &'static str {
    match n {
        1 => "native",
        2 => "windows_gui",
        3 => "windows_cui",
        5 => "os2_cui",
        7 => "posix_cui",
        9 => "windows_ce_gui",
        10 => "efi_application",
        11 => "efi_boot_service_driver",
        12 => "efi_runtime_driver",
        13 => "efi_rom",
        14 => "xbox",
        16 => "windows_boot_application",
        _ => "unknown",
    }
}

pub fn pe(p: &PE<'_>, data: &[u8]) -> Value {
    use goblin::pe::import::SyntheticImportLookupTableEntry as Entry;
    use goblin::pe::section_table::{
        IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_READ, IMAGE_SCN_MEM_WRITE,
    };
    let coff = &p.header.coff_header;
    let sections: Vec<Value> = p
        .sections
        .iter()
        .map(|s| {
            let flags = [
                (IMAGE_SCN_MEM_READ, 'r'),
                (IMAGE_SCN_MEM_WRITE, 'w'),
                (IMAGE_SCN_MEM_EXECUTE, 'x'),
            ]
            .iter()
            .filter(|(bit, _)| s.characteristics & bit != 0)
            .map(|(_, c)| *c)
            .collect::<String>();
            let raw = slice(
                data,
                u64::from(s.pointer_to_raw_data),
                u64::from(s.size_of_raw_data),
            );
            json!({
                "name": s.name().unwrap_or("").trim_end_matches('\0'),
                "virtual_address": format!("{:#x}", s.virtual_address),
                "virtual_size": s.virtual_size,
                "raw_size": s.size_of_raw_data,
                "flags": flags,
                "entropy": raw.map(entropy::of),
            })
        })
        .collect();

    // Imports as the lookup tables list them, by ordinal or by name: the
    // imphash needs to tell the two apart.
    let mut listed: Vec<(&str, Import<'_>)> = Vec::new();
    if let Some(imports) = &p.import_data {
        for dll in &imports.import_data {
            for entry in dll.import_lookup_table.iter().flatten() {
                listed.push(match entry {
                    Entry::OrdinalNumber(n) => (dll.name, Import::Ordinal(*n)),
                    Entry::HintNameTableRVA((_, hint)) => (dll.name, Import::Name(hint.name)),
                });
            }
        }
    }
    let imphash = imphash::imphash(listed.iter().copied());
    let imports_total = listed.len();
    let mut by_dll: Vec<(String, Vec<String>)> = Vec::new();
    for (dll, import) in listed.iter().take(MAX_IMPORTS) {
        let func = match import {
            Import::Name(n) => n.to_string(),
            Import::Ordinal(n) => format!("ord{n}"),
        };
        match by_dll.last_mut() {
            Some((d, funcs)) if d == dll => funcs.push(func),
            _ => by_dll.push((dll.to_string(), vec![func])),
        }
    }
    let imports: Vec<Value> = by_dll
        .into_iter()
        .map(|(dll, functions)| json!({ "dll": dll, "functions": functions }))
        .collect();
    let exports: Vec<&str> = p.exports.iter().filter_map(|e| e.name).collect();
    let (exports, exports_total) = capped(exports, MAX_EXPORTS);
    let (sections, sections_total) = capped(sections, MAX_SECTIONS);
    let (libraries, libraries_total) = capped(p.libraries.clone(), MAX_LIBRARIES);
    let windows = p.header.optional_header.as_ref().map(|o| &o.windows_fields);
    let timestamp = chrono::DateTime::from_timestamp(i64::from(coff.time_date_stamp), 0);
    json!({
        "format": "pe",
        "bits": if p.is_64 { 64 } else { 32 },
        "arch": pe_arch(coff.machine),
        "type": if p.is_lib { "dll" } else { "exe" },
        "subsystem": windows.map(|w| subsystem(w.subsystem)),
        "entry": format!("{:#x}", p.entry),
        "image_base": format!("{:#x}", p.image_base),
        "timestamp": timestamp,
        "dotnet": p.clr_data.is_some(),
        "signed": !p.certificates.is_empty(),
        "imphash": imphash,
        "libraries": libraries, "libraries_total": libraries_total,
        "imports": imports, "imports_total": imports_total,
        "exports": exports, "exports_total": exports_total,
        "sections": sections, "sections_total": sections_total,
    })
}

fn macho_arch(cputype: u32) -> String {
    match cputype {
        7 => "x86".into(),
        0x0100_0007 => "x86_64".into(),
        12 => "arm".into(),
        0x0100_000c => "aarch64".into(),
        0x0200_000c => "aarch64_32".into(),
        18 => "powerpc".into(),
        0x0100_0012 => "powerpc64".into(),
        other => format!("cputype {other:#x}"),
    }
}

/// One Mach-O, parsed from `data` (its own bytes: a fat file's slice).
fn macho(m: &MachO<'_>, data: &[u8]) -> Value {
    let segments: Vec<Value> = m
        .segments
        .iter()
        .map(|s| {
            json!({
                "name": s.name().unwrap_or(""),
                "vmsize": s.vmsize,
                "filesize": s.filesize,
            })
        })
        .collect();
    let bindings = super::machscan::count(m, data);
    let imports = if bindings > super::machscan::MAX_BINDINGS {
        None
    } else {
        Some(contained(|| m.imports()))
    };
    let (imports, import_error) = match imports {
        None => (
            Vec::new(),
            Some(format!(
                "over {} bindings: imports not read",
                super::machscan::MAX_BINDINGS
            )),
        ),
        Some(read) => match read {
            Some(Ok(list)) => (
                list.iter()
                    .map(|i| format!("{}!{}", i.dylib, i.name))
                    .collect::<Vec<_>>(),
                None,
            ),
            Some(Err(e)) => (Vec::new(), Some(e.to_string())),
            None => (
                Vec::new(),
                Some("the bind information is malformed (the parser panicked)".to_string()),
            ),
        },
    };
    let (exports, export_error) = match super::machscan::export_trie(m, data) {
        Err(why) => (Vec::new(), Some(why)),
        Ok(()) => match contained(|| m.exports()) {
            Some(Ok(list)) => (list.into_iter().map(|e| e.name).collect(), None),
            Some(Err(e)) => (Vec::new(), Some(e.to_string())),
            None => (
                Vec::new(),
                Some("the export trie is malformed (the parser panicked)".to_string()),
            ),
        },
    };
    let (segments, segments_total) = capped(segments, MAX_SECTIONS);
    let (libraries, libraries_total) = capped(m.libs.clone(), MAX_LIBRARIES);
    let (imports, imports_total) = capped(imports, MAX_IMPORTS);
    let (exports, exports_total) = capped(exports, MAX_EXPORTS);
    json!({
        "format": "macho",
        "bits": if m.is_64 { 64 } else { 32 },
        "arch": macho_arch(m.header.cputype),
        "type": goblin::mach::header::filetype_to_str(m.header.filetype),
        "entry": format!("{:#x}", m.entry),
        "libraries": libraries, "libraries_total": libraries_total,
        "imports": imports, "imports_total": imports_total, "imports_error": import_error,
        "exports": exports, "exports_total": exports_total, "exports_error": export_error,
        "segments": segments, "segments_total": segments_total,
    })
}

/// A Mach-O or a fat file of them, parsed from `data`.
pub fn mach(m: &Mach<'_>, data: &[u8]) -> Value {
    match m {
        Mach::Binary(b) => macho(b, data),
        Mach::Fat(fat) => {
            let arches = fat.narches;
            let slices: Vec<Value> = (0..arches.min(MAX_SLICES))
                .map(|i| match fat.get(i) {
                    Ok(SingleArch::MachO(b)) => {
                        // goblin parsed the slice from its own bytes.
                        let slice = fat
                            .iter_arches()
                            .nth(i)
                            .and_then(Result::ok)
                            .map_or(&[][..], |a| a.slice(data));
                        macho(&b, slice)
                    }
                    Ok(SingleArch::Archive(_)) => json!({ "format": "archive" }),
                    Err(e) => json!({ "error": e.to_string() }),
                })
                .collect();
            json!({
                "format": "macho_fat",
                "arch": slices.first().and_then(|s| s.get("arch")).cloned(),
                "slices": slices,
                "slices_total": arches,
            })
        }
    }
}
