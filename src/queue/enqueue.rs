//! Enqueueing on the caller's connection, so a job commits or rolls back
//! with the caller's transaction. No NOTIFY here: a NOTIFY inside the
//! transaction would serialise every commit; wake-ups go after commit
//! (`Notifier::poke`).

use std::sync::LazyLock;

use super::error::QueueError;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

pub type JobId = Uuid;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    res.map(|_| id).map_err(insert_error)
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
    let batch = Batch::new(jobs);
    static SQL: LazyLock<String> = LazyLock::new(|| Batch::insert_sql(1));
    batch
        .bind(sqlx::query(&SQL))
        .execute(conn)
        .await
        .map_err(insert_error)?;
    Ok(batch.ids)
}

/// A batch of jobs as the arrays of one INSERT. A caller whose own
/// statement runs anyway can carry the INSERT in it, as a data-modifying
/// CTE (`WITH enqueued AS (<insert_sql>) ...`), and save a round trip:
/// the submit path does, for every submission.
pub struct Batch {
    ids: Vec<Uuid>,
    queue: Vec<String>,
    kind: Vec<String>,
    payload: Vec<serde_json::Value>,
    priority: Vec<i16>,
    max_attempts: Vec<i32>,
    unique_key: Vec<Option<String>>,
    run_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    hold: Vec<bool>,
    analysis: Vec<Option<Uuid>>,
}

impl Batch {
    /// The number of parameters `insert_sql` takes.
    pub const PARAMS: usize = 10;

    pub fn new(jobs: Vec<NewJob>) -> Self {
        let n = jobs.len();
        let mut b = Batch {
            // Time-ordered ids (v7): each insert lands on the primary key's
            // rightmost leaf instead of a random one, so the hot index stays
            // small in cache and a checkpoint is followed by few full-page
            // WAL images.
            ids: (0..n).map(|_| Uuid::now_v7()).collect(),
            queue: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            priority: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            unique_key: Vec::with_capacity(n),
            run_at: Vec::with_capacity(n),
            hold: Vec::with_capacity(n),
            analysis: Vec::with_capacity(n),
        };
        for j in jobs {
            b.queue.push(j.queue);
            b.kind.push(j.kind);
            b.payload.push(j.payload);
            b.priority.push(j.priority);
            b.max_attempts.push(j.max_attempts);
            b.unique_key.push(j.unique_key);
            b.run_at.push(j.run_at);
            b.hold.push(j.hold);
            b.analysis.push(j.analysis_id);
        }
        b
    }

    /// The INSERT, its `PARAMS` parameters numbered from `$first`. An
    /// empty batch inserts nothing.
    pub fn insert_sql(first: usize) -> String {
        Self::insert_sql_where(first, "true")
    }

    /// The same, inserting only the jobs for which `filter` (SQL over the
    /// columns of `insert_sql`'s unnest, `t`) holds: a caller's statement
    /// that leaves some of its rows out leaves out their jobs with them.
    pub fn insert_sql_where(first: usize, filter: &str) -> String {
        let p: Vec<String> = (first..first + Self::PARAMS)
            .map(|i| format!("${i}"))
            .collect();
        format!(
            "INSERT INTO jobs (id, queue, kind, payload, priority, max_attempts, unique_key,
                               run_at, state, analysis_id)
             SELECT id, queue, kind, payload, priority, max_attempts, unique_key,
                    CASE WHEN hold THEN 'infinity' ELSE COALESCE(run_at, now()) END,
                    CASE WHEN hold OR run_at > now() THEN 'scheduled' ELSE 'available' END,
                    analysis_id
               FROM unnest({}::uuid[], {}::text[], {}::text[], {}::jsonb[], {}::int2[],
                           {}::int4[], {}::text[], {}::timestamptz[], {}::bool[], {}::uuid[])
                    AS t(id, queue, kind, payload, priority, max_attempts, unique_key,
                         run_at, hold, analysis_id)
              WHERE {}",
            p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], filter
        )
    }

    /// Binds the batch's arrays, in `insert_sql`'s order, after the
    /// query's own parameters.
    pub fn bind<'q>(
        &'q self,
        q: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        q.bind(&self.ids)
            .bind(&self.queue)
            .bind(&self.kind)
            .bind(&self.payload)
            .bind(&self.priority)
            .bind(&self.max_attempts)
            .bind(&self.unique_key)
            .bind(&self.run_at)
            .bind(&self.hold)
            .bind(&self.analysis)
    }
}

/// The error of a statement that inserted jobs: a unique-key clash is
/// `Duplicate` (the partial unique index is the one arbiter of duplicates,
/// even between concurrent transactions).
fn insert_error(e: sqlx::Error) -> QueueError {
    match e {
        sqlx::Error::Database(d) if d.constraint() == Some("jobs_unique_live") => {
            QueueError::Duplicate
        }
        e => e.into(),
    }
}
