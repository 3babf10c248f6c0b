//! What `sandgnat submit` shows: progress bars on a terminal (one per
//! upload under way and one overall, with bytes, rate and ETA), one line
//! per file otherwise, or one JSON object per file with `--json`; and the
//! exit status that sums them up (0 all accepted, 1 some refused, 2 a
//! usage or connection error).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// How one file ended.
pub enum Outcome {
    /// The server's 202 answer; with `--wait`, the analysis as it ended
    /// (or `Err` with why the wait stopped).
    Accepted {
        answer: Value,
        /// Boxed: a `Value` is large (serde_json keeps object keys in
        /// order, which yara-x turns on for the whole build).
        analysis: Option<Result<Box<Value>, String>>,
    },
    /// A 4xx/5xx answer that says why.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer, or one that does not count: a connection or server
    /// problem rather than something wrong with the file.
    Error { message: String },
}

#[derive(Default)]
struct Tally {
    accepted: u64,
    refused: u64,
    errors: u64,
    unfinished: u64,
}

pub struct Report {
    json: bool,
    files: usize,
    bars: Option<(MultiProgress, ProgressBar)>,
    tally: Mutex<Tally>,
}

impl Report {
    /// Bars only when standard error is a terminal: that is where they are
    /// drawn, and a pipe or a log file should get plain lines.
    pub fn new(json: bool, files: usize, total_bytes: u64) -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(total_bytes));
            overall.set_style(style(
                "{msg:>12} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ));
            overall.set_message(format!("0/{files} files"));
            (multi, overall)
        });
        Report {
            json,
            files,
            bars,
            tally: Mutex::default(),
        }
    }

    /// A bar for one upload (hidden without a terminal). `inc` it as bytes
    /// go out; the overall bar follows.
    pub fn upload(&self, name: &str, len: u64) -> Upload {
        match &self.bars {
            Some((multi, overall)) => {
                let bar = multi.insert_before(overall, ProgressBar::new(len));
                bar.set_style(style("{msg:>12.dim} [{bar:20}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"));
                bar.set_message(short(name, 12));
                Upload {
                    bar,
                    overall: Some(overall.clone()),
                }
            }
            None => Upload {
                bar: ProgressBar::hidden(),
                overall: None,
            },
        }
    }

    /// A line on standard error that does not tear the bars.
    pub fn note(&self, line: &str) {
        self.print(line, true);
    }

    fn print(&self, line: &str, to_stderr: bool) {
        let write = || {
            if to_stderr {
                eprintln!("{line}");
            } else {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        };
        match &self.bars {
            Some((multi, _)) => multi.suspend(write),
            None => write(),
        }
    }

    /// The file was accepted and is now being waited for (`--wait`).
    pub fn waiting(&self, file: &str, answer: &Value) {
        if !self.json {
            self.print(&accepted_line(file, answer), false);
        }
    }

    /// A file is done: its line or JSON object, and the tally.
    pub fn finished(&self, file: &str, outcome: &Outcome, waited: bool) {
        let mut t = self.tally.lock();
        match outcome {
            Outcome::Accepted { analysis, .. } => {
                t.accepted += 1;
                if matches!(analysis, Some(Err(_))) {
                    t.unfinished += 1;
                }
            }
            Outcome::Refused { .. } => t.refused += 1,
            Outcome::Error { .. } => t.errors += 1,
        }
        let done = t.accepted + t.refused + t.errors;
        drop(t);
        if let Some((_, overall)) = &self.bars {
            overall.set_message(format!("{done}/{} files", self.files));
        }
        if self.json {
            self.print(&to_json(file, outcome).to_string(), false);
            return;
        }
        match outcome {
            Outcome::Accepted { answer, analysis } => match analysis {
                None if !waited => self.print(&accepted_line(file, answer), false),
                None => {}
                Some(Ok(a)) => self.print(
                    &format!(
                        "{} {file} analysis={} results={}",
                        a.get("status")
                            .and_then(Value::as_str)
                            .unwrap_or("finished"),
                        answer["analysis_id"].as_str().unwrap_or("?"),
                        a.get("results").cloned().unwrap_or(Value::Null)
                    ),
                    false,
                ),
                Some(Err(why)) => self.note(&format!(
                    "unfinished {file} analysis={}: {why}",
                    answer["analysis_id"].as_str().unwrap_or("?")
                )),
            },
            Outcome::Refused {
                status,
                code,
                message,
            } => self.note(&format!("refused {file}: {status} {code}: {message}")),
            Outcome::Error { message } => self.note(&format!("error {file}: {message}")),
        }
    }

    /// Clears the bars, prints a summary on a terminal, and gives the
    /// exit status.
    pub fn close(&self) -> ExitCode {
        let t = self.tally.lock();
        if let Some((multi, overall)) = &self.bars {
            overall.finish_and_clear();
            let _ = multi.clear();
            eprintln!(
                "{} accepted, {} refused, {} errors",
                t.accepted, t.refused, t.errors
            );
        }
        if t.errors > 0 {
            ExitCode::from(2)
        } else if t.refused > 0 || t.unfinished > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// One upload's bar and the overall one.
#[derive(Clone)]
pub struct Upload {
    bar: ProgressBar,
    overall: Option<ProgressBar>,
}

impl Upload {
    pub fn set_len(&self, len: u64) {
        self.bar.set_length(len);
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(o) = &self.overall {
            o.inc(n);
        }
    }

    /// A try that ended: its bytes leave the overall count, so a retry
    /// does not count them twice.
    pub fn rewind(&self) {
        if let Some(o) = &self.overall {
            o.set_position(o.position().saturating_sub(self.bar.position()));
        }
        self.bar.set_position(0);
    }

    pub fn done(self) {
        self.bar.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The last `width` characters of a name, where file names differ.
fn short(name: &str, width: usize) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= width {
        name.to_string()
    } else {
        let tail: String = chars[chars.len() - (width - 1)..].iter().collect();
        format!("…{tail}")
    }
}

/// The YARA rules an analysis's `yara` list names, or `none`.
pub(super) fn rule_names(answer: &Value) -> String {
    let names: Vec<&str> = answer
        .get("yara")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|r| r.get("rule").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

fn accepted_line(file: &str, answer: &Value) -> String {
    format!(
        "accepted {file} analysis={} sha256={} yara={}",
        answer["analysis_id"].as_str().unwrap_or("?"),
        answer["sha256"].as_str().unwrap_or("?"),
        rule_names(answer)
    )
}

/// The `--json` object for one file.
fn to_json(file: &str, outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Accepted { answer, analysis } => {
            let field = |k: &str| answer.get(k).cloned().unwrap_or(Value::Null);
            let mut doc = json!({
                "file": file,
                "status": "accepted",
                "analysis_id": field("analysis_id"),
                "sha256": field("sha256"),
                "sha1": field("sha1"),
                "md5": field("md5"),
                "size": field("size"),
                "file_type": field("file_type"),
                "yara": field("yara"),
                "yara_error": field("yara_error"),
            });
            match analysis {
                Some(Ok(a)) => {
                    doc["status"] = a.get("status").cloned().unwrap_or(Value::Null);
                    doc["analysis"] = Value::clone(a);
                }
                Some(Err(why)) => {
                    doc["status"] = "unfinished".into();
                    doc["message"] = why.as_str().into();
                }
                None => {}
            }
            doc
        }
        Outcome::Refused {
            status,
            code,
            message,
        } => json!({
            "file": file, "status": "refused", "http_status": status,
            "error": code, "message": message,
        }),
        Outcome::Error { message } => json!({
            "file": file, "status": "error", "error": "connection", "message": message,
        }),
    }
}
