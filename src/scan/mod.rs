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

/// Where rules are looked for when `yara.rules_dir` is not set.
pub const DEFAULT_RULES_DIR: &str = "/etc/sandgnat/rules";

/// External variables defined for every scan.
const EXTERNALS: [&str; 4] = ["filename", "filepath", "extension", "filetype"];

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

/// Compiles the rules directory (or the bundled set when `dir` is None).
pub fn compile(dir: Option<&Path>) -> Result<Compiled, RulesError> {
    let mut compiler = new_compiler()?;
    let (source, files) = match dir {
        Some(dir) => {
            let read_err = |source| RulesError::Read {
                path: dir.to_path_buf(),
                source,
            };
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(read_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yar" | "yara"))
                })
                .collect();
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
}

/// What the rules see about a sample.
pub struct ScanTarget<'a> {
    pub data: ScanData<'a>,
    /// Where the sample is kept (its quarantine path): the `filepath`
    /// variable.
    pub filepath: &'a str,
    pub filename: &'a str,
    pub filetype: &'a str,
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
        Ok(RuleSet { rules })
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
        let extension = Path::new(target.filename)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("");
        for (name, value) in [
            ("filename", target.filename),
            ("filepath", target.filepath),
            ("extension", extension),
            ("filetype", target.filetype),
        ] {
            scanner
                .define_variable(name, value)
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
            filepath: "/q/ab/cd/abcd",
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
            "rule by_extension { condition: extension == \"exe\" and filename matches /evil/ and filepath == \"/q/s\" }",
        )
        .unwrap();
        let rules = RuleSet::load(&compile(Some(&dir)).unwrap().bytes).unwrap();
        let path = dir.join("s");
        std::fs::write(&path, b"hello").unwrap();
        let hit = ScanTarget {
            data: ScanData::File(&path),
            filepath: "/q/s",
            filename: "evil.exe",
            filetype: "data",
        };
        let miss = ScanTarget {
            data: ScanData::Memory(b"hello"),
            filepath: "/q/s",
            filename: "fine.txt",
            filetype: "data",
        };
        assert_eq!(rules.scan(&hit, 5).unwrap().len(), 1);
        assert!(rules.scan(&miss, 5).unwrap().is_empty());
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
            filepath: "/q/l",
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
