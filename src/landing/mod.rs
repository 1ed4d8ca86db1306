//! The landing page at `/`: tells a person how to use this very mirror — its
//! address, the registries it serves, and client settings to copy — in
//! English or Chinese.
//!
//! One self-contained document: inline CSS, system fonts, no external
//! fonts, scripts or images, so it renders offline. A few lines of inline
//! script add copy buttons; the page works without them. Every value that
//! comes from the request or the config is HTML-escaped.

use std::fmt::Write;

use crate::config::{Config, Registry};
use crate::conn::ClientCtx;
use crate::http::RequestHead;
use crate::router::split_target;
use crate::worker::Worker;

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

    fn text(self) -> &'static Text {
        match self {
            Lang::En => &EN,
            Lang::Zh => &ZH,
        }
    }
}

/// Renders the page for the host the client used, in the language it asked
/// for (`?lang=` wins over `Accept-Language`).
pub fn render(w: &Worker, req: &RequestHead<'_>, cx: &ClientCtx) -> String {
    let base = cx.base_url(w, req);
    let (_, query) = split_target(req.target);
    let lang = pick_lang(query, req.header("accept-language"));
    page(&w.cfg, &base, lang)
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

/// The page for a mirror reached at `base` (`scheme://host[:port]`).
pub fn page(cfg: &Config, base: &str, lang: Lang) -> String {
    let t = lang.text();
    let base = base.trim_end_matches('/');
    let (scheme, host) = base.split_once("://").unwrap_or(("http", base));
    let insecure = scheme == "http";
    let port = port_suffix(host);
    let def_i = cfg.default_registry();
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
            .filter(|h| h.registry == i)
            .map(|h| format!("{}{port}", h.host))
            .collect()
    };
    // A host-route example: the other registry's host, else any.
    let host_example: Option<(String, &Registry)> = other
        .and_then(|(i, r)| routes_of(i).into_iter().next().map(|h| (h, r)))
        .or_else(|| {
            cfg.host_routes
                .first()
                .map(|h| (format!("{}{port}", h.host), &cfg.registries[h.registry]))
        });

    let e_host = esc(host);
    let e_base = esc(base);
    let mut o = String::with_capacity(24 * 1024);

    // ---- head ----
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        lang.tag(),
        fill(t.title, &[("host", &e_host)]),
    );

    // ---- top bar and hero ----
    let (en_cur, zh_cur) = match lang {
        Lang::En => (" aria-current=\"true\"", ""),
        Lang::Zh => ("", " aria-current=\"true\""),
    };
    let _ = write!(
        o,
        "<header class=\"hero\">\n<div class=\"wrap\">\n<div class=\"bar\">\
         <a class=\"brand\" href=\"/\">ocirelay<span>{}</span></a>\
         <nav class=\"lang\" aria-label=\"Language / 语言\">\
         <a href=\"?lang=en\" hreflang=\"en\" lang=\"en\"{en_cur}>English</a>\
         <a href=\"?lang=zh\" hreflang=\"zh\" lang=\"zh-CN\"{zh_cur}>中文</a></nav></div>\n\
         <p class=\"eyebrow\">{}</p>\n<h1>{e_host}</h1>\n",
        t.brand_sub, t.eyebrow,
    );
    let def_label = if hub {
        "Docker Hub (docker.io)".to_string()
    } else {
        esc(&def.name)
    };
    let n_other = cfg.registries.len() - 1;
    let lead = if n_other == 0 {
        t.lead_one
    } else {
        t.lead_many
    };
    let _ = writeln!(
        o,
        "<p class=\"lead\">{}</p>",
        fill(
            lead,
            &[
                ("default", &format!("<b>{def_label}</b>")),
                ("n", &n_other.to_string()),
            ]
        )
    );
    let _ = write!(
        o,
        "<dl class=\"facts\">\
         <div><dt>{}</dt><dd>{e_base}</dd></div>\
         <div><dt>{}</dt><dd>{}</dd></div>\
         <div><dt>{}</dt><dd>{}</dd></div>",
        t.fact_url,
        t.fact_default,
        esc(&def.name),
        t.fact_count,
        cfg.registries.len(),
    );
    if let Some(d) = &cfg.domain {
        let _ = write!(
            o,
            "<div><dt>{}</dt><dd>*.{}{}</dd></div>",
            t.fact_hosts,
            esc(d),
            esc(&port)
        );
    }
    o.push_str("</dl>\n</div>\n</header>\n");

    // ---- contents ----
    let _ = write!(
        o,
        "<nav class=\"toc\" aria-label=\"{}\"><div class=\"wrap\">\
         <a href=\"#quick-start\">{}</a><a href=\"#registries\">{}</a>\
         <a href=\"#docker\">Docker</a><a href=\"#containerd\">containerd</a>\
         <a href=\"#podman\">Podman</a><a href=\"#kubernetes\">Kubernetes</a>\
         <a href=\"#login\">{}</a></div></nav>\n<main class=\"wrap\">\n",
        t.toc, t.h_quick, t.h_registries, t.h_login,
    );

    // ---- quick start ----
    let _ = write!(o, "<section id=\"quick-start\">\n<h2>{}</h2>\n", t.h_quick);
    if hub {
        let _ = writeln!(o, "<p>{}</p>", t.qs_hub);
        snippet(
            &mut o,
            t.terminal,
            &format!("docker pull {host}/library/alpine\ndocker pull {host}/alpine"),
        );
    } else {
        let _ = writeln!(
            o,
            "<p>{}</p>",
            fill(t.qs_default, &[("default", &esc(&def.name))])
        );
        snippet(
            &mut o,
            t.terminal,
            &format!("docker pull {host}/{}", sample_repo(def)),
        );
    }
    if let Some((_, r)) = other {
        let _ = writeln!(o, "<p>{}</p>", t.qs_prefix);
        snippet(
            &mut o,
            t.terminal,
            &format!("docker pull {host}/{}/{}", r.name, sample_repo(r)),
        );
    }
    if let Some((h, r)) = &host_example {
        let _ = writeln!(o, "<p>{}</p>", t.qs_host);
        snippet(
            &mut o,
            t.terminal,
            &format!("docker pull {h}/{}", sample_repo(r)),
        );
    }
    o.push_str("</section>\n");

    // ---- registries ----
    let with_hosts = !cfg.host_routes.is_empty();
    let _ = write!(
        o,
        "<section id=\"registries\">\n<h2>{}</h2>\n<p>{}</p>\n\
         <div class=\"table\"><table>\n<thead><tr><th>{}</th><th>{}</th>",
        t.h_registries, t.reg_intro, t.th_registry, t.th_pull,
    );
    if with_hosts {
        let _ = write!(o, "<th>{}</th>", t.th_host);
    }
    o.push_str("<th>containerd</th></tr></thead>\n<tbody>\n");
    for (i, r) in cfg.registries.iter().enumerate() {
        let name = esc(&r.name);
        let _ = write!(o, "<tr><td class=\"reg\"><code>{name}</code>");
        if r.default {
            let _ = write!(o, "<span class=\"badge\">{}</span>", t.badge_default);
        }
        o.push_str("</td><td>");
        if r.default {
            let _ = write!(o, "<code>{e_host}/…</code><br>");
        }
        let _ = write!(o, "<code>{e_host}/{name}/…</code>");
        o.push_str("</td>");
        if with_hosts {
            let hosts = routes_of(i);
            if hosts.is_empty() {
                o.push_str("<td class=\"none\">—</td>");
            } else {
                let cells: Vec<String> = hosts
                    .iter()
                    .map(|h| format!("<code>{}</code>", esc(h)))
                    .collect();
                let _ = write!(o, "<td>{}</td>", cells.join("<br>"));
            }
        }
        let _ = writeln!(o, "<td><code>?ns={name}</code></td></tr>");
    }
    o.push_str("</tbody></table></div>\n</section>\n");

    // ---- docker ----
    let _ = write!(o, "<section id=\"docker\">\n<h2>Docker</h2>\n");
    if hub {
        let _ = writeln!(o, "<p>{}</p>", t.docker_intro);
        let mut json = format!("{{\n  \"registry-mirrors\": [\"{base}\"]");
        if insecure {
            let _ = write!(json, ",\n  \"insecure-registries\": [\"{host}\"]");
        }
        json.push_str("\n}");
        snippet(&mut o, "/etc/docker/daemon.json", &json);
        snippet(&mut o, t.terminal, "sudo systemctl restart docker");
        if insecure {
            let _ = writeln!(o, "<p class=\"note\">{}</p>", t.docker_insecure);
        }
        let _ = writeln!(o, "<p class=\"note\">{}</p>", t.docker_hub_only);
    } else {
        let _ = writeln!(o, "<p>{}</p>", t.docker_not_hub);
    }
    o.push_str("</section>\n");

    // ---- containerd ----
    let _ = write!(
        o,
        "<section id=\"containerd\">\n<h2>containerd</h2>\n<p>{}</p>\n",
        t.containerd_intro
    );
    for r in std::iter::once(def).chain(other.map(|(_, r)| r)) {
        snippet(
            &mut o,
            &format!("/etc/containerd/certs.d/{}/hosts.toml", r.name),
            &format!(
                "server = \"{}\"\n\n[host.\"{base}\"]\n  capabilities = [\"pull\", \"resolve\"]",
                registry_server(r)
            ),
        );
    }
    let _ = writeln!(o, "<p>{}</p>", t.containerd_ctr);
    snippet(
        &mut o,
        t.terminal,
        &format!(
            "sudo ctr images pull --hosts-dir /etc/containerd/certs.d {}/{}:latest",
            def.name,
            sample_repo(def)
        ),
    );
    o.push_str("</section>\n");

    // ---- podman ----
    let _ = write!(
        o,
        "<section id=\"podman\">\n<h2>Podman / CRI-O</h2>\n<p>{}</p>\n",
        t.podman_intro
    );
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
    snippet(&mut o, "/etc/containers/registries.conf", conf.trim_end());
    let _ = writeln!(o, "<p class=\"note\">{}</p>", t.podman_note);
    o.push_str("</section>\n");

    // ---- kubernetes ----
    let _ = write!(
        o,
        "<section id=\"kubernetes\">\n<h2>Kubernetes</h2>\n<p>{}</p>\n",
        t.k8s_intro
    );
    snippet(
        &mut o,
        "/etc/containerd/config.toml",
        "# containerd 1.x (version = 2)\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n\n\
         # containerd 2.x (version = 3)\n\
         [plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d\"",
    );
    let _ = writeln!(o, "<p class=\"note\">{}</p>", t.k8s_mirrors_note);
    let _ = writeln!(o, "<p>{}</p>", t.k8s_hosts);
    let names: Vec<&str> = cfg.registries.iter().map(|r| r.name.as_str()).collect();
    snippet(
        &mut o,
        t.terminal,
        &format!(
            "{}\n  sudo mkdir -p \"/etc/containerd/certs.d/$r\"\n  \
             sudo tee \"/etc/containerd/certs.d/$r/hosts.toml\" >/dev/null <<EOF\n\
             [host.\"{base}\"]\n  capabilities = [\"pull\", \"resolve\"]\nEOF\ndone\n\
             sudo systemctl restart containerd",
            for_loop(&names)
        ),
    );
    let _ = writeln!(o, "<p>{}</p>", t.k8s_kubelet);
    snippet(
        &mut o,
        t.terminal,
        &format!("sudo crictl pull {}/{}:latest", def.name, sample_repo(def)),
    );
    o.push_str("</section>\n");

    // ---- login ----
    let _ = write!(
        o,
        "<section id=\"login\">\n<h2>{}</h2>\n<p>{}</p>\n",
        t.h_login, t.login_intro
    );
    let mut cmds = format!("docker login {host}\npodman login {host}");
    if let Some((h, _)) = &host_example {
        let _ = write!(cmds, "\ndocker login {h}");
    }
    snippet(&mut o, t.terminal, &cmds);
    if host_example.is_some() {
        let _ = writeln!(o, "<p class=\"note\">{}</p>", t.login_host_note);
    }
    o.push_str("</section>\n</main>\n");

    // ---- footer, copy buttons ----
    let _ = write!(
        o,
        "<footer class=\"wrap\">{}</footer>\n<script>{}</script>\n</body>\n</html>\n",
        fill(t.footer, &[("api", &format!("{e_base}/v2/"))]),
        COPY_JS
            .replace("%COPY%", t.copy)
            .replace("%COPIED%", t.copied),
    );
    o
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

