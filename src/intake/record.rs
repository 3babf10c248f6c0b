//! The one transaction that makes a submission durable: the sample (new,
//! or seen again), the analysis, its `submitted` and `scanned` audit rows,
//! and the analysis jobs. Nothing is visible until it all commits, and no
//! NOTIFY happens inside it (the caller wakes the queues after commit).
//!
//! Group commit: submissions that arrive while the recorder is busy are
//! written together, as one statement and one commit, and each gets its
//! answer only after that commit. A lone submission goes at once; under
//! load the statement's fixed cost (round trip, executor start-up,
//! constraint set-up, WAL flush) is spread over the batch. The batches are
//! formed node-wide, by the recorder process (`crate::recorder`), which
//! every worker hands its rows to: per worker, a batch could hold only that
//! worker's own connections. A batch that fails for a reason other than an
//! unreachable database is retried one submission at a time, so one bad
//! row never fails another client's submission.

use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::types::Json;
use sqlx::PgPool;
use sqlx::Row as _;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::idempotency::Prior;
use super::metadata::Metadata;
use crate::queue::{self, NewJob};
use crate::scan::RuleMatch;

pub struct Submission<'a> {
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    pub size: u64,
    pub file_type: String,
    pub storage_path: String,
    /// This submission stored the bytes itself (`storage::Stored`);
    /// false when it found them stored already.
    pub wrote_bytes: bool,
    pub filename: String,
    pub meta: Metadata,
    pub key_id: i64,
    pub key_name: String,
    pub client_ip: Option<String>,
    pub request_id: String,
    pub matches: &'a [RuleMatch],
    pub scan_error: Option<&'a str>,
    /// The digest of the rules whose complete answer `matches` is; `None`
    /// when the scan failed.
    pub rules_digest: Option<&'a str>,
    /// `matches` were an earlier analysis's (`super::known`).
    pub yara_cached: bool,
    pub queue: &'a crate::config::Queue,
    pub static_analysis: bool,
    /// `debug.no_enqueue`: benchmarks only.
    pub no_enqueue: bool,
    /// The client's `Idempotency-Key`, checked (`idempotency::key_of`).
    pub idempotency_key: Option<String>,
}

/// The 202 body for a submission recorded as analysis `id`; kept with an
/// idempotency key, so that a retry gets these very bytes again.
pub fn accepted(id: Uuid, s: &Submission<'_>) -> Value {
    json!({
        "analysis_id": id,
        "sha256": s.sha256,
        "sha1": s.sha1,
        "md5": s.md5,
        "size": s.size,
        "filename": s.filename,
        "file_type": s.file_type,
        "yara": s.matches,
        "yara_error": s.scan_error,
        "yara_cached": s.yara_cached,
        "status_url": format!("/v1/analyses/{id}"),
    })
}

/// The jobs a submission creates (DESIGN.md §3): a detonation for the
/// bridge, static analysis inside the appliance when enabled, and a
/// webhook held until the analysis finishes when a callback URL was given.
fn jobs_for(id: Uuid, s: &Submission<'_>) -> Vec<NewJob> {
    let sample = json!({
        "analysis_id": id,
        "sha256": s.sha256,
        "size": s.size,
        "filename": s.filename,
        "file_type": s.file_type,
        "tlp": s.meta.tlp,
        "tags": s.meta.tags,
        "sample_url": format!("/v1/samples/{}/content", s.sha256),
    });
    let job = |queue: &str, kind: &str, payload: serde_json::Value| NewJob {
        priority: s.meta.priority,
        max_attempts: s.queue.limits(queue).max_attempts as i32,
        analysis_id: Some(id),
        ..NewJob::new(queue, kind, payload)
    };
    let mut jobs = vec![job("analysis", "detonate", sample.clone())];
    if s.static_analysis {
        jobs.push(job("static", "static", sample));
    }
    if let Some(url) = &s.meta.callback_url {
        jobs.push(NewJob {
            hold: true,
            ..job(
                "notify",
                "webhook",
                json!({ "analysis_id": id, "url": url }),
            )
        });
    }
    jobs
}

/// Submissions in one statement at most: bounds the statement's size and
/// the time the last of them waits.
const MAX_BATCH: usize = 32;

/// Submissions waiting for the recorder's statement.
pub const QUEUE: usize = 1024;

