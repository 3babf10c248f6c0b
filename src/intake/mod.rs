//! Sample intake, `POST /v1/submit`: authenticate, stream the body to the
//! spool while hashing, scan with YARA, put the bytes in the sample store
//! (`crate::storage`: the local quarantine, or an S3 bucket, uploaded
//! while the scan runs), then record the sample, the analysis, its audit
//! rows and its jobs in one transaction. Only after the commit does the
//! client get its 202; any failure before that answers an error and
//! leaves no row behind.

pub mod filetype;
pub mod idempotency;
pub mod known;
pub mod leftovers;
pub mod metadata;
pub mod purged;
pub mod record;
pub mod spool;
pub mod store_leftovers;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;

use crate::api_error::{unavailable, ApiError};
use crate::auth::{allow, Caller};
use crate::recorder::client::RecordError;
use crate::scan::{RuleMatch, ScanData, ScanError, ScanTarget};
use crate::storage::{Source, StoreError, Stored};
use crate::worker::state::AppState;
use metadata::Metadata;
use spool::{Content, Digests, Held, Received, Upload, UploadError};

/// Room for multipart framing and metadata fields above the sample limit.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "sample_too_large",
                e.to_string(),
            ),
            UploadError::NoSpace => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the spool is full; nothing was recorded",
            ),
            UploadError::Io(io) => {
                tracing::error!(error = %io, "spool write failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "spool_error",
                    "the sample could not be written; nothing was recorded",
                )
            }
        }
    }
}

/// A sample the store did not take: full (507), away or refusing (503,
/// to be retried), or a local failure (500). The store's own words go to
/// the log only.
fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Full => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            "the quarantine is full; nothing was recorded",
        ),
        StoreError::Unavailable(_) | StoreError::Refused(_) => {
            tracing::warn!(error = %e, "the sample store did not take a sample; answering 503");
            unavailable("the sample store", "the sample could not be stored")
        }
        other => {
            tracing::error!(error = %other, "cannot store the sample in quarantine");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "quarantine_failed",
                "the sample could not be stored; nothing was recorded",
            )
        }
    }
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Unavailable(why) => unavailable("the database", why),
            RecordError::Unreachable(why) => unavailable("the recorder", why),
            RecordError::Purged => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sample_purged_meanwhile",
                "the stored copy of these bytes was purged while they were being \
                 submitted; nothing was recorded; send them again",
            )
            .retry_after(1),
            RecordError::Refused(e) => {
                tracing::error!(error = %e, "cannot record the submission");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "record_failed",
                    "the submission could not be recorded; nothing was kept",
                )
            }
            // The statement may still commit: say so, rather than "nothing
            // was recorded".
            unconfirmed @ (RecordError::Unconfirmed(_) | RecordError::Lost) => {
                tracing::warn!(error = %unconfirmed, "a submission's record was not confirmed in time");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unconfirmed",
                    format!(
                        "{unconfirmed}; the submission may or may not be recorded; \
                         resubmitting the same bytes is safe"
                    ),
                );
                e.retry_after = Some(5);
                e
            }
        }
    }
}