/// A captioned, copyable snippet; `caption` and `text` are plain text.
fn snippet(o: &mut String, caption: &str, text: &str) {
    let _ = writeln!(
        o,
        "<figure><figcaption>{}</figcaption><pre><code>{}</code></pre></figure>",
        esc(caption),
        esc(text)
    );
}

/// Replaces `{key}` in a trusted template with already-escaped values.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in values {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

fn esc(s: &str) -> String {
    html_escape(s)
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

/// The page's words. Fields are trusted HTML; `{key}`s are filled with
/// escaped values.
struct Text {
    title: &'static str,
    brand_sub: &'static str,
    eyebrow: &'static str,
    lead_one: &'static str,
    lead_many: &'static str,
    fact_url: &'static str,
    fact_default: &'static str,
    fact_count: &'static str,
    fact_hosts: &'static str,
    toc: &'static str,
    terminal: &'static str,
    h_quick: &'static str,
    qs_hub: &'static str,
    qs_default: &'static str,
    qs_prefix: &'static str,
    qs_host: &'static str,
    h_registries: &'static str,
    reg_intro: &'static str,
    th_registry: &'static str,
    th_pull: &'static str,
    th_host: &'static str,
    badge_default: &'static str,
    docker_intro: &'static str,
    docker_insecure: &'static str,
    docker_hub_only: &'static str,
    docker_not_hub: &'static str,
    containerd_intro: &'static str,
    containerd_ctr: &'static str,
    podman_intro: &'static str,
    podman_note: &'static str,
    k8s_intro: &'static str,
    k8s_mirrors_note: &'static str,
    k8s_hosts: &'static str,
    k8s_kubelet: &'static str,
    h_login: &'static str,
    login_intro: &'static str,
    login_host_note: &'static str,
    footer: &'static str,
    copy: &'static str,
    copied: &'static str,
}

const EN: Text = Text {
    title: "{host} · container registry mirror",
    brand_sub: "registry mirror",
    eyebrow: "Container registry mirror",
    lead_one: "A read-only pull-through mirror for {default}. Point Docker, containerd, \
        Podman or Kubernetes at it, or put its address in front of an image name.",
    lead_many: "A read-only pull-through mirror for {default} and {n} other registries. \
        Point Docker, containerd, Podman or Kubernetes at it, or put its address in front \
        of an image name.",
    fact_url: "Mirror URL",
    fact_default: "Default registry",
    fact_count: "Registries",
    fact_hosts: "Per-registry hosts",
    toc: "Contents",
    terminal: "Terminal",
    h_quick: "Quick start",
    qs_hub: "Docker Hub images, with or without <code>library/</code>:",
    qs_default: "Images of the default registry, <code>{default}</code>:",
    qs_prefix: "Any other registry: put its name after the mirror's host.",
    qs_host: "Or use the registry's own host name on this mirror:",
    h_registries: "Registries",
    reg_intro: "Each registry is reached by its path prefix, by containerd's \
        <code>?ns=</code> parameter, or by its own host name where one is set. \
        Requests that name no registry go to the default one.",
    th_registry: "Registry",
    th_pull: "Pull as",
    th_host: "Host",
    badge_default: "default",
    docker_intro: "To pull Docker Hub images through the mirror without changing their \
        names (<code>docker pull alpine</code>), add it to \
        <code>/etc/docker/daemon.json</code> and restart Docker:",
    docker_insecure: "This mirror speaks plain HTTP, so it is also listed under \
        <code>insecure-registries</code>.",
    docker_hub_only: "<code>registry-mirrors</code> applies to Docker Hub only. For other \
        registries use the path prefix or host names above.",
    docker_not_hub: "Docker's <code>registry-mirrors</code> setting applies to Docker Hub \
        only, which is not this mirror's default registry: put the mirror's host in front \
        of image names instead, as in the quick start.",
    containerd_intro: "containerd reads mirror settings per registry from \
        <code>/etc/containerd/certs.d/&lt;registry&gt;/hosts.toml</code>. It tells the \
        mirror which registry it means (<code>?ns=</code>), so the same URL serves every \
        registry in the table.",
    containerd_ctr: "<code>ctr</code> needs the directory spelled out \
        (<code>nerdctl</code> reads it by default):",
    podman_intro: "Podman, Buildah, Skopeo and CRI-O read \
        <code>/etc/containers/registries.conf</code>; image names stay unchanged. \
        The default registry is mirrored at the root, others under their name:",
    podman_note: "Log in and pull as usual: <code>podman pull docker.io/library/alpine</code>.",
    k8s_intro: "On every node that runs containerd, let the CRI plugin use \
        <code>certs.d</code>. In <code>/etc/containerd/config.toml</code>, use the section \
        that matches your containerd version:",
    k8s_mirrors_note: "Remove any old <code>registry.mirrors</code> entries from that \
        section: containerd refuses them together with <code>config_path</code>.",
    k8s_hosts: "Then write a <code>hosts.toml</code> for each registry and restart \
        containerd:",
    k8s_kubelet: "The kubelet pulls through containerd, so pods keep their usual image \
        names and their images come through the mirror. Check a node with \
        <code>crictl</code>:",
    h_login: "Log in",
    login_intro: "The mirror keeps no credentials: a login is passed on to the \
        registry's own token service. Log in to the host you pull from:",
    login_host_note: "On a registry's own host name, the login is for that registry.",
    footer: "Served by <b>ocirelay</b> · read-only: pushes are refused · registry API at \
        <code>{api}</code>",
    copy: "Copy",
    copied: "Copied",
};

const ZH: Text = Text {
    title: "{host} · 容器镜像加速",
    brand_sub: "镜像加速",
    eyebrow: "容器镜像加速服务",
    lead_one: "只读的拉取镜像服务，加速 {default}。可在 Docker、containerd、Podman 或 \
        Kubernetes 中把它配置为镜像源，也可以直接在镜像名前加上本站地址拉取。",
    lead_many: "只读的拉取镜像服务，加速 {default} 及其他 {n} 个镜像仓库。可在 \
        Docker、containerd、Podman 或 Kubernetes 中把它配置为镜像源，也可以直接在镜像名前\
        加上本站地址拉取。",
    fact_url: "镜像地址",
    fact_default: "默认仓库",
    fact_count: "仓库数量",
    fact_hosts: "仓库专属域名",
    toc: "目录",
    terminal: "终端",
    h_quick: "快速开始",
    qs_hub: "Docker Hub 镜像，<code>library/</code> 可写可不写：",
    qs_default: "默认仓库 <code>{default}</code> 的镜像：",
    qs_prefix: "其他仓库：在本站地址后加上仓库名。",
    qs_host: "也可以使用该仓库在本站的专属域名：",
    h_registries: "支持的镜像仓库",
    reg_intro: "每个仓库都可以通过路径前缀或 containerd 的 <code>?ns=</code> \
        参数访问，设置了专属域名的也可以通过域名访问。未指明仓库的请求由默认仓库处理。",
    th_registry: "仓库",
    th_pull: "拉取地址",
    th_host: "专属域名",
    badge_default: "默认",
    docker_intro: "如需在不改镜像名的情况下（<code>docker pull alpine</code>）通过本站拉取 \
        Docker Hub 镜像，在 <code>/etc/docker/daemon.json</code> 中加入以下配置并重启 \
        Docker：",
    docker_insecure: "本站使用未加密的 HTTP，因此同时列入 <code>insecure-registries</code>。",
    docker_hub_only: "<code>registry-mirrors</code> 只对 Docker Hub \
        生效；其他仓库请使用上文的路径前缀或专属域名。",
    docker_not_hub: "Docker 的 <code>registry-mirrors</code> 只对 Docker Hub \
        生效，而 Docker Hub 不是本站的默认仓库：请像“快速开始”中那样，在镜像名前加上本站地址。",
    containerd_intro: "containerd 按仓库读取 \
        <code>/etc/containerd/certs.d/&lt;仓库&gt;/hosts.toml</code> 中的镜像配置，并通过 \
        <code>?ns=</code> 告诉镜像站要访问哪个仓库，因此表中所有仓库都可以使用同一个地址。",
    containerd_ctr: "使用 <code>ctr</code> 时需要指定该目录（<code>nerdctl</code> 默认读取）：",
    podman_intro: "Podman、Buildah、Skopeo 和 CRI-O 读取 \
        <code>/etc/containers/registries.conf</code>，镜像名保持不变。默认仓库对应本站根路径，\
        其他仓库对应以仓库名开头的路径：",
    podman_note: "之后照常登录和拉取：<code>podman pull docker.io/library/alpine</code>。",
    k8s_intro: "在每个运行 containerd 的节点上，让 CRI 插件使用 <code>certs.d</code>。在 \
        <code>/etc/containerd/config.toml</code> 中按 containerd 版本选择对应的配置段：",
    k8s_mirrors_note: "同时删除该配置段中旧的 <code>registry.mirrors</code> 设置：它们不能与 \
        <code>config_path</code> 同时使用。",
    k8s_hosts: "然后为每个仓库写入 <code>hosts.toml</code> 并重启 containerd：",
    k8s_kubelet:
        "kubelet 通过 containerd 拉取镜像，因此 Pod 中的镜像名无需修改，镜像都会经由本站拉取。\
        可在节点上用 <code>crictl</code> 验证：",
    h_login: "登录",
    login_intro:
        "本站不保存任何凭据：登录信息会直接转交给上游仓库自己的认证服务。请登录你拉取时使用的地址：",
    login_host_note: "在仓库专属域名上登录，即登录该仓库。",
    footer: "由 <b>ocirelay</b> 提供 · 只读：不支持推送 · 仓库 API 地址 <code>{api}</code>",
    copy: "复制",
    copied: "已复制",
};

/// Adds a copy button to each snippet. Clipboard API where allowed (https,
/// localhost), else select the text and `execCommand`.
const COPY_JS: &str = r#"document.querySelectorAll("figure").forEach(function(f){var p=f.querySelector("pre"),b=document.createElement("button");b.type="button";b.className="copy";b.textContent="%COPY%";function done(){b.textContent="%COPIED%";setTimeout(function(){b.textContent="%COPY%"},1500)}b.onclick=function(){var t=p.innerText;if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(t).then(done)}else{var r=document.createRange(),s=getSelection();r.selectNodeContents(p);s.removeAllRanges();s.addRange(r);try{if(document.execCommand("copy"))done()}catch(e){}}};f.appendChild(b)});"#;

const CSS: &str = r#"
:root{--bg:#f4f6f9;--fg:#1b2330;--muted:#5d6776;--card:#fff;--line:#e2e7ee;--accent:#2563eb;--chip:#eef2f7;--code:#0f172a;--code-fg:#e5e9f0;--cap:#1c2638;--cap-fg:#9aa7bb}
@media (prefers-color-scheme:dark){:root{--bg:#0b1120;--fg:#e3e8ef;--muted:#9aa5b5;--card:#111a2b;--line:#223049;--accent:#7aa7ff;--chip:#1b2740;--code:#060b16;--cap:#141d2f}}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.6 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans","PingFang SC","Hiragino Sans GB","Microsoft YaHei","Noto Sans CJK SC","Source Han Sans SC","WenQuanYi Micro Hei",sans-serif}
code,pre,.facts dd,h1,figcaption{font-family:ui-monospace,SFMono-Regular,"SF Mono",Menlo,Consolas,"Liberation Mono","DejaVu Sans Mono",monospace}
code{font-size:.875em}
a{color:var(--accent)}
.wrap{max-width:70rem;margin:0 auto;padding:0 1.5rem}
.hero{background:#111b33;color:#f8fafc;padding:0 0 2.5rem}
.bar{display:flex;align-items:center;justify-content:space-between;gap:1rem;padding:1rem 0 2rem}
.brand{color:#fff;text-decoration:none;font-weight:700;font-size:1.1rem;letter-spacing:.01em}
.brand span{color:#94a3b8;font-weight:400;margin-left:.6rem;font-size:.95rem}
.lang{display:flex;gap:.25rem;background:rgba(255,255,255,.08);border-radius:999px;padding:.2rem}
.lang a{color:#cbd5e1;text-decoration:none;font-size:.85rem;padding:.2rem .8rem;border-radius:999px}
.lang a[aria-current]{background:#f8fafc;color:#0f172a;font-weight:600}
.eyebrow{margin:0;color:#93c5fd;font-size:.8rem;font-weight:600;letter-spacing:.1em;text-transform:uppercase}
h1{margin:.3rem 0 .8rem;font-size:2.4rem;line-height:1.2;font-weight:700;overflow-wrap:anywhere}
.lead{margin:0 0 1.75rem;max-width:48rem;color:#cbd5e1;font-size:1.075rem}
.lead b{color:#fff}
.facts{display:flex;flex-wrap:wrap;gap:.75rem;margin:0}
.facts div{flex:1 1 auto;min-width:10rem;background:rgba(255,255,255,.06);border:1px solid rgba(255,255,255,.12);border-radius:.6rem;padding:.65rem .9rem}
.facts dt{color:#94a3b8;font-size:.75rem;letter-spacing:.06em;text-transform:uppercase}
.facts dd{margin:.1rem 0 0;color:#f8fafc;font-size:.95rem;overflow-wrap:anywhere}
.toc{background:var(--card);border-bottom:1px solid var(--line);position:sticky;top:0;z-index:1}
.toc .wrap{display:flex;flex-wrap:wrap;gap:.2rem 1.4rem;padding-top:.7rem;padding-bottom:.7rem}
.toc a{color:var(--muted);text-decoration:none;font-size:.92rem}
.toc a:hover{color:var(--accent)}
main{padding-top:1.75rem;padding-bottom:.5rem}
section{background:var(--card);border:1px solid var(--line);border-radius:.8rem;padding:1.4rem 1.6rem;margin:0 0 1.25rem;scroll-margin-top:3.5rem}
h2{margin:0 0 .6rem;font-size:1.3rem;line-height:1.3}
p{margin:.6rem 0}
.note{color:var(--muted);font-size:.92rem}
p code,td code{background:var(--chip);border-radius:.3rem;padding:.08rem .35rem}
figure{position:relative;margin:.7rem 0 1.1rem;background:var(--code);border-radius:.6rem;overflow:hidden}
figcaption{background:var(--cap);color:var(--cap-fg);font-size:.78rem;padding:.5rem 5rem .5rem 1rem;overflow-wrap:anywhere}
pre{margin:0;padding:.9rem 1rem;overflow-x:auto;color:var(--code-fg);font-size:.9rem;line-height:1.55}
pre code{font-size:inherit}
.copy{position:absolute;top:.28rem;right:.45rem;font:inherit;font-size:.75rem;color:#cbd5e1;background:rgba(255,255,255,.08);border:1px solid rgba(255,255,255,.16);border-radius:.35rem;padding:.12rem .6rem;cursor:pointer}
.copy:hover{background:rgba(255,255,255,.16)}
.table{overflow-x:auto;margin-top:.9rem}
table{border-collapse:collapse;width:100%;font-size:.88rem}
th,td{text-align:left;vertical-align:top;padding:.5rem .6rem;border-bottom:1px solid var(--line);white-space:nowrap}
th{color:var(--muted);font-size:.75rem;font-weight:600;letter-spacing:.06em;text-transform:uppercase}
td{line-height:1.9}
tbody tr:last-child td{border-bottom:0}
td.none{color:var(--muted)}
td.reg code{background:none;padding:0;font-weight:600;font-size:.95em}
.badge{display:inline-block;margin-left:.5rem;padding:0 .5rem;border-radius:999px;background:#dbeafe;color:#1d4ed8;font-size:.72rem;font-weight:600;line-height:1.6;vertical-align:.08em}
footer{color:var(--muted);font-size:.88rem;padding-bottom:2.5rem}
footer code{font-size:.85em}
@media (max-width:40rem){.wrap{padding:0 .8rem}h1{font-size:1.65rem}.bar{padding-bottom:1.4rem}.brand span{display:none}.toc{position:static}section{padding:1.1rem .9rem;border-radius:.6rem}pre{font-size:.82rem;padding:.8rem .85rem}}
"#;

#[cfg(test)]
mod tests {
    use super::*;

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
        let p = page(&c, "https://mirror.example.com", Lang::En);
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
        let zh = page(&c, "https://mirror.example.com", Lang::Zh);
        assert!(zh.contains("<html lang=\"zh-CN\">") && zh.contains("快速开始"));
    }

    #[test]
    fn plain_http_mirror_gets_insecure_flags_and_ports_on_host_routes() {
        let c = cfg("domain = \"m.test\"\n");
        let p = page(&c, "http://m.test:5000", Lang::En);
        assert!(p.contains("&quot;insecure-registries&quot;: [&quot;m.test:5000&quot;]"));
        assert!(p.contains("insecure = true"));
        assert!(p.contains("docker pull ghcr.m.test:5000/owner/img"));
    }

    #[test]
    fn other_default_registry_and_single_registry() {
        let c = cfg(
            "builtin_registries = false\n[[registry]]\nname = \"r.example\"\nupstream = \"https://r.example\"\n",
        );
        let p = page(&c, "https://m.example", Lang::En);
        assert!(p.contains("docker pull m.example/owner/img"));
        assert!(!p.contains("/etc/docker/daemon.json"));
        assert!(!p.contains("ghcr.io"));
    }

    #[test]
    fn inserted_values_are_escaped() {
        let c = cfg("");
        let p = page(&c, "http://<script>alert(1)</script>\"'&", Lang::En);
        assert!(!p.contains("<script>alert"), "unescaped");
        assert!(!p.contains("alert(1)</script>\"'&"));
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
    }
}
