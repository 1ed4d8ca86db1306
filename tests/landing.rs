//! The landing page at `GET /`, served by the real ocirelay binary: plain
//! HTTP checks (status, type, language choice, host and registries filled
//! in, escaping), then a real browser: headless Chromium renders it, its DOM
//! text is checked, and screenshots are taken and checked.
//!
//! Chromium (Debian package `chromium`) is required; set `CHROMIUM` to use
//! another binary. With `OCIRELAY_UPDATE_SCREENSHOTS=1` the screenshots are
//! also written to `tests/landing/landing-{en,zh}.png` (the README's).

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The built-in registries, each also on `<prefix>.mirror.example.com`.
const DOMAIN_CONFIG: &str =
    "listen = [\"127.0.0.1:0\"]\nworkers = 1\ndomain = \"mirror.example.com\"\n";

const BUILTIN: [&str; 11] = [
    "docker.io",
    "quay.io",
    "gcr.io",
    "k8s.gcr.io",
    "registry.k8s.io",
    "ghcr.io",
    "docker.cloudsmith.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
    "nvcr.io",
    "docker.elastic.co",
];

fn get(relay: &Relay, target: &str, headers: &[(&str, &str)]) -> Response {
    let r = relay.client().get_with(target, headers).unwrap();
    assert_eq!(r.status, 200, "GET {target}: {}", r.text());
    r
}

/// Text of an HTML body with the given entities decoded (the page only
/// uses these).
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The text a person sees: the body without tags, scripts and styles.
fn visible_text(html: &str) -> String {
    let body = html.split_once("<body").map_or(html, |(_, b)| b);
    let mut out = String::new();
    let mut rest = body;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        for skip in ["<script", "<style"] {
            if rest.starts_with(skip) {
                let close = format!("</{}>", &skip[1..]);
                rest = rest.find(&close).map_or("", |j| &rest[j..]);
            }
        }
        rest = rest.find('>').map_or("", |j| &rest[j + 1..]);
    }
    out.push_str(rest);
    unescape(&out)
}

#[test]
fn english_html_by_default_with_the_host_the_client_used() {
    let relay = Relay::start_with(DOMAIN_CONFIG);
    let r = get(&relay, "/", &[("Host", "mirror.example.com")]);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = r.text();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains("<html lang=\"en\">"));
    assert!(html.contains("<meta name=\"viewport\""));
    let text = visible_text(&html);
    for s in [
        "Quick start",
        "docker pull mirror.example.com/library/alpine",
        "docker pull mirror.example.com/alpine",
        "docker pull mirror.example.com/ghcr.io/owner/img",
        "docker pull ghcr.mirror.example.com/owner/img",
        // dockerd
        "/etc/docker/daemon.json",
        "\"registry-mirrors\": [\"http://mirror.example.com\"]",
        "\"insecure-registries\": [\"mirror.example.com\"]",
        // containerd, one file per registry
        "/etc/containerd/certs.d/docker.io/hosts.toml",
        "server = \"https://registry-1.docker.io\"",
        "/etc/containerd/certs.d/ghcr.io/hosts.toml",
        "server = \"https://ghcr.io\"",
        "[host.\"http://mirror.example.com\"]\n  capabilities = [\"pull\", \"resolve\"]",
        // podman
        "/etc/containers/registries.conf",
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"mirror.example.com\"",
        "[[registry.mirror]]\nlocation = \"mirror.example.com/ghcr.io\"",
        // kubernetes
        "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"",
        "[plugins.\"io.containerd.cri.v1.images\".registry]",
        "sudo systemctl restart containerd",
        "kubelet",
        // login
        "docker login mirror.example.com",
        "podman login mirror.example.com",
    ] {
        assert!(text.contains(s), "missing {s:?} in:\n{text}");
    }
    // The language switch.
    assert!(html.contains("href=\"?lang=zh\"") && html.contains("href=\"?lang=en\""));
    // Offline: nothing is loaded from anywhere.
    for s in ["src=", "<link", "@import", "url(", "https://fonts"] {
        assert!(!html.contains(s), "external resource {s:?}");
    }
}

