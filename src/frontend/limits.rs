//! What a request must look like before any of it reaches a worker: strict
//! HTTP/1 framing read from the raw header bytes, and gunicorn's size
//! limits. Pure functions over bytes, so each rule has a unit test.
//!
//! The raw bytes matter because pingora's parser is lenient on purpose
//! (bare LF line ends) and quietly drops Content-Length when
//! Transfer-Encoding is present; a request smuggler relies on exactly the
//! difference between two parsers, so we refuse anything ambiguous here.

use http::StatusCode;

/// Why a request is refused, with its status and machine code.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl From<Refusal> for crate::api_error::ApiError {
    fn from(r: Refusal) -> Self {
        crate::api_error::ApiError::new(r.status, r.code, r.message)
    }
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

fn bad(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Gunicorn's limits; 0 means unlimited for the line and the field size.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub request_line: usize,
    pub fields: usize,
    pub field_size: usize,
}

impl HeaderLimits {
    /// The limits the settings give (`server.limit_request_*`).
    pub fn of(server: &crate::config::Server) -> Self {
        HeaderLimits {
            request_line: server.limit_request_line as usize,
            fields: server.limit_request_fields as usize,
            field_size: server.limit_request_field_size as usize,
        }
    }
}

/// What the framing check learned about the body.
#[derive(Debug, PartialEq)]
pub struct Framing {
    pub content_length: Option<u64>,
    pub chunked: bool,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks the raw HTTP/1 request head (request line, fields, blank line).
pub fn check_head(raw: &[u8], limits: HeaderLimits) -> Result<Framing, Refusal> {
    let crlf = raw.windows(2).filter(|w| w == b"\r\n").count();
    if crlf != count(raw, b'\n') {
        return Err(bad("bare LF line ending; lines must end in CRLF"));
    }
    let text = raw.strip_suffix(b"\r\n\r\n").unwrap_or(raw);
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    if limits.request_line > 0 && line.len() > limits.request_line {
        return Err(refuse(
            StatusCode::URI_TOO_LONG,
            "request_line_too_long",
            format!(
                "request line is {} bytes; the limit is {}",
                line.len(),
                limits.request_line
            ),
        ));
    }
    let mut framing = Framing {
        content_length: None,
        chunked: false,
    };
    let mut fields = 0usize;
    let mut te_seen = false;
    let mut hosts = 0usize;
    for field in lines {
        if field.is_empty() {
            continue;
        }
        fields += 1;
        if limits.fields > 0 && fields > limits.fields {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too_many_header_fields",
                format!("more than {} header fields", limits.fields),
            ));
        }
        if limits.field_size > 0 && field.len() > limits.field_size {
            return Err(bad(format!(
                "a header field is {} bytes; the limit is {}",
                field.len(),
                limits.field_size
            )));
        }
        if field[0] == b' ' || field[0] == b'\t' {
            return Err(bad("obsolete line folding in a header field"));
        }
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            return Err(bad("a header field has no colon"));
        };
        let (name, value) = (&field[..colon], &field[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad("invalid header field name"));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(bad("control character in a header field value"));
        }
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 {
                return Err(bad("more than one Host field"));
            }
            if !valid_host(value) {
                return Err(bad("the Host field is not a host[:port]"));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
            else {
                return Err(bad("Content-Length is not a number"));
            };
            if framing.content_length.is_some_and(|prev| prev != n) {
                return Err(bad("conflicting Content-Length fields"));
            }
            framing.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only plain `chunked`, once: anything else is a framing we
            // would read differently from some other parser on the path.
            if te_seen || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(bad(
                    "unsupported Transfer-Encoding; only a single `chunked` is accepted",
                ));
            }
            te_seen = true;
            framing.chunked = true;
        }
    }
    if framing.chunked && framing.content_length.is_some() {
        return Err(bad("both Content-Length and Transfer-Encoding are present"));
    }
    // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request
    // without Host. HTTP/1.0 predates the field and may omit it.
    if hosts == 0 && line.ends_with(b" HTTP/1.1") {
        return Err(bad("an HTTP/1.1 request must have a Host field"));
    }
    Ok(framing)
}

