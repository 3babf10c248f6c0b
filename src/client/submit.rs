//! Sending samples: `--jobs` uploads at once, each on its own keep-alive
//! connection, each file streamed from disk (never read whole) while its
//! sha256 is computed; a retry, with backoff, after a 502, 503 or 429
//! (honouring `Retry-After`) or a connection that could not be made or
//! broke before the answer (a reload, a restart, a proxy), never after
//! any other answer; and with `--wait`, polling of each accepted analysis
//! until it is completed or failed.
//!
//! Every try of one file carries the same `Idempotency-Key`, which the
//! appliance honours: a retry of a file that was recorded gets its first
//! answer, not a second analysis. That is what makes a retry safe when
//! the first try may have been recorded: a `503 unconfirmed` (the commit
//! may have happened), a 502 (the worker failed while answering) or a
//! connection that broke once the request was sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::http::{Body, Client, Endpoint};
use super::report::{Outcome, Report, Upload};
use super::walk::Item;

const CHUNK: usize = 64 * 1024;
/// The longest a single `Retry-After` is honoured for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest one file keeps being retried.
const MAX_RETRY_TIME: Duration = Duration::from_secs(300);
/// Polls of an analysis start this often and slow down to `MAX_POLL`.
const FIRST_POLL: Duration = Duration::from_millis(500);
const MAX_POLL: Duration = Duration::from_secs(15);

