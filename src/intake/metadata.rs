//! What a submitter may say about a sample (file name, tags, TLP,
//! priority, callback URL), from multipart fields, query parameters or
//! headers, each validated with a message that names the field.

use axum::http::StatusCode;

use crate::api_error::ApiError;

const MAX_TAGS: usize = 32;
const MAX_TAG_LEN: usize = 64;
const MAX_FILENAME: usize = 255;
const MAX_URL: usize = 2048;
pub const TLP: &[&str] = &["clear", "white", "green", "amber", "amber+strict", "red"];
/// Largest metadata field accepted, in bytes.
pub const MAX_FIELD: usize = 4096;

#[derive(Debug, Clone)]
pub struct Metadata {
    pub filename: Option<String>,
    pub tags: Vec<String>,
    pub tlp: String,
    pub priority: i16,
    pub callback_url: Option<String>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            filename: None,
            tags: Vec::new(),
            tlp: "amber".into(),
            priority: 0,
            callback_url: None,
        }
    }
}

fn bad(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_metadata",
        format!("{field}: {why}"),
    )
}

impl Metadata {
    /// Applies one field; unknown fields are refused so typos are seen.
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), ApiError> {
        if value.len() > MAX_FIELD {
            return Err(bad(field, format!("longer than {MAX_FIELD} bytes")));
        }
        match field {
            "filename" => {
                // Keep the base name only: a client's path is not ours to use.
                let base = value.rsplit(['/', '\\']).next().unwrap_or("").trim();
                if base.is_empty()
                    || base.len() > MAX_FILENAME
                    || base.chars().any(char::is_control)
                {
                    return Err(bad(
                        field,
                        format!("must be 1 to {MAX_FILENAME} bytes without control characters"),
                    ));
                }
                self.filename = Some(base.to_string());
            }
            "tags" => {
                for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if tag.len() > MAX_TAG_LEN || !tag.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(bad(
                            field,
                            format!("tag {tag:?} must be 1 to {MAX_TAG_LEN} printable characters"),
                        ));
                    }
                    if !self.tags.iter().any(|t| t == tag) {
                        self.tags.push(tag.to_string());
                    }
                }
                if self.tags.len() > MAX_TAGS {
                    return Err(bad(field, format!("at most {MAX_TAGS} tags")));
                }
            }
            "tlp" => {
                let v = value.trim().to_ascii_lowercase();
                let v = v.strip_prefix("tlp:").unwrap_or(&v).to_string();
                if !TLP.contains(&v.as_str()) {
                    return Err(bad(
                        field,
                        format!("{value:?} is not one of {}", TLP.join(", ")),
                    ));
                }
                self.tlp = v;
            }
            "priority" => {
                let p: i16 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p| (-100..=100).contains(p))
                    .ok_or_else(|| {
                        bad(
                            field,
                            format!("{value:?} is not an integer from -100 to 100"),
                        )
                    })?;
                self.priority = p;
            }
            "callback_url" => {
                let v = value.trim();
                let ok = (v.starts_with("https://") || v.starts_with("http://"))
                    && v.len() <= MAX_URL
                    && !v.chars().any(|c| c.is_whitespace() || c.is_control());
                if !ok {
                    return Err(bad(
                        field,
                        format!("must be an http:// or https:// URL of at most {MAX_URL} bytes"),
                    ));
                }
                self.callback_url = Some(v.to_string());
            }
            other => {
                return Err(bad(
                    other,
                    "unknown field; use file, filename, tags, tlp, priority or callback_url",
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_validated() {
        let mut m = Metadata::default();
        m.set("filename", "C:\\Users\\x\\evil.exe").unwrap();
        assert_eq!(m.filename.as_deref(), Some("evil.exe"));
        m.set("tags", "apt, loader,apt").unwrap();
        assert_eq!(m.tags, vec!["apt", "loader"]);
        m.set("tlp", "TLP:RED").unwrap();
        assert_eq!(m.tlp, "red");
        m.set("priority", "7").unwrap();
        assert_eq!(m.priority, 7);
        assert!(m.set("priority", "1000").is_err());
        assert!(m.set("tlp", "purple").is_err());
        assert!(m.set("callback_url", "ftp://x").is_err());
        assert!(m
            .set("colour", "blue")
            .unwrap_err()
            .message
            .contains("unknown field"));
        assert!(m.set("filename", "a\u{0}b").is_err());
    }
}
