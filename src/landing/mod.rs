//! The landing page at `/`: tells a person how to use this very mirror — its
//! address, the registries it serves, and client settings to copy — in
//! English or Chinese, and shows its state at a glance: the cache's size and
//! hit ratio since start, and how each registry's upstream answered last.
//!
//! One self-contained document: inline CSS, system fonts, no external
//! fonts, scripts or images, so it renders offline. A few lines of inline
//! script add copy buttons; the page works without them.
//!
//! What the page says and looks like lives in files next to this one, built
//! into the binary: `page.html` (the document), `parts.html` (pieces used
//! zero or more times), `style.css`, `copy.js`, and the words in `en.toml`
//! and `zh.toml`. This module only decides what goes where. Templates are
//! filled by [`fill`]: `{{name}}` is HTML-escaped and `{{{name}}}` inserted
//! as is, so every value that comes from the request or the config is
//! escaped unless a template says otherwise — and only texts and pieces
//! built here are ever inserted as is.

use std::fmt::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::config::{human_size, Config, Registry};
use crate::downstream::ClientCtx;
use crate::ops::health::{CacheState, UpstreamState};
use crate::ops::metrics::CacheCounts;
use crate::route::classify::split_target;
use crate::wire::http::RequestHead;
use crate::worker::Worker;

const PAGE: &str = include_str!("page.html");
const PARTS: &str = include_str!("parts.html");
const CSS: &str = include_str!("style.css");
const COPY_JS: &str = include_str!("copy.js");

/// The page's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    /// The `<html lang>` value.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// The words, parsed on first use: the files are built in, so a parse
    /// error is a bug that the unit tests catch, not a runtime condition.
    fn text(self) -> &'static Text {
        static EN: OnceLock<Text> = OnceLock::new();
        static ZH: OnceLock<Text> = OnceLock::new();
        let (cell, file, src) = match self {
            Lang::En => (&EN, "en.toml", include_str!("en.toml")),
            Lang::Zh => (&ZH, "zh.toml", include_str!("zh.toml")),
        };
        cell.get_or_init(|| {
            toml::from_str(src).unwrap_or_else(|e| panic!("src/landing/{file}: {e}"))
        })
    }
}

/// What the page shows of the mirror's state.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// None: the cache is off.
    pub cache: Option<CacheView>,
    /// Each registry's upstream, in config order.
    pub upstreams: Vec<UpstreamState>,
}

/// The cache, as the page shows it.
#[derive(Debug, Clone, Copy)]
pub struct CacheView {
    pub state: CacheState,
    /// Bytes in the store (see `Metrics::disk_usage`); None before the
    /// first walk.
    pub bytes: Option<u64>,
    pub max: u64,
    /// The counters since start (the hit ratio's).
    pub counts: CacheCounts,
}

/// Renders the page for the host the client used, in the language it asked
/// for (`?lang=` wins over `Accept-Language`).
pub fn render(w: &Worker, req: &RequestHead<'_>, cx: &ClientCtx) -> String {
    let base = cx.base_url(&w.cfg, req.host());
    let (_, query) = split_target(req.target);
    let lang = pick_lang(query, req.header("accept-language"));
    page(&w.cfg, &base, lang, &status(w))
}

/// The mirror's state, from the metrics and health state (reads only).
fn status(w: &Worker) -> Status {
    let m = w.metrics.shared();
    let cache = w.cfg.cache.as_ref().map(|c| CacheView {
        state: m.health.cache(),
        bytes: m.disk_usage().map(|(_, bytes)| bytes),
        max: c.max_size,
        counts: m.cache_counts(),
    });
    let seen = m.upstreams();
    let now = SystemTime::now();
    let upstreams = w
        .cfg
        .registry_ids()
        .map(|(id, _)| UpstreamState::of(seen.get(&w.reg_label(id)), now))
        .collect();
    Status { cache, upstreams }
}

