//! YARA: compiling a rules directory (in the master, once per start or
//! HUP), loading the compiled form (in each worker), and scanning a sample
//! with the external variables every rule may use and a time limit.
//! Workers never compile: a rules directory that fails to compile costs
//! the master one log line, and the running rules stay.

mod mapped;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

/// The rules shipped with the binary, used when no rules directory exists.
const BUNDLED: &[(&str, &str)] = &[
    ("eicar", include_str!("../../assets/rules/eicar.yar")),
    (
        "executables",
        include_str!("../../assets/rules/executables.yar"),
    ),
    ("office", include_str!("../../assets/rules/office.yar")),
    ("packers", include_str!("../../assets/rules/packers.yar")),
    ("scripts", include_str!("../../assets/rules/scripts.yar")),
];

/// The engine and its version: part of what names a compiled form, since
/// another engine (or version) cannot load it.
pub const ENGINE: &str = "libyara-4.5.5";

/// Where rules are looked for when `yara.rules_dir` is not set.
pub const DEFAULT_RULES_DIR: &str = "/etc/sandgnat/rules";

/// External variables defined for every scan, the ones public rule sets
/// (signature-base, from LOKI and THOR) expect. Their values come from
/// the submitted file name and the sample's bytes only ([`externals`]):
/// a scan's answer is a function of (bytes, file name, rules), which is
/// what lets intake reuse a stored answer.
const EXTERNALS: [&str; 5] = ["filename", "filepath", "extension", "filetype", "owner"];

/// How deep a rules directory is searched for rule files: rule
/// repositories keep them in subdirectories (signature-base in `yara/`).
const MAX_RULES_DEPTH: usize = 8;

/// Bounds on what one match reports, so a hostile sample cannot make a
/// response (or an audit row) arbitrarily large.
const MAX_STRINGS_PER_RULE: usize = 32;
const MAX_OFFSETS_PER_STRING: usize = 16;
const MAX_RULES_REPORTED: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules directory {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rules directory {0} holds no .yar or .yara file")]
    Empty(PathBuf),
    #[error("{file}:{line}: {message}")]
    Compile {
        file: String,
        line: usize,
        message: String,
    },
    #[error("YARA: {0}")]
    Yara(String),
}

/// Rules in YARA's compiled form, ready to hand to workers.
pub struct Compiled {
    pub bytes: Vec<u8>,
    /// Where they came from: a directory, or "bundled".
    pub source: String,
    pub files: usize,
}

/// The directory rules come from, or `None` for the bundled set.
pub fn rules_dir(configured: Option<&Path>) -> Option<PathBuf> {
    match configured {
        Some(dir) => Some(dir.to_path_buf()),
        None => {
            let default = Path::new(DEFAULT_RULES_DIR);
            default.is_dir().then(|| default.to_path_buf())
        }
    }
}

fn first_error(e: yara::Error, fallback_file: &str) -> RulesError {
    match e {
        yara::Error::Compile(errors) => {
            let first = errors
                .iter()
                .find(|e| e.level == yara::CompileErrorLevel::Error)
                .or_else(|| errors.iter().next());
            match first {
                Some(c) => RulesError::Compile {
                    file: c
                        .filename
                        .clone()
                        .unwrap_or_else(|| fallback_file.to_string()),
                    line: c.line,
                    message: c.message.clone(),
                },
                None => RulesError::Yara("compilation failed without a message".into()),
            }
        }
        other => RulesError::Yara(other.to_string()),
    }
}

fn new_compiler() -> Result<yara::Compiler, RulesError> {
    let mut compiler = yara::Compiler::new().map_err(|e| RulesError::Yara(e.to_string()))?;
    for name in EXTERNALS {
        compiler
            .define_variable(name, "")
            .map_err(|e| RulesError::Yara(e.to_string()))?;
    }
    Ok(compiler)
}