#[test]
fn every_registry_is_listed_with_its_routes() {
    let relay = Relay::start_with(&format!(
        "{DOMAIN_CONFIG}[[registry]]\nname = \"registry.corp.test\"\nupstream = \"https://registry.corp.test\"\nhosts = [\"cr.corp.test\"]\n"
    ));
    let html = get(&relay, "/", &[("Host", "mirror.example.com:8080")]).text();
    let text = visible_text(&html);
    for name in BUILTIN.iter().chain(&["registry.corp.test"]) {
        for s in [
            format!("mirror.example.com:8080/{name}/…"),
            format!("?ns={name}"),
        ] {
            assert!(text.contains(&s), "missing {s}");
        }
    }
    // Host routes carry the port the client used.
    for h in [
        "docker.mirror.example.com:8080",
        "ghcr.mirror.example.com:8080",
        "k8s-gcr.mirror.example.com:8080",
        "k8s.mirror.example.com:8080",
        "cr.corp.test:8080",
    ] {
        assert!(text.contains(h), "missing host route {h}");
    }
    // One default, and it is docker.io.
    assert_eq!(html.matches("class=\"badge\"").count(), 1);
    let row = html.find("<code>docker.io</code><span class=\"badge\">default</span>");
    assert!(row.is_some(), "docker.io is the default");
    assert!(text.contains("for r in docker.io quay.io"));
    assert!(text.contains("registry.corp.test; do"));
}

#[test]
fn chinese_for_a_zh_accept_language_and_the_query_wins() {
    let relay = Relay::start_with(DOMAIN_CONFIG);
    let zh = get(&relay, "/", &[("Accept-Language", "zh-CN,zh;q=0.9")]).text();
    assert!(zh.contains("<html lang=\"zh-CN\">"));
    let text = visible_text(&zh);
    for s in ["快速开始", "支持的镜像仓库", "登录", "默认"] {
        assert!(text.contains(s), "missing {s}");
    }
    // Same commands in either language; the config names its domain, so a
    // client that came by address is shown the domain (with the port it used).
    assert!(text.contains("docker pull mirror.example.com:"));
    assert!(!text.contains("docker pull 127.0.0.1"));

    let en = get(
        &relay,
        "/?lang=en",
        &[("Accept-Language", "zh-CN,zh;q=0.9")],
    )
    .text();
    assert!(en.contains("<html lang=\"en\">") && en.contains("Quick start"));
    assert!(!en.contains("快速开始"));
    let zh = get(&relay, "/?lang=zh", &[("Accept-Language", "en-US,en")]).text();
    assert!(zh.contains("<html lang=\"zh-CN\">"));
    let en = get(
        &relay,
        "/",
        &[("Accept-Language", "en-US,en;q=0.9,zh;q=0.8")],
    )
    .text();
    assert!(en.contains("<html lang=\"en\">"));
}

#[test]
fn public_url_wins_over_the_host_header() {
    let relay = Relay::start_with(&format!(
        "{DOMAIN_CONFIG}public_url = \"https://hub.example.net\"\n"
    ));
    let text = visible_text(&get(&relay, "/", &[("Host", "other.example")]).text());
    assert!(text.contains("docker pull hub.example.net/alpine"));
    assert!(text.contains("\"registry-mirrors\": [\"https://hub.example.net\"]"));
    assert!(!text.contains("other.example"));
    assert!(
        !text.contains("insecure"),
        "an https mirror needs no insecure flags"
    );
}

#[test]
fn head_has_the_headers_and_no_body() {
    let relay = Relay::start_with(DOMAIN_CONFIG);
    let mut c = relay.client();
    let get = c.get("/").unwrap();
    let head = c.head("/").unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-type"), get.header("content-type"));
    assert_eq!(head.content_length(), Some(get.body.len() as u64));
}

#[test]
fn request_values_are_escaped() {
    let relay = Relay::start_with(DOMAIN_CONFIG);
    let mut c = relay.client();
    let r = c.get("/?lang=<script>alert(2)</script>").unwrap();
    assert_eq!(r.status, 200);
    let html = r.text();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(!html.contains("alert(2)"), "the query is not reflected");
    // The only script is the page's own copy-button script.
    assert_eq!(html.matches("<script").count(), 1);
    // A Host with a quote or angle bracket is no host (RFC 9112 3.2): 400,
    // and never a page built on it.
    for evil in ["<script>alert(1)</script>", "a\"onmouseover=\"x"] {
        let mut c = relay.client();
        let r = c.get_with("/", &[("Host", evil)]).unwrap();
        assert_eq!(r.status, 400, "{evil}");
        assert!(!r.text().contains("onmouseover") && !r.text().contains("<script"));
    }
}

#[test]
fn an_unknown_host_gets_the_configured_domain() {
    let relay = Relay::start_with(DOMAIN_CONFIG);
    let text = visible_text(&get(&relay, "/", &[("Host", "evil.example")]).text());
    assert!(text.contains("docker pull mirror.example.com:"), "{text}");
    assert!(!text.contains("evil.example"), "{text}");
}