pub async fn submit(
    State(app): State<AppState>,
    caller: Caller,
    req: Request,
) -> Result<Response, ApiError> {
    caller.require(allow::SUBMIT)?;
    let limit = app.settings.intake.max_sample_bytes;
    let headers = req.headers().clone();
    let idempotency_key = idempotency::key_of(&headers)?;
    let multipart = multipart_boundary(&headers)?;
    if let Some(len) = content_length(&headers) {
        let allowed = limit
            + if multipart.is_some() {
                MULTIPART_OVERHEAD
            } else {
                0
            };
        if len > allowed {
            return Err(UploadError::TooLarge { limit }.into());
        }
    }
    // Fail fast while the body is still unread: a submission that cannot be
    // recorded should not cost the client a long upload first. A small one
    // costs less to receive than this round trip, so it goes straight on.
    let small =
        content_length(&headers).is_some_and(|len| len <= app.settings.intake.memory_sample_bytes);
    if !small {
        use sqlx::Connection as _;
        let mut conn = app
            .db
            .acquire()
            .await
            .map_err(|e| unavailable("the database", e))?;
        conn.ping()
            .await
            .map_err(|e| unavailable("the database", e))?;
        app.store.reachable().await.map_err(store_error)?;
    }

    let mut meta = Metadata::default();
    if let Some(q) = req.uri().query() {
        for (k, v) in form_pairs(q) {
            meta.set(&k, &v)?;
        }
    }
    // Checked whatever the body's form, so a bad one is never ignored; a
    // multipart `filename` field given as well wins.
    if let Some(name) = headers.get("x-filename") {
        let name = name.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_metadata",
                "X-Filename: not visible ASCII; send the name as a filename field or parameter",
            )
        })?;
        meta.set("filename", name)?;
    }
    let body = req.into_body();
    let received = match multipart {
        Some(boundary) => {
            receive_multipart(&Receiving::of(&app), body, boundary, &mut meta).await?
        }
        None => receive_raw(&Receiving::of(&app), body, content_length(&headers)).await?,
    };
    if received.size == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_sample",
            "the sample has no bytes",
        ));
    }
    let received = match &idempotency_key {
        Some(key) => match answered_before(&app, &caller, key, received).await? {
            Answer::Given(replayed) => return Ok(replayed),
            Answer::New(received) => received,
        },
        None => received,
    };
    let request_id = header_str(&headers, "x-request-id").unwrap_or_default();
    let client_ip = header_str(&headers, "x-real-ip");
    let given = Given {
        caller: &caller,
        request_id: &request_id,
        client_ip,
        idempotency_key,
    };
    process(&app, received, meta, given).await
}

/// Whether a try whose key was used before was answered here.
enum Answer {
    Given(Response),
    New(Received),
}

/// The cheap path for a retry whose first try is on record: its first
/// answer (or the refusal of other bytes) without scanning, storing or
/// recording anything. A key not on record, or a database that cannot say,
/// goes the whole way: the recorder's statement decides then.
async fn answered_before(
    app: &AppState,
    caller: &Caller,
    key: &str,
    mut received: Received,
) -> Result<Answer, ApiError> {
    let prior = match idempotency::lookup(&app.db, caller.key_id, key).await {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(Answer::New(received)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up an idempotency key; recording the submission, which checks it again");
            return Ok(Answer::New(received));
        }
    };
    let (sha256, received) = if received.size <= INLINE_BYTES {
        (received.digests().sha256, received)
    } else {
        // Hashing a sample held in memory is blocking work.
        tokio::task::spawn_blocking(move || (received.digests().sha256, received))
            .await
            .map_err(blocking_failed)?
    };
    drop(received);
    idempotency::replay(prior, &sha256).map(Answer::Given)
}

/// What the client said beside the sample.
struct Given<'a> {
    caller: &'a Caller,
    request_id: &'a str,
    client_ip: Option<String>,
    idempotency_key: Option<String>,
}

/// Where a sample's bytes go while they arrive, and how many may come.
pub struct Receiving<'a> {
    pub spool: &'a std::path::Path,
    /// `intake.max_sample_bytes`.
    pub limit: u64,
    pub memory: &'a std::sync::Arc<spool::MemoryBudget>,
}

impl<'a> Receiving<'a> {
    fn of(app: &'a AppState) -> Self {
        Receiving {
            spool: &app.spool,
            limit: app.settings.intake.max_sample_bytes,
            memory: &app.memory,
        }
    }
}

async fn receive_raw(
    to: &Receiving<'_>,
    body: Body,
    announced: Option<u64>,
) -> Result<Received, ApiError> {
    let mut upload = Upload::start(to.spool, to.limit, to.memory);
    if let Some(len) = announced {
        upload.expect(len);
    }
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| client_gone(&e))?;
        upload.push(chunk).await?;
    }
    Ok(upload.finish().await?)
}

/// The sample part (`file`) of a multipart body, its other parts set as
/// metadata on `meta`.
pub async fn receive_multipart(
    to: &Receiving<'_>,
    body: Body,
    boundary: String,
    meta: &mut Metadata,
) -> Result<Received, ApiError> {
    let limit = to.limit;
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limit + MULTIPART_OVERHEAD)
            .per_field(limit.max(metadata::MAX_FIELD as u64)),
    );
    let mut parts =
        multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let mut received = None;
    while let Some(mut field) = parts.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            if received.is_some() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_multipart",
                    "more than one file part",
                ));
            }
            if meta.filename.is_none() {
                if let Some(f) = field.file_name().map(str::to_string) {
                    meta.set("filename", &f)?;
                }
            }
            let mut upload = Upload::start(to.spool, limit, to.memory);
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                upload.push(chunk).await?;
            }
            received = Some(upload.finish().await?);
        } else {
            let mut value = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                if value.len() + chunk.len() > metadata::MAX_FIELD {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_metadata",
                        format!("{name}: longer than {} bytes", metadata::MAX_FIELD),
                    ));
                }
                value.extend_from_slice(&chunk);
            }
            let value = String::from_utf8(value).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_metadata",
                    format!("{name}: not UTF-8"),
                )
            })?;
            meta.set(&name, &value)?;
        }
    }
    received.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_file",
            "the multipart body has no part named \"file\"",
        )
    })
}

