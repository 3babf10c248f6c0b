//! YARA: compiling a rules directory (in the master, once per start or
//! HUP), loading the compiled form (in each worker), and scanning a sample
//! with the external variables every rule may use and a time limit.
//! Workers never compile: a rules directory that fails to compile costs
//! the master one log line, and the running rules stay. Asked to
//! (`yara.scan_parts`), the master also compiles the rules in parts
//! (`parts.rs`), which workers use to scan a large sample on as many
//! cores at once.

mod cache;
mod mapped;
mod parts;

pub use parts::MAX_PARTS;

pub use cache::{compile_cached, Outcome as CacheOutcome};

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
pub const ENGINE: &str = "yara-x-1.22.1";

/// What rule conditions run as: machine code that wasmtime's Cranelift
/// generates for this CPU, compiled once by the master and carried in the
/// compiled form (yara-x's `native-code-serialization`), so a worker loads
/// it without compiling anything. Loading makes memory executable, which
/// is why a worker refuses itself more of it only once its rules are in
/// (`confine::mdwe`).
pub const CODE: &str = "cranelift";

/// How the compiler is set up beyond the engine's defaults: with
/// [`ENGINE`] and [`CODE`], what else a compiled form depends on
/// (`cache.rs`).
const COMPILE_OPTIONS: &str =
    "relaxed_re_syntax;externals=filename,filepath,extension,filetype,owner";

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

/// The error of one rules file, located: YARA-X reports a byte span in
/// the source, made a line here against the text it was given.
fn located(e: &yara_x::errors::CompileError, file: &str, text: &[u8]) -> RulesError {
    let line = e
        .labels()
        .next()
        .map(|l| l.span().start().min(text.len()))
        .map(|at| 1 + text[..at].iter().filter(|b| **b == b'\n').count())
        .unwrap_or(0);
    RulesError::Compile {
        file: file.to_string(),
        line,
        message: e.title().to_string(),
    }
}

