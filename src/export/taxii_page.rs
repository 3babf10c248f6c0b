//! A page of a TAXII collection: the STIX objects (`stix::objects`) of the
//! analyses a caller may see up to a TLP ceiling, in the order of the
//! analyses (`created_at`, `id`), each object added when its analysis was.
//! A cursor names an analysis and the position of an object in it, so a
//! page may end inside an analysis and `limit` holds exactly.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::stix::{self, Tlp};
use super::stix_route::{shown_name, FirstName};
use super::view::{AnalysisRow, COLUMNS, FROM};
use crate::analyses::db_error;
use crate::api_error::ApiError;
use crate::auth::Visibility;

/// Analyses one request reads at most. Filters that match few objects
/// (`match[id]`) would otherwise read the whole table in one request; past
/// this the page ends short, with `more` and a cursor to go on from.
const SCAN_LIMIT: usize = 2000;

/// Analyses read per query.
const BATCH: usize = 200;

#[derive(Debug, Default)]
pub struct Filter {
    pub added_after: Option<DateTime<Utc>>,
    pub limit: usize,
    pub next: Option<Cursor>,
    pub types: Option<Vec<String>>,
    pub ids: Option<Vec<String>>,
    pub versions: Option<Vec<String>>,
    pub spec_versions: Option<Vec<String>>,
}

/// Where a page starts: object `index` of the analysis (`created_at`, `id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    created_at: DateTime<Utc>,
    id: Uuid,
    index: usize,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{}_{}",
            self.created_at.timestamp_micros(),
            self.id.simple(),
            self.index
        )
    }
}

impl FromStr for Cursor {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split('_');
        let micros: i64 = parts.next().ok_or(())?.parse().map_err(|_| ())?;
        let id = Uuid::try_parse(parts.next().ok_or(())?).map_err(|_| ())?;
        let index: usize = parts.next().ok_or(())?.parse().map_err(|_| ())?;
        if parts.next().is_some() || index > 64 {
            return Err(());
        }
        let created_at = DateTime::from_timestamp_micros(micros).ok_or(())?;
        Ok(Cursor {
            created_at,
            id,
            index,
        })
    }
}

pub struct Item {
    pub date_added: DateTime<Utc>,
    /// The object's `modified`, else its `created`, else `date_added`.
    pub version: String,
    pub object: Value,
}

pub struct Page {
    pub items: Vec<Item>,
    /// Where the next page starts; `None` when this is the last.
    pub next: Option<Cursor>,
}

/// TAXII timestamps: UTC with microseconds, so `added_after` given back
/// from `X-TAXII-Date-Added-Last` skips exactly what was seen.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

#[derive(sqlx::FromRow)]
struct Row {
    #[sqlx(flatten)]
    analysis: AnalysisRow,
    first_name: Option<String>,
    first_tlp: Option<String>,
    first_by: Option<i64>,
}

/// The database spellings of every TLP up to `ceiling`.
fn spellings(ceiling: Tlp) -> Vec<&'static str> {
    ["clear", "white", "green", "amber", "amber+strict", "red"]
        .into_iter()
        .filter(|s| Tlp::parse(s).is_some_and(|t| t <= ceiling))
        .collect()
}

fn matches(list: &Option<Vec<String>>, value: &str) -> bool {
    list.as_ref().is_none_or(|l| l.iter().any(|v| v == value))
}

impl Filter {
    fn admits(&self, object: &Value, version: &str) -> bool {
        let str_of = |k: &str| object.get(k).and_then(Value::as_str).unwrap_or_default();
        matches(&self.types, str_of("type"))
            && matches(&self.ids, str_of("id"))
            && matches(&self.spec_versions, str_of("spec_version"))
            // Each object has one version here, so first, last and all are it.
            && self.versions.as_ref().is_none_or(|l| {
                l.iter()
                    .any(|v| matches!(v.as_str(), "first" | "last" | "all") || v == version)
            })
    }
}