/// `?lang=zh` / `?lang=en` if given, else the preferred language of
/// `Accept-Language` (highest q, first on a tie): Chinese for `zh*`,
/// English for anything else.
pub fn pick_lang(query: Option<&str>, accept_language: Option<&[u8]>) -> Lang {
    let is_zh = |tag: &str| {
        let t = tag.trim().as_bytes();
        t.len() >= 2 && t[..2].eq_ignore_ascii_case(b"zh") && (t.len() == 2 || t[2] == b'-')
    };
    if let Some(q) = query {
        for v in q.split('&').filter_map(|p| p.strip_prefix("lang=")) {
            if is_zh(v) {
                return Lang::Zh;
            }
            if v.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("en")) {
                return Lang::En;
            }
        }
    }
    let Some(header) = accept_language.and_then(|h| std::str::from_utf8(h).ok()) else {
        return Lang::En;
    };
    let mut best: Option<(f32, &str)> = None;
    for item in header.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim();
        if tag.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        for p in parts {
            let p = p.trim();
            if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, tag));
        }
    }
    match best {
        Some((_, tag)) if is_zh(tag) => Lang::Zh,
        _ => Lang::En,
    }
}

/// The page for a mirror reached at `base` (`scheme://host[:port]`), in
/// state `status`.
pub fn page(cfg: &Config, base: &str, lang: Lang, status: &Status) -> String {
    let t = lang.text();
    let base = base.trim_end_matches('/');
    let (scheme, host) = base.split_once("://").unwrap_or(("http", base));
    let insecure = scheme == "http";
    let port = port_suffix(host);
    let def_i = cfg.default_registry().index();
    let def = &cfg.registries[def_i];
    let hub = def.name == "docker.io";
    // The registry the "another registry" examples use.
    let other = cfg
        .registries
        .iter()
        .enumerate()
        .find(|(i, r)| *i != def_i && r.name == "ghcr.io")
        .or_else(|| cfg.registries.iter().enumerate().find(|(i, _)| *i != def_i));
    let routes_of = |i: usize| -> Vec<String> {
        cfg.host_routes
            .iter()
            .filter(|h| h.registry.index() == i)
            .map(|h| format!("{}{port}", h.host))
            .collect()
    };
    // A host-route example: the other registry's host, else any.
    let host_example: Option<(String, &Registry)> = other
        .and_then(|(i, r)| routes_of(i).into_iter().next().map(|h| (h, r)))
        .or_else(|| {
            cfg.host_routes
                .first()
                .map(|h| (format!("{}{port}", h.host), cfg.registry(h.registry)))
        });

    // The values the texts may use (listed at the top of en.toml).
    let n = (cfg.registries.len() - 1).to_string();
    let count = cfg.registries.len().to_string();
    let default_label = if hub {
        "Docker Hub (docker.io)"
    } else {
        def.name.as_str()
    };
    let values = [
        ("host", host),
        ("base", base),
        ("default", def.name.as_str()),
        ("default_label", default_label),
        ("n", &n),
        ("count", &count),
    ];
    let say = |text: &str| fill(text, &values);
    let p = |text: &str| fill(part("p"), &[("text", &say(text))]);
    let note = |text: &str| fill(part("note"), &[("text", &say(text))]);
    // Snippet contents (commands, config files) are built here rather than
    // in the templates: they are the same in every language and mostly
    // computed from the config. `terminal` is a caption like the file
    // names: plain text.
    let terminal = t.terminal.as_str();
    let snippet =
        |caption: &str, text: &str| fill(part("snippet"), &[("caption", caption), ("text", text)]);

    // ---- quick start ----
    let mut quick = Vec::new();
    if hub {
        quick.push(p(&t.qs_hub));
        quick.push(snippet(
            terminal,
            &format!("docker pull {host}/library/alpine\ndocker pull {host}/alpine"),
        ));
    } else {
        quick.push(p(&t.qs_default));
        quick.push(snippet(
            terminal,
            &format!("docker pull {host}/{}", sample_repo(def)),
        ));
    }
    if let Some((_, r)) = other {
        quick.push(p(&t.qs_prefix));
        quick.push(snippet(
            terminal,
            &format!("docker pull {host}/{}/{}", r.name, sample_repo(r)),
        ));
    }
    if let Some((h, r)) = &host_example {
        quick.push(p(&t.qs_host));
        quick.push(snippet(
            terminal,
            &format!("docker pull {h}/{}", sample_repo(r)),
        ));
    }

    // ---- registries ----
    let with_hosts = !cfg.host_routes.is_empty();
    let rows: Vec<String> = cfg
        .registries
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (badge, root) = if r.default {
                (
                    fill(part("badge"), &[("label", &say(&t.badge_default))]),
                    fill(part("root"), &[("host", host)]),
                )
            } else {
                Default::default()
            };
            let hosts = if with_hosts {
                let names: Vec<String> = routes_of(i)
                    .iter()
                    .map(|h| fill(part("host"), &[("host", h)]))
                    .collect();
                if names.is_empty() {
                    part("no_hosts").to_string()
                } else {
                    fill(part("hosts"), &[("hosts", &names.join(part("host_sep")))])
                }
            } else {
                String::new()
            };
            let upstream = upstream_cell(t, status.upstreams.get(i).copied());
            fill(
                part("row"),
                &[
                    ("name", r.name.as_str()),
                    ("badge", &badge),
                    ("root", &root),
                    ("hosts", &hosts),
                    ("host", host),
                    ("upstream", &upstream),
                ],
            )
        })
        .collect();

    // ---- docker ----
    let mut docker = Vec::new();
    if hub {
        docker.push(p(&t.docker_intro));
        let mut json = format!("{{\n  \"registry-mirrors\": [\"{base}\"]");
        if insecure {
            let _ = write!(json, ",\n  \"insecure-registries\": [\"{host}\"]");
        }
        json.push_str("\n}");
        docker.push(snippet("/etc/docker/daemon.json", &json));
        docker.push(snippet(terminal, "sudo systemctl restart docker"));
        if insecure {
            docker.push(note(&t.docker_insecure));
        }
        docker.push(note(&t.docker_hub_only));
    } else {
        docker.push(p(&t.docker_not_hub));
    }

    // ---- containerd ----
    let containerd_hosts: Vec<String> = std::iter::once(def)
        .chain(other.map(|(_, r)| r))
        .map(|r| {
            snippet(
                &format!("/etc/containerd/certs.d/{}/hosts.toml", r.name),
                &format!(
                    "server = \"{}\"\n\n[host.\"{base}\"]\n  capabilities = [\"pull\", \"resolve\"]",
                    registry_server(r)
                ),
            )
        })
        .collect();
    let containerd_pull = snippet(
        terminal,
        &format!(
            "sudo ctr images pull --hosts-dir /etc/containerd/certs.d {}/{}:latest",
            def.name,
            sample_repo(def)
        ),
    );

    // ---- podman ----
    let mut conf = String::new();
    for r in std::iter::once(def).chain(other.map(|(_, r)| r)) {
        if !conf.is_empty() {
            conf.push('\n');
        }
        let location = if r.default {
            host.to_string()
        } else {
            format!("{host}/{}", r.name)
        };
        let _ = writeln!(
            conf,
            "[[registry]]\nprefix = \"{0}\"\nlocation = \"{0}\"\n\n[[registry.mirror]]\nlocation = \"{location}\"{1}",
            r.name,
            if insecure { "\ninsecure = true" } else { "" },
        );
    }
    let podman_conf = snippet("/etc/containers/registries.conf", conf.trim_end());

    // ---- kubernetes ----
    let k8s_config = snippet(
        "/etc/containerd/config.toml",
        "# containerd 1.x (version = 2)\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n\n\
         # containerd 2.x (version = 3)\n\
         [plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d\"",
    );
    let names: Vec<&str> = cfg.registries.iter().map(|r| r.name.as_str()).collect();
    let k8s_hosts_script = snippet(
        terminal,
        &format!(
            "{}\n  sudo mkdir -p \"/etc/containerd/certs.d/$r\"\n  \
             sudo tee \"/etc/containerd/certs.d/$r/hosts.toml\" >/dev/null <<EOF\n\
             [host.\"{base}\"]\n  capabilities = [\"pull\", \"resolve\"]\nEOF\ndone\n\
             sudo systemctl restart containerd",
            for_loop(&names)
        ),
    );
    let k8s_pull = snippet(
        terminal,
        &format!("sudo crictl pull {}/{}:latest", def.name, sample_repo(def)),
    );

    // ---- login ----
    let mut cmds = format!("docker login {host}\npodman login {host}");
    if let Some((h, _)) = &host_example {
        let _ = write!(cmds, "\ndocker login {h}");
    }
    let mut login = vec![snippet(terminal, &cmds)];
    if host_example.is_some() {
        login.push(note(&t.login_host_note));
    }

    // ---- the whole page ----
    let (en_current, zh_current) = match lang {
        Lang::En => (part("current"), ""),
        Lang::Zh => ("", part("current")),
    };
    let fact_hosts = match &cfg.domain {
        Some(d) => fill(
            part("fact_hosts"),
            &[
                ("label", &say(&t.fact_hosts)),
                ("domain", d),
                ("port", &port),
            ],
        ),
        None => String::new(),
    };
    let fact =
        |label: &str, value: &str| fill(part("fact"), &[("label", &say(label)), ("value", value)]);
    let fact_status = match &status.cache {
        None => fact(&t.fact_cache, &t.cache_off),
        Some(c) => {
            let size = match (c.state, c.bytes) {
                (CacheState::Unusable, _) => t.cache_unusable.clone(),
                (CacheState::Unwritable, _) => t.cache_unwritable.clone(),
                (_, None) => t.cache_measuring.clone(),
                (_, Some(b)) => fill(
                    &t.cache_size,
                    &[("size", &human_size(b)), ("max", &human_size(c.max))],
                ),
            };
            let all = c.counts.served() + c.counts.misses;
            let hits = if all == 0 {
                t.hits_none.clone()
            } else {
                let ratio = format!("{:.0}%", c.counts.hit_ratio() * 100.0);
                fill(
                    &t.hits_ratio,
                    &[
                        ("ratio", &ratio),
                        ("served", &c.counts.served().to_string()),
                        ("requests", &all.to_string()),
                    ],
                )
            };
            fact(&t.fact_cache, &size) + &fact(&t.fact_hits, &hits)
        }
    };
    let th_host = if with_hosts {
        fill(part("th_host"), &[("label", &say(&t.th_host))])
    } else {
        String::new()
    };
    let lead = if cfg.registries.len() == 1 {
        &t.lead_one
    } else {
        &t.lead_many
    };
    // Blocks of a section each sit on their own line.
    let blocks = |b: &[String]| b.join("\n");
    // The labels are trusted text inside a JavaScript string, not HTML.
    let script = fill(
        COPY_JS.trim_end(),
        &[("copy", &t.copy), ("copied", &t.copied)],
    );
    fill(
        PAGE,
        &[
            ("lang", lang.tag()),
            ("title", &say(&t.title)),
            ("css", CSS.trim_end()),
            ("brand_sub", &say(&t.brand_sub)),
            ("en_current", en_current),
            ("zh_current", zh_current),
            ("eyebrow", &say(&t.eyebrow)),
            ("host", host),
            ("lead", &say(lead)),
            ("fact_url", &say(&t.fact_url)),
            ("base", base),
            ("fact_default", &say(&t.fact_default)),
            ("default", &def.name),
            ("fact_count", &say(&t.fact_count)),
            ("count", &count),
            ("fact_hosts", &fact_hosts),
            ("fact_status", &fact_status),
            ("toc", &say(&t.toc)),
            ("h_quick", &say(&t.h_quick)),
            ("h_registries", &say(&t.h_registries)),
            ("h_login", &say(&t.h_login)),
            ("quick_start", &blocks(&quick)),
            ("reg_intro", &say(&t.reg_intro)),
            ("th_registry", &say(&t.th_registry)),
            ("th_pull", &say(&t.th_pull)),
            ("th_host", &th_host),
            ("registry_rows", &blocks(&rows)),
            ("docker", &blocks(&docker)),
            ("containerd_intro", &say(&t.containerd_intro)),
            ("containerd_hosts", &blocks(&containerd_hosts)),
            ("containerd_ctr", &say(&t.containerd_ctr)),
            ("containerd_pull", &containerd_pull),
            ("podman_intro", &say(&t.podman_intro)),
            ("podman_conf", &podman_conf),
            ("podman_note", &say(&t.podman_note)),
            ("k8s_intro", &say(&t.k8s_intro)),
            ("k8s_config", &k8s_config),
            ("k8s_mirrors_note", &say(&t.k8s_mirrors_note)),
            ("k8s_hosts", &say(&t.k8s_hosts)),
            ("k8s_hosts_script", &k8s_hosts_script),
            ("k8s_kubelet", &say(&t.k8s_kubelet)),
            ("k8s_pull", &k8s_pull),
            ("login_intro", &say(&t.login_intro)),
            ("login", &blocks(&login)),
            ("footer", &say(&t.footer)),
            ("script", &script),
        ],
    )
}