/// The `.yar` and `.yara` files below `dir`, down to [`MAX_RULES_DEPTH`].
/// Hidden entries (`.git`) are skipped, and a symbolic link to a directory
/// is not followed, so a link cannot make the walk loop; a link to a file
/// is read.
fn rule_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if depth < MAX_RULES_DEPTH {
                rule_files(&path, depth + 1, out)?;
            }
        } else if path.is_file()
            && matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yar" | "yara")
            )
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Compiles the rules directory (or the bundled set when `dir` is None).
pub fn compile(dir: Option<&Path>) -> Result<Compiled, RulesError> {
    let mut compiler = new_compiler()?;
    let (source, files) = match dir {
        Some(dir) => {
            let read_err = |source| RulesError::Read {
                path: dir.to_path_buf(),
                source,
            };
            let mut files = Vec::new();
            rule_files(dir, 0, &mut files).map_err(read_err)?;
            files.sort();
            if files.is_empty() {
                return Err(RulesError::Empty(dir.to_path_buf()));
            }
            for file in &files {
                let namespace = file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("default")
                    .to_string();
                let label = file.display().to_string();
                compiler = compiler
                    .add_rules_file_with_namespace(file, &namespace)
                    .map_err(|e| first_error(e, &label))?;
            }
            (dir.display().to_string(), files.len())
        }
        None => {
            for (namespace, text) in BUNDLED {
                let label = format!("bundled/{namespace}.yar");
                compiler = compiler
                    .add_rules_str_with_namespace(text, namespace)
                    .map_err(|e| first_error(e, &label))?;
            }
            ("bundled".to_string(), BUNDLED.len())
        }
    };
    let mut rules = compiler
        .compile_rules()
        .map_err(|e| RulesError::Yara(e.to_string()))?;
    let mut bytes = Vec::new();
    rules
        .save_to_stream(&mut bytes)
        .map_err(|e| RulesError::Yara(e.to_string()))?;
    Ok(Compiled {
        bytes,
        source,
        files,
    })
}

/// Compiled rules loaded in a worker.
pub struct RuleSet {
    rules: yara::Rules,
    digest: String,
}

/// What the rules see about a sample: its bytes, the name it was
/// submitted under and its type (`crate::intake::filetype`).
pub struct ScanTarget<'a> {
    pub data: ScanData<'a>,
    pub filename: &'a str,
    pub filetype: &'a str,
}

/// The external variables' values for a sample submitted as `filename`
/// of type `filetype`, with the meanings LOKI and THOR give them (their
/// rules are the ones that use them):
///
/// - `filename`: the submitted name (the sha256 when none was given).
/// - `filepath`: empty. It is the directory the file lies in on a scanned
///   host (`filename == "exports" and filepath contains "/etc"`); a sample
///   here lies nowhere, intake keeps only the base name a client gives,
///   and the quarantine path (the sha256) would tell rules nothing. So
///   rules that need a directory do not match, and exclusions by
///   directory (`not filepath contains "teamviewer"`) do not exclude.
/// - `extension`: the name's extension with its dot, lower-cased
///   (`.exe`), as signature-base's rules compare it; empty if none.
/// - `filetype`: intake's type (`pe`, `elf`, `zip`, ...), not THOR's
///   names (`EXE`), so the few rules comparing those do not match.
/// - `owner`: empty. It is the file system owner of a file on a scanned
///   host; a sample has none. The submitting key is not the file's owner,
///   and a verdict that depended on which key asked would differ between
///   submitters of the same bytes.
pub fn externals(filename: &str, filetype: &str) -> [(&'static str, String); 5] {
    let extension = Path::new(filename)
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| format!(".{}", e.to_lowercase()))
        .unwrap_or_default();
    [
        ("filename", filename.to_string()),
        ("filepath", String::new()),
        ("extension", extension),
        ("filetype", filetype.to_string()),
        ("owner", String::new()),
    ]
}