/// Scan (or reuse a stored answer), quarantine, record: everything after
/// the bytes are in.
async fn process(
    app: &AppState,
    received: Received,
    meta: Metadata,
    given: Given<'_>,
) -> Result<Response, ApiError> {
    let Given {
        caller,
        request_id,
        client_ip,
        idempotency_key,
    } = given;
    let named = meta.filename.clone();
    let inline = received.size <= INLINE_BYTES && matches!(received.content, Content::Memory(_));
    let examined = if !app.store.is_local() {
        examine_remote(app, received, named, caller).await?
    } else if inline {
        examine_small(app, received, named, caller).await?
    } else {
        examine_large(app, received, named, caller).await?
    };
    let Examined {
        inspected:
            Inspected {
                identity:
                    Identity {
                        digests,
                        size,
                        filename,
                        file_type,
                        ..
                    },
                scanned,
                cached,
            },
        stored,
    } = examined;
    let (matches, scan_error): (Vec<RuleMatch>, Option<String>) = match scanned {
        Ok(m) => (m, None),
        // A sample that defeats the scanner is still evidence: keep it and
        // record why it has no matches.
        Err(ScanError::Timeout) => (Vec::new(), Some("timeout".into())),
        Err(ScanError::Yara(e)) => (Vec::new(), Some(e)),
    };
    let stored = stored.map_err(store_error)?;
    let Digests { sha1, md5, .. } = digests;
    // Only a complete answer names the rules that gave it, so only a
    // complete answer is ever reused.
    let rules_digest = scan_error.is_none().then(|| app.rules.digest());

    let submission = record::Submission {
        sha256: sha256_of(&stored.location),
        sha1,
        md5,
        size,
        file_type,
        storage_path: stored.location.clone(),
        wrote_bytes: stored.wrote,
        filename: filename.clone(),
        meta,
        key_id: caller.key_id,
        key_name: caller.name.clone(),
        client_ip,
        request_id: request_id.to_string(),
        matches: &matches,
        scan_error: scan_error.as_deref(),
        rules_digest,
        yara_cached: cached,
        queue: &app.settings.queue,
        static_analysis: app.settings.intake.static_analysis_enabled,
        no_enqueue: app.settings.debug.no_enqueue,
        idempotency_key,
    };
    let (analysis_id, queues) = match app.recorder.record(&submission).await? {
        record::Recorded::New {
            analysis_id,
            queues,
        } => (analysis_id, queues),
        // Another try of this key was recorded first (in the same batch,
        // or while this one was being scanned).
        record::Recorded::Existing(prior) => {
            return idempotency::replay(prior, &submission.sha256);
        }
    };
    for queue in &queues {
        app.notifier.poke(queue);
    }
    tracing::info!(analysis_id = %analysis_id, sha256 = %submission.sha256, matches = matches.len(), yara_cached = cached, "sample accepted");
    let body = record::accepted(analysis_id, &submission);
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Samples up to this size, held in memory, are hashed and scanned on
/// the event loop: that takes less time than a hop to the blocking pool
/// and back, two thread wake-ups. Only
/// writing a new one to the quarantine (an fsync) goes to the pool.
/// Samples above it that are held in memory are shared with an S3
/// upload, not copied.
const INLINE_BYTES: u64 = 16 * 1024;

/// The longest an inline scan may hold the event loop (the engine counts its
/// timeout in whole seconds).
const INLINE_SCAN_TIMEOUT_S: u64 = 1;

/// What a sample is, before any scan: all a stored answer is looked up by.
struct Identity {
    digests: Digests,
    size: u64,
    /// The name given, else the sha256.
    filename: String,
    file_type: String,
    /// Its bytes are in the store already, so an earlier analysis may
    /// hold its answer.
    known: bool,
}

/// What hashing, typing and scanning a sample found out.
struct Inspected {
    identity: Identity,
    scanned: Result<Vec<RuleMatch>, ScanError>,
    /// The matches are a stored answer's, not a new scan's.
    cached: bool,
}

struct Examined {
    inspected: Inspected,
    /// Where the store keeps the bytes, and whether this submission wrote
    /// them.
    stored: Result<Stored, StoreError>,
}

/// Hash (if not done while spooling), detect the type, and, for the local
/// store, look in the quarantine. Blocking for any but a small sample in
/// memory.
fn identify(app: &AppState, received: &mut Received, named: Option<String>) -> Identity {
    let digests = received.digests();
    let file_type = filetype::detect(&received.content);
    // A sample sent without a name is named by its sha256.
    let filename = named.unwrap_or_else(|| digests.sha256.clone());
    let known = app.store.local_contains(&digests.sha256).unwrap_or(false);
    Identity {
        digests,
        size: received.size,
        filename,
        file_type,
        known,
    }
}

/// The stored answer for a sample already in the store, if any.
async fn stored_answer(
    app: &AppState,
    caller: &Caller,
    identity: &Identity,
) -> Option<Vec<RuleMatch>> {
    if !identity.known {
        return None;
    }
    let key = known::Key {
        sha256: &identity.digests.sha256,
        filename: &identity.filename,
        rules_digest: app.rules.digest(),
    };
    known::stored_matches(&app.db, caller, &key).await
}

/// Scans within `timeout_s`. Blocking for any but a small sample in
/// memory.
fn scan(
    app: &AppState,
    identity: &Identity,
    received: &Received,
    timeout_s: u64,
) -> Result<Vec<RuleMatch>, ScanError> {
    let data = match &received.content {
        Content::Memory(held) => ScanData::Memory(held.as_slice()),
        Content::File(f) => ScanData::File(f.path()),
    };
    scan_data(app, identity, data, timeout_s)
}

/// Scans a sample handed to the store meanwhile. Blocking.
fn scan_source(
    app: &AppState,
    identity: &Identity,
    source: &Source,
    timeout_s: u64,
) -> Result<Vec<RuleMatch>, ScanError> {
    let data = match source {
        Source::Memory(bytes) => ScanData::Memory(bytes),
        Source::File(f) => ScanData::File(f.path()),
    };
    scan_data(app, identity, data, timeout_s)
}

fn scan_data(
    app: &AppState,
    identity: &Identity,
    data: ScanData<'_>,
    timeout_s: u64,
) -> Result<Vec<RuleMatch>, ScanError> {
    let target = ScanTarget {
        data,
        filename: &identity.filename,
        filetype: &identity.file_type,
    };
    app.rules.scan(&target, timeout_s)
}

/// A large sample (or one spooled): hashing, the scan and the file system
/// are blocking work, done off the event loop so the worker's heartbeat
/// and other requests go on. A new sample takes one hop there; one already
/// in the quarantine comes back for the stored answer first.
async fn examine_large(
    app: &AppState,
    received: Received,
    named: Option<String>,
    caller: &Caller,
) -> Result<Examined, ApiError> {
    let worker = app.clone();
    let first = tokio::task::spawn_blocking(move || {
        let mut received = received;
        let identity = identify(&worker, &mut received, named);
        if identity.known {
            return FirstLook::Known(identity, received);
        }
        FirstLook::Done(scan_and_store(&worker, identity, received, None))
    })
    .await
    .map_err(blocking_failed)?;
    let (identity, received) = match first {
        FirstLook::Done(examined) => return Ok(examined),
        FirstLook::Known(identity, received) => (identity, received),
    };
    let stored = stored_answer(app, caller, &identity).await;
    let worker = app.clone();
    tokio::task::spawn_blocking(move || scan_and_store(&worker, identity, received, stored))
        .await
        .map_err(blocking_failed)
}

/// What the first hop of a large sample did: all of it, or, for a sample
/// in the quarantine already, only identify it.
enum FirstLook {
    Done(Examined),
    Known(Identity, Received),
}

/// Blocking: scans unless `stored` holds the answer, then puts the sample
/// in the quarantine.
fn scan_and_store(
    app: &AppState,
    identity: Identity,
    received: Received,
    stored: Option<Vec<RuleMatch>>,
) -> Examined {
    let cached = stored.is_some();
    let scanned = match stored {
        Some(m) => Ok(m),
        None => scan(app, &identity, &received, app.settings.yara.scan_timeout),
    };
    let (source, _held) = into_source(received.content);
    let stored = local_put(app, &identity.digests.sha256, &source);
    Examined {
        inspected: Inspected {
            identity,
            scanned,
            cached,
        },
        stored,
    }
}

/// A small sample in memory: inspected here; stored from the blocking pool
/// unless the same bytes are in the quarantine already. Its scan gets
/// [`INLINE_SCAN_TIMEOUT_S`] here; one that needs longer (slow rules, a
/// sample made to exercise them) is scanned again on the blocking pool
/// with `yara.scan_timeout`, so the event loop, and with it every other
/// request on this worker and its heartbeat, is never held longer.
async fn examine_small(
    app: &AppState,
    mut received: Received,
    named: Option<String>,
    caller: &Caller,
) -> Result<Examined, ApiError> {
    let identity = identify(app, &mut received, named);
    let (scanned, cached, identity, received) = match stored_answer(app, caller, &identity).await {
        Some(m) => (Ok(m), true, identity, received),
        None => {
            let (scanned, identity, received) = scan_small(app, identity, received).await?;
            (scanned, false, identity, received)
        }
    };
    let sha256 = identity.digests.sha256.clone();
    let inspected = Inspected {
        identity,
        scanned,
        cached,
    };
    if app.store.local_contains(&sha256) == Some(true) {
        let stored = Stored {
            location: app.store.location(&sha256),
            wrote: false,
        };
        return Ok(Examined {
            inspected,
            stored: Ok(stored),
        });
    }
    let worker = app.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let (source, _held) = into_source(received.content);
        local_put(&worker, &sha256, &source)
    })
    .await
    .map_err(blocking_failed)?;
    Ok(Examined { inspected, stored })
}