/// One submission, owned, as the statement's arrays take it and as a
/// worker hands it to the recorder.
#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    id: Uuid,
    sha256: String,
    sha1: String,
    md5: String,
    size: i64,
    file_type: String,
    storage_path: String,
    key_id: i64,
    client_ip: Option<String>,
    filename: String,
    tags: Value,
    tlp: String,
    priority: i16,
    yara: Value,
    callback_url: Option<String>,
    request_id: String,
    actor: String,
    submitted: Value,
    scanned: Value,
    jobs: Vec<NewJob>,
    /// Defaults: a row from a worker that predates idempotency keys (a
    /// binary upgrade runs both for a while) has none.
    #[serde(default)]
    idempotency_key: Option<String>,
    /// The 202 body, kept with the key; only when there is one.
    #[serde(default)]
    response: Option<Value>,
    // Defaulted, so a row from a worker of the previous binary (during an
    // upgrade) still reads.
    #[serde(default)]
    yara_rules_digest: Option<String>,
    #[serde(default)]
    yara_cached: bool,
    /// The worker stored the bytes itself. False from a worker of the
    /// previous binary, which is what every duplicate was.
    #[serde(default)]
    wrote_bytes: bool,
}

impl Row {
    pub fn new(id: Uuid, s: &Submission<'_>) -> Self {
        Row {
            id,
            sha256: s.sha256.clone(),
            sha1: s.sha1.clone(),
            md5: s.md5.clone(),
            size: s.size as i64,
            file_type: s.file_type.clone(),
            storage_path: s.storage_path.clone(),
            key_id: s.key_id,
            client_ip: s.client_ip.clone(),
            filename: s.filename.clone(),
            tags: json!(s.meta.tags),
            tlp: s.meta.tlp.clone(),
            priority: s.meta.priority,
            yara: json!(s.matches),
            callback_url: s.meta.callback_url.clone(),
            request_id: s.request_id.clone(),
            actor: format!("key:{}", s.key_name),
            submitted: json!({
                "filename": s.filename,
                "size": s.size,
                "sha256": s.sha256,
                "client_ip": s.client_ip,
                "tags": s.meta.tags,
                "tlp": s.meta.tlp,
                "priority": s.meta.priority,
            }),
            scanned: json!({
                "rules": s.matches.iter().map(|m| format!("{}:{}", m.namespace, m.rule)).collect::<Vec<_>>(),
                "error": s.scan_error,
                "rules_digest": s.rules_digest,
                "cached": s.yara_cached,
            }),
            jobs: if s.no_enqueue {
                Vec::new()
            } else {
                jobs_for(id, s)
            },
            idempotency_key: s.idempotency_key.clone(),
            response: s.idempotency_key.as_ref().map(|_| accepted(id, s)),
            yara_rules_digest: s.rules_digest.map(str::to_string),
            yara_cached: s.yara_cached,
            wrote_bytes: s.wrote_bytes,
        }
    }

    /// The analysis this submission makes.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The queues this submission's claimable jobs go to.
    pub fn queues(&self) -> Vec<&'static str> {
        self.jobs
            .iter()
            .filter(|j| !j.hold)
            .map(|j| match j.queue.as_str() {
                "analysis" => "analysis",
                "static" => "static",
                _ => "notify",
            })
            .collect()
    }
}

pub struct Pending {
    pub row: Row,
    pub done: oneshot::Sender<Result<Written, Failure>>,
}

/// What became of a submission handed to the recorder.
pub enum Recorded {
    /// Committed, with what it left for the queue to announce.
    New {
        analysis_id: Uuid,
        /// Queues that got claimable jobs: wake them after commit.
        queues: Vec<&'static str>,
    },
    /// Its idempotency key was used first by another try, whose
    /// submission this is what the key holds; nothing new was written.
    Existing(Prior),
}

/// How a submission came out of its statement.
#[derive(Debug)]
pub enum Written {
    /// Recorded: its analysis, jobs and audit rows are committed.
    New,
    /// Its idempotency key had been used first (before, earlier in the
    /// same batch, or by a try whose statement ran at the same time):
    /// nothing of this one was written, and this is what the key holds.
    Existing(Prior),
}

/// Why a submission was not recorded.
#[derive(Debug)]
pub enum Failure {
    /// The database failed the statement, or no connection was had to
    /// send it on: nothing was recorded.
    Database(sqlx::Error),
    /// The statement was sent and its outcome is unknown: it did not
    /// finish within the deadline (it may still commit), or the connection
    /// was lost before its answer (the commit may have happened). The
    /// submission may or may not be recorded.
    Unconfirmed,
    /// The submission found its bytes stored and wrote none, and the
    /// sample was purged before the statement ran (`retention::purge`):
    /// nothing of it was written.
    Purged,
}