fn new_compiler<'a>() -> Result<yara_x::Compiler<'a>, RulesError> {
    let mut compiler = yara_x::Compiler::new();
    // Public rule sets are written for libyara, whose regular expressions
    // accept what YARA-X's strict syntax refuses (an unescaped `{`, escapes
    // of ordinary characters); relaxed, YARA-X reads them as libyara did.
    compiler.relaxed_re_syntax(true);
    for name in EXTERNALS {
        compiler
            .define_global(name, "")
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

/// The rule files of `dir`, in the order they are compiled.
fn sorted_rule_files(dir: &Path) -> Result<Vec<PathBuf>, RulesError> {
    let mut files = Vec::new();
    rule_files(dir, 0, &mut files).map_err(|source| RulesError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    files.sort();
    if files.is_empty() {
        return Err(RulesError::Empty(dir.to_path_buf()));
    }
    Ok(files)
}

/// One rules file to compile: its namespace (the file's stem), the name
/// errors give it, and its text.
struct RulesSource {
    namespace: String,
    label: String,
    text: Vec<u8>,
}

/// The rules files of `dir` (or the bundled ones), read, and where they
/// came from.
fn sources(dir: Option<&Path>) -> Result<(String, Vec<RulesSource>), RulesError> {
    let Some(dir) = dir else {
        let bundled = BUNDLED
            .iter()
            .map(|(namespace, text)| RulesSource {
                namespace: namespace.to_string(),
                label: format!("bundled/{namespace}.yar"),
                text: text.as_bytes().to_vec(),
            })
            .collect();
        return Ok(("bundled".to_string(), bundled));
    };
    let mut out = Vec::new();
    for file in sorted_rule_files(dir)? {
        let text = std::fs::read(&file).map_err(|source| RulesError::Read {
            path: file.clone(),
            source,
        })?;
        out.push(RulesSource {
            namespace: file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("default")
                .to_string(),
            label: file.display().to_string(),
            text,
        });
    }
    Ok((dir.display().to_string(), out))
}

/// Adds the sources `members` picks to `compiler`; each file the engine
/// refuses is reported to `refused` with its index, and adding stops when
/// that returns false.
fn add_sources(
    compiler: &mut yara_x::Compiler<'_>,
    sources: &[RulesSource],
    members: impl IntoIterator<Item = usize>,
    refused: &mut dyn FnMut(usize, RulesError) -> bool,
) {
    for i in members {
        let src = &sources[i];
        compiler.new_namespace(&src.namespace);
        let code = yara_x::SourceCode::from(src.text.as_slice()).with_origin(src.label.as_str());
        if let Err(e) = compiler.add_source(code) {
            if !refused(i, located(&e, &src.label, &src.text)) {
                return;
            }
        }
    }
}

/// Compiles the rules directory (or the bundled set when `dir` is None),
/// whole only.
pub fn compile(dir: Option<&Path>) -> Result<Compiled, RulesError> {
    compile_parts(dir, 1)
}

/// Compiles the rules directory (or the bundled set) whole and, when
/// `parts` > 1, in up to that many parts besides, each on a thread of its
/// own. A file the engine refuses fails the whole set, and the error
/// named is the first such file in compile order, whatever the split:
/// serving with part of the rules an operator installed would be a
/// silent gap.
pub fn compile_parts(dir: Option<&Path>, parts: usize) -> Result<Compiled, RulesError> {
    let (source, sources) = sources(dir)?;
    let mut groups = vec![(0..sources.len()).collect::<Vec<usize>>()];
    if parts > 1 {
        let sizes: Vec<(&str, usize)> = sources
            .iter()
            .map(|s| (s.namespace.as_str(), s.text.len()))
            .collect();
        let split = parts::assign(&sizes, parts);
        // One namespace only: the parts would be the whole set again.
        if split.len() > 1 {
            groups.extend(split);
        }
    }
    // A thread that cannot be started is an error like a refused file,
    // never a panic of the master.
    let built = on_threads("rules-compile", &groups, |members| {
        compile_group(&sources, members)
    });
    let mut serialized = Vec::with_capacity(built.len());
    let mut first: Option<(usize, RulesError)> = None;
    for set in built {
        let set = set.unwrap_or_else(|failed| {
            let why = match failed {
                ThreadFailed::Panicked => "the compiler panicked".into(),
                ThreadFailed::NotStarted(e) => format!("cannot start a compiler thread: {e}"),
            };
            Err((0, RulesError::Yara(why)))
        });
        match set {
            Ok(bytes) => serialized.push(bytes),
            Err((i, e)) => {
                if first.as_ref().is_none_or(|(j, _)| i < *j) {
                    first = Some((i, e));
                }
            }
        }
    }
    if let Some((_, e)) = first {
        return Err(e);
    }
    Ok(Compiled {
        bytes: parts::join(&serialized),
        source,
        files: sources.len(),
    })
}

/// One part's rule set, serialized; or the first file it refused.
fn compile_group(
    sources: &[RulesSource],
    members: &[usize],
) -> Result<Vec<u8>, (usize, RulesError)> {
    let mut compiler = new_compiler().map_err(|e| (0, e))?;
    let mut first = None;
    add_sources(
        &mut compiler,
        sources,
        members.iter().copied(),
        &mut |i, e| {
            first = Some((i, e));
            false
        },
    );
    if let Some(refused) = first {
        return Err(refused);
    }
    compiler
        .build()
        .serialize()
        .map_err(|e| (0, RulesError::Yara(e.to_string())))
}

/// What `sandgnat rules check` reports: how many files were read, and
/// every file the engine refuses (its first error, with file and line).
pub struct Checked {
    pub source: String,
    pub files: usize,
    pub refused: Vec<RulesError>,
}

/// Compiles every file of `dir` (or the bundled set), going on past a
/// refused one, so that one check lists them all.
pub fn check(dir: Option<&Path>) -> Result<Checked, RulesError> {
    let (source, sources) = sources(dir)?;
    let mut compiler = new_compiler()?;
    let mut refused = Vec::new();
    add_sources(&mut compiler, &sources, 0..sources.len(), &mut |_, e| {
        refused.push(e);
        true
    });
    Ok(Checked {
        source,
        files: sources.len(),
        refused,
    })
}

/// Compiled rules loaded in a worker: the whole set, and the parts if
/// the master compiled any.
pub struct RuleSet {
    whole: Arc<yara_x::Rules>,
    parts: Vec<yara_x::Rules>,
    digest: String,
    parallel_from: usize,
}

/// A scanner kept by each thread that scans, with the rules it borrows.
/// A YARA-X scanner sets up a store for the rules' code when made, which
/// is worth doing once per thread rather than once per scan; it cannot
/// move between threads, hence one per thread.
struct ThreadScanner {
    // Declared before `rules`, so dropped before them.
    scanner: yara_x::Scanner<'static>,
    rules: Arc<yara_x::Rules>,
}

thread_local! {
    static SCANNER: RefCell<Option<ThreadScanner>> = const { RefCell::new(None) };
}

/// Samples at least this long are scanned by all parts at once, unless
/// the worker is told otherwise (`yara.parallel_scan_bytes`).
pub const PARALLEL_FROM: usize = 8 << 20;

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
        let mut sets = parts::split(bytes)
            .map_err(|e| RulesError::Yara(format!("compiled rules: {e}")))?
            .into_iter()
            .map(|set| {
                // The bytes carry the conditions' machine code, which
                // wasmtime maps as it is: they come only from the master
                // (a sealed memfd, `handover::memfd`), which compiled them
                // or read them from its own cache.
                yara_x::Rules::deserialize(set).map_err(|e| RulesError::Yara(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sets.is_empty() {
            return Err(RulesError::Yara("compiled rules: no rule set".into()));
        }
        let whole = sets.remove(0);
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        Ok(RuleSet {
            whole: Arc::new(whole),
            parts: sets,
            digest,
            parallel_from: PARALLEL_FROM,
        })
    }

    /// Samples of at least `bytes` are scanned by all parts at once.
    pub fn parallel_from(mut self, bytes: usize) -> Self {
        self.parallel_from = bytes;
        self
    }

    /// The SHA-256 of the compiled form, in hex: which rule set gave an
    /// answer. Every worker of one generation loads the same bytes from
    /// the master, so they share it; a HUP that changes the rules changes
    /// it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn count(&self) -> usize {
        self.whole.iter().len()
    }

    /// How many parts a large sample is scanned in at once (1: whole).
    pub fn parts(&self) -> usize {
        self.parts.len().max(1)
    }

    /// The rules that match `target`, at most [`MAX_RULES_REPORTED`]; a
    /// sample of `parallel_from` bytes or more is scanned by the parts at
    /// once, if there are parts, and their matches come in part order.
    pub fn scan(
        &self,
        target: &ScanTarget<'_>,
        timeout_s: u64,
    ) -> Result<Vec<RuleMatch>, ScanError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(timeout_s);
        match target.data {
            ScanData::Memory(bytes) => self.scan_bytes(bytes, target, deadline),
            ScanData::File(path) => {
                let map = mapped::Mapped::open(path)
                    .map_err(|e| ScanError::Yara(format!("cannot map the sample: {e}")))?;
                map.scan_trimmed(|bytes| self.scan_bytes(bytes, target, deadline))
            }
        }
    }

    fn scan_bytes(
        &self,
        bytes: &[u8],
        target: &ScanTarget<'_>,
        deadline: std::time::Instant,
    ) -> Result<Vec<RuleMatch>, ScanError> {
        if self.parts.len() > 1 && bytes.len() >= self.parallel_from {
            let mut found = self.scan_parallel(bytes, target, deadline)?;
            found.truncate(MAX_RULES_REPORTED);
            return Ok(found);
        }
        SCANNER.with(|slot| {
            let mut slot = slot.borrow_mut();
            let current = matches!(&*slot, Some(t) if Arc::ptr_eq(&t.rules, &self.whole));
            if !current {
                *slot = None;
                let rules = Arc::clone(&self.whole);
                // SAFETY: the scanner borrows the rules behind `rules`,
                // which `ThreadScanner` holds beside it and drops after it;
                // an Arc's contents never move.
                let borrowed: &'static yara_x::Rules = unsafe { &*Arc::as_ptr(&rules) };
                *slot = Some(ThreadScanner {
                    scanner: yara_x::Scanner::new(borrowed),
                    rules,
                });
            }
            let Some(thread) = slot.as_mut() else {
                return Err(ScanError::Yara("no scanner".into()));
            };
            scan_part(&mut thread.scanner, bytes, target, deadline)
        })
    }

    /// Every part on a thread of its own, with a scanner made for this
    /// scan: for a sample this large, making one costs little beside the
    /// scan.
    fn scan_parallel(
        &self,
        bytes: &[u8],
        target: &ScanTarget<'_>,
        deadline: std::time::Instant,
    ) -> Result<Vec<RuleMatch>, ScanError> {
        // A thread that cannot be started fails this scan (the request's
        // 5xx), never the worker; the parts already started are joined.
        let scanned = on_threads("scan-part", &self.parts, |rules| {
            let mut scanner = yara_x::Scanner::new(rules);
            scan_part(&mut scanner, bytes, target, deadline)
        });
        let mut found = Vec::new();
        let mut failed = None;
        for part in scanned {
            let part = part.unwrap_or_else(|failed| {
                Err(ScanError::Yara(match failed {
                    ThreadFailed::Panicked => "a scanning thread panicked".into(),
                    ThreadFailed::NotStarted(e) => format!("cannot start a scanning thread: {e}"),
                }))
            });
            match part {
                Ok(matches) => found.extend(matches),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }
}

/// Why a thread of [`on_threads`] gave no result.
enum ThreadFailed {
    NotStarted(std::io::Error),
    Panicked,
}

/// `work` on every item at once, each on a thread of its own named
/// `name`, all started before any is joined; results in item order. A
/// thread that cannot be started, or that panics, is that item's
/// failure, never a panic here (`Builder::spawn_scoped`, not
/// `Scope::spawn`).
fn on_threads<I: Sync, T: Send>(
    name: &str,
    items: &[I],
    work: impl Fn(&I) -> T + Sync,
) -> Vec<Result<T, ThreadFailed>> {
    let work = &work;
    std::thread::scope(|scope| {
        let running: Vec<_> = items
            .iter()
            .map(|item| {
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn_scoped(scope, move || work(item))
            })
            .collect();
        running
            .into_iter()
            .map(|t| match t {
                Ok(t) => t.join().map_err(|_| ThreadFailed::Panicked),
                Err(e) => Err(ThreadFailed::NotStarted(e)),
            })
            .collect()
    })
}

/// One part's scan of `bytes`, with what is left of the time allowed.
fn scan_part(
    scanner: &mut yara_x::Scanner<'_>,
    bytes: &[u8],
    target: &ScanTarget<'_>,
    deadline: std::time::Instant,
) -> Result<Vec<RuleMatch>, ScanError> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Err(ScanError::Timeout);
    }
    scanner.set_timeout(left);
    for (name, value) in externals(target.filename, target.filetype) {
        scanner
            .set_global(name, value.as_str())
            .map_err(|e| ScanError::Yara(e.to_string()))?;
    }
    match scanner.scan(bytes) {
        Ok(results) => Ok(matches(&results)),
        Err(yara_x::ScanError::Timeout) => Err(ScanError::Timeout),
        Err(other) => Err(ScanError::Yara(other.to_string())),
    }
}

fn matches(results: &yara_x::ScanResults<'_, '_>) -> Vec<RuleMatch> {
    results
        .matching_rules()
        .take(MAX_RULES_REPORTED)
        .map(|r| RuleMatch {
            rule: r.identifier().to_string(),
            namespace: r.namespace().to_string(),
            tags: r.tags().map(|t| t.identifier().to_string()).collect(),
            meta: r
                .metadata()
                .map(|(name, value)| {
                    let v = match value {
                        yara_x::MetaValue::Integer(i) => Value::from(i),
                        yara_x::MetaValue::Float(f) => Value::from(f),
                        yara_x::MetaValue::Bool(b) => Value::from(b),
                        yara_x::MetaValue::String(s) => Value::from(s),
                        yara_x::MetaValue::Bytes(b) => Value::from(b.to_string()),
                    };
                    (name.to_string(), v)
                })
                .collect(),
            strings: r
                .patterns()
                .filter(|p| p.matches().len() > 0)
                .take(MAX_STRINGS_PER_RULE)
                .map(|p| StringMatch {
                    identifier: p.identifier().to_string(),
                    offsets: p
                        .matches()
                        .take(MAX_OFFSETS_PER_STRING)
                        .map(|m| m.range().start as u64)
                        .collect(),
                    more: p.matches().len().saturating_sub(MAX_OFFSETS_PER_STRING),
                })
                .collect(),
        })
        .collect()
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

    /// A directory of rules whose split is visible: three namespaces, and
    /// a fourth made of two files of the same stem, one holding a global
    /// rule that gates the other's (so splitting them would change an
    /// answer).
    fn parted_rules(tag: &str) -> PathBuf {
        let dir = temp(tag);
        for (name, text) in [
            (
                "a.yar",
                "rule in_a { strings: $s = \"alpha-marker\" condition: $s }",
            ),
            (
                "b.yar",
                "rule in_b { strings: $s = \"bravo-marker\" condition: $s and filesize > 4 }",
            ),
            (
                "c.yar",
                "rule in_c { strings: $s = \"charlie-marker\" condition: #s >= 2 }",
            ),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        for (sub, text) in [
            ("x", "global rule big_enough { condition: filesize > 64 }"),
            ("y", "rule in_d { strings: $s = \"delta\" condition: $s }"),
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join("d.yar"), text).unwrap();
        }
        dir
    }

    fn names(found: Vec<RuleMatch>) -> Vec<String> {
        let mut names: Vec<String> = found
            .into_iter()
            .map(|m| format!("{}:{}", m.namespace, m.rule))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_parts_at_once_match_what_the_whole_set_matches() {
        let dir = parted_rules("parts");
        let whole = RuleSet::load(&compile(Some(&dir)).unwrap().bytes).unwrap();
        let bytes = compile_parts(Some(&dir), 3).unwrap().bytes;
        let small_whole = RuleSet::load(&bytes).unwrap();
        let at_once = RuleSet::load(&bytes).unwrap().parallel_from(0);
        assert_eq!((whole.parts(), at_once.parts()), (1, 3));
        assert_eq!(whole.count(), at_once.count());
        let big = [
            &b"alpha-marker bravo-marker charlie-marker charlie-marker delta "[..],
            &[0u8; 100][..],
        ]
        .concat();
        let small = b"delta bravo-marker".to_vec();
        for (sample, expected) in [
            (
                big,
                vec!["a:in_a", "b:in_b", "c:in_c", "d:big_enough", "d:in_d"],
            ),
            // The global rule of d's other file still gates in_d.
            (small, vec!["b:in_b"]),
        ] {
            let target = ScanTarget {
                data: ScanData::Memory(&sample),
                filename: "s.bin",
                filetype: "data",
            };
            let path = dir.join("sample");
            std::fs::write(&path, &sample).unwrap();
            let on_disk = ScanTarget {
                data: ScanData::File(&path),
                ..target
            };
            for rules in [&whole, &small_whole, &at_once] {
                assert_eq!(names(rules.scan(&target, 10).unwrap()), expected);
                assert_eq!(names(rules.scan(&on_disk, 10).unwrap()), expected);
            }
        }
    }

    #[test]
    fn a_refused_file_is_named_the_same_however_the_rules_are_split() {
        let dir = parted_rules("parts-refused");
        std::fs::write(dir.join("b.yar"), "rule broken { condition: nope }").unwrap();
        std::fs::write(dir.join("c.yar"), "rule also_broken { condition: }").unwrap();
        for parts in [1, 2, 4] {
            match compile_parts(Some(&dir), parts) {
                Err(RulesError::Compile { file, .. }) => {
                    assert!(file.ends_with("b.yar"), "{parts} parts: {file}")
                }
                other => panic!("{parts} parts: {:?}", other.map(|c| c.files)),
            }
        }
    }

    /// A worker's order: rules loaded, then executable memory refused for
    /// good (`confine::mdwe`), then scans on new threads, all parts at
    /// once. The refusal is for life, so the test runs itself again as a
    /// process of its own and does the work there.
    #[test]
    fn rules_loaded_before_the_refusal_of_executable_memory_still_scan() {
        const CHILD: &str = "SANDGNAT_TEST_MDWE_CHILD";
        const NAME: &str =
            "scan::tests::rules_loaded_before_the_refusal_of_executable_memory_still_scan";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{said}");
            assert!(said.contains("1 passed"), "the child ran no test: {said}");
            return;
        }
        let dir = parted_rules("mdwe");
        let rules = RuleSet::load(&compile_parts(Some(&dir), 2).unwrap().bytes)
            .unwrap()
            .parallel_from(64);
        // Loading the rules mapped their code: this process could still.
        assert!(crate::confine::can_gain_exec());
        crate::confine::refuse_exec_gain().expect("PR_SET_MDWE (Linux 6.3)");
        let sample = [&b"alpha-marker delta"[..], &[0u8; 100][..]].concat();
        let found = std::thread::scope(|s| {
            s.spawn(|| {
                let target = ScanTarget {
                    data: ScanData::Memory(&sample),
                    filename: "s",
                    filetype: "data",
                };
                rules.scan(&target, 10).map(names)
            })
            .join()
            .unwrap()
        });
        assert_eq!(found.unwrap(), ["a:in_a", "d:big_enough", "d:in_d"]);
        // And nothing executable can be made any more.
        assert!(!crate::confine::can_gain_exec());
    }

    #[test]
    fn the_engine_named_is_the_one_linked() {
        assert_eq!(ENGINE, format!("yara-x-{}", yara_x::VERSION));
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

    #[test]
    fn check_lists_every_refused_file_with_its_line() {
        let dir = temp("check");
        std::fs::write(dir.join("a_good.yar"), "rule ok { condition: true }").unwrap();
        std::fs::write(
            dir.join("b_bad.yar"),
            "rule b {\n  condition:\n    nonsense ==\n}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("c_bad.yar"),
            "rule c {\n  strings:\n    $a = \"x\"\n  condition:\n    $a and $b\n}\n",
        )
        .unwrap();
        let checked = check(Some(&dir)).unwrap();
        assert_eq!(checked.files, 3);
        let refused: Vec<(String, usize)> = checked
            .refused
            .iter()
            .map(|e| match e {
                RulesError::Compile { file, line, .. } => (file.clone(), *line),
                other => panic!("unexpected error {other}"),
            })
            .collect();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].0.ends_with("b_bad.yar") && (3..=4).contains(&refused[0].1));
        assert!(
            refused[1].0.ends_with("c_bad.yar") && refused[1].1 == 5,
            "{refused:?}"
        );
        std::fs::remove_file(dir.join("b_bad.yar")).unwrap();
        std::fs::remove_file(dir.join("c_bad.yar")).unwrap();
        assert!(check(Some(&dir)).unwrap().refused.is_empty());
    }
}
