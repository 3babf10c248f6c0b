//! Access log lines in gunicorn's `access_log_format` language, so that
//! operators keep their formats and the parsers that read them.
//!
//! The format is parsed once at start (and on HUP); rendering a line is a
//! walk over the parsed pieces with no allocation beyond the output.

use std::fmt::Write;
use std::time::Duration;

use chrono::{DateTime, Local};

/// Gunicorn's default access log format.
pub const GUNICORN_ACCESS_LOG_FORMAT: &str =
    r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

/// One piece of a parsed format.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Atom(Atom),
}

#[derive(Debug, Clone, PartialEq)]
enum Atom {
    RemoteAddr,
    Dash,
    User,
    Time,
    RequestLine,
    Method,
    UrlPath,
    Query,
    Protocol,
    Status,
    BodyLength,
    BodyLengthOrDash,
    Referer,
    UserAgent,
    Seconds,
    Micros,
    Millis,
    DecimalSeconds,
    Pid,
    RequestHeader(String),
    ResponseHeader(String),
    Environ(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogFormat {
    pieces: Vec<Piece>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("unknown atom %({0})")]
    UnknownAtom(String),
    #[error("unterminated %( at byte {0}")]
    Unterminated(usize),
    #[error("atom %({0}) needs a conversion such as s after the )")]
    MissingConversion(String),
}

/// What a line is rendered from.
pub struct AccessRecord<'a> {
    pub remote_addr: Option<&'a str>,
    pub user: Option<&'a str>,
    pub time: DateTime<Local>,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub protocol: &'a str,
    pub status: u16,
    pub body_bytes: Option<u64>,
    pub duration: Duration,
    pub pid: u32,
    pub request_headers: &'a http::HeaderMap,
    pub response_headers: &'a http::HeaderMap,
}

impl AccessLogFormat {
    pub fn parse(format: &str) -> Result<Self, FormatError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let bytes = format.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && bytes.get(i + 1) == Some(&b'%') {
                literal.push('%');
                i += 2;
            } else if bytes[i] == b'%' && bytes.get(i + 1) == Some(&b'(') {
                let close = format[i + 2..]
                    .find(')')
                    .map(|p| p + i + 2)
                    .ok_or(FormatError::Unterminated(i))?;
                let name = &format[i + 2..close];
                // Python's %-formatting: a conversion letter follows; accept
                // the ones gunicorn formats use.
                match bytes.get(close + 1) {
                    Some(b's' | b'd' | b'r') => {}
                    _ => return Err(FormatError::MissingConversion(name.to_string())),
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Atom(atom(name)?));
                i = close + 2;
            } else {
                let ch = format[i..].chars().next().unwrap_or('%');
                literal.push(ch);
                i += ch.len_utf8();
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(AccessLogFormat { pieces })
    }

    pub fn render(&self, r: &AccessRecord<'_>) -> String {
        let mut out = String::with_capacity(160);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Atom(a) => render_atom(&mut out, a, r),
            }
        }
        out
    }
}

fn atom(name: &str) -> Result<Atom, FormatError> {
    if let Some(inner) = name.strip_prefix('{') {
        let (header, kind) = inner
            .rsplit_once('}')
            .ok_or_else(|| FormatError::UnknownAtom(name.to_string()))?;
        return match kind {
            "i" => Ok(Atom::RequestHeader(header.to_ascii_lowercase())),
            "o" => Ok(Atom::ResponseHeader(header.to_ascii_lowercase())),
            "e" => Ok(Atom::Environ(header.to_string())),
            _ => Err(FormatError::UnknownAtom(name.to_string())),
        };
    }
    Ok(match name {
        "h" => Atom::RemoteAddr,
        "l" => Atom::Dash,
        "u" => Atom::User,
        "t" => Atom::Time,
        "r" => Atom::RequestLine,
        "m" => Atom::Method,
        "U" => Atom::UrlPath,
        "q" => Atom::Query,
        "H" => Atom::Protocol,
        "s" => Atom::Status,
        "B" => Atom::BodyLength,
        "b" => Atom::BodyLengthOrDash,
        "f" => Atom::Referer,
        "a" => Atom::UserAgent,
        "T" => Atom::Seconds,
        "D" => Atom::Micros,
        "M" => Atom::Millis,
        "L" => Atom::DecimalSeconds,
        "p" => Atom::Pid,
        _ => return Err(FormatError::UnknownAtom(name.to_string())),
    })
}

fn header<'a>(map: &'a http::HeaderMap, name: &str) -> &'a str {
    map.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-")
}