/// The batcher: takes what is waiting (at least one), writes it, answers.
/// What arrives while a statement runs makes the next batch; nothing waits
/// for company. One statement in flight: a second one, its commit
/// overlapping the next batch, only split the batches in two without
/// adding throughput (tried and measured; benches/RESULTS.md).
pub async fn run(db: PgPool, mut rx: mpsc::Receiver<Pending>, deadline: Duration) {
    loop {
        let mut batch = Vec::new();
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return; // every sender is gone: the recorder is stopping
        }
        let rows: Vec<&Row> = batch.iter().map(|p| &p.row).collect();
        match attempt(&db, &rows, deadline).await {
            Ok(written) => {
                for (p, w) in batch.into_iter().zip(written) {
                    let _ = p.done.send(w);
                }
            }
            // `Purged` is a row's outcome, never a batch's.
            Err(Failure::Unconfirmed | Failure::Purged) => {
                for p in batch {
                    let _ = p.done.send(Err(Failure::Unconfirmed));
                }
            }
            Err(Failure::Database(e)) if batch.len() == 1 || crate::store::is_unavailable(&e) => {
                let shared = e.to_string();
                let mut first = Some(e);
                for p in batch {
                    let err = first
                        .take()
                        .unwrap_or_else(|| sqlx::Error::Protocol(shared.clone()));
                    let _ = p.done.send(Err(Failure::Database(err)));
                }
            }
            Err(Failure::Database(e)) => {
                tracing::warn!(error = %e, submissions = batch.len(), "a batch of submissions failed; recording them one by one");
                for p in batch {
                    let r = match attempt(&db, &[&p.row], deadline).await {
                        Ok(mut written) => written.pop().unwrap_or(Err(Failure::Unconfirmed)),
                        Err(e) => Err(e),
                    };
                    let _ = p.done.send(r);
                }
            }
        }
    }
}

/// One statement within `deadline`, then, for any submission whose
/// idempotency key was taken first, what the key holds. Past the deadline
/// nobody waits for the answer; giving up frees the batcher (and drops the
/// connection) for what is queued. The outcomes are in `rows`' order.
async fn attempt(
    db: &PgPool,
    rows: &[&Row],
    deadline: Duration,
) -> Result<Vec<Result<Written, Failure>>, Failure> {
    let written = async {
        // Taken apart from the statement, so that failing to get a
        // connection (nothing sent: nothing recorded) is not mistaken for
        // losing one while the statement, and so its commit, was on its way.
        let mut conn = db.acquire().await.map_err(Failure::Database)?;
        let wrote = write(&mut conn, rows).await.map_err(|e| {
            if crate::store::may_have_committed(&e) {
                tracing::warn!(error = %e, submissions = rows.len(), "the database connection failed after the submissions were sent; they may or may not be recorded");
                Failure::Unconfirmed
            } else {
                Failure::Database(e)
            }
        })?;
        Ok((conn, wrote))
    };
    let (mut conn, Wrote { won, stale }) = match tokio::time::timeout(deadline, written).await {
        Ok(r) => r?,
        Err(_) => return Err(Failure::Unconfirmed),
    };
    let lost: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| r.idempotency_key.is_some() && !won.contains(&r.id) && !stale.contains(&r.id))
        .collect();
    let mut firsts = if lost.is_empty() {
        Ok(Vec::new())
    } else {
        // Committed: the tries that lost wrote nothing, and what the key
        // holds is readable now. A failure here costs only those tries,
        // each a plain "nothing was recorded".
        match tokio::time::timeout(deadline, first_uses(&mut conn, &lost)).await {
            Ok(r) => r,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    };
    Ok(rows
        .iter()
        .map(|r| {
            if stale.contains(&r.id) {
                return Err(Failure::Purged);
            }
            if r.idempotency_key.is_none() || won.contains(&r.id) {
                return Ok(Written::New);
            }
            match &mut firsts {
                Err(e) => Err(Failure::Database(sqlx::Error::Protocol(e.to_string()))),
                Ok(found) => found
                    .iter()
                    .find(|(k, key, _)| *k == r.key_id && Some(key) == r.idempotency_key.as_ref())
                    .map(|(_, _, prior)| Written::Existing(prior.clone()))
                    // Only a key pruned between the two statements, a day
                    // after its first use, is missing: nothing was written.
                    .ok_or(Failure::Database(sqlx::Error::RowNotFound)),
            }
        })
        .collect())
}