/// The same limits for a request that came over HTTP/2, whose fields h2
/// has already decoded: the request line is counted as HTTP/1.1 would send
/// it (`METHOD target HTTP/1.1`) and each field as its `name: value` line,
/// so one request meets the same limits, with the same answers, over
/// either protocol. Cookie crumbs (RFC 9113 §8.2.3 lets a client split the
/// one field into many) count as the one field they stand for.
pub fn check_decoded(
    method: &str,
    target: &str,
    fields: &http::HeaderMap,
    limits: HeaderLimits,
) -> Result<(), Refusal> {
    let line = method.len() + 1 + target.len() + " HTTP/1.1".len();
    if limits.request_line > 0 && line > limits.request_line {
        return Err(refuse(
            StatusCode::URI_TOO_LONG,
            "request_line_too_long",
            format!(
                "request line is {line} bytes; the limit is {}",
                limits.request_line
            ),
        ));
    }
    let mut count = 0usize;
    for name in fields.keys() {
        let values = fields.get_all(name);
        let sizes = values.iter().map(|v| v.len());
        let lines: Vec<usize> = if name == http::header::COOKIE {
            let crumbs: Vec<usize> = sizes.collect();
            // Joined with "; ", as RFC 9113 §8.2.3 says to rebuild it.
            let joined = crumbs.iter().sum::<usize>() + 2 * crumbs.len().saturating_sub(1);
            vec![joined]
        } else {
            sizes.collect()
        };
        for value_len in lines {
            count += 1;
            if limits.fields > 0 && count > limits.fields {
                return Err(refuse(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too_many_header_fields",
                    format!("more than {} header fields", limits.fields),
                ));
            }
            let size = name.as_str().len() + 2 + value_len;
            if limits.field_size > 0 && size > limits.field_size {
                return Err(bad(format!(
                    "a header field is {size} bytes; the limit is {}",
                    limits.field_size
                )));
            }
        }
    }
    Ok(())
}

/// RFC 9110 §7.2: `uri-host [ ":" port ]`, or empty (allowed when the
/// target has no authority). Only the characters a reg-name, an IPv4 or a
/// bracketed IPv6 literal can hold; no userinfo, path or whitespace.
pub fn valid_host(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
}

fn count(raw: &[u8], byte: u8) -> usize {
    raw.iter().filter(|&&b| b == byte).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeaderLimits = HeaderLimits {
        request_line: 4094,
        fields: 100,
        field_size: 8190,
    };

    fn check(raw: &str) -> Result<Framing, Refusal> {
        check_head(raw.as_bytes(), LIMITS)
    }

    #[test]
    fn plain_requests_pass() {
        let f = check("POST /v1/submit HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(f.content_length, Some(5));
        let f = check("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert!(f.chunked);
        // Repeating the same length is harmless (RFC 9110 §8.6).
        check("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
    }

    #[test]
    fn host_is_required_in_http_1_1_only() {
        let r = check("GET / HTTP/1.1\r\nX-A: 1\r\n\r\n").unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.message.contains("Host"), "{}", r.message);
        check("GET / HTTP/1.0\r\n\r\n").unwrap();
        check("GET / HTTP/1.1\r\nhOsT: [::1]:8443\r\n\r\n").unwrap();
        // An empty Host is allowed (a target without an authority).
        check("GET / HTTP/1.1\r\nHost:\r\n\r\n").unwrap();
        for raw in [
            "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        ] {
            let r = check(raw).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{raw:?}");
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: a\x01b\r\n\r\n",
        ] {
            let r = check(raw).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{raw:?}");
        }
    }

    #[test]
    fn decoded_http2_fields_meet_the_same_limits_as_http1_lines() {
        let small = HeaderLimits {
            request_line: 30,
            fields: 3,
            field_size: 20,
        };
        let mut h = http::HeaderMap::new();
        h.insert("x-a", "0123456789abcde".parse().unwrap()); // "x-a: " + 15 = 20
        check_decoded("GET", "/", &h, small).unwrap();
        // As HTTP/1.1 would send it: "GET /" + 16 more + " HTTP/1.1" is 30.
        check_decoded("GET", "/0123456789abcdef", &h, small).unwrap();
        let r = check_decoded("GET", "/0123456789abcdefg", &h, small).unwrap_err();
        assert_eq!(r.status, StatusCode::URI_TOO_LONG);
        h.insert("x-b", "0123456789abcdef".parse().unwrap());
        let r = check_decoded("GET", "/", &h, small).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.message.contains("21 bytes"), "{}", r.message);
        let mut many = http::HeaderMap::new();
        for v in ["1", "2", "3", "4"] {
            many.append("x-n", v.parse().unwrap());
        }
        let r = check_decoded("GET", "/", &many, small).unwrap_err();
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // Four cookie crumbs are one field (not four, over the count),
        // `cookie: a=1; b=2; c=3; d=4`, 26 bytes.
        let cookies = HeaderLimits {
            field_size: 30,
            ..small
        };
        let mut crumbs = http::HeaderMap::new();
        for v in ["a=1", "b=2", "c=3", "d=4"] {
            crumbs.append("cookie", v.parse().unwrap());
        }
        check_decoded("GET", "/", &crumbs, cookies).unwrap();
        crumbs.append("cookie", "e=5".parse().unwrap());
        let r = check_decoded("GET", "/", &crumbs, cookies).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn gunicorn_limits_have_their_statuses() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000));
        assert_eq!(check(&long).unwrap_err().status, StatusCode::URI_TOO_LONG);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            check(&many).unwrap_err().status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let big = format!("GET / HTTP/1.1\r\nX-A: {}\r\n\r\n", "v".repeat(9000));
        assert_eq!(check(&big).unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