/// Blocking: the local store's put.
fn local_put(app: &AppState, sha256: &str, source: &Source) -> Result<Stored, StoreError> {
    app.store
        .local_put(sha256, source)
        .unwrap_or_else(|| Err(StoreError::Config("not a local store".into())))
}

/// The received bytes as the store takes them; a sample in memory stays
/// charged to the worker's budget while the returned `Held` lives.
fn into_source(content: Content) -> (Source, Option<Held>) {
    match content {
        Content::Memory(held) => (Source::Memory(held.bytes()), Some(held)),
        Content::File(f) => (Source::File(f), None),
    }
}

/// A remote store (S3): one HEAD says whether the bytes are there; a new
/// sample is uploaded while it is scanned, both reading the same spool
/// file (or the same bytes in memory), so the upload costs the
/// submission about what the longer of the two takes rather than their
/// sum. A failed upload fails the submission (503) whatever the scan
/// found.
async fn examine_remote(
    app: &AppState,
    mut received: Received,
    named: Option<String>,
    caller: &Caller,
) -> Result<Examined, ApiError> {
    let inline = received.size <= INLINE_BYTES && matches!(received.content, Content::Memory(_));
    let mut identity = if inline {
        identify(app, &mut received, named)
    } else {
        let worker = app.clone();
        let (identity, back) = tokio::task::spawn_blocking(move || {
            let identity = identify(&worker, &mut received, named);
            (identity, received)
        })
        .await
        .map_err(blocking_failed)?;
        received = back;
        identity
    };
    let sha256 = identity.digests.sha256.clone();
    identity.known = app.store.contains(&sha256).await.map_err(store_error)?;
    let answer = stored_answer(app, caller, &identity).await;
    let cached = answer.is_some();
    if inline {
        // Microseconds of scanning: not worth overlapping.
        let (scanned, identity, received) = match answer {
            Some(m) => (Ok(m), identity, received),
            None => scan_small(app, identity, received).await?,
        };
        let stored = if identity.known {
            Ok(Stored {
                location: app.store.location(&sha256),
                wrote: false,
            })
        } else {
            let (source, _held) = into_source(received.content);
            app.store.put(&sha256, Arc::new(source)).await
        };
        return Ok(Examined {
            inspected: Inspected {
                identity,
                scanned,
                cached,
            },
            stored,
        });
    }
    let (source, _held) = into_source(received.content);
    let source = Arc::new(source);
    let known = identity.known;
    let scanning = async {
        match answer {
            Some(m) => Ok((Ok(m), identity)),
            None => {
                let (worker, source) = (app.clone(), source.clone());
                tokio::task::spawn_blocking(move || {
                    let timeout = worker.settings.yara.scan_timeout;
                    (scan_source(&worker, &identity, &source, timeout), identity)
                })
                .await
                .map_err(blocking_failed)
            }
        }
    };
    let uploading = async {
        if known {
            Ok(Stored {
                location: app.store.location(&sha256),
                wrote: false,
            })
        } else {
            app.store.put(&sha256, source.clone()).await
        }
    };
    let (scanned, stored) = tokio::join!(scanning, uploading);
    let (scanned, identity) = scanned?;
    Ok(Examined {
        inspected: Inspected {
            identity,
            scanned,
            cached,
        },
        stored,
    })
}