/// What the idempotency keys of `rows` hold.
async fn first_uses(
    conn: &mut sqlx::PgConnection,
    rows: &[&Row],
) -> Result<Vec<(i64, String, Prior)>, sqlx::Error> {
    let found: Vec<(i64, String, Uuid, String, Json<Value>)> = sqlx::query_as(
        "SELECT i.api_key_id, i.key, i.analysis_id, i.request_sha256, i.response
           FROM idempotency_keys i
           JOIN unnest($1::int8[], $2::text[]) AS t(key_id, key)
             ON i.api_key_id = t.key_id AND i.key = t.key",
    )
    .bind(rows.iter().map(|r| r.key_id).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.idempotency_key.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(found
        .into_iter()
        .map(|(k, key, analysis_id, sha256, response)| {
            (
                k,
                key,
                Prior {
                    analysis_id,
                    sha256,
                    response: response.0,
                },
            )
        })
        .collect())
}

/// What one statement made of its submissions, by analysis id.
struct Wrote {
    /// Whose idempotency key this statement recorded.
    won: std::collections::HashSet<Uuid>,
    /// Left out: they relied on stored bytes that were purged meanwhile.
    stale: std::collections::HashSet<Uuid>,
}

/// Writes submissions in one statement, so one round trip and an implicit
/// transaction: every part of every submission commits together or not
/// at all. Foreign keys are checked at the end of the statement, when the
/// samples and analyses it inserts exist.
async fn write(db: &mut sqlx::PgConnection, rows: &[&Row]) -> Result<Wrote, sqlx::Error> {
    fn col<T>(rows: &[&Row], f: impl Fn(&Row) -> T) -> Vec<T> {
        rows.iter().map(|r| f(r)).collect()
    }
    let jobs: Vec<NewJob> = rows.iter().flat_map(|r| r.jobs.iter().cloned()).collect();
    let query = sqlx::query(&SUBMISSIONS)
        .bind(col(rows, |r| r.id))
        .bind(col(rows, |r| r.sha256.clone()))
        .bind(col(rows, |r| r.sha1.clone()))
        .bind(col(rows, |r| r.md5.clone()))
        .bind(col(rows, |r| r.size))
        .bind(col(rows, |r| r.file_type.clone()))
        .bind(col(rows, |r| r.storage_path.clone()))
        .bind(col(rows, |r| r.key_id))
        .bind(col(rows, |r| r.client_ip.clone()))
        .bind(col(rows, |r| r.filename.clone()))
        .bind(col(rows, |r| Json(r.tags.clone())))
        .bind(col(rows, |r| r.tlp.clone()))
        .bind(col(rows, |r| r.priority))
        .bind(col(rows, |r| Json(r.yara.clone())))
        .bind(col(rows, |r| r.callback_url.clone()))
        .bind(col(rows, |r| r.request_id.clone()))
        .bind(col(rows, |r| r.actor.clone()))
        .bind(col(rows, |r| Json(r.submitted.clone())))
        .bind(col(rows, |r| Json(r.scanned.clone())))
        .bind(col(rows, |r| r.idempotency_key.clone()))
        .bind(col(rows, |r| r.response.clone().map(Json)))
        .bind(col(rows, |r| r.yara_rules_digest.clone()))
        .bind(col(rows, |r| r.yara_cached))
        .bind(col(rows, |r| r.wrote_bytes));
    let mut wrote = Wrote {
        won: Default::default(),
        stale: Default::default(),
    };
    for row in queue::Batch::new(jobs).bind(query).fetch_all(db).await? {
        let id: Uuid = row.try_get(0)?;
        if row.try_get::<bool, _>(1)? {
            wrote.stale.insert(id);
        } else {
            wrote.won.insert(id);
        }
    }
    Ok(wrote)
}

/// Submissions as data-modifying CTEs of one statement, each table's rows
/// from parallel arrays (one element per submission).
///
/// - The samples named that exist, locked `FOR KEY SHARE` (the lock each
///   analysis's foreign key takes on its sample anyway, and one no other
///   submission waits for) before anything is written: a purge
///   (`retention::purge`) takes the row `FOR UPDATE`, so it has either
///   committed, and its mark is what this statement reads, or it waits
///   for this commit and then sees these submissions' jobs. `stale` are
///   the submissions that found their bytes stored and wrote none, of a
///   sample purged meanwhile: they write nothing (not even their
///   idempotency key) and are returned as such, to be sent again.
/// - Idempotency keys first: `ON CONFLICT DO NOTHING` on the unique
///   (api key, key) index is the one arbiter between tries of one key, in
///   one batch (the first in the batch wins; its duplicates are left out
///   before the insert) or in statements running at once (the later one
///   waits for the earlier one's commit, then finds its key taken). `kept`
///   is every submission without a key and every one whose key this
///   statement recorded: only those write anything below. The keys go in
///   key order and before any sample, so two batches wait on each other
///   in one order, not in a cycle. What the statement returns is the
///   analyses whose key it recorded; a try not among them reads what its
///   key holds after the commit (`first_uses`).
/// - Samples: `DO NOTHING` takes no lock on a sample that exists. Rows go
///   in sha256 order, and a batch's duplicates once, so two batches that
///   share new samples wait on each other in one order, not in a cycle.
/// - `last_seen`, the one row every submission of these bytes shares: its
///   lock lasts only to this statement's commit, and it is taken at most
///   once a second (last_seen is kept to the second), so concurrent
///   submissions of one sample (a campaign seen by many sensors) do not
///   queue on it. A sample inserted by this statement is not visible to
///   the UPDATE, and needs no update. The same UPDATE (a row is updated
///   once per statement) clears `content_purged` of a purged sample whose
///   bytes a kept submission stored again.
/// - The analyses, their jobs (`queue::Batch`, so the queue costs no round
///   trip of its own) and two audit rows each, `submitted` then `scanned`,
///   whose ids follow that order.
static SUBMISSIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH held AS (
              SELECT sha256, content_purged FROM samples
               WHERE sha256 = ANY($2) ORDER BY sha256 FOR KEY SHARE),
         stale AS (
              SELECT t.id FROM unnest($1::uuid[], $2::text[], $24::bool[]) AS t(id, sha256, wrote)
                JOIN held h ON h.sha256 = t.sha256
               WHERE h.content_purged AND NOT t.wrote),
         idem AS (
              INSERT INTO idempotency_keys (api_key_id, key, request_sha256, analysis_id, response)
              SELECT DISTINCT ON (key_id, key) key_id, key, sha256, id, response
                FROM unnest($1::uuid[], $2::text[], $8::int8[], $20::text[], $21::jsonb[])
                     WITH ORDINALITY AS t(id, sha256, key_id, key, response, n)
               WHERE key IS NOT NULL AND id NOT IN (SELECT id FROM stale)
               ORDER BY key_id, key, n
              ON CONFLICT (api_key_id, key) DO NOTHING
              RETURNING analysis_id),
         kept AS (
              SELECT id FROM unnest($1::uuid[], $20::text[]) AS t(id, key)
               WHERE key IS NULL AND id NOT IN (SELECT id FROM stale)
              UNION ALL
              SELECT analysis_id FROM idem),
         restored AS (
              SELECT t.sha256 FROM unnest($1::uuid[], $2::text[], $24::bool[]) AS t(id, sha256, wrote)
               WHERE t.wrote AND t.id IN (SELECT id FROM kept)
                 AND t.sha256 IN (SELECT sha256 FROM held WHERE content_purged)),
         sample AS (
              INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
              SELECT DISTINCT ON (sha256) sha256, sha1, md5, size, file_type, storage_path
                FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[],
                            $6::text[], $7::text[])
                     AS t(id, sha256, sha1, md5, size, file_type, storage_path)
               WHERE id IN (SELECT id FROM kept)
               ORDER BY sha256
              ON CONFLICT (sha256) DO NOTHING),
         seen AS (
              UPDATE samples SET last_seen = now(),
                     content_purged = content_purged AND sha256 NOT IN (SELECT sha256 FROM restored),
                     purged_at = CASE WHEN sha256 IN (SELECT sha256 FROM restored)
                                      THEN NULL ELSE purged_at END
               WHERE sha256 = ANY($2)
                 AND (last_seen < now() - interval '1 second'
                      OR sha256 IN (SELECT sha256 FROM restored))),
         analysis AS (
              INSERT INTO analyses (id, sample_sha256, api_key_id, client_ip, filename, tags,
                                    tlp, priority, yara_matches, callback_url, request_id,
                                    yara_rules_digest, yara_cached)
              SELECT id, sha256, key_id, client_ip, filename,
                     ARRAY(SELECT jsonb_array_elements_text(tags)), tlp, priority, yara,
                     callback_url, request_id, rules_digest, cached
                FROM unnest($1::uuid[], $2::text[], $8::int8[], $9::text[], $10::text[],
                            $11::jsonb[], $12::text[], $13::int2[], $14::jsonb[], $15::text[],
                            $16::text[], $22::text[], $23::bool[])
                     AS t(id, sha256, key_id, client_ip, filename, tags, tlp, priority, yara,
                          callback_url, request_id, rules_digest, cached)
               WHERE id IN (SELECT id FROM kept)),
         enqueued AS ({}),
         audit AS (
              INSERT INTO analysis_audit_log (analysis_id, actor, event, details, request_id)
              SELECT t.id, e.actor, e.event, e.details, t.request_id
                FROM unnest($1::uuid[], $17::text[], $18::jsonb[], $19::jsonb[], $16::text[])
                     WITH ORDINALITY AS t(id, actor, submitted, scanned, request_id, n),
                     LATERAL (VALUES (t.actor, 'submitted', t.submitted, 1),
                                     ('sandgnat', 'scanned', t.scanned, 2))
                     AS e(actor, event, details, k)
               WHERE t.id IN (SELECT id FROM kept)
               ORDER BY t.n, e.k)
         SELECT analysis_id, false FROM idem
         UNION ALL
         SELECT id, true FROM stale",
        queue::Batch::insert_sql_where(25, "analysis_id IN (SELECT id FROM kept)")
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    fn submission<'a>(
        key_id: i64,
        sha_byte: char,
        filename: &str,
        queue: &'a crate::config::Queue,
    ) -> Submission<'a> {
        Submission {
            sha256: sha_byte.to_string().repeat(64),
            sha1: "1".repeat(40),
            md5: "5".repeat(32),
            size: 4,
            file_type: "data".into(),
            storage_path: format!("/q/{sha_byte}"),
            wrote_bytes: true,
            filename: filename.into(),
            meta: Metadata {
                tags: vec!["apt".into(), "loader".into()],
                ..Metadata::default()
            },
            key_id,
            key_name: "k".into(),
            client_ip: Some("192.0.2.1".into()),
            request_id: format!("req-{filename}"),
            matches: &[],
            scan_error: None,
            rules_digest: Some("d"),
            yara_cached: false,
            queue,
            static_analysis: true,
            no_enqueue: false,
            idempotency_key: None,
        }
    }

    fn keyed<'a>(
        key_id: i64,
        sha_byte: char,
        key: &str,
        queue: &'a crate::config::Queue,
    ) -> Submission<'a> {
        Submission {
            idempotency_key: Some(key.into()),
            ..submission(key_id, sha_byte, key, queue)
        }
    }

    /// `attempt`'s outcomes, each as the analysis its submission got and
    /// whether it was new.
    async fn outcomes(db: &PgPool, rows: &[Row]) -> Vec<(Uuid, bool)> {
        let rows: Vec<&Row> = rows.iter().collect();
        let written = match attempt(db, &rows, Duration::from_secs(30)).await {
            Ok(w) => w,
            Err(e) => panic!("{e:?}"),
        };
        rows.iter()
            .zip(written)
            .map(|(r, w)| match w {
                Ok(Written::New) => (r.id, true),
                Ok(Written::Existing(p)) => {
                    assert_eq!(p.response["analysis_id"], json!(p.analysis_id));
                    (p.analysis_id, false)
                }
                Err(e) => panic!("{e:?}"),
            })
            .collect()
    }

    async fn key(db: &PgPool) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO api_keys (name, role, key_hash, key_prefix)
             VALUES ('k', 'submitter', decode(repeat('00', 32), 'hex'), 'sgk_') RETURNING id",
        )
        .fetch_one(db)
        .await
        .unwrap()
    }

    async fn count(db: &PgPool, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_batch_commits_every_submission_with_its_rows(db: PgPool) {
        let k = key(&db).await;
        let q = crate::config::Queue::default();
        // Two samples, one of them three times in the batch.
        let subs = [
            submission(k, 'b', "one", &q),
            submission(k, 'a', "two", &q),
            submission(k, 'b', "three", &q),
            submission(k, 'b', "four", &q),
        ];
        let rows: Vec<Row> = subs.iter().map(|s| Row::new(Uuid::now_v7(), s)).collect();
        let mut conn = db.acquire().await.unwrap();
        write(&mut conn, &rows.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(count(&db, "SELECT count(*) FROM samples").await, 2);
        assert_eq!(count(&db, "SELECT count(*) FROM analyses").await, 4);
        assert_eq!(count(&db, "SELECT count(*) FROM jobs").await, 8);
        for r in &rows {
            let events: String = sqlx::query_scalar(
                "SELECT string_agg(event || ':' || request_id, ',' ORDER BY id)
                   FROM analysis_audit_log WHERE analysis_id = $1",
            )
            .bind(r.id)
            .fetch_one(&db)
            .await
            .unwrap();
            let want = format!("submitted:{0},scanned:{0}", r.request_id);
            assert_eq!(events, want);
            let tags: Vec<String> = sqlx::query_scalar("SELECT tags FROM analyses WHERE id = $1")
                .bind(r.id)
                .fetch_one(&db)
                .await
                .unwrap();
            assert_eq!(tags, ["apt", "loader"]);
        }
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_used_idempotency_key_writes_nothing_and_gives_its_first_use(db: PgPool) {
        let k = key(&db).await;
        let other = sqlx::query_scalar(
            "INSERT INTO api_keys (name, role, key_hash, key_prefix)
             VALUES ('k2', 'submitter', decode(repeat('01', 32), 'hex'), 'sgk_') RETURNING id",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        let q = crate::config::Queue::default();
        let first = [keyed(k, 'a', "one", &q)];
        let rows: Vec<Row> = first.iter().map(|s| Row::new(Uuid::now_v7(), s)).collect();
        let got = outcomes(&db, &rows).await;
        assert_eq!(got, [(rows[0].id, true)]);
        let one = rows[0].id;

        // One batch: "one" again (same bytes, then other bytes), "two"
        // three times, "two" under another API key, and no key at all.
        let subs = [
            keyed(k, 'a', "one", &q),
            keyed(k, 'b', "one", &q),
            keyed(k, 'c', "two", &q),
            keyed(k, 'c', "two", &q),
            keyed(k, 'd', "two", &q),
            keyed(other, 'c', "two", &q),
            submission(k, 'e', "none", &q),
        ];
        let rows: Vec<Row> = subs.iter().map(|s| Row::new(Uuid::now_v7(), s)).collect();
        let got = outcomes(&db, &rows).await;
        let two = rows[2].id;
        assert_eq!(
            got,
            [
                (one, false),
                (one, false),
                (two, true),
                (two, false),
                (two, false),
                (rows[5].id, true),
                (rows[6].id, true),
            ]
        );
        // What a refused try sent left no row: no sample 'b' or 'd'.
        assert_eq!(count(&db, "SELECT count(*) FROM analyses").await, 4);
        assert_eq!(count(&db, "SELECT count(*) FROM jobs").await, 8);
        assert_eq!(
            count(&db, "SELECT count(*) FROM analysis_audit_log").await,
            8
        );
        assert_eq!(
            sqlx::query_scalar::<_, String>(
                "SELECT string_agg(left(sha256, 1), '' ORDER BY sha256) FROM samples"
            )
            .fetch_one(&db)
            .await
            .unwrap(),
            "ace"
        );
        let stored: (String, Value) = sqlx::query_as(
            "SELECT request_sha256, response FROM idempotency_keys
              WHERE api_key_id = $1 AND key = 'two'",
        )
        .bind(k)
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(stored.0, "c".repeat(64));
        assert_eq!(stored.1, accepted(two, &subs[2]));

        // Kept a day, then pruned by the maintenance.
        assert_eq!(
            crate::intake::idempotency::prune(&db, crate::intake::idempotency::KEEP)
                .await
                .unwrap(),
            0
        );
        sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'one'")
            .execute(&db)
            .await
            .unwrap();
        assert_eq!(
            crate::intake::idempotency::prune(&db, crate::intake::idempotency::KEEP)
                .await
                .unwrap(),
            1
        );
        assert_eq!(count(&db, "SELECT count(*) FROM idempotency_keys").await, 2);
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn tries_of_one_key_in_statements_at_once_make_one_analysis(db: PgPool) {
        let k = key(&db).await;
        let q = crate::config::Queue::default();
        // Held at the samples table until every statement is waiting, so
        // they all run at once and each must find the others' key.
        let mut blocker = db.begin().await.unwrap();
        sqlx::query("LOCK TABLE samples IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *blocker)
            .await
            .unwrap();
        // The test pool is small: the tries, the blocker and the poll fit it.
        const TRIES: usize = 3;
        let mut tries = Vec::new();
        for _ in 0..TRIES {
            let row = Row::new(Uuid::now_v7(), &keyed(k, 'a', "race", &q));
            let db = db.clone();
            tries.push(tokio::spawn(async move {
                outcomes(&db, std::slice::from_ref(&row)).await[0]
            }));
        }
        loop {
            let waiting = count(
                &db,
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'
                    AND query LIKE 'WITH held AS%'",
            )
            .await;
            if waiting as usize == TRIES {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        blocker.rollback().await.unwrap();
        let mut got = Vec::new();
        for t in tries {
            got.push(t.await.unwrap());
        }
        assert_eq!(got.iter().filter(|(_, new)| *new).count(), 1, "{got:?}");
        assert!(got.iter().all(|(id, _)| *id == got[0].0), "{got:?}");
        assert_eq!(count(&db, "SELECT count(*) FROM analyses").await, 1);
        assert_eq!(count(&db, "SELECT count(*) FROM jobs").await, 2);
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn one_bad_submission_does_not_fail_the_others_in_its_batch(db: PgPool) {
        let k = key(&db).await;
        let q = crate::config::Queue::default();
        // Every submission is queued before a recorder runs, so they make
        // one batch. A NUL in a filename (intake refuses control
        // characters; this comes from below that check) fails the
        // statement in Postgres.
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut answers = Vec::new();
        for (i, name) in ["a", "b", "bad\0name", "c", "d"].iter().enumerate() {
            let s = submission(k, char::from(b'a' + i as u8), name, &q);
            let (done, answer) = oneshot::channel();
            let row = Row::new(Uuid::now_v7(), &s);
            tx.send(Pending { row, done }).await.unwrap();
            answers.push((name.to_string(), answer));
        }
        drop(tx);
        let runner = tokio::spawn(run(db.clone(), rx, Duration::from_secs(10)));
        for (name, answer) in answers {
            let r = answer.await.unwrap();
            assert_eq!(r.is_ok(), !name.contains('\0'), "{name}: {r:?}");
            assert!(!matches!(r, Ok(Written::Existing(_))), "{name}: {r:?}");
        }
        runner.await.unwrap();
        assert_eq!(count(&db, "SELECT count(*) FROM analyses").await, 4);
        assert_eq!(count(&db, "SELECT count(*) FROM samples").await, 4);
        assert_eq!(
            count(&db, "SELECT count(*) FROM analysis_audit_log").await,
            8
        );
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_connection_lost_while_the_statement_runs_is_unconfirmed(db: PgPool) {
        let k = key(&db).await;
        let q = crate::config::Queue::default();
        // Hold the submission's statement at its first insert, so it is
        // surely sent and still running when its session is ended.
        let mut blocker = db.begin().await.unwrap();
        sqlx::query("LOCK TABLE samples IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *blocker)
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done, answer) = oneshot::channel();
        let row = Row::new(Uuid::now_v7(), &submission(k, 'e', "lost", &q));
        tx.send(Pending { row, done }).await.unwrap();
        drop(tx);
        let runner = tokio::spawn(run(db.clone(), rx, Duration::from_secs(30)));
        let pid = loop {
            let waiting: Option<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'
                    AND query LIKE 'WITH held AS%'",
            )
            .fetch_optional(&db)
            .await
            .unwrap();
            if let Some(pid) = waiting {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The server ends the session with an error (57P01), as a restart
        // or a failover does: whether a commit had happened by then is
        // not something the client can know in general.
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&db)
            .await
            .unwrap();
        assert!(ended);
        let r = answer.await.unwrap();
        assert!(matches!(r, Err(Failure::Unconfirmed)), "{r:?}");
        runner.await.unwrap();
        blocker.rollback().await.unwrap();

        // A refusal by the database itself is still a plain failure: the
        // statement ran and was rolled back.
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done, answer) = oneshot::channel();
        let row = Row::new(Uuid::now_v7(), &submission(k, 'f', "bad\0name", &q));
        tx.send(Pending { row, done }).await.unwrap();
        drop(tx);
        run(db.clone(), rx, Duration::from_secs(30)).await;
        let r = answer.await.unwrap();
        assert!(matches!(r, Err(Failure::Database(_))), "{r:?}");
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_purged_sample_is_stored_again_only_by_a_submission_that_wrote_it(db: PgPool) {
        let k = key(&db).await;
        let q = crate::config::Queue::default();
        let first = [submission(k, 'a', "first", &q)];
        let rows: Vec<Row> = first.iter().map(|s| Row::new(Uuid::now_v7(), s)).collect();
        outcomes(&db, &rows).await;
        sqlx::query("UPDATE samples SET content_purged = true, purged_at = now()")
            .execute(&db)
            .await
            .unwrap();

        // Found the bytes stored, wrote none: they may be the purged
        // sample's, on their way out. Nothing of it is written, not even
        // its idempotency key; a submission of other bytes in the same
        // batch is not held back.
        let relied = Submission {
            wrote_bytes: false,
            ..keyed(k, 'a', "relied", &q)
        };
        let other = submission(k, 'b', "other", &q);
        let rows = [
            Row::new(Uuid::now_v7(), &relied),
            Row::new(Uuid::now_v7(), &other),
        ];
        let written = match attempt(
            &db,
            &rows.iter().collect::<Vec<_>>(),
            Duration::from_secs(30),
        )
        .await
        {
            Ok(w) => w,
            Err(e) => panic!("{e:?}"),
        };
        assert!(
            matches!(written[0], Err(Failure::Purged)),
            "{:?}",
            written[0]
        );
        assert!(matches!(written[1], Ok(Written::New)), "{:?}", written[1]);
        assert_eq!(count(&db, "SELECT count(*) FROM analyses").await, 2);
        assert_eq!(count(&db, "SELECT count(*) FROM idempotency_keys").await, 0);
        assert_eq!(
            count(&db, "SELECT count(*) FROM samples WHERE content_purged").await,
            1
        );

        // Stored again by this submission: the sample's bytes are kept.
        let again = [submission(k, 'a', "again", &q)];
        let rows: Vec<Row> = again.iter().map(|s| Row::new(Uuid::now_v7(), s)).collect();
        assert!(outcomes(&db, &rows).await[0].1);
        let (purged, at): (bool, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
            "SELECT content_purged, purged_at FROM samples WHERE sha256 = repeat('a', 64)",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(!purged && at.is_none());
    }
}
