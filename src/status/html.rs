//! The status page's HTML, rendered on the server so it reads without
//! JavaScript. Every value that did not come from this file goes through
//! `esc`: file names, tags and rule names are chosen by whoever submitted
//! a sample.

use std::fmt::Write;

use super::rates::Window;
use super::snapshot::Snapshot;
use crate::auth::Caller;

/// `s` safe to place in element text and in double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn head(out: &mut String, title: &str, refresh: Option<u64>) {
    out.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"same-origin\">",
    );
    if let Some(s) = refresh {
        let _ = write!(out, "<meta http-equiv=\"refresh\" content=\"{s}\">");
    }
    let _ = write!(
        out,
        "<title>{}</title><link rel=\"stylesheet\" href=\"/status/status.css\"></head><body>",
        esc(title)
    );
}

/// The login form, with why it is shown again when there is a reason.
pub fn login(message: Option<&str>) -> String {
    let mut out = String::new();
    head(&mut out, "SandGNAT status: sign in", None);
    out.push_str("<main class=\"login\"><h1>SandGNAT status</h1>");
    if let Some(m) = message {
        let _ = write!(out, "<p class=\"error\" id=\"message\">{}</p>", esc(m));
    }
    out.push_str(
        "<form method=\"post\" action=\"/status/login\">\
         <label for=\"key\">API key (reader, bridge or admin)</label>\
         <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required>\
         <button id=\"sign-in\" type=\"submit\">Sign in</button></form>\
         <p class=\"note\">The key is sent once; the browser then keeps a session \
         cookie for this page only.</p></main></body></html>\n",
    );
    out
}

/// A short page for refusals and failures.
pub fn message(title: &str, text: &str) -> String {
    let mut out = String::new();
    head(&mut out, title, None);
    let _ = writeln!(
        out,
        "<main class=\"login\"><h1>{}</h1><p id=\"message\">{}</p>\
         <form method=\"post\" action=\"/status/logout\"><button type=\"submit\">Sign out</button></form>\
         </main></body></html>",
        esc(title),
        esc(text)
    );
    out
}

fn opt_ms(v: Option<u64>) -> String {
    v.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "–".into())
}

