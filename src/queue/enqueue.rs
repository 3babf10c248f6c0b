//! Enqueueing on the caller's connection, so a job commits or rolls back
//! with the caller's transaction. No NOTIFY here: a NOTIFY inside the
//! transaction would serialise every commit; wake-ups go after commit
//! (`Notifier::poke`).

use super::QueueError;
use sqlx::PgConnection;
use uuid::Uuid;

pub type JobId = Uuid;

#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i16,
    pub max_attempts: i32,
    pub unique_key: Option<String>,
    /// Not before this time: the job is `scheduled` until then.
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `scheduled` with no run time: waits until `release` sets one.
    pub hold: bool,
    /// The analysis this job works for, so its status can follow its jobs.
    pub analysis_id: Option<Uuid>,
}

impl NewJob {
    pub fn new(queue: &str, kind: &str, payload: serde_json::Value) -> Self {
        NewJob {
            queue: queue.into(),
            kind: kind.into(),
            payload,
            priority: 0,
            max_attempts: 3,
            unique_key: None,
            run_at: None,
            hold: false,
            analysis_id: None,
        }
    }
}

pub async fn enqueue(conn: &mut PgConnection, job: NewJob) -> Result<JobId, QueueError> {
    let id = Uuid::now_v7(); // time-ordered: see enqueue_many
    let res = sqlx::query(
        "INSERT INTO jobs (id, queue, kind, payload, priority, max_attempts, unique_key,
                           run_at, state, analysis_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7,
                 CASE WHEN $9 THEN 'infinity' ELSE COALESCE($8, now()) END,
                 CASE WHEN $9 OR $8 > now() THEN 'scheduled' ELSE 'available' END,
                 $10)",
    )
    .bind(id)
    .bind(&job.queue)
    .bind(&job.kind)
    .bind(&job.payload)
    .bind(job.priority)
    .bind(job.max_attempts)
    .bind(&job.unique_key)
    .bind(job.run_at)
    .bind(job.hold)
    .bind(job.analysis_id)
    .execute(conn)
    .await;
    match res {
        Ok(_) => Ok(id),
        // The partial unique index is the one arbiter of duplicates, even
        // between concurrent transactions.
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("jobs_unique_live") => {
            Err(QueueError::Duplicate)
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes held jobs of an analysis claimable now (e.g. its webhook once the
/// analysis finished). Returns the queues that got work.
pub async fn release_held(
    conn: &mut PgConnection,
    analysis_id: Uuid,
    kind: &str,
) -> Result<Vec<String>, QueueError> {
    let queues: Vec<String> = sqlx::query_scalar(
        "UPDATE jobs SET run_at = now(), updated_at = now()
          WHERE analysis_id = $1 AND kind = $2 AND state = 'scheduled' AND run_at = 'infinity'
         RETURNING queue",
    )
    .bind(analysis_id)
    .bind(kind)
    .fetch_all(conn)
    .await?;
    Ok(queues)
}

/// Many jobs in one statement on the caller's connection (and so in its
/// transaction): what a producer of many jobs uses instead of one INSERT
/// per job. A unique-key clash refuses the whole batch.
pub async fn enqueue_many(
    conn: &mut PgConnection,
    jobs: Vec<NewJob>,
) -> Result<Vec<JobId>, QueueError> {
    let n = jobs.len();
    // Time-ordered ids (v7): each insert lands on the primary key's
    // rightmost leaf instead of a random one, so the hot index stays small
    // in cache and a checkpoint is followed by few full-page WAL images.
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let mut queue = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut priority = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut unique_key = Vec::with_capacity(n);
    let mut run_at = Vec::with_capacity(n);
    let mut hold = Vec::with_capacity(n);
    let mut analysis = Vec::with_capacity(n);
    for j in jobs {
        queue.push(j.queue);
        kind.push(j.kind);
        payload.push(j.payload);
        priority.push(j.priority);
        max_attempts.push(j.max_attempts);
        unique_key.push(j.unique_key);
        run_at.push(j.run_at);
        hold.push(j.hold);
        analysis.push(j.analysis_id);
    }
    let res = sqlx::query(
        "INSERT INTO jobs (id, queue, kind, payload, priority, max_attempts, unique_key,
                           run_at, state, analysis_id)
         SELECT id, queue, kind, payload, priority, max_attempts, unique_key,
                CASE WHEN hold THEN 'infinity' ELSE COALESCE(run_at, now()) END,
                CASE WHEN hold OR run_at > now() THEN 'scheduled' ELSE 'available' END,
                analysis_id
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int2[],
                       $6::int4[], $7::text[], $8::timestamptz[], $9::bool[], $10::uuid[])
                AS t(id, queue, kind, payload, priority, max_attempts, unique_key,
                     run_at, hold, analysis_id)",
    )
    .bind(&ids)
    .bind(&queue)
    .bind(&kind)
    .bind(&payload)
    .bind(&priority)
    .bind(&max_attempts)
    .bind(&unique_key)
    .bind(&run_at)
    .bind(&hold)
    .bind(&analysis)
    .execute(conn)
    .await;
    match res {
        Ok(_) => Ok(ids),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("jobs_unique_live") => {
            Err(QueueError::Duplicate)
        }
        Err(e) => Err(e.into()),
    }
}
