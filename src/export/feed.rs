//! The change feed: every analysis that changed after a position, as it is
//! now, in the order of the transactions that changed it. Shared by
//! `GET /v1/export/analyses` (NDJSON, streamed) and `sandgnat export`.
//!
//! Why it never skips a change: each analysis row carries the id of the
//! transaction that last changed it (`change_xid`). A read first takes the
//! xmin of a fresh snapshot, the oldest transaction still running; every
//! transaction below it has ended, and every transaction that has not yet
//! written will get a larger id. Reading only rows below that horizon, in
//! `(change_xid, id)` order, a reader has seen everything that can ever
//! sort before its last position. A long transaction holds the horizon
//! down until it commits, and the feed waits for it instead of passing it.
//! A row changed again after it was read moves forward and is read again:
//! at least once, never zero times.

use sqlx::{PgPool, Postgres, QueryBuilder};

use super::cursor::FeedPosition;
use super::view::{AnalysisRow, COLUMNS};
use crate::auth::Visibility;

/// Rows per query: large enough to amortise a round trip, small enough
/// that a response's memory stays flat however long the feed.
pub const CHUNK: i64 = 1000;

/// One analysis from the feed, with the position just after it.
pub struct Change {
    pub analysis: AnalysisRow,
    pub position: FeedPosition,
}

#[derive(sqlx::FromRow)]
struct FeedRow {
    #[sqlx(flatten)]
    analysis: AnalysisRow,
    change_xid: String,
}

impl Change {
    /// The analysis as a feed line: as it is now, with where to resume.
    pub fn line(&self) -> serde_json::Value {
        let mut line = self.analysis.to_json();
        line["cursor"] = serde_json::Value::String(self.position.encode());
        line
    }
}

/// The feed's last line: where to resume, and how many lines came before.
/// A read without it was cut short.
pub fn closing_line(at: FeedPosition, count: u64) -> serde_json::Value {
    serde_json::json!({ "cursor": at.encode(), "count": count, "end": true })
}

/// A read of the feed from one position up to the horizon it started with.
pub struct Feed {
    db: PgPool,
    vis: Visibility,
    position: FeedPosition,
    horizon: u64,
    remaining: u64,
    done: bool,
}

impl Feed {
    /// Starts a read after `from`, of at most `limit` analyses.
    pub async fn start(
        db: PgPool,
        vis: Visibility,
        from: FeedPosition,
        limit: u64,
    ) -> Result<Feed, sqlx::Error> {
        let horizon: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(&db)
                .await?;
        let horizon = horizon
            .parse()
            .map_err(|_| sqlx::Error::Protocol(format!("snapshot xmin {horizon:?}")))?;
        Ok(Feed {
            db,
            vis,
            position: from,
            horizon,
            remaining: limit,
            done: limit == 0,
        })
    }

    /// Where a reader resumes after everything returned so far.
    pub fn position(&self) -> FeedPosition {
        self.position
    }