fn render_atom(out: &mut String, atom: &Atom, r: &AccessRecord<'_>) {
    // Writing to a String cannot fail.
    let _ = match atom {
        Atom::RemoteAddr => write!(out, "{}", r.remote_addr.unwrap_or("-")),
        Atom::Dash => write!(out, "-"),
        Atom::User => write!(out, "{}", r.user.unwrap_or("-")),
        Atom::Time => write!(out, "[{}]", r.time.format("%d/%b/%Y:%H:%M:%S %z")),
        Atom::RequestLine => match r.query {
            Some(q) => write!(out, "{} {}?{} {}", r.method, r.path, q, r.protocol),
            None => write!(out, "{} {} {}", r.method, r.path, r.protocol),
        },
        Atom::Method => write!(out, "{}", r.method),
        Atom::UrlPath => write!(out, "{}", r.path),
        Atom::Query => write!(out, "{}", r.query.unwrap_or("")),
        Atom::Protocol => write!(out, "{}", r.protocol),
        Atom::Status => write!(out, "{}", r.status),
        Atom::BodyLength => write!(out, "{}", r.body_bytes.unwrap_or(0)),
        Atom::BodyLengthOrDash => match r.body_bytes {
            Some(n) => write!(out, "{n}"),
            None => write!(out, "-"),
        },
        Atom::Referer => write!(out, "{}", header(r.request_headers, "referer")),
        Atom::UserAgent => write!(out, "{}", header(r.request_headers, "user-agent")),
        Atom::Seconds => write!(out, "{}", r.duration.as_secs()),
        Atom::Micros => write!(out, "{}", r.duration.as_micros()),
        Atom::Millis => write!(out, "{}", r.duration.as_millis()),
        Atom::DecimalSeconds => write!(out, "{:.6}", r.duration.as_secs_f64()),
        Atom::Pid => write!(out, "<{}>", r.pid),
        Atom::RequestHeader(h) => write!(out, "{}", header(r.request_headers, h)),
        Atom::ResponseHeader(h) => write!(out, "{}", header(r.response_headers, h)),
        Atom::Environ(name) => write!(
            out,
            "{}",
            std::env::var(name).unwrap_or_else(|_| "-".to_string())
        ),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn record<'a>(req: &'a http::HeaderMap, resp: &'a http::HeaderMap) -> AccessRecord<'a> {
        AccessRecord {
            remote_addr: Some("10.0.0.7"),
            user: None,
            time: Local.with_ymd_and_hms(2026, 11, 22, 13, 55, 36).unwrap(),
            method: "GET",
            path: "/healthz",
            query: Some("a=1"),
            protocol: "HTTP/1.1",
            status: 200,
            body_bytes: Some(15),
            duration: Duration::from_micros(1_234),
            pid: 42,
            request_headers: req,
            response_headers: resp,
        }
    }

    #[test]
    fn gunicorn_default_format() {
        let mut req = http::HeaderMap::new();
        req.insert("user-agent", "curl/8".parse().unwrap());
        let resp = http::HeaderMap::new();
        let f = AccessLogFormat::parse(GUNICORN_ACCESS_LOG_FORMAT).unwrap();
        let line = f.render(&record(&req, &resp));
        assert!(
            line.starts_with(r#"10.0.0.7 - - [22/Nov/2026:13:55:36 "#),
            "{line}"
        );
        assert!(
            line.ends_with(r#"] "GET /healthz?a=1 HTTP/1.1" 200 15 "-" "curl/8""#),
            "{line}"
        );
    }

    #[test]
    fn timing_pid_and_header_atoms() {
        let mut req = http::HeaderMap::new();
        req.insert("x-request-id", "abc".parse().unwrap());
        let mut resp = http::HeaderMap::new();
        resp.insert("content-type", "application/json".parse().unwrap());
        let f = AccessLogFormat::parse(
            "%(D)s %(M)s %(T)s %(p)s %({X-Request-Id}i)s %({Content-Type}o)s %(U)s %(q)s 100%%",
        )
        .unwrap();
        assert_eq!(
            f.render(&record(&req, &resp)),
            "1234 1 0 <42> abc application/json /healthz a=1 100%"
        );
    }

    #[test]
    fn bad_formats_are_refused() {
        assert_eq!(
            AccessLogFormat::parse("%(zz)s"),
            Err(FormatError::UnknownAtom("zz".into()))
        );
        assert!(matches!(
            AccessLogFormat::parse("%(h"),
            Err(FormatError::Unterminated(0))
        ));
        assert!(matches!(
            AccessLogFormat::parse("%(h)"),
            Err(FormatError::MissingConversion(_))
        ));
    }
}
