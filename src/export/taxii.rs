//! TAXII 2.1, read-only: discovery, one API root, and its collections of
//! the analyses' STIX objects (`taxii_page` reads them). Four
//! collections, each a TLP ceiling: `analyses` (up to TLP:AMBER+STRICT)
//! and `tlp-clear`, `tlp-green`, `tlp-amber`. TLP:RED is never served
//! here, and each caller sees only what `auth::Visibility` allows.
//! Callers authenticate with `X-API-Key` or HTTP Basic (the key as the
//! password), as `auth::Caller` accepts.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::stix::Tlp;
use super::taxii_page::{self, Cursor, Filter, Item};
use crate::api_error::ApiError;
use crate::auth::{allow, Caller, Visibility};
use crate::worker::state::AppState;

/// The TAXII 2.1 media type; every answer here carries it.
pub const MEDIA_TYPE: &str = "application/taxii+json;version=2.1";

/// What the collections hold.
const STIX_MEDIA_TYPE: &str = super::stix_route::MEDIA_TYPE;

/// The API root, as discovery and the routes name it.
pub const API_ROOT: &str = "/taxii2/api/";

/// Objects per page when the client names no limit, and the most it may.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub struct Collection {
    pub id: &'static str,
    pub alias: &'static str,
    title: &'static str,
    description: &'static str,
    /// The strictest TLP the collection holds.
    pub ceiling: Tlp,
}

pub const COLLECTIONS: [Collection; 4] = [
    Collection {
        id: "88065fc7-493d-4f28-a819-a0156fea6e02",
        alias: "analyses",
        title: "SandGNAT analyses",
        description: "Every analysis you may read, up to TLP:AMBER+STRICT",
        ceiling: Tlp::AmberStrict,
    },
    Collection {
        id: "a43f2ddc-b1e4-4cb3-a820-2d7c490a71e1",
        alias: "tlp-clear",
        title: "SandGNAT analyses, TLP:CLEAR",
        description: "Analyses you may read marked TLP:CLEAR",
        ceiling: Tlp::Clear,
    },
    Collection {
        id: "1fa341a8-bf8c-4f40-943f-1e7fafc51bea",
        alias: "tlp-green",
        title: "SandGNAT analyses, up to TLP:GREEN",
        description: "Analyses you may read marked TLP:CLEAR or TLP:GREEN",
        ceiling: Tlp::Green,
    },
    Collection {
        id: "54cb8634-3a69-4be8-bd52-361b8a5d73b9",
        alias: "tlp-amber",
        title: "SandGNAT analyses, up to TLP:AMBER",
        description: "Analyses you may read marked TLP:CLEAR, TLP:GREEN or TLP:AMBER",
        ceiling: Tlp::Amber,
    },
];

impl Collection {
    fn resource(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "alias": self.alias,
            "can_read": true,
            "can_write": false,
            "media_types": [STIX_MEDIA_TYPE],
        })
    }
}

/// A collection by id or alias.
fn collection(raw: &str) -> Result<&'static Collection, ApiError> {
    COLLECTIONS
        .iter()
        .find(|c| c.id == raw || c.alias == raw)
        .ok_or_else(|| ApiError::not_found(format!("no collection {raw:?}")))
}

/// Refuses a client that accepts nothing TAXII 2.1 answers with.
fn negotiate(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let accept = accept.to_str().unwrap_or_default().to_ascii_lowercase();
    let ok = accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let kind = parts.next().unwrap_or_default();
        let version = parts.find_map(|p| p.strip_prefix("version="));
        match kind {
            "*/*" | "application/*" => true,
            "application/taxii+json" => version.is_none_or(|v| v == "2.1"),
            _ => false,
        }
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            format!("this server answers {MEDIA_TYPE}"),
        ))
    }
}

