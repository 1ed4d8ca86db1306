//! The landing page at `/`: tells a person how to use this very mirror.

use crate::conn::ClientCtx;
use crate::http::RequestHead;
use crate::worker::Worker;

/// Renders the page for the host the client used.
pub fn render(w: &Worker, req: &RequestHead<'_>, cx: &ClientCtx) -> String {
    let base = cx.base_url(w, req);
    let host = base.split("://").nth(1).unwrap_or(&base).to_string();
    let host = html_escape(&host);
    let mut registries = String::new();
    for r in &w.cfg.registries {
        registries.push_str(&format!(
            "<li><code>{}</code>{}</li>",
            html_escape(&r.name),
            if r.default { " (default)" } else { "" }
        ));
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ocirelay mirror at {host}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}pre{{background:#f4f4f4;padding:.75rem;overflow-x:auto}}</style>
</head><body>
<h1>ocirelay registry mirror</h1>
<p>This is a read-only pull mirror at <code>{host}</code>.</p>
<h2>Pull</h2>
<pre>docker pull {host}/library/alpine:latest
docker pull {host}/alpine:latest</pre>
<h2>Docker daemon (<code>/etc/docker/daemon.json</code>)</h2>
<pre>{{ "registry-mirrors": ["{base}"] }}</pre>
<h2>Registries served</h2>
<ul>{registries}</ul>
</body></html>
"#,
        base = html_escape(&base),
    )
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
