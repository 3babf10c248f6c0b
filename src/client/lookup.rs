//! `sandgnat lookup HASH`: what the appliance knows of a sample
//! (`GET /v1/samples/{hash}`, by md5, sha1 or sha256), as a short
//! summary or, with `--json`, the server's document as it came.

use std::process::ExitCode;

use http::StatusCode;
use serde_json::Value;

use super::http::Client;

pub async fn run(client: &mut Client, hash: &str, json: bool) -> ExitCode {
    let answer = match client.get(&format!("/v1/samples/{hash}")).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sandgnat: {e}");
            return ExitCode::from(2);
        }
    };
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            eprintln!("sandgnat: no sample {hash} is known to this key");
            return ExitCode::from(1);
        }
        status => {
            let (code, message) = answer.error();
            eprintln!("sandgnat: {} {code}: {message}", status.as_u16());
            // A refused key or a server in trouble is not an answer about
            // the sample.
            let usage = status == StatusCode::UNAUTHORIZED
                || status == StatusCode::FORBIDDEN
                || status.is_server_error();
            return ExitCode::from(if usage { 2 } else { 1 });
        }
    }
    let Some(doc) = answer.json() else {
        eprintln!("sandgnat: the server's answer is not JSON");
        return ExitCode::from(2);
    };
    if json {
        println!("{doc}");
    } else {
        print!("{}", summary(&doc));
    }
    ExitCode::SUCCESS
}

fn text<'a>(doc: &'a Value, key: &str) -> &'a str {
    doc.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn summary(doc: &Value) -> String {
    let mut out = String::new();
    for key in ["sha256", "sha1", "md5"] {
        out += &format!("{key:<11}{}\n", text(doc, key));
    }
    out += &format!(
        "{:<11}{} bytes\n",
        "size",
        doc.get("size").and_then(Value::as_u64).unwrap_or(0)
    );
    out += &format!("{:<11}{}\n", "file type", text(doc, "file_type"));
    out += &format!("{:<11}{}\n", "first seen", text(doc, "first_seen"));
    out += &format!("{:<11}{}\n", "last seen", text(doc, "last_seen"));
    let names: Vec<&str> = doc
        .get("file_names")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out += &format!("{:<11}{}\n", "names", names.join(", "));
    out += "analyses (newest first):\n";
    for a in doc
        .get("analyses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out += &format!(
            "  {}  {:<9}  {}  tlp:{}  yara: {}\n",
            text(a, "analysis_id"),
            text(a, "status"),
            text(a, "created_at"),
            text(a, "tlp"),
            super::report::rule_names(a),
        );
    }
    if doc.get("more_analyses").and_then(Value::as_bool) == Some(true) {
        out += &format!("  more: {}\n", text(doc, "analyses_url"));
    }
    out
}