pub async fn read(
    db: &PgPool,
    vis: &Visibility,
    ceiling: Tlp,
    filter: &Filter,
) -> Result<Page, ApiError> {
    let sql = format!(
        "SELECT {COLUMNS}, f.filename AS first_name, f.tlp AS first_tlp, f.api_key_id AS first_by
           FROM {FROM}
           LEFT JOIN LATERAL (
                SELECT filename, tlp, api_key_id FROM analyses
                 WHERE sample_sha256 = a.sample_sha256 AND filename <> ''
                 ORDER BY created_at, id LIMIT 1) f ON true
          WHERE {} AND a.tlp = ANY($2)
            AND ($3::timestamptz IS NULL OR a.created_at > $3)
            AND ($4::timestamptz IS NULL OR (a.created_at, a.id) >= ($4, $5))
          ORDER BY a.created_at, a.id
          LIMIT $6",
        vis.sql("a", 1)
    );
    let levels = spellings(ceiling);
    let mut cursor = filter.next;
    let mut items = Vec::new();
    let mut scanned = 0;
    loop {
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(vis.key_id())
            .bind(&levels)
            .bind(filter.added_after)
            .bind(cursor.map(|c| c.created_at))
            .bind(cursor.map(|c| c.id))
            .bind(BATCH as i64)
            .fetch_all(db)
            .await
            .map_err(db_error)?;
        let exhausted = rows.len() < BATCH;
        for row in rows {
            let a = &row.analysis;
            let first: Option<FirstName> = row
                .first_name
                .clone()
                .zip(row.first_tlp.clone())
                .map(|(name, tlp)| (name, tlp, row.first_by));
            let name = shown_name(first, &a.tlp, vis);
            let objects = stix::objects(a, name.as_deref()).map_err(|e| {
                tracing::error!(analysis = %a.id, error = %e, "cannot express the analysis in STIX");
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "stix_failed",
                    "an analysis cannot be expressed in STIX",
                )
            })?;
            let skip = match cursor {
                Some(c) if c.id == a.id => c.index,
                _ => 0,
            };
            for (index, object) in objects.into_iter().enumerate().skip(skip) {
                let version = object
                    .get("modified")
                    .or_else(|| object.get("created"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| stix_timestamp(a.created_at));
                if !filter.admits(&object, &version) {
                    continue;
                }
                if items.len() == filter.limit {
                    let next = Cursor {
                        created_at: a.created_at,
                        id: a.id,
                        index,
                    };
                    return Ok(Page {
                        items,
                        next: Some(next),
                    });
                }
                items.push(Item {
                    date_added: a.created_at,
                    version,
                    object,
                });
            }
            scanned += 1;
            // Everything of this analysis is behind us.
            cursor = Some(Cursor {
                created_at: a.created_at,
                id: a.id,
                index: usize::MAX >> 1,
            });
        }
        if exhausted {
            return Ok(Page { items, next: None });
        }
        if scanned >= SCAN_LIMIT {
            // Resume after the last analysis read; the index past its end
            // makes it contribute nothing again.
            let next = cursor.map(|c| Cursor { index: 64, ..c });
            return Ok(Page { items, next });
        }
    }
}

/// A version for objects without `modified` or `created` (observables):
/// when they were added, in STIX's millisecond form.
fn stix_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_764_900_000_123_456).unwrap(),
            id: Uuid::parse_str("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap(),
            index: 2,
        };
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        for bad in [
            "",
            "1_2_3",
            "x_0193a1b2c3d47e5f8a9b0c1d2e3f4a5b_1",
            "1__1",
            "1_0193a1b2c3d47e5f8a9b0c1d2e3f4a5b_99",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ceilings_name_every_spelling_below_them() {
        assert_eq!(spellings(Tlp::Clear), ["clear", "white"]);
        assert_eq!(
            spellings(Tlp::AmberStrict),
            ["clear", "white", "green", "amber", "amber+strict"]
        );
    }

    #[test]
    fn filters_match_type_id_and_version() {
        let o = json!({ "type": "file", "id": "file--1", "spec_version": "2.1" });
        let f = |types: Option<&[&str]>, versions: Option<&[&str]>| Filter {
            types: types.map(|t| t.iter().map(|s| s.to_string()).collect()),
            versions: versions.map(|t| t.iter().map(|s| s.to_string()).collect()),
            ..Filter::default()
        };
        assert!(f(None, None).admits(&o, "v"));
        assert!(f(Some(&["indicator", "file"]), None).admits(&o, "v"));
        assert!(!f(Some(&["indicator"]), None).admits(&o, "v"));
        assert!(f(None, Some(&["last"])).admits(&o, "v"));
        assert!(f(None, Some(&["v"])).admits(&o, "v"));
        assert!(!f(None, Some(&["w"])).admits(&o, "v"));
    }
}