/// A small sample's scan: on the event loop within
/// [`INLINE_SCAN_TIMEOUT_S`], then, if that was not enough, again on the
/// blocking pool with `yara.scan_timeout`.
async fn scan_small(
    app: &AppState,
    identity: Identity,
    received: Received,
) -> Result<(Result<Vec<RuleMatch>, ScanError>, Identity, Received), ApiError> {
    let full = app.settings.yara.scan_timeout;
    let scanned = scan(app, &identity, &received, full.min(INLINE_SCAN_TIMEOUT_S));
    if !(matches!(scanned, Err(ScanError::Timeout)) && full > INLINE_SCAN_TIMEOUT_S) {
        return Ok((scanned, identity, received));
    }
    tracing::info!(sha256 = %identity.digests.sha256, "a small sample's scan took over a second; scanning it off the event loop");
    let worker = app.clone();
    tokio::task::spawn_blocking(move || {
        let scanned = scan(&worker, &identity, &received, full);
        (scanned, identity, received)
    })
    .await
    .map_err(blocking_failed)
}

fn blocking_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "scan_failed",
        e.to_string(),
    )
}

/// The store's location ends in the sha256 (its content address);
/// reading it back keeps the row and the stored name in step by
/// construction.
fn sha256_of(location: &str) -> String {
    location.rsplit('/').next().unwrap_or_default().to_string()
}