/// The bytes to scan: a small sample held in memory, or a file on disk
/// (mapped, with its pages trimmed during the scan, so a worker's memory
/// does not grow with its size: `mapped.rs`).
pub enum ScanData<'a> {
    Memory(&'a [u8]),
    File(&'a Path),
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RuleMatch {
    pub rule: String,
    pub namespace: String,
    pub tags: Vec<String>,
    pub meta: Map<String, Value>,
    pub strings: Vec<StringMatch>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StringMatch {
    pub identifier: String,
    pub offsets: Vec<u64>,
    /// Matches beyond the reported offsets.
    pub more: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the scan took longer than yara.scan_timeout")]
    Timeout,
    #[error("YARA: {0}")]
    Yara(String),
}

impl RuleSet {
    pub fn load(bytes: &[u8]) -> Result<Self, RulesError> {
        let rules =
            yara::Rules::load_from_stream(bytes).map_err(|e| RulesError::Yara(e.to_string()))?;
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        Ok(RuleSet { rules, digest })
    }

    /// The SHA-256 of the compiled form, in hex: which rule set gave an
    /// answer. Every worker of one generation loads the same bytes from
    /// the master, so they share it; a HUP that changes the rules changes
    /// it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn count(&self) -> usize {
        self.rules.get_rules().len()
    }

    pub fn scan(
        &self,
        target: &ScanTarget<'_>,
        timeout_s: u64,
    ) -> Result<Vec<RuleMatch>, ScanError> {
        let mut scanner = self
            .rules
            .scanner()
            .map_err(|e| ScanError::Yara(e.to_string()))?;
        scanner.set_timeout(i32::try_from(timeout_s).unwrap_or(i32::MAX));
        // libyara reports every rule, matching or not, unless told; the
        // binding turns each report into owned strings, which for a small
        // sample cost more than the scan itself.
        scanner.set_flags(yara::ScanFlags::REPORT_RULES_MATCHING);
        for (name, value) in externals(target.filename, target.filetype) {
            scanner
                .define_variable(name, value.as_str())
                .map_err(|e| ScanError::Yara(e.to_string()))?;
        }
        let found = match target.data {
            ScanData::Memory(bytes) => scanner.scan_mem(bytes).map_err(yara::Error::from),
            ScanData::File(path) => {
                let map = mapped::Mapped::open(path)
                    .map_err(|e| ScanError::Yara(format!("cannot map the sample: {e}")))?;
                map.scan_trimmed(|bytes| scanner.scan_mem(bytes))
                    .map_err(yara::Error::from)
            }
        }
        .map_err(|e| match e {
            yara::Error::Yara(y) if y.kind == yara::YaraErrorKind::ScanTimeout => {
                ScanError::Timeout
            }
            other => ScanError::Yara(other.to_string()),
        })?;
        Ok(found
            .iter()
            .take(MAX_RULES_REPORTED)
            .map(|r| RuleMatch {
                rule: r.identifier.to_string(),
                namespace: r.namespace.to_string(),
                tags: r.tags.iter().map(|t| t.to_string()).collect(),
                meta: r
                    .metadatas
                    .iter()
                    .map(|m| {
                        let v = match &m.value {
                            yara::MetadataValue::Integer(i) => Value::from(*i),
                            yara::MetadataValue::String(s) => Value::from(*s),
                            yara::MetadataValue::Boolean(b) => Value::from(*b),
                        };
                        (m.identifier.to_string(), v)
                    })
                    .collect(),
                strings: r
                    .strings
                    .iter()
                    .filter(|s| !s.matches.is_empty())
                    .take(MAX_STRINGS_PER_RULE)
                    .map(|s| StringMatch {
                        identifier: s.identifier.to_string(),
                        offsets: s
                            .matches
                            .iter()
                            .take(MAX_OFFSETS_PER_STRING)
                            .map(|m| m.offset as u64)
                            .collect(),
                        more: s.matches.len().saturating_sub(MAX_OFFSETS_PER_STRING),
                    })
                    .collect(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EICAR: &[u8] =
        b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sandgnat-scan-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn bundled_rules_find_eicar_with_offsets() {
        let compiled = compile(None).unwrap();
        let rules = RuleSet::load(&compiled.bytes).unwrap();
        assert!(rules.count() >= 8);
        let dir = temp("eicar");
        let path = dir.join("sample");
        std::fs::write(&path, EICAR).unwrap();
        let target = ScanTarget {
            data: ScanData::File(&path),
            filename: "eicar.com",
            filetype: "text",
        };
        let found = rules.scan(&target, 10).unwrap();
        let in_memory = ScanTarget {
            data: ScanData::Memory(EICAR),
            ..target
        };
        assert_eq!(rules.scan(&in_memory, 10).unwrap(), found);
        let eicar = found
            .iter()
            .find(|m| m.rule == "EICAR_Test_File")
            .expect("EICAR matched");
        assert_eq!(eicar.namespace, "eicar");
        assert_eq!(eicar.tags, vec!["test"]);
        assert_eq!(eicar.meta["severity"], 1);
        assert_eq!(eicar.strings[0].identifier, "$eicar");
        assert_eq!(eicar.strings[0].offsets, vec![0]);
    }

    #[test]
    fn externals_are_visible_to_rules() {
        let dir = temp("ext");
        std::fs::write(
            dir.join("ext.yar"),
            "rule by_extension { condition: extension == \".exe\" and filename matches /evil/ \
             and filepath == \"\" and filetype == \"data\" and owner == \"\" }",
        )
        .unwrap();
        let rules = RuleSet::load(&compile(Some(&dir)).unwrap().bytes).unwrap();
        let path = dir.join("s");
        std::fs::write(&path, b"hello").unwrap();
        let hit = ScanTarget {
            data: ScanData::File(&path),
            filename: "evil.EXE",
            filetype: "data",
        };
        let miss = ScanTarget {
            data: ScanData::Memory(b"hello"),
            filename: "fine.txt",
            filetype: "data",
        };
        assert_eq!(rules.scan(&hit, 5).unwrap().len(), 1);
        assert!(rules.scan(&miss, 5).unwrap().is_empty());
        assert_eq!(externals("noext", "text")[2].1, "");
    }

    /// The public signature-base set, where this machine keeps a copy
    /// (`SANDGNAT_SIGNATURE_BASE`, else `../shared/bench/rules/signature-base`
    /// beside the repository); `None` where it has none, as in CI.
    fn signature_base() -> Option<PathBuf> {
        let dir = std::env::var_os("SANDGNAT_SIGNATURE_BASE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/rules/signature-base")
            });
        dir.is_dir().then_some(dir)
    }

    #[test]
    fn signature_base_compiles_and_its_rules_see_the_file_name() {
        let Some(dir) = signature_base() else {
            eprintln!(
                "SKIPPED: no signature-base copy (set SANDGNAT_SIGNATURE_BASE or put it in \
                 ../shared/bench/rules/signature-base)"
            );
            return;
        };
        // The rules are in a subdirectory (`yara/`); some use every
        // external (`owner` in yara_mixed_ext_vars.yar).
        let compiled = compile(Some(&dir)).unwrap();
        assert!(compiled.files > 700, "{} files", compiled.files);
        let rules = RuleSet::load(&compiled.bytes).unwrap();
        assert!(rules.count() > 5_000, "{} rules", rules.count());
        // VULN_Linux_Sudoers_Commands (configured_vulns_ext_vars.yar):
        // `filename == "sudoers"` and a command a user may run as root.
        let data = b"# sudoers\nbob ALL=(root) NOPASSWD: /usr/bin/vim /etc/hosts\n";
        let named = |filename| ScanTarget {
            data: ScanData::Memory(data),
            filename,
            filetype: "text",
        };
        let rule = "VULN_Linux_Sudoers_Commands";
        let found = rules.scan(&named("sudoers"), 10).unwrap();
        assert!(found.iter().any(|m| m.rule == rule), "{found:?}");
        let found = rules.scan(&named("notes.txt"), 10).unwrap();
        assert!(!found.iter().any(|m| m.rule == rule), "{found:?}");
    }

    #[test]
    fn rule_files_are_found_in_subdirectories_but_not_hidden_ones() {
        let dir = temp("nested");
        std::fs::create_dir_all(dir.join("yara/deeper")).unwrap();
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(dir.join("top.yar"), "rule top { condition: true }").unwrap();
        std::fs::write(
            dir.join("yara/deeper/low.yara"),
            "rule low { condition: true }",
        )
        .unwrap();
        std::fs::write(dir.join("yara/README.md"), "not rules").unwrap();
        std::fs::write(dir.join(".git/bad.yar"), "rule {").unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("yara/loop")).unwrap();
        let compiled = compile(Some(&dir)).unwrap();
        assert_eq!(compiled.files, 2);
        let rules = RuleSet::load(&compiled.bytes).unwrap();
        let target = ScanTarget {
            data: ScanData::Memory(b"x"),
            filename: "x",
            filetype: "text",
        };
        let mut names: Vec<String> = rules
            .scan(&target, 5)
            .unwrap()
            .into_iter()
            .map(|m| format!("{}:{}", m.namespace, m.rule))
            .collect();
        names.sort();
        assert_eq!(names, ["low:low", "top:top"]);
    }

    #[test]
    fn the_digest_names_the_compiled_rules() {
        let a = RuleSet::load(&compile(None).unwrap().bytes).unwrap();
        let b = RuleSet::load(&compile(None).unwrap().bytes).unwrap();
        assert_eq!(a.digest().len(), 64);
        assert_eq!(
            a.digest(),
            b.digest(),
            "the same rules compile to other bytes"
        );
        let dir = temp("digest");
        std::fs::write(dir.join("one.yar"), "rule one { condition: true }").unwrap();
        let c = RuleSet::load(&compile(Some(&dir)).unwrap().bytes).unwrap();
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn a_large_file_is_scanned_whole_through_its_mapping() {
        let dir = temp("large");
        std::fs::write(
            dir.join("large.yar"),
            "rule needles { strings: $n = \"needle-across-a-boundary\" condition: #n == 2 and filesize == 25165824 and uint32(filesize - 4) == 0x646e6521 }",
        )
        .unwrap();
        let rules = RuleSet::load(&compile(Some(&dir)).unwrap().bytes).unwrap();
        let mut data = vec![b'x'; 24 << 20];
        let needle = b"needle-across-a-boundary";
        for at in [(4 << 20) - 7, (24 << 20) - 100] {
            data[at..at + needle.len()].copy_from_slice(needle);
        }
        let end = data.len() - 4;
        data[end..].copy_from_slice(b"!end");
        let path = dir.join("large.bin");
        std::fs::write(&path, &data).unwrap();
        let target = ScanTarget {
            data: ScanData::File(&path),
            filename: "large.bin",
            filetype: "data",
        };
        let found = rules.scan(&target, 30).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].strings[0].offsets,
            vec![(4 << 20) - 7, (24 << 20) - 100]
        );
    }

    #[test]
    fn compile_errors_name_file_and_line() {
        let dir = temp("bad");
        std::fs::write(dir.join("a_good.yar"), "rule ok { condition: true }").unwrap();
        std::fs::write(
            dir.join("b_bad.yar"),
            "rule ok2 {\n  condition:\n    nonsense ==\n}\n",
        )
        .unwrap();
        match compile(Some(&dir)) {
            Err(RulesError::Compile { file, line, .. }) => {
                assert!(file.ends_with("b_bad.yar"), "{file}");
                assert!((3..=4).contains(&line), "line {line}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("bad rules compiled"),
        }
        assert!(matches!(
            compile(Some(&dir.join("missing"))),
            Err(RulesError::Read { .. })
        ));
    }
}