/// A registry's upstream, under its name in the table: a dot and a few
/// words.
fn upstream_cell(t: &Text, state: Option<UpstreamState>) -> String {
    let ago = |d: Duration| {
        let s = d.as_secs();
        let (text, n) = match s {
            0..60 => (&t.ago_s, s),
            60..3600 => (&t.ago_min, s / 60),
            3600..86_400 => (&t.ago_h, s / 3600),
            _ => (&t.ago_d, s / 86_400),
        };
        fill(text, &[("n", &n.to_string())])
    };
    let (class, text) = match state.unwrap_or(UpstreamState::Unknown) {
        UpstreamState::Unknown => ("unknown", t.up_unknown.clone()),
        UpstreamState::Answering { ago: d } => ("ok", fill(&t.up_answering, &[("ago", &ago(d))])),
        UpstreamState::Failing { ago: d, failure } => {
            let why = failure.map_or_else(|| "error".to_string(), |f| f.to_string());
            (
                "failing",
                fill(&t.up_failing, &[("ago", &ago(d)), ("why", &why)]),
            )
        }
    };
    fill(part("upstream"), &[("state", class), ("text", &text)])
}

/// `:port` of an authority (`host:port`, `[v6]:port`), or "".
fn port_suffix(authority: &str) -> String {
    let after_host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(_, p)| p),
        None => authority.rfind(':').map_or("", |i| &authority[i..]),
    };
    match after_host.strip_prefix(':') {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => format!(":{p}"),
        _ => String::new(),
    }
}

