//! A page of a TAXII collection. A collection holds, first, the TLP 2.0
//! marking definitions up to its ceiling (added when OASIS published
//! them), then for each analysis the caller may see up to that ceiling,
//! in the order of the analyses (`created_at`, `id`) and added when the
//! analysis was: its sample's `file`, unless an earlier analysis there
//! already gave the same one, and its `malware-analysis`. Each object is
//! in a collection once, and every `sample_ref` points at a `file` at or
//! before it. A cursor names an analysis and the position of an object in
//! it, so a page may end inside an analysis and `limit` holds exactly.

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

/// A cursor index past every object of an analysis.
const PAST_END: usize = 9;

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
        if parts.next().is_some() || index > PAST_END {
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
    /// No earlier analysis of the collection gave the same `file`.
    new_file: bool,
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
    /// Whether any object of an analysis (a `file`, a `malware-analysis`)
    /// could pass; if not, the analyses need not be read at all.
    fn may_match_analyses(&self) -> bool {
        let kinds = ["file", "malware-analysis"];
        self.types
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| kinds.contains(&t.as_str())))
            && self.ids.as_ref().is_none_or(|ids| {
                ids.iter().any(|id| {
                    kinds
                        .iter()
                        .any(|k| id.strip_prefix(k).is_some_and(|r| r.starts_with("--")))
                })
            })
    }

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

/// A TLP's strictness in SQL, as `Tlp`'s order has it.
fn rank_sql(tlp: &str) -> String {
    format!(
        "array_position(ARRAY['clear','green','amber','amber+strict','red'], \
         CASE WHEN {tlp} = 'white' THEN 'clear' ELSE {tlp} END)"
    )
}

/// Whether analysis `x`'s `file` carries the sample's first name (`f`),
/// in SQL: `stix_route::shown_name`'s rule, which it must match, or a
/// `sample_ref` would point at a `file` never served.
fn named_sql(vis: &Visibility, x: &str) -> String {
    format!(
        "COALESCE(f.filename IS NOT NULL AND {} AND {} >= {}, false)",
        vis.sql("f", 1),
        rank_sql(&format!("{x}.tlp")),
        rank_sql("f.tlp"),
    )
}

/// The page's entries and the cursor after it, while it fills.
struct Filling<'a> {
    filter: &'a Filter,
    items: Vec<Item>,
}

impl Filling<'_> {
    /// Adds an object the filter admits; `false` (and nothing added) once
    /// the page is full, with the object left for the next page.
    fn offer(&mut self, object: Value, version: String, date_added: DateTime<Utc>) -> bool {
        if !self.filter.admits(&object, &version) {
            return true;
        }
        if self.items.len() == self.filter.limit {
            return false;
        }
        self.items.push(Item {
            date_added,
            version,
            object,
        });
        true
    }
}

/// The time before which no analysis can still appear. An analysis's
/// `created_at` is the start of the transaction that recorded it, so one
/// still open may yet commit an analysis dated as early as its start:
/// serving only what is older than the oldest open transaction means a
/// client that polls with `added_after` never sees a later commit dated
/// before what it already has. Only client sessions of this database
/// count: nothing else can record an analysis here (autovacuum's long
/// transactions record nothing).
async fn settled_before(db: &PgPool) -> Result<DateTime<Utc>, ApiError> {
    sqlx::query_scalar(
        "SELECT coalesce(min(xact_start), now()) FROM pg_stat_activity
          WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()
            AND backend_type = 'client backend' AND datname = current_database()",
    )
    .fetch_one(db)
    .await
    .map_err(db_error)
}

/// Stands for the markings, ahead of every analysis, in cursors.
fn markings_cursor(index: usize) -> Cursor {
    Cursor {
        created_at: Tlp::published(),
        id: Uuid::nil(),
        index,
    }
}