pub struct Options {
    /// Metadata for every file: `tags`, `tlp`, `priority`, `callback_url`.
    pub query: Vec<(&'static str, String)>,
    /// `--filename`, for a single sample.
    pub filename: Option<String>,
    pub jobs: usize,
    /// `--wait`: how long each analysis is waited for.
    pub wait: Option<Duration>,
    /// Tries after the first, for a 503/429 or no connection.
    pub retries: u32,
}

/// Sends every item, reporting each as it ends.
pub async fn run(
    endpoint: Arc<Endpoint>,
    key: HeaderValue,
    items: Vec<Item>,
    opts: &Options,
    report: &Report,
) {
    let queue = Mutex::new(VecDeque::from(items));
    let stop = AtomicBool::new(false);
    let left_out = AtomicUsize::new(0);
    let (wait_tx, mut wait_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Value)>();
    let workers: Vec<_> = (0..opts.jobs.max(1))
        .map(|_| {
            let wait_tx = wait_tx.clone();
            let mut client = Client::new(endpoint.clone(), key.clone());
            let (queue, stop, left_out) = (&queue, &stop, &left_out);
            async move {
                loop {
                    let Some(item) = queue.lock().pop_front() else {
                        break;
                    };
                    if stop.load(Ordering::SeqCst) {
                        left_out.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let outcome = submit_one(&mut client, &item, opts, report, stop).await;
                    match outcome {
                        Outcome::Accepted { answer, .. } if opts.wait.is_some() => {
                            report.waiting(&item.display, &answer);
                            let _ = wait_tx.send((item.display.clone(), answer));
                        }
                        other => report.finished(&item.display, &other, opts.wait.is_some()),
                    }
                }
            }
        })
        .collect();
    drop(wait_tx);

    let waiter = async {
        let Some(limit) = opts.wait else { return };
        let client = tokio::sync::Mutex::new(Client::new(endpoint.clone(), key.clone()));
        let mut pending = FuturesUnordered::new();
        loop {
            tokio::select! {
                Some((file, answer)) = wait_rx.recv() => {
                    let client = &client;
                    pending.push(async move {
                        let id = answer["analysis_id"].as_str().unwrap_or_default().to_string();
                        let analysis = Some(wait_one(client, &id, limit, opts.retries).await.map(Box::new));
                        (file, Outcome::Accepted { answer, analysis })
                    });
                }
                Some((file, outcome)) = pending.next(), if !pending.is_empty() => {
                    report.finished(&file, &outcome, true);
                }
                else => break,
            }
        }
    };
    tokio::join!(futures_util::future::join_all(workers), waiter);
    let n = left_out.load(Ordering::SeqCst);
    if n > 0 {
        report.note(&format!(
            "sandgnat: {n} file(s) not submitted: the key was refused"
        ));
    }
}

/// One file, with its retries.
async fn submit_one(
    client: &mut Client,
    item: &Item,
    opts: &Options,
    report: &Report,
    stop: &AtomicBool,
) -> Outcome {
    let path = submit_path(item, opts);
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let mut tries = 0u32;
    let upload = report.upload(&item.display, item.size);
    loop {
        tries += 1;
        let file = match item.open() {
            Ok(f) => f,
            Err(e) => {
                return Outcome::Error {
                    message: format!("cannot open it: {e}"),
                }
            }
        };
        let len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                return Outcome::Error {
                    message: format!("cannot read it: {e}"),
                }
            }
        };
        upload.set_len(len);
        let digest = Arc::new(Mutex::new(None));
        let body = file_body(
            tokio::fs::File::from_std(file),
            len,
            upload.clone(),
            digest.clone(),
        );
        let req = client
            .request(Method::POST, &path)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .header("idempotency-key", idempotency_key.as_str())
            .body(body);
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Error {
                    message: e.to_string(),
                }
            }
        };
        let answer = match client.send(req).await {
            Ok(resp) => client.read(resp).await,
            Err(e) => Err(e),
        };
        let sent_sha256: Option<String> = digest.lock().take();
        let retry = |why: String, wait: Duration| {
            let wait = wait.min(MAX_RETRY_AFTER);
            if tries > opts.retries || started.elapsed() + wait > MAX_RETRY_TIME {
                return Err(Outcome::Error {
                    message: format!("{why}; gave up after {tries} tries"),
                });
            }
            report.note(&format!(
                "retry {}: {why}; try {} of {} in {}s",
                item.display,
                tries + 1,
                opts.retries + 1,
                wait.as_secs_f64().ceil()
            ));
            Ok(wait)
        };
        match answer {
            Ok(a) if a.status == StatusCode::ACCEPTED => {
                upload.done();
                return accepted(a.json(), sent_sha256);
            }
            Ok(a) if worth_retrying(a.status) => {
                // By the API's contract these answers record nothing, but
                // for `unconfirmed` and a 502, which may have: the retry
                // carries the same Idempotency-Key, so it gets that
                // record's answer.
                let (code, message) = a.error();
                let why = format!("{} {code}: {message}", a.status.as_u16());
                match retry(why, a.retry_after.unwrap_or_else(|| backoff(tries))) {
                    Ok(wait) => {
                        upload.rewind();
                        tokio::time::sleep(wait).await
                    }
                    Err(gave_up) => {
                        upload.done();
                        return gave_up;
                    }
                }
            }
            Ok(a) if a.status == StatusCode::UNAUTHORIZED || a.status == StatusCode::FORBIDDEN => {
                upload.done();
                stop.store(true, Ordering::SeqCst);
                let (code, message) = a.error();
                return Outcome::Error {
                    message: format!(
                        "the server refused the key ({} {code}): {message}",
                        a.status.as_u16()
                    ),
                };
            }
            Ok(a) => {
                upload.done();
                let (code, message) = a.error();
                return Outcome::Refused {
                    status: a.status.as_u16(),
                    code,
                    message,
                };
            }
            // Broken after the request went out: it may have been
            // recorded, and the retry's key then gets that record.
            Err(e) if e.may_pass_later() => match retry(e.to_string(), backoff(tries)) {
                Ok(wait) => {
                    upload.rewind();
                    tokio::time::sleep(wait).await
                }
                Err(gave_up) => {
                    upload.done();
                    return match (gave_up, e.not_sent(), sent_sha256) {
                        (Outcome::Error { message }, false, Some(s)) => Outcome::Error {
                            message: format!(
                                "{message}; it may have been recorded: check with `sandgnat lookup {s}`"
                            ),
                        },
                        (gave_up, ..) => gave_up,
                    };
                }
            },
            Err(e) => {
                upload.done();
                return Outcome::Error {
                    message: e.to_string(),
                };
            }
        }
    }
}

/// The answers a later try of the same submission may not get: the
/// front end found no worker or the worker failed (502, 503), or the
/// client is sending too fast (429). Any other answer, 4xx above all,
/// would only come again.
fn worth_retrying(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    )
}

/// 1, 2, 4, ... seconds.
fn backoff(tries: u32) -> Duration {
    Duration::from_secs(1 << tries.saturating_sub(1).min(6))
}