/// An example repository for a registry.
fn sample_repo(r: &Registry) -> &'static str {
    if r.library_prefix || r.name == "docker.io" {
        "library/alpine"
    } else {
        "owner/img"
    }
}

/// containerd's `server` (where to go when no mirror answers).
fn registry_server(r: &Registry) -> String {
    if r.name == "docker.io" {
        "https://registry-1.docker.io".into()
    } else {
        format!("https://{}", r.name)
    }
}

/// `for r in a b c; do`, wrapped with `\` to stay narrow.
fn for_loop(names: &[&str]) -> String {
    let mut out = String::from("for r in");
    let mut line = out.len();
    for n in names {
        if line + 1 + n.len() > 62 {
            out.push_str(" \\\n        ");
            line = 8;
        }
        out.push(' ');
        out.push_str(n);
        line += 1 + n.len();
    }
    out.push_str("; do");
    out
}

/// Fills a template: `{{name}}` with the HTML-escaped value of `name`,
/// `{{{name}}}` with the value as is. One pass over the template, so braces
/// inside values are never taken for placeholders. A name without a value
/// is a bug in a template or in this module: debug builds (the tests) stop
/// there, release builds leave the placeholder visible.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + template.len() / 2);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let (raw, open, close) = if tail.starts_with("{{{") {
            (true, "{{{", "}}}")
        } else {
            (false, "{{", "}}")
        };
        let Some(len) = tail[open.len()..].find(close) else {
            debug_assert!(false, "landing: unclosed {open} in a template");
            break;
        };
        let name = &tail[open.len()..open.len() + len];
        let whole = &tail[..open.len() + len + close.len()];
        let value = values.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        debug_assert!(value.is_some(), "landing: no value for {whole}");
        match value {
            Some(v) if raw => out.push_str(v),
            Some(v) => escape_into(&mut out, v),
            None => out.push_str(whole),
        }
        rest = &tail[whole.len()..];
    }
    out.push_str(rest);
    out
}