    /// The next changes, or none when the read is complete.
    pub async fn next_chunk(&mut self) -> Result<Vec<Change>, sqlx::Error> {
        if self.done {
            return Ok(Vec::new());
        }
        let take = (CHUNK as u64).min(self.remaining) as i64;
        // The chunk is cut from `analyses` alone, in index order, and only
        // then joined to its samples: a chunk's worth of index probes.
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "SELECT {COLUMNS}, a.change_xid::text AS change_xid FROM \
             (SELECT * FROM analyses a WHERE (a.change_xid, a.id) > ("
        ));
        qb.push_bind(self.position.xid.to_string())
            .push("::text::xid8, ")
            .push_bind(self.position.id)
            .push(") AND a.change_xid < ")
            .push_bind(self.horizon.to_string())
            .push("::text::xid8 AND ");
        self.vis.push(&mut qb, "a");
        qb.push(" ORDER BY a.change_xid, a.id LIMIT ")
            .push_bind(take)
            .push(") a JOIN samples s ON s.sha256 = a.sample_sha256 ORDER BY a.change_xid, a.id");
        let rows: Vec<FeedRow> = qb.build_query_as().fetch_all(&self.db).await?;
        if (rows.len() as i64) < take {
            self.done = true;
        }
        self.remaining -= rows.len() as u64;
        if self.remaining == 0 {
            self.done = true;
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let xid = row
                .change_xid
                .parse()
                .map_err(|_| sqlx::Error::Protocol(format!("change_xid {:?}", row.change_xid)))?;
            self.position = FeedPosition {
                xid,
                id: row.analysis.id,
            };
            out.push(Change {
                analysis: row.analysis,
                position: self.position,
            });
        }
        Ok(out)
    }

    /// Ends the read early (after an error).
    pub fn stop(&mut self) {
        self.done = true;
    }

    /// Whether the read is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn analysis(db: &PgPool, n: u8) -> uuid::Uuid {
        let id = uuid::Uuid::now_v7();
        let sha = format!("{n:02x}").repeat(32);
        sqlx::query(
            "INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
             VALUES ($1, left($1, 40), left($1, 32), 1, 'data', '') ON CONFLICT DO NOTHING",
        )
        .bind(&sha)
        .execute(db)
        .await
        .unwrap();
        sqlx::query("INSERT INTO analyses (id, sample_sha256) VALUES ($1, $2)")
            .bind(id)
            .bind(&sha)
            .execute(db)
            .await
            .unwrap();
        id
    }

    /// Waits until every transaction begun so far on the server has
    /// ended, so the horizon is past what this test wrote.
    async fn settle(db: &PgPool) {
        let next: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
                .fetch_one(db)
                .await
                .unwrap();
        let next: u64 = next.parse().unwrap();
        loop {
            let xmin: String =
                sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                    .fetch_one(db)
                    .await
                    .unwrap();
            if xmin.parse::<u64>().unwrap() >= next {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn read_all(db: &PgPool, from: FeedPosition) -> (Vec<AnalysisRow>, FeedPosition) {
        let mut feed = Feed::start(db.clone(), Visibility::operator(), from, u64::MAX)
            .await
            .unwrap();
        let mut seen = Vec::new();
        while !feed.is_done() {
            seen.extend(
                feed.next_chunk()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|c| c.analysis),
            );
        }
        (seen, feed.position())
    }

    /// A transaction that changed an analysis first and commits last must
    /// not be passed over by a reader that saw later commits meanwhile.
    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_change_that_commits_late_is_not_skipped(db: PgPool) {
        let early = analysis(&db, 1).await;
        let mut long = db.begin().await.unwrap();
        sqlx::query("UPDATE analyses SET tags = tags || '{late}'::text[] WHERE id = $1")
            .bind(early)
            .execute(&mut *long)
            .await
            .unwrap();
        let later = analysis(&db, 2).await;

        let (seen, at) = read_all(&db, FeedPosition::START).await;
        assert!(
            !seen.iter().any(|a| a.id == later),
            "read past a transaction still open"
        );
        long.commit().await.unwrap();

        // Other databases' transactions on this server hold the horizon
        // down too (transaction ids are server-wide): poll as a consumer
        // would until the late change arrives.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let (mut late, mut later_seen, mut at) = (None, false, at);
        while late.is_none() || !later_seen {
            assert!(
                std::time::Instant::now() < deadline,
                "late change never seen"
            );
            let (seen, next) = read_all(&db, at).await;
            for a in seen {
                later_seen |= a.id == later;
                if a.id == early {
                    late = Some(a);
                }
            }
            at = next;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(late.map(|a| a.tags), Some(vec!["late".to_string()]));
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_long_feed_is_read_in_chunks_without_repeats(db: PgPool) {
        sqlx::raw_sql(
            "INSERT INTO samples (sha256, sha1, md5, size, file_type, storage_path)
             VALUES (repeat('a', 64), repeat('a', 40), repeat('a', 32), 1, 'data', '');
             INSERT INTO analyses (id, sample_sha256)
             SELECT gen_random_uuid(), repeat('a', 64) FROM generate_series(1, 2500);",
        )
        .execute(&db)
        .await
        .unwrap();
        settle(&db).await;
        let (seen, _) = read_all(&db, FeedPosition::START).await;
        let unique: std::collections::HashSet<_> = seen.iter().map(|a| a.id).collect();
        assert_eq!(seen.len(), 2500);
        assert_eq!(unique.len(), 2500);
        let mut bounded = Feed::start(
            db.clone(),
            Visibility::operator(),
            FeedPosition::START,
            1200,
        )
        .await
        .unwrap();
        let mut n = 0;
        while !bounded.is_done() {
            n += bounded.next_chunk().await.unwrap().len();
        }
        assert_eq!(n, 1200);
    }
}
