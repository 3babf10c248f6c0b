//! Passwords hidden from connection strings before they are printed.

const HIDDEN: &str = "********";

/// Query parameters and connection-string keywords that carry a secret.
const SECRET_PARAMS: &[&str] = &["password", "pass", "passwd", "sslpassword"];

/// Hides the passwords a connection string may carry: the userinfo of
/// `scheme://user:password@host/...` and `?password=` (libpq and redis
/// both read it from the query), or `password=` in a `key=value` string.
/// Meant for printing, so it errs towards hiding too much: a password with
/// an unescaped `/` or `@` is hidden whole.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_params(url, ' ');
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let (head, query) = match rest.find('?') {
        Some(q) => rest.split_at(q),
        None => (rest, ""),
    };
    let head = match head.rfind('@') {
        Some(at) => match head[..at].find(':') {
            Some(colon) => format!("{}:{HIDDEN}{}", &head[..colon], &head[at..]),
            None => head.to_string(),
        },
        None => head.to_string(),
    };
    let query = match query.strip_prefix('?') {
        Some(q) => format!("?{}", redact_params(q, '&')),
        None => query.to_string(),
    };
    format!("{scheme}{head}{query}")
}

fn redact_params(s: &str, sep: char) -> String {
    s.split(sep)
        .map(|part| match part.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.contains(&k.trim().to_ascii_lowercase().as_str()) => {
                format!("{k}={HIDDEN}")
            }
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}