/// The table row of `registry` in the page's HTML.
fn registry_row<'a>(html: &'a str, registry: &str) -> &'a str {
    let start = html
        .find(&format!("<td class=\"reg\"><code>{registry}</code>"))
        .unwrap_or_else(|| panic!("no row for {registry}"));
    let len = html[start..].find("</tr>").unwrap();
    &html[start..start + len]
}

#[test]
fn the_page_shows_the_cache_and_each_upstream_as_they_are() {
    let hub = hub();
    let relay = Relay::start_with(&config_for(&hub, "[cache]\nenabled = true\n"));
    let page = |lang: &str| get(&relay, &format!("/?lang={lang}"), &[]).text();
    let html = page("en");
    assert!(html.contains("<dt>Hit ratio since start</dt><dd>no requests yet</dd>"));
    assert!(registry_row(&html, "docker.io").contains("not asked yet"));

    pull_alpine_layer(&hub, &relay, 2);
    // A miss, then a hit (counted as each request finishes).
    let mut html = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            html = page("en");
            html.contains("<dt>Hit ratio since start</dt><dd>50% (1 of 2)</dd>")
        }),
        "{html}"
    );
    assert!(html.contains("<dt>Cache</dt><dd>"));
    assert!(html.contains(" of 10.0 GiB</dd>") || html.contains("measuring…"));
    let row = registry_row(&html, "docker.io");
    assert!(row.contains("<span class=\"up ok\">"), "{row}");
    assert!(row.contains("upstream answering · "), "{row}");
    assert!(registry_row(&html, "ghcr.io").contains("not asked yet"));
    let zh = page("zh");
    assert!(zh.contains("50%（2 次中 1 次）"));
    assert!(registry_row(&zh, "docker.io").contains("上游正常 · "));

    hub.set_down(Host::Registry, true).unwrap();
    let r = relay
        .client()
        .get_with(
            "/v2/library/alpine/tags/list",
            &[("Authorization", "Bearer x")],
        )
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    let html = page("en");
    let row = registry_row(&html, "docker.io");
    assert!(row.contains("<span class=\"up failing\">"), "{row}");
    assert!(row.contains("upstream failing (connect error) · "), "{row}");
}

// ---- headless Chromium ----

/// The Chromium binary, or a failure that says how to get one.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "Chromium is required for the landing page test and was not found \
         (looked for /usr/bin/chromium, /usr/bin/chromium-browser, /usr/bin/google-chrome). \
         Install it (Debian: `apt-get install chromium fonts-noto-cjk`) or set CHROMIUM=/path/to/chrome."
    );
}

/// Runs headless Chromium with `args` and `url` (`mirror.example.com` goes to
/// the relay); returns stdout. Killed after 30 s.
fn run_chromium(relay: &Relay, args: &[String], url: &str) -> String {
    let profile = tempdir::Dir::new("chromium");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-proxy-server",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
        ])
        .arg(format!(
            "--host-resolver-rules=MAP mirror.example.com:80 {}",
            relay.http
        ))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromium().display()));
    let pgid = child.id() as i32;
    let reader = |mut s: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Chromium's helpers are in the group we made for it: end them too.
    // SAFETY: kill(2) on our own child's process group id.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        None => panic!("chromium did not finish within 30 s: {err}"),
        Some(s) if !s.success() => panic!("chromium failed ({s}): {err}"),
        Some(_) => out,
    }
}

/// The DOM of `url` after Chromium loaded it (scripts run).
fn dump_dom(relay: &Relay, url: &str, accept_lang: &str) -> String {
    run_chromium(
        relay,
        &["--dump-dom".into(), format!("--accept-lang={accept_lang}")],
        url,
    )
}

const SHOT_W: u32 = 1280;
const SHOT_H: u32 = 1800;

/// A `SHOT_W`x`SHOT_H` screenshot of `url` written to `file`; returns the PNG.
fn screenshot(relay: &Relay, url: &str, accept_lang: &str, file: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(file);
    run_chromium(
        relay,
        &[
            format!("--screenshot={}", file.display()),
            format!("--window-size={SHOT_W},{SHOT_H}"),
            format!("--accept-lang={accept_lang}"),
        ],
        url,
    );
    let png = std::fs::read(file)
        .unwrap_or_else(|e| panic!("chromium wrote no screenshot {}: {e}", file.display()));
    assert_eq!(png_dimensions(&png), (SHOT_W, SHOT_H), "{}", file.display());
    png
}