pub async fn read(
    db: &PgPool,
    vis: &Visibility,
    ceiling: Tlp,
    filter: &Filter,
) -> Result<Page, ApiError> {
    let mut page = Filling {
        filter,
        items: Vec::new(),
    };
    let published = Tlp::published();
    let mut cursor = filter.next;
    let in_markings = cursor.is_none_or(|c| c.id.is_nil());
    if in_markings && filter.added_after.is_none_or(|t| t < published) {
        let skip = cursor.map_or(0, |c| c.index);
        for (index, tlp) in Tlp::ALL.into_iter().enumerate().skip(skip) {
            if tlp > ceiling {
                break;
            }
            let marking = tlp.marking();
            let version = stix_timestamp(published);
            if !page.offer(marking, version, published) {
                return Ok(Page {
                    items: page.items,
                    next: Some(markings_cursor(index)),
                });
            }
        }
    }
    if in_markings {
        cursor = None;
    }
    if !filter.may_match_analyses() {
        return Ok(Page {
            items: page.items,
            next: None,
        });
    }

    let settled = settled_before(db).await?;
    let named_a = named_sql(vis, "a");
    let named_p = named_sql(vis, "p");
    let sql = format!(
        "SELECT {COLUMNS}, f.filename AS first_name, f.tlp AS first_tlp, f.api_key_id AS first_by,
                NOT EXISTS (
                    SELECT 1 FROM analyses p
                     WHERE p.sample_sha256 = a.sample_sha256 AND p.tlp = ANY($2)
                       AND {vis_p} AND (p.created_at, p.id) < (a.created_at, a.id)
                       AND {named_p} = {named_a}) AS new_file
           FROM {FROM}
           LEFT JOIN LATERAL (
                SELECT filename, tlp, api_key_id FROM analyses
                 WHERE sample_sha256 = a.sample_sha256 AND filename <> ''
                 ORDER BY created_at, id LIMIT 1) f ON true
          WHERE {vis_a} AND a.tlp = ANY($2)
            AND a.created_at > $3 AND (a.created_at, a.id) >= ($4, $5)
            AND a.created_at < $7
          ORDER BY a.created_at, a.id
          LIMIT $6",
        vis_p = vis.sql("p", 1),
        vis_a = vis.sql("a", 1),
    );
    let levels = spellings(ceiling);
    let mut scanned = 0;
    loop {
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(vis.key_id())
            .bind(&levels)
            // Bounds always, never NULL for "none": a prepared statement's
            // generic plan can then still start its index scan at them.
            .bind(filter.added_after.unwrap_or(DateTime::UNIX_EPOCH))
            .bind(cursor.map_or(DateTime::UNIX_EPOCH, |c| c.created_at))
            .bind(cursor.map_or(Uuid::nil(), |c| c.id))
            .bind(BATCH as i64)
            .bind(settled)
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
            let [_marking, file, analysis]: [Value; 3] = stix::objects(a, name.as_deref())
                .map_err(|e| {
                    tracing::error!(analysis = %a.id, error = %e, "cannot express the analysis in STIX");
                    e
                })
                .ok()
                .and_then(|o| o.try_into().ok())
                .ok_or_else(|| {
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
            let added = stix_timestamp(a.created_at);
            let entries = [(row.new_file, file, added.clone()), (true, analysis, added)];
            for (index, (emit, object, added)) in entries.into_iter().enumerate().skip(skip) {
                let version = object
                    .get("modified")
                    .and_then(Value::as_str)
                    .map_or(added, str::to_owned);
                if emit && !page.offer(object, version, a.created_at) {
                    let next = Cursor {
                        created_at: a.created_at,
                        id: a.id,
                        index,
                    };
                    return Ok(Page {
                        items: page.items,
                        next: Some(next),
                    });
                }
            }
            scanned += 1;
            // Everything of this analysis is behind us.
            cursor = Some(Cursor {
                created_at: a.created_at,
                id: a.id,
                index: PAST_END,
            });
        }
        if exhausted {
            return Ok(Page {
                items: page.items,
                next: None,
            });
        }
        if scanned >= SCAN_LIMIT {
            // Resume after the last analysis read.
            return Ok(Page {
                items: page.items,
                next: cursor,
            });
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
        assert!(f(None, None).may_match_analyses());
        assert!(f(Some(&["indicator", "file"]), None).may_match_analyses());
        assert!(!f(Some(&["marking-definition"]), None).may_match_analyses());
        let by_id = |id: &str| Filter {
            ids: Some(vec![id.to_string()]),
            ..Filter::default()
        };
        assert!(by_id("malware-analysis--1").may_match_analyses());
        assert!(!by_id("marking-definition--1").may_match_analyses());
        assert!(!by_id("filex--1").may_match_analyses());
    }
}
