//! The analyst's client, `sandgnat submit` and `sandgnat lookup`: talks to
//! an appliance's public API over HTTPS with an API key, as any other
//! client would. This file holds the command-line glue only: flags, the
//! key (from the environment or a file, never a flag, which `ps` shows)
//! and exit statuses; the rest is in `http` (the connection), `walk` (the
//! file list), `submit`, `report` (what is shown) and `lookup`.

mod http;
mod lookup;
mod report;
mod submit;
mod walk;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::intake::metadata::Metadata;

const EXIT_USAGE: u8 = 2;
const DEFAULT_URL: &str = "https://127.0.0.1:8443";

/// Where the appliance is and how to prove who we are.
#[derive(Args)]
pub struct ServerArgs {
    /// The appliance's URL [default: $SANDGNAT_URL, else https://127.0.0.1:8443].
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Trust this PEM certificate (or CA) only, e.g. the appliance's
    /// `<state_dir>/certs/self-signed.pem`; default: the system's CAs.
    #[arg(long, value_name = "PEM")]
    cacert: Option<PathBuf>,
    /// Do not check the server's certificate at all (anyone on the path
    /// can then read the key and the samples).
    #[arg(long, conflicts_with = "cacert")]
    insecure: bool,
    /// Read the API key from this file [default: $SANDGNAT_API_KEY].
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Refused: a key given as a flag shows in `ps` (DESIGN's `--key K`).
    #[arg(long, hide = true, value_name = "KEY")]
    key: Option<String>,
}

#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Files, directories (every regular file below, recursively) or `-`
    /// for standard input.
    #[arg(required = true, value_name = "FILE|DIR|-")]
    paths: Vec<PathBuf>,
    /// A tag for every sample; may be repeated.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Traffic Light Protocol: clear, green, amber, amber+strict or red [server default: amber].
    #[arg(long)]
    tlp: Option<String>,
    /// -100 to 100 [server default: 0].
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i16).range(-100..=100))]
    priority: Option<i16>,
    /// URL the appliance notifies when an analysis finishes.
    #[arg(long, value_name = "URL")]
    callback_url: Option<String>,
    /// The sample's name, for standard input or a single file.
    #[arg(long, value_name = "NAME")]
    filename: Option<String>,
    /// Uploads at once, each on its own connection.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Wait until each analysis is completed or failed and print its result.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up waiting for an analysis after this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    wait_timeout: u64,
    /// Tries after the first when the server is busy or unreachable.
    #[arg(long, value_name = "N", default_value_t = 5)]
    retries: u32,
    /// One JSON object per file on standard output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LookupArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The sample's md5, sha1 or sha256.
    hash: String,
    /// The server's JSON document as it came.
    #[arg(long)]
    json: bool,
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sandgnat: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// The endpoint and key, or the exit status for why not.
fn connect_args(args: &ServerArgs) -> Result<(Arc<http::Endpoint>, ::http::HeaderValue), ExitCode> {
    if args.key.is_some() {
        return Err(usage(
            "--key is refused: a flag's value shows in `ps` to every local user; \
             put the key in SANDGNAT_API_KEY or a file for --key-file (and revoke the one just typed)",
        ));
    }
    let key = match &args.key_file {
        Some(path) => read_key_file(path)?,
        None => match std::env::var("SANDGNAT_API_KEY") {
            Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
            _ => {
                return Err(usage(
                    "no API key: set SANDGNAT_API_KEY or pass --key-file FILE",
                ))
            }
        },
    };
    let key = http::key_header(&key)
        .ok_or_else(|| usage("the API key has characters a header cannot carry"))?;
    let url = args
        .url
        .clone()
        .or_else(|| std::env::var("SANDGNAT_URL").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let endpoint =
        http::Endpoint::new(&url, args.cacert.as_deref(), args.insecure).map_err(usage)?;
    if args.insecure {
        eprintln!("sandgnat: --insecure: the server's certificate is not checked");
    }
    if !endpoint.is_tls() && !endpoint.is_loopback() {
        eprintln!(
            "sandgnat: {url} is plain HTTP: the key and the samples cross the network in clear"
        );
    }
    Ok((Arc::new(endpoint), key))
}

fn read_key_file(path: &Path) -> Result<String, ExitCode> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("--key-file {}: {e}", path.display())))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(usage(format!("--key-file {}: empty", path.display())));
    }
    Ok(key.to_string())
}

/// The metadata flags, checked as the server checks them, for the query
/// string. A bad value is a usage error before anything is sent.
fn metadata(args: &SubmitArgs) -> Result<Vec<(&'static str, String)>, ExitCode> {
    let mut check = Metadata::default();
    let mut query = Vec::new();
    let mut field = |name: &'static str, value: String| {
        check
            .set(name, &value)
            .map_err(|e| usage(format!("--{}: {}", name.replace('_', "-"), e.message)))?;
        query.push((name, value));
        Ok::<(), ExitCode>(())
    };
    if !args.tags.is_empty() {
        if let Some(t) = args
            .tags
            .iter()
            .find(|t| t.contains(',') || t.trim().is_empty())
        {
            return Err(usage(format!(
                "--tag {t:?}: one tag per --tag, not empty, no commas"
            )));
        }
        field("tags", args.tags.join(","))?;
    }
    if let Some(t) = &args.tlp {
        field("tlp", t.clone())?;
    }
    if let Some(p) = args.priority {
        field("priority", p.to_string())?;
    }
    if let Some(u) = &args.callback_url {
        field("callback_url", u.clone())?;
    }
    if let Some(f) = &args.filename {
        check
            .set("filename", f)
            .map_err(|e| usage(format!("--filename: {}", e.message)))?;
    }
    Ok(query)
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| usage(format!("cannot start a runtime: {e}")))
}

pub fn submit(args: SubmitArgs) -> ExitCode {
    let query = match metadata(&args) {
        Ok(q) => q,
        Err(code) => return code,
    };
    let (endpoint, key) = match connect_args(&args.server) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let walk = match walk::collect(&args.paths) {
        Ok(w) => w,
        Err(e) => return usage(e),
    };
    if args.filename.is_some() && walk.items.len() != 1 {
        return usage(format!(
            "--filename names one sample; {} were listed",
            walk.items.len()
        ));
    }
    for why in &walk.skipped {
        eprintln!("sandgnat: {why}");
    }
    if walk.items.is_empty() {
        return usage("nothing to submit");
    }
    let opts = submit::Options {
        query,
        filename: args.filename.clone(),
        jobs: usize::from(args.jobs),
        wait: args.wait.then(|| Duration::from_secs(args.wait_timeout)),
        retries: args.retries,
    };
    let total = walk.items.iter().map(|i| i.size).sum();
    let report = report::Report::new(args.json, walk.items.len(), total);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(submit::run(endpoint, key, walk.items, &opts, &report));
    report.close()
}

pub fn lookup(args: LookupArgs) -> ExitCode {
    let hash = match crate::export::params::hash_kind(args.hash.trim()) {
        Ok((_, h)) => h,
        Err(e) => return usage(format!("{}: {}", args.hash, e.message)),
    };
    let (endpoint, key) = match connect_args(&args.server) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut client = http::Client::new(endpoint, key);
    rt.block_on(lookup::run(&mut client, &hash, args.json))
}