/// Width and height from a PNG's IHDR, checking the signature.
fn png_dimensions(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 33, "a PNG is longer than {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&png[12..16], b"IHDR", "IHDR first");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[test]
fn chromium_renders_the_page_in_both_languages() {
    let relay = Relay::start_with(DOMAIN_CONFIG);
    let url = "http://mirror.example.com/";

    let dom = dump_dom(&relay, url, "en-US,en");
    assert!(dom.contains("<html lang=\"en\">"), "{dom}");
    let text = visible_text(&dom);
    for s in [
        "mirror.example.com",
        "Quick start",
        "docker pull mirror.example.com/library/alpine",
        "docker pull mirror.example.com/alpine",
        "docker pull mirror.example.com/ghcr.io/owner/img",
        "docker pull ghcr.mirror.example.com/owner/img",
        "\"registry-mirrors\": [\"http://mirror.example.com\"]",
        "/etc/containerd/certs.d/docker.io/hosts.toml",
        "location = \"mirror.example.com/ghcr.io\"",
        "docker login mirror.example.com",
    ] {
        assert!(text.contains(s), "rendered page lacks {s:?}:\n{text}");
    }
    for name in BUILTIN {
        assert!(text.contains(&format!("?ns={name}")), "{name} not listed");
    }
    // Only there once the inline script ran: a copy button per snippet.
    let snippets = dom.matches("<figure>").count();
    assert!(snippets >= 10, "{snippets} snippets");
    assert_eq!(
        dom.matches("class=\"copy\">Copy</button>").count(),
        snippets
    );

    let dom = dump_dom(&relay, url, "zh-CN,zh");
    assert!(dom.contains("<html lang=\"zh-CN\">"));
    let text = visible_text(&dom);
    for s in [
        "快速开始",
        "支持的镜像仓库",
        "docker pull mirror.example.com/alpine",
    ] {
        assert!(text.contains(s), "rendered page lacks {s:?}");
    }
    assert!(dom.contains("class=\"copy\">复制</button>"));

    // The switch link wins over the browser's language.
    let dom = dump_dom(&relay, "http://mirror.example.com/?lang=en", "zh-CN,zh");
    assert!(dom.contains("<html lang=\"en\">"));
}

#[test]
fn chromium_screenshots() {
    // The README's pictures: an https mirror with the built-in registries,
    // docker.io served by the double, after a miss and a hit.
    let hub = hub();
    let relay = Relay::start_with(&format!(
        "{DOMAIN_CONFIG}public_url = \"https://mirror.example.com\"\n[cache]\nenabled = true\n{}",
        registry_block(&hub, "docker.io")
    ));
    let mut c = relay.client();
    // The realm is public_url's: its path asked of the relay.
    let challenge = c.get("/v2/library/alpine/manifests/latest").unwrap();
    let tok = token_from_challenge(&mut c, &challenge, None);
    let layer = hub.seeded().alpine.layers[0].digest.clone();
    for _ in 0..2 {
        let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{layer}"), &tok);
        assert_eq!(r.status, 200);
    }
    assert!(wait_until(Duration::from_secs(10), || get(
        &relay,
        "/",
        &[]
    )
    .text()
    .contains("50% (1 of 2)")));
    let tmp = tempdir::Dir::new("screenshots");
    let blank = screenshot(&relay, "about:blank", "en", &tmp.path().join("blank.png"));
    let update = std::env::var_os("OCIRELAY_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1");
    let dir = if update {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/landing")
    } else {
        tmp.path().to_path_buf()
    };
    std::fs::create_dir_all(&dir).unwrap();
    let mut shots = Vec::new();
    for (lang, accept) in [("en", "en-US,en"), ("zh", "zh-CN,zh")] {
        let file = dir.join(format!("landing-{lang}.png"));
        let png = screenshot(&relay, "http://mirror.example.com/", accept, &file);
        // Text, code blocks and the header compress far worse than an empty
        // page; a blank or failed render does not.
        assert!(
            png.len() > 8 * blank.len(),
            "{} looks blank: {} bytes, an empty page is {}",
            file.display(),
            png.len(),
            blank.len()
        );
        assert!(
            png.len() < 400 * 1024,
            "{} is {} bytes; keep it under 400 KB",
            file.display(),
            png.len()
        );
        shots.push(png);
    }
    assert_ne!(shots[0], shots[1], "English and Chinese look the same");
}