fn client_gone(e: &axum::Error) -> ApiError {
    tracing::info!(error = %e, "client went away during the upload; nothing recorded");
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "upload_interrupted",
        format!("the upload ended early: {e}"),
    )
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "sample_too_large",
                e.to_string(),
            )
        }
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_multipart",
            other.to_string(),
        ),
    }
}

/// The boundary of a multipart body, if `Content-Type` says it is one.
pub fn multipart_boundary(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    if !ct.to_ascii_lowercase().starts_with("multipart/") {
        return Ok(None);
    }
    multer::parse_boundary(ct).map(Some).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_multipart",
            format!("bad Content-Type: {e}"),
        )
    })
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `application/x-www-form-urlencoded` pairs from a query string.
pub(crate) fn form_pairs(q: &str) -> Vec<(String, String)> {
    fn hex_val(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
                {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::form_pairs;

    #[test]
    fn query_pairs_are_decoded() {
        assert_eq!(
            form_pairs("tags=a%2Cb&tlp=red&filename=my+file.exe&x"),
            vec![
                ("tags".into(), "a,b".into()),
                ("tlp".into(), "red".into()),
                ("filename".into(), "my file.exe".into()),
                ("x".into(), String::new())
            ]
        );
        assert_eq!(form_pairs("a=%zz%4"), vec![("a".into(), "%zz%4".into())]);
        // Multi-byte input next to a percent sign must not split a character.
        assert_eq!(form_pairs("a=%é"), vec![("a".into(), "%é".into())]);
    }

    #[test]
    fn a_record_that_may_have_committed_is_never_answered_nothing_recorded() {
        use crate::api_error::ApiError;
        use crate::recorder::client::RecordError;
        let cases = [
            RecordError::Unconfirmed(std::time::Duration::from_secs(5)),
            RecordError::Lost,
        ];
        for e in cases {
            let a = ApiError::from(e);
            assert_eq!(a.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(a.code, "unconfirmed");
            assert!(
                a.message.contains("may or may not be recorded"),
                "{}",
                a.message
            );
            assert!(!a.message.contains("nothing was"), "{}", a.message);
            assert!(a.retry_after.is_some());
        }
        let a = ApiError::from(RecordError::Unavailable("down".into()));
        assert_eq!(a.code, "unavailable");
        assert!(a.message.contains("nothing was recorded"), "{}", a.message);
    }
}