/// A TAXII answer: the body, its media type, and any extra headers.
fn taxii(body: Value, extra: &[(&'static str, String)]) -> Response {
    let mut resp = axum::Json(body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(*name, v);
        }
    }
    resp
}

/// Every TAXII route: any role may read; what it sees is `Visibility`'s.
fn admit(caller: &Caller, headers: &HeaderMap) -> Result<(), ApiError> {
    caller.require(allow::READ)?;
    negotiate(headers)
}

pub async fn discovery(caller: Caller, headers: HeaderMap) -> Result<Response, ApiError> {
    admit(&caller, &headers)?;
    // Relative: the client resolves it against the URL it asked, so the
    // answer never repeats a Host header back.
    Ok(taxii(
        json!({
            "title": "SandGNAT",
            "description": "Malware analyses as STIX 2.1",
            "default": API_ROOT,
            "api_roots": [API_ROOT],
        }),
        &[],
    ))
}

pub async fn api_root(caller: Caller, headers: HeaderMap) -> Result<Response, ApiError> {
    admit(&caller, &headers)?;
    Ok(taxii(
        json!({
            "title": "SandGNAT analyses",
            "description": "Read-only collections of analyses by TLP ceiling",
            "versions": [MEDIA_TYPE],
            // Nothing can be posted here.
            "max_content_length": 0,
        }),
        &[],
    ))
}

pub async fn collections(caller: Caller, headers: HeaderMap) -> Result<Response, ApiError> {
    admit(&caller, &headers)?;
    let all: Vec<Value> = COLLECTIONS.iter().map(Collection::resource).collect();
    Ok(taxii(json!({ "collections": all }), &[]))
}

pub async fn get_collection(
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admit(&caller, &headers)?;
    Ok(taxii(collection(&id)?.resource(), &[]))
}

pub async fn objects(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(&caller, &headers)?;
    let coll = collection(&id)?;
    let filter = parse_filter(query.as_deref())?;
    let page = taxii_page::read(&app.db, &Visibility::of(&caller), coll.ceiling, &filter).await?;
    Ok(envelope(page, |item| item.object))
}

pub async fn object(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, object_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(&caller, &headers)?;
    let page = find(&app, &caller, &id, &object_id, query.as_deref()).await?;
    Ok(envelope(page, |item| item.object))
}

/// Every version of one object: here always one, the current.
pub async fn versions(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, object_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(&caller, &headers)?;
    let page = find(&app, &caller, &id, &object_id, query.as_deref()).await?;
    let mut body = serde_json::Map::new();
    body.insert("more".into(), json!(page.next.is_some()));
    if let Some(next) = &page.next {
        body.insert("next".into(), json!(next.to_string()));
    }
    let versions: Vec<String> = page.items.into_iter().map(|i| i.version).collect();
    if !versions.is_empty() {
        body.insert("versions".into(), json!(versions));
    }
    Ok(taxii(Value::Object(body), &[]))
}

/// The object `object_id` of a collection: a page, as for `objects`.
/// One request reads a bounded part of the collection, so a page can come
/// back empty with `more` and a `next` to go on from; only once the whole
/// collection was read is the object missing (404).
async fn find(
    app: &AppState,
    caller: &Caller,
    collection_id: &str,
    object_id: &str,
    query: Option<&str>,
) -> Result<taxii_page::Page, ApiError> {
    let coll = collection(collection_id)?;
    let missing = || {
        ApiError::not_found(format!(
            "no object {object_id:?} in collection {}",
            coll.alias
        ))
    };
    // Only these types are ever served; anything else is missing without
    // reading the collection for it.
    let served = ["marking-definition--", "file--", "malware-analysis--"];
    if !served.iter().any(|p| object_id.starts_with(p)) {
        return Err(missing());
    }
    let mut filter = parse_filter(query)?;
    filter.ids = Some(vec![object_id.to_owned()]);
    let page = taxii_page::read(&app.db, &Visibility::of(caller), coll.ceiling, &filter).await?;
    if page.items.is_empty() && page.next.is_none() {
        return Err(missing());
    }
    Ok(page)
}

pub async fn manifest(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(&caller, &headers)?;
    let coll = collection(&id)?;
    let filter = parse_filter(query.as_deref())?;
    let page = taxii_page::read(&app.db, &Visibility::of(&caller), coll.ceiling, &filter).await?;
    Ok(envelope(page, |item| {
        json!({
            "id": item.object["id"],
            "date_added": taxii_page::timestamp(item.date_added),
            "version": item.version,
            "media_type": STIX_MEDIA_TYPE,
        })
    }))
}

/// A page as TAXII answers it: `more`, `next`, the entries, and the
/// first and last `date_added` in headers.
fn envelope(page: taxii_page::Page, entry: impl Fn(Item) -> Value) -> Response {
    let first = page.items.first().map(|i| i.date_added);
    let last = page.items.last().map(|i| i.date_added);
    let mut body = serde_json::Map::new();
    body.insert("more".into(), json!(page.next.is_some()));
    if let Some(next) = &page.next {
        body.insert("next".into(), json!(next.to_string()));
    }
    let entries: Vec<Value> = page.items.into_iter().map(entry).collect();
    if !entries.is_empty() {
        body.insert("objects".into(), json!(entries));
    }
    let mut extra = Vec::new();
    if let (Some(first), Some(last)) = (first, last) {
        extra.push(("x-taxii-date-added-first", taxii_page::timestamp(first)));
        extra.push(("x-taxii-date-added-last", taxii_page::timestamp(last)));
    }
    taxii(Value::Object(body), &extra)
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        format!("{param}: {message}"),
    )
}

