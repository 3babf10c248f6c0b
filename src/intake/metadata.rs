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
                // Keep the base name only: a client's path is not ours to
                // use. The rules are the ones the API document's pattern
                // states: no control character anywhere, at most
                // MAX_FILENAME characters, a base name that is not blank.
                let base = value
                    .rsplit(['/', '\\'])
                    .next()
                    .unwrap_or("")
                    .trim_matches(|c: char| c.is_ascii_whitespace());
                if base.is_empty()
                    || value.chars().count() > MAX_FILENAME
                    || value.chars().any(char::is_control)
                {
                    return Err(bad(
                        field,
                        format!(
                            "must be 1 to {MAX_FILENAME} characters without control characters"
                        ),
                    ));
                }
                self.filename = Some(base.to_string());
            }
            "tags" => {
                let elements: Vec<&str> = value
                    .split(',')
                    .map(|t| t.trim_matches(|c: char| c.is_ascii_whitespace()))
                    .collect();
                if elements.len() > MAX_TAGS {
                    return Err(bad(field, format!("at most {MAX_TAGS} tags")));
                }
                for tag in elements.into_iter().filter(|t| !t.is_empty()) {
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
                // Visible ASCII only: what goes on an HTTP request line
                // as it is (anything else is percent-encoded first).
                let ok = (value.starts_with("https://") || value.starts_with("http://"))
                    && value.len() <= MAX_URL
                    && value.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    return Err(bad(
                        field,
                        format!(
                            "must be an http:// or https:// URL of at most {MAX_URL} visible ASCII characters"
                        ),
                    ));
                }
                self.callback_url = Some(value.to_string());
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
        assert!(m.set("filename", "\u{1}/b").is_err());
        assert!(m.set("filename", "dir/ ").is_err());
        assert!(m.set("filename", &"é".repeat(255)).is_ok());
        assert!(m.set("filename", &"é".repeat(256)).is_err());
        assert!(m.set("callback_url", " https://x").is_err());
        assert!(m.set("callback_url", "https://x/\u{feff}").is_err());
        let mut t = Metadata::default();
        assert!(t.set("tags", &vec!["a"; 33].join(",")).is_err());
        assert!(t.set("tags", &vec!["a"; 32].join(",")).is_ok());
    }
}