/// A piece of `parts.html` by name. A missing one is a bug (see [`fill`]).
fn part(name: &str) -> &'static str {
    static PIECES: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();
    let found = PIECES
        .get_or_init(|| parse_parts(PARTS))
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, body)| *body);
    debug_assert!(found.is_some(), "landing: parts.html has no {name:?}");
    found.unwrap_or("")
}

/// Splits `parts.html` at its `<!-- name: what it is -->` lines into
/// (name, body); text before the first such line is the file's notes.
/// Bodies lose their trailing line breaks, which only separate pieces.
fn parse_parts(src: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut parts = Vec::new();
    let mut current: Option<(&str, usize)> = None;
    let mut at = 0;
    for line in src.split_inclusive('\n') {
        let line_start = at;
        at += line.len();
        if let Some(name) = part_name(line) {
            if let Some((prev, from)) = current {
                parts.push((prev, src[from..line_start].trim_end_matches('\n')));
            }
            current = Some((name, at));
        }
    }
    if let Some((prev, from)) = current {
        parts.push((prev, src[from..].trim_end_matches('\n')));
    }
    parts
}

/// `name` if `line` is `<!-- name: … -->`.
fn part_name(line: &str) -> Option<&str> {
    let inner = line
        .trim_end()
        .strip_prefix("<!-- ")?
        .strip_suffix(" -->")?;
    let name = inner.split(':').next()?;
    let is_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    is_name.then_some(name)
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

fn escape_into(out: &mut String, s: &str) {
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
}

/// The page's words, from `en.toml` / `zh.toml`. They are trusted HTML and
/// templates themselves (filled with the values listed in en.toml), except
/// `terminal` (a snippet caption, plain text) and `copy`/`copied` (inside a
/// JavaScript string). Every key must be there and no other: a file that
/// differs from this struct fails to parse.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Text {
    title: String,
    brand_sub: String,
    eyebrow: String,
    lead_one: String,
    lead_many: String,
    fact_url: String,
    fact_default: String,
    fact_count: String,
    fact_hosts: String,
    toc: String,
    terminal: String,
    h_quick: String,
    qs_hub: String,
    qs_default: String,
    qs_prefix: String,
    qs_host: String,
    h_registries: String,
    reg_intro: String,
    th_registry: String,
    th_pull: String,
    th_host: String,
    badge_default: String,
    docker_intro: String,
    docker_insecure: String,
    docker_hub_only: String,
    docker_not_hub: String,
    containerd_intro: String,
    containerd_ctr: String,
    podman_intro: String,
    podman_note: String,
    k8s_intro: String,
    k8s_mirrors_note: String,
    k8s_hosts: String,
    k8s_kubelet: String,
    h_login: String,
    login_intro: String,
    login_host_note: String,
    footer: String,
    copy: String,
    copied: String,
    fact_cache: String,
    fact_hits: String,
    cache_size: String,
    cache_off: String,
    cache_measuring: String,
    cache_unwritable: String,
    cache_unusable: String,
    hits_ratio: String,
    hits_none: String,
    up_answering: String,
    up_failing: String,
    up_unknown: String,
    ago_s: String,
    ago_min: String,
    ago_h: String,
    ago_d: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::health::UpstreamFailure;

    fn cfg(extra: &str) -> Config {
        Config::parse(&format!("listen = [\"127.0.0.1:1\"]\n{extra}")).unwrap()
    }

    #[test]
    fn language_from_query_then_accept_language() {
        assert_eq!(pick_lang(None, None), Lang::En);
        assert_eq!(pick_lang(None, Some(b"zh-CN,zh;q=0.9")), Lang::Zh);
        assert_eq!(pick_lang(None, Some(b"zh")), Lang::Zh);
        assert_eq!(pick_lang(None, Some(b"zh-Hant-TW")), Lang::Zh);
        assert_eq!(pick_lang(None, Some(b"en-US,en;q=0.9,zh;q=0.8")), Lang::En);
        assert_eq!(pick_lang(None, Some(b"en;q=0.5, zh-CN;q=0.8")), Lang::Zh);
        assert_eq!(pick_lang(None, Some(b"zh;q=0, en")), Lang::En);
        assert_eq!(pick_lang(None, Some(b"zha, fr")), Lang::En);
        assert_eq!(pick_lang(None, Some(b"*")), Lang::En);
        assert_eq!(pick_lang(None, Some(b"\xff")), Lang::En);
        assert_eq!(pick_lang(Some("lang=en"), Some(b"zh-CN")), Lang::En);
        assert_eq!(pick_lang(Some("x=1&lang=zh"), Some(b"en")), Lang::Zh);
        assert_eq!(pick_lang(Some("lang=zh-TW"), None), Lang::Zh);
        assert_eq!(pick_lang(Some("lang=fr"), Some(b"zh")), Lang::Zh);
    }

    #[test]
    fn port_suffix_of_an_authority() {
        assert_eq!(port_suffix("mirror.example.com"), "");
        assert_eq!(port_suffix("mirror.example.com:5000"), ":5000");
        assert_eq!(port_suffix("[::1]:8443"), ":8443");
        assert_eq!(port_suffix("[::1]"), "");
    }

    #[test]
    fn page_names_the_host_every_registry_and_the_snippets() {
        let c = cfg("domain = \"mirror.example.com\"\n");
        let p = page(
            &c,
            "https://mirror.example.com",
            Lang::En,
            &Status::default(),
        );
        assert!(p.starts_with("<!doctype html>\n<html lang=\"en\">"));
        for r in &c.registries {
            assert!(
                p.contains(&format!("<code>{}</code>", r.name)),
                "{}",
                r.name
            );
            assert!(p.contains(&format!("?ns={}", r.name)), "{}", r.name);
        }
        for s in [
            "docker pull mirror.example.com/library/alpine",
            "docker pull mirror.example.com/alpine",
            "docker pull mirror.example.com/ghcr.io/owner/img",
            "docker pull ghcr.mirror.example.com/owner/img",
            "&quot;registry-mirrors&quot;: [&quot;https://mirror.example.com&quot;]",
            "/etc/containerd/certs.d/docker.io/hosts.toml",
            "/etc/containerd/certs.d/ghcr.io/hosts.toml",
            "[host.&quot;https://mirror.example.com&quot;]",
            "capabilities = [&quot;pull&quot;, &quot;resolve&quot;]",
            "location = &quot;mirror.example.com/ghcr.io&quot;",
            "config_path = &quot;/etc/containerd/certs.d&quot;",
            "docker login mirror.example.com",
            "podman login mirror.example.com",
            "k8s-gcr.mirror.example.com",
        ] {
            assert!(p.contains(s), "missing {s}");
        }
        assert!(
            !p.contains("insecure"),
            "https mirror needs no insecure flags"
        );
        let zh = page(
            &c,
            "https://mirror.example.com",
            Lang::Zh,
            &Status::default(),
        );
        assert!(zh.contains("<html lang=\"zh-CN\">") && zh.contains("快速开始"));
    }

    #[test]
    fn plain_http_mirror_gets_insecure_flags_and_ports_on_host_routes() {
        let c = cfg("domain = \"m.test\"\n");
        let p = page(&c, "http://m.test:5000", Lang::En, &Status::default());
        assert!(p.contains("&quot;insecure-registries&quot;: [&quot;m.test:5000&quot;]"));
        assert!(p.contains("insecure = true"));
        assert!(p.contains("docker pull ghcr.m.test:5000/owner/img"));
    }

    #[test]
    fn other_default_registry_and_single_registry() {
        let c = cfg(
            "builtin_registries = false\n[[registry]]\nname = \"r.example\"\nupstream = \"https://r.example\"\n",
        );
        let p = page(&c, "https://m.example", Lang::En, &Status::default());
        assert!(p.contains("docker pull m.example/owner/img"));
        assert!(!p.contains("/etc/docker/daemon.json"));
        assert!(!p.contains("ghcr.io"));
    }

    #[test]
    fn both_texts_parse() {
        // A missing, misspelt or extra key fails here (deny_unknown_fields).
        for lang in [Lang::En, Lang::Zh] {
            let t = lang.text();
            // copy.js puts these inside "…" as is.
            for label in [&t.copy, &t.copied] {
                assert!(
                    !label.contains(['"', '\\', '<', '\n']),
                    "{label:?} must fit in a JavaScript string"
                );
            }
        }
    }

    #[test]
    fn every_placeholder_is_filled_in_every_variant() {
        // Between them these take every branch of `page`: Docker Hub or
        // not, one or more registries, host names (none, one, two per
        // registry) or not, http or https.
        let configs = [
            cfg(""),
            cfg("domain = \"mirror.example.com\"\n"),
            cfg("domain = \"x.test\"\n[[registry]]\nname = \"a.example\"\nupstream = \"https://a.example\"\nhosts = [\"a.other.test\", \"a2.other.test\"]\n"),
            cfg("builtin_registries = false\n[[registry]]\nname = \"r.example\"\nupstream = \"https://r.example\"\n"),
            cfg("builtin_registries = false\ndomain = \"x.test\"\n[[registry]]\nname = \"r.example\"\nupstream = \"https://r.example\"\n[[registry]]\nname = \"a.example\"\nupstream = \"https://a.example\"\n"),
        ];
        for c in &configs {
            for base in ["http://m.test:5000", "https://m.test"] {
                for lang in [Lang::En, Lang::Zh] {
                    for status in statuses() {
                        // Debug builds also stop inside `fill` at a name
                        // without a value; this catches it in release tests.
                        let p = page(c, base, lang, &status);
                        assert!(!p.contains("{{"), "{base} {lang:?}: {p}");
                        assert!(p.ends_with("</html>\n"));
                    }
                }
            }
        }
    }

    /// A state of each kind: cache off, measuring, sized with and without
    /// requests, unwritable, unusable; upstreams in every state.
    fn statuses() -> Vec<Status> {
        let view = |state, bytes, hits, misses| CacheView {
            state,
            bytes,
            max: 10 << 30,
            counts: CacheCounts {
                hits,
                misses,
                ..CacheCounts::default()
            },
        };
        let upstreams = vec![
            UpstreamState::Answering {
                ago: Duration::from_secs(5),
            },
            UpstreamState::Failing {
                ago: Duration::from_secs(125),
                failure: Some(UpstreamFailure::Connect),
            },
            UpstreamState::Unknown,
            UpstreamState::Failing {
                ago: Duration::from_secs(90_000),
                failure: None,
            },
        ];
        [
            None,
            Some(view(CacheState::Writable, None, 0, 0)),
            Some(view(CacheState::Writable, Some(3 << 29), 0, 0)),
            Some(view(CacheState::Writable, Some(1 << 20), 5, 1)),
            Some(view(CacheState::Unwritable, Some(1 << 20), 5, 1)),
            Some(view(CacheState::Unusable, None, 0, 0)),
        ]
        .into_iter()
        .map(|cache| Status {
            cache,
            upstreams: upstreams.clone(),
        })
        .collect()
    }

    #[test]
    fn the_state_shows_cache_size_hit_ratio_and_each_upstream() {
        let c = cfg("");
        let all = statuses();
        let p = page(&c, "https://m.test", Lang::En, &all[3]);
        for s in [
            "<dt>Cache</dt><dd>1.0 MiB of 10.0 GiB</dd>",
            "<dt>Hit ratio since start</dt><dd>83% (5 of 6)</dd>",
            "<span class=\"up ok\"><span class=\"dot\"></span>upstream answering · 5 s ago</span>",
            "<span class=\"up failing\"><span class=\"dot\"></span>upstream failing (connect error) · 2 min ago</span>",
            "<span class=\"up unknown\"><span class=\"dot\"></span>upstream not asked yet</span>",
            "upstream failing (error) · 1 d ago",
        ] {
            assert!(p.contains(s), "missing {s}");
        }
        // One upstream cell per registry, in config order.
        assert_eq!(p.matches("<span class=\"up ").count(), c.registries.len());
        let off = page(&c, "https://m.test", Lang::En, &all[0]);
        assert!(off.contains("<dt>Cache</dt><dd>off</dd>"));
        assert!(!off.contains("Hit ratio"));
        let none = page(&c, "https://m.test", Lang::En, &all[2]);
        assert!(none.contains("<dd>1.5 GiB of 10.0 GiB</dd>"));
        assert!(none.contains("<dd>no requests yet</dd>"));
        let broken = page(&c, "https://m.test", Lang::En, &all[4]);
        assert!(broken.contains("<dd>directory not writable</dd>"));
        let zh = page(&c, "https://m.test", Lang::Zh, &all[3]);
        for s in [
            "<dt>缓存</dt><dd>1.0 MiB / 10.0 GiB</dd>",
            "<dd>83%（6 次中 5 次）</dd>",
            "上游正常 · 5 秒前",
            "上游故障（connect error）· 2 分钟前",
            "上游尚未访问",
        ] {
            assert!(zh.contains(s), "missing {s}");
        }
    }

    #[test]
    fn fill_escapes_unless_told_not_to() {
        let v = [("a", "<b>&"), ("b", "{{a}}")];
        assert_eq!(fill("{{a}}|{{{a}}}", &v), "&lt;b&gt;&amp;|<b>&");
        // Values are not templates; lone braces are text.
        assert_eq!(fill("{{{b}}} {x} }}", &v), "{{a}} {x} }}");
    }

    #[test]
    fn parts_have_distinct_names_and_bodies() {
        let parts = parse_parts(PARTS);
        assert!(parts.len() >= 10, "{parts:?}");
        for (i, (name, body)) in parts.iter().enumerate() {
            assert!(!body.trim().is_empty(), "{name} is empty");
            assert!(!body.ends_with('\n'), "{name}");
            assert!(parts[..i].iter().all(|(n, _)| n != name), "{name} twice");
        }
        assert_eq!(part("current"), " aria-current=\"true\"");
        assert_eq!(part("host_sep"), "<br>");
    }

    #[test]
    fn inserted_values_are_escaped() {
        let c = cfg("");
        let p = page(
            &c,
            "http://<script>alert(1)</script>\"'&",
            Lang::En,
            &Status::default(),
        );
        assert!(!p.contains("<script>alert"), "unescaped");
        assert!(!p.contains("alert(1)</script>\"'&"));
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
    }
}