/// The filters and paging of a request. Unknown parameters are ignored,
/// as TAXII lets servers do with filters they do not support.
fn parse_filter(query: Option<&str>) -> Result<Filter, ApiError> {
    let mut f = Filter {
        limit: DEFAULT_LIMIT,
        ..Filter::default()
    };
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    for (k, v) in crate::intake::form_pairs(query.unwrap_or_default()) {
        match k.as_str() {
            "added_after" => {
                let t = DateTime::parse_from_rfc3339(v.trim())
                    .map_err(|e| bad(&k, format!("{v:?} is not an RFC 3339 timestamp ({e})")))?;
                f.added_after = Some(t.with_timezone(&Utc));
            }
            "limit" => {
                // Any positive integer, however long: past the most a page
                // holds it is that most.
                let digits = v.trim();
                let n: usize = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    digits.parse().unwrap_or(usize::MAX)
                } else {
                    0
                };
                if n == 0 {
                    return Err(bad(&k, format!("{v:?} is not a positive integer")));
                }
                f.limit = n.min(MAX_LIMIT);
            }
            "next" => {
                f.next = Some(
                    v.parse::<Cursor>()
                        .map_err(|_| bad(&k, format!("{v:?} is not a token this server gave")))?,
                );
            }
            "match[type]" => f.types = Some(list(&v)),
            "match[id]" => f.ids = Some(list(&v)),
            "match[version]" => f.versions = Some(list(&v)),
            "match[spec_version]" => f.spec_versions = Some(list(&v)),
            _ => {}
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_must_allow_taxii_2_1() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(v));
            negotiate(&h).is_ok()
        };
        assert!(negotiate(&HeaderMap::new()).is_ok());
        assert!(with("application/taxii+json;version=2.1"));
        assert!(with("application/taxii+json"));
        assert!(with("text/html, */*;q=0.1"));
        assert!(!with("application/taxii+json;version=2.0"));
        assert!(!with("application/vnd.oasis.taxii+json; version=2.0"));
        assert!(!with("text/html"));
    }

    #[test]
    fn filters_parse_and_bad_ones_are_refused() {
        let f = parse_filter(Some(
            "added_after=2026-12-05T03:00:00.5Z&limit=5000&match%5Btype%5D=file,malware-analysis&x=1",
        ))
        .unwrap();
        assert_eq!(f.limit, MAX_LIMIT);
        assert_eq!(
            f.types,
            Some(vec!["file".to_string(), "malware-analysis".to_string()])
        );
        assert_eq!(
            f.added_after.unwrap().to_rfc3339(),
            "2026-12-05T03:00:00.500+00:00"
        );
        assert_eq!(parse_filter(None).unwrap().limit, DEFAULT_LIMIT);
        let huge = parse_filter(Some("limit=1232867824590104035328")).unwrap();
        assert_eq!(huge.limit, MAX_LIMIT);
        for q in ["limit=0", "limit=-1", "added_after=yesterday", "next=abc"] {
            let e = parse_filter(Some(q)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{q}");
        }
    }

    #[test]
    fn collections_are_found_by_id_or_alias() {
        assert_eq!(collection("tlp-green").unwrap().ceiling, Tlp::Green);
        assert_eq!(
            collection("88065fc7-493d-4f28-a819-a0156fea6e02")
                .unwrap()
                .alias,
            "analyses"
        );
        assert!(collection("tlp-red").is_err());
        assert!(COLLECTIONS.iter().all(|c| c.ceiling < Tlp::Red));
    }
}