fn submit_path(item: &Item, opts: &Options) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(name) = opts.filename.as_ref().or(item.name.as_ref()) {
        q.append_pair("filename", name);
    }
    for (k, v) in &opts.query {
        q.append_pair(k, v);
    }
    let q = q.finish();
    if q.is_empty() {
        "/v1/submit".into()
    } else {
        format!("/v1/submit?{q}")
    }
}

/// A 202's body, checked: it names the analysis, and its sha256 is that
/// of the bytes read from the file.
fn accepted(doc: Option<Value>, sent_sha256: Option<String>) -> Outcome {
    let Some(answer) = doc.filter(|d| d.get("analysis_id").and_then(Value::as_str).is_some())
    else {
        return Outcome::Error {
            message: "the server answered 202 without an analysis id".into(),
        };
    };
    let theirs = answer.get("sha256").and_then(Value::as_str);
    if let (Some(ours), Some(theirs)) = (sent_sha256.as_deref(), theirs) {
        if ours != theirs {
            return Outcome::Error {
                message: format!(
                    "the server recorded sha256 {theirs} but the bytes sent have {ours}; \
                     analysis {} is not of this file",
                    answer["analysis_id"]
                ),
            };
        }
    }
    Outcome::Accepted {
        answer,
        analysis: None,
    }
}

/// The file as a request body of exactly `len` bytes, read in chunks as
/// the connection takes them, hashed on the way; the digest is left in
/// `digest` once the last byte has gone.
fn file_body(
    file: tokio::fs::File,
    len: u64,
    upload: Upload,
    digest: Arc<Mutex<Option<String>>>,
) -> Body {
    let state = (file, len, Sha256::new());
    let stream = futures_util::stream::try_unfold(state, move |(mut file, left, mut hasher)| {
        let (upload, digest) = (upload.clone(), digest.clone());
        async move {
            if left == 0 {
                *digest.lock() = Some(hex::encode(hasher.finalize()));
                return Ok(None);
            }
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was sent",
                ));
            }
            buf.truncate(n);
            hasher.update(&buf);
            upload.inc(n as u64);
            Ok(Some((
                Frame::data(Bytes::from(buf)),
                (file, left - n as u64, hasher),
            )))
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

/// Polls an analysis until it is completed or failed, for at most
/// `limit`. GETs are safe to repeat, so connection trouble is retried too
/// (up to `retries` times in a row).
async fn wait_one(
    client: &tokio::sync::Mutex<Client>,
    id: &str,
    limit: Duration,
    retries: u32,
) -> Result<Value, String> {
    let deadline = Instant::now() + limit;
    let mut delay = FIRST_POLL;
    let mut failures = 0;
    loop {
        let answer = client.lock().await.get(&format!("/v1/analyses/{id}")).await;
        let mut pause = delay;
        match answer {
            Ok(a) if a.status == StatusCode::OK => {
                failures = 0;
                let doc = a.json().ok_or("the analysis is not JSON")?;
                match doc.get("status").and_then(Value::as_str) {
                    Some("completed" | "failed") => return Ok(doc),
                    Some(_) => {}
                    None => return Err("the analysis has no status".into()),
                }
            }
            Ok(a)
                if a.status == StatusCode::SERVICE_UNAVAILABLE
                    || a.status == StatusCode::TOO_MANY_REQUESTS =>
            {
                pause = a.retry_after.unwrap_or(delay).min(MAX_RETRY_AFTER);
            }
            Ok(a) => {
                let (code, message) = a.error();
                return Err(format!("{} {code}: {message}", a.status.as_u16()));
            }
            Err(e) => {
                failures += 1;
                if failures > retries {
                    return Err(e.to_string());
                }
            }
        }
        if Instant::now() + pause > deadline {
            return Err(format!(
                "not finished within {}s (--wait-timeout)",
                limit.as_secs()
            ));
        }
        tokio::time::sleep(pause).await;
        delay = (delay * 3 / 2).min(MAX_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_a_later_try_may_not_get_are_retried() {
        for code in [502, 503, 429] {
            assert!(
                worth_retrying(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 409, 413, 415, 422, 500, 504, 507] {
            assert!(
                !worth_retrying(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }
}