fn seconds(s: f64) -> String {
    if s.is_infinite() {
        "&gt; 60 s".into()
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

fn window_row(out: &mut String, label: &str, w: &Window) {
    let _ = write!(
        out,
        "<tr><td>{label}</td><td class=\"n\">{:.0} s</td><td class=\"n\">{}</td>\
         <td class=\"n\">{:.2}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
        w.seconds,
        w.requests,
        w.per_second,
        w.mean_seconds.map(seconds).unwrap_or_else(|| "–".into()),
        w.p95_at_most
            .map(|s| format!("≤ {}", seconds(s)))
            .unwrap_or_else(|| "–".into()),
    );
}

pub fn page(snap: &Snapshot, caller: &Caller, refresh: Option<u64>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    head(&mut out, "SandGNAT status", refresh);
    let _ = write!(
        out,
        "<header><h1>SandGNAT status</h1><p>Signed in as <b>{}</b> ({}) · {} · ",
        esc(&caller.name),
        caller.role.as_str(),
        snap.now.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    match refresh {
        Some(s) => {
            let _ = write!(out, "refreshing every {s} s (<a href=\"/status\">stop</a>)");
        }
        None => out.push_str("<a href=\"/status?refresh=10\">refresh every 10 s</a>"),
    }
    out.push_str(
        "</p><form method=\"post\" action=\"/status/logout\">\
         <button id=\"sign-out\" type=\"submit\">Sign out</button></form></header><main>",
    );

    // Processes.
    let count = |role: &str, state: &str| {
        snap.processes
            .iter()
            .filter(|p| p.role == role && p.state == state)
            .count()
    };
    let _ = write!(
        out,
        "<section id=\"processes\"><h2>Processes</h2><p>Workers ready: \
         <span id=\"worker-count\">{}</span> (booting {}, recycling {}) · job runners ready {} · \
         front end {} · recorder {}</p>",
        snap.workers(),
        count("worker", "booting"),
        count("worker", "recycling"),
        count("job runner", "ready"),
        if count("front end", "ready") > 0 {
            "up"
        } else {
            "down"
        },
        if count("recorder", "ready") > 0 {
            "up"
        } else {
            "down"
        },
    );
    out.push_str(
        "<table><thead><tr><th>role</th><th>pid</th><th>state</th><th>heartbeat</th>\
         <th>connections</th><th>in flight</th><th>handled</th></tr></thead><tbody>",
    );
    for p in &snap.processes {
        let conns = if p.max_connections > 0 {
            format!("{} / {}", p.active_connections, p.max_connections)
        } else {
            p.active_connections.to_string()
        };
        let _ = write!(
            out,
            "<tr class=\"{}\"><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{conns}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            if p.state == "ready" { "ok" } else { "warn" },
            p.role,
            p.pid,
            p.state,
            opt_ms(p.heartbeat_age_ms),
            p.in_flight,
            p.handled
        );
    }
    out.push_str("</tbody></table></section>");

    // Accept queues.
    out.push_str(
        "<section id=\"backlog\"><h2>Accept queues</h2><table><thead><tr><th>listener</th>\
         <th>waiting to be accepted</th></tr></thead><tbody>",
    );
    for b in &snap.backlog {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(&b.listener),
            b.queued
                .map(|q| q.to_string())
                .unwrap_or_else(|| "unknown".into())
        );
    }
    out.push_str("</tbody></table></section>");

    // Traffic.
    out.push_str(
        "<section id=\"traffic\"><h2>Requests</h2>\
         <p class=\"note\">Every route, all workers; from totals this worker samples every 5 s. \
         p95 is the latency bucket that holds it.</p>",
    );
    if snap.minutes.is_empty() {
        out.push_str("<p>No samples yet: this worker has just started.</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>minute</th><th>covers</th><th>requests</th><th>per second</th>\
             <th>mean latency</th><th>p95 latency</th></tr></thead><tbody>",
        );
        for (i, w) in snap.minutes.iter().enumerate() {
            let label = if i == 0 {
                "last".to_string()
            } else {
                format!("{} before", i)
            };
            window_row(&mut out, &label, w);
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");

    // Queues.
    out.push_str("<section id=\"queues\"><h2>Job queues</h2>");
    match &snap.queues {
        Err(e) => {
            let _ = write!(out, "<p class=\"error\">{}</p>", esc(e));
        }
        Ok(rows) if rows.is_empty() => out.push_str("<p>No jobs.</p>"),
        Ok(rows) => {
            out.push_str(
                "<table><thead><tr><th>queue</th><th>state</th><th>jobs</th>\
                 <th>oldest waiting</th></tr></thead><tbody>",
            );
            for r in rows {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    esc(&r.queue),
                    esc(&r.state),
                    r.jobs,
                    r.oldest_available_seconds
                        .map(age)
                        .unwrap_or_else(|| "–".into())
                );
            }
            out.push_str("</tbody></table>");
        }
    }
    out.push_str("</section>");

    // Latest submissions.
    out.push_str("<section id=\"submissions\"><h2>Latest submissions</h2>");
    match &snap.recent {
        Err(e) => {
            let _ = write!(out, "<p class=\"error\">{}</p>", esc(e));
        }
        Ok(rows) if rows.is_empty() => out.push_str("<p>None yet.</p>"),
        Ok(rows) => {
            out.push_str(
                "<table><thead><tr><th>received</th><th>sha256</th><th>file name</th>\
                 <th>type</th><th>size</th><th>TLP</th><th>status</th><th>YARA matches</th>\
                 </tr></thead><tbody>",
            );
            for a in rows {
                let rules = a.rule_names();
                let rules = if rules.is_empty() {
                    "–".to_string()
                } else {
                    rules
                        .iter()
                        .map(|r| format!("<span class=\"rule\">{}</span>", esc(r)))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td><code class=\"sha256\">{}</code></td><td class=\"filename\">{}</td>\
                     <td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"yara\">{rules}</td></tr>",
                    a.created_at.format("%Y-%m-%d %H:%M:%S"),
                    esc(&a.sha256),
                    esc(a.filename.as_deref().unwrap_or("–")),
                    esc(&a.file_type),
                    a.size,
                    esc(&a.tlp),
                    esc(&a.status),
                );
            }
            out.push_str("</tbody></table>");
        }
    }
    out.push_str("</section>");

    // Rules.
    let r = &snap.rules;
    let _ = write!(
        out,
        "<section id=\"rules\"><h2>YARA rules</h2><dl>\
         <dt>source</dt><dd>{}</dd><dt>rules</dt><dd id=\"rule-count\">{}</dd>\
         <dt>compiled digest (SHA-256)</dt><dd><code>{}</code></dd>\
         <dt>loaded by this worker</dt><dd>{}</dd>\
         <dt>failed reloads</dt><dd>{}</dd></dl>",
        esc(&r.source),
        r.count,
        esc(&r.digest),
        r.loaded_at.format("%Y-%m-%d %H:%M:%S UTC"),
        r.reload_failures,
    );
    if let Some(e) = &r.reload_error {
        let _ = write!(
            out,
            "<p class=\"error\">The last reload failed; older rules are in use: {}</p>",
            esc(e)
        );
    }
    out.push_str("</section></main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc("<script>alert(1)</script>.exe"),
            "&lt;script&gt;alert(1)&lt;/script&gt;.exe"
        );
        assert_eq!(esc("a\"b'c&d"), "a&quot;b&#39;c&amp;d");
    }
}
