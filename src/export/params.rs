//! Query strings of the read routes, parsed strictly: a misspelt filter
//! is an error, not a silently wider answer (`?stauts=failed` must not
//! list everything).

use std::collections::BTreeMap;

use axum::http::StatusCode;

use crate::api_error::ApiError;

pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Parses `raw`, accepting only the names in `known`, each once.
    pub fn parse(raw: Option<&str>, known: &[&str]) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !known.contains(&k.as_ref()) {
                return Err(bad(
                    "unknown_parameter",
                    format!(
                        "unknown query parameter {k:?}; this route takes {}",
                        known.join(", ")
                    ),
                ));
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(bad(
                    "repeated_parameter",
                    format!("query parameter {k:?} given more than once"),
                ));
            }
        }
        Ok(Params(map))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `limit`: `default` when absent, 1..=`max` otherwise.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(bad(
                    "invalid_limit",
                    format!("limit must be a whole number from 1 to {max}, not {raw:?}"),
                )),
            },
        }
    }

    /// A timestamp parameter, RFC 3339.
    pub fn time(&self, name: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        self.get(name)
            .map(|raw| {
                chrono::DateTime::parse_from_rfc3339(raw)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|_| {
                        bad(
                            "invalid_time",
                            format!(
                                "{name} must be an RFC 3339 time such as 2026-12-05T10:00:00Z, not {raw:?}"
                            ),
                        )
                    })
            })
            .transpose()
    }

    /// The parameters but `cursor`, as a query string for a `next` link.
    pub fn without_cursor(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.0.iter().filter(|(k, _)| *k != "cursor") {
            out.append_pair(k, v);
        }
        out.finish()
    }
}

pub fn bad(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// A hash as lookups take it: md5, sha1 or sha256 told apart by length,
/// any case; returned lower-case with the samples column it matches.
pub fn hash_kind(raw: &str) -> Result<(&'static str, String), ApiError> {
    let column = match raw.len() {
        32 => "md5",
        40 => "sha1",
        64 => "sha256",
        _ => "",
    };
    if column.is_empty() || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(
            "invalid_hash",
            "a sample is named by its md5, sha1 or sha256: 32, 40 or 64 hex digits".into(),
        ));
    }
    Ok((column, raw.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parameters() {
        let p = Params::parse(
            Some("status=failed&limit=5&tag=a%20b"),
            &["status", "limit", "tag"],
        )
        .unwrap();
        assert_eq!(p.get("tag"), Some("a b"));
        assert_eq!(p.limit(100, 1000).unwrap(), 5);
        assert!(Params::parse(Some("stauts=failed"), &["status"]).is_err());
        assert!(Params::parse(Some("status=a&status=b"), &["status"]).is_err());
        let p = Params::parse(Some("limit=0"), &["limit"]).unwrap();
        assert_eq!(p.limit(100, 1000).unwrap_err().code, "invalid_limit");
        let p = Params::parse(Some("limit=1001"), &["limit"]).unwrap();
        assert!(p.limit(100, 1000).is_err());
        assert_eq!(
            hash_kind(&"AB".repeat(16)).unwrap(),
            ("md5", "ab".repeat(16))
        );
        assert_eq!(hash_kind(&"a".repeat(40)).unwrap().0, "sha1");
        assert!(hash_kind(&"g".repeat(64)).is_err());
        assert!(hash_kind("abc").is_err());
    }
}
