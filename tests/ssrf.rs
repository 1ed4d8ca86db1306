//! No open proxy, no SSRF (issue 12, hardening item 5): nothing a client
//! sends (path prefix, `ns=`, Host, absolute-form target, token `realm`,
//! `scope` or form, `Location` or `Link` request headers) makes ocirelay
//! connect anywhere the config does not name. A canary listener on
//! loopback, named by every case in every way the case allows (IP literal,
//! `@`, `%2e%2e`, encoded slashes, IPv6 zone ids, overlong names), counts
//! the connections it gets: none. Also `redirect_private`: a registry that
//! refuses redirects to private addresses does not follow its upstream's
//! redirect to the (loopback) CDN.
//!
//! Loopback only; every wait is bounded; the canary's thread ends with the
//! test (non-blocking accepts, polled for a bounded time).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

/// A listener that counts the connections made to it.
struct Canary {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Canary {
    fn start() -> Canary {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: the test stops it, and it never outlives 5 minutes.
            for _ in 0..(5 * 60 * 100) {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                while l.accept().is_ok() {
                    h.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Canary {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn hits(&self) -> usize {
        // Give an accept that is under way its poll.
        std::thread::sleep(Duration::from_millis(30));
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every way a case names the canary.
fn spellings(c: SocketAddr) -> Vec<String> {
    let port = c.port();
    vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("user@127.0.0.1:{port}"),
        format!("127.0.0.1%3a{port}"),
        format!("2130706433:{port}"),
        format!("0x7f.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[fe80::1%25lo]:{port}"),
        format!("{}.localhost:{port}", "a".repeat(300)),
    ]
}

/// The requests of one spelling: (what, request bytes).
fn cases(s: &str) -> Vec<(String, Vec<u8>)> {
    // `Connection: close`: each exchange ends with the relay's close.
    let get = |target: &str, extra: &[(&str, &str)]| {
        request("GET", target, &[extra, &[("Connection", "close")]].concat())
    };
    let enc = s.replace('/', "%2f");
    let mut v = vec![
        (
            "path prefix".to_string(),
            get(&format!("/v2/{s}/library/alpine/manifests/latest"), &[]),
        ),
        (
            "path prefix, dot segments".into(),
            get(
                &format!("/v2/%2e%2e/%2e%2e/{s}/library/alpine/manifests/latest"),
                &[],
            ),
        ),
        (
            "path prefix, encoded slashes".into(),
            get(
                &format!("/v2/{enc}%2flibrary%2falpine/manifests/latest"),
                &[],
            ),
        ),
        (
            "ns=".into(),
            get(&format!("/v2/library/alpine/manifests/latest?ns={s}"), &[]),
        ),
        (
            "token realm".into(),
            get(
                &format!(
                    "/token?realm=http://{s}/token&service=x&scope=repository:library/alpine:pull"
                ),
                &[],
            ),
        ),
        (
            "token scope".into(),
            get(
                &format!("/token?service=registry.docker.io&scope=repository:{s}/x:pull"),
                &[],
            ),
        ),
        (
            "token path".into(),
            get(&format!("/token/{s}?scope=repository:x:pull"), &[]),
        ),
        (
            "Location and Link request headers".into(),
            get(
                "/v2/library/alpine/tags/list",
                &[
                    ("Location", &format!("http://{s}/")),
                    (
                        "Link",
                        &format!("<http://{s}/v2/x/tags/list>; rel=\"next\""),
                    ),
                    ("X-Forwarded-Host", s),
                    ("Forwarded", &format!("host={s}")),
                ],
            ),
        ),
    ];
    let form = format!("grant_type=password&realm=http://{s}/token&service=x&scope=repository%3A{s}%2Fx%3Apull&username=u&password=p");
    let mut post = format!(
        "POST /token HTTP/1.1\r\nHost: mirror.test\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        form.len()
    )
    .into_bytes();
    post.extend_from_slice(form.as_bytes());
    v.push(("token form".into(), post));
    // Host and absolute-form targets naming the canary (refused with 400
    // when the spelling is no plain host; otherwise served from the
    // configured upstream).
    v.push((
        "Host header".into(),
        format!("GET /v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: {s}\r\nConnection: close\r\n\r\n").into_bytes(),
    ));
    v.push((
        "absolute-form target".into(),
        format!("GET http://{s}/v2/library/alpine/manifests/latest HTTP/1.1\r\nHost: {s}\r\nConnection: close\r\n\r\n")
            .into_bytes(),
    ));
    v
}

#[test]
fn nothing_a_client_sends_reaches_an_address_the_config_does_not_name() {
    let hub = hub();
    let canary = Canary::start();
    // Two configs: one routing by path and `ns` only, one with a domain
    // (Host routing on).
    let plain = config_for(&hub, "");
    let domain = config_for(&hub, "domain = \"mirror.test\"");
    let mut tried = 0;
    for config in [plain, domain] {
        let mut relay = Relay::start_with(&config);
        for s in spellings(canary.addr) {
            for (what, bytes) in cases(&s) {
                let (got, _) = Raw::one_shot(relay.http, &bytes, Duration::from_secs(5));
                let r = parse_one(&got);
                assert!(
                    r.status < 500 || r.status == 502 && r.text().contains("docker.io"),
                    "{what} via {s}: {} {}",
                    r.status,
                    r.text()
                );
                assert_eq!(canary.hits(), 0, "{what} via {s} reached the canary");
                tried += 1;
            }
        }
        assert!(relay.alive());
    }
    // Everything upstream went to the double's own hosts (the only ones it
    // can record), never with the canary's name in it.
    let port = canary.addr.port().to_string();
    for e in hub.log().entries() {
        assert!(
            !e.target.contains(&port) || e.target.contains("%3A") || e.path().contains("/token"),
            "the canary's address went upstream as a target: {e:?}"
        );
    }
    eprintln!("ssrf: {tried} requests");
}

/// A registry with `redirect_private = false` does not follow its
/// upstream's blob redirect to the double's CDN (on loopback): the client
/// gets a 502, and the CDN sees nothing. The same pull with the default
/// (the upstream is itself on loopback, so private redirects are allowed)
/// is the control.
#[test]
fn redirect_private_false_refuses_redirects_to_private_addresses() {
    let hub = hub();
    let layer = hub.seeded().alpine.layers[0].digest.clone();
    let blob = format!("/v2/library/alpine/blobs/{layer}");

    let refusing = config_for(&hub, "").replace(
        "name = \"docker.io\"\n",
        "name = \"docker.io\"\nredirect_private = false\n",
    );
    assert!(refusing.contains("redirect_private = false"));
    let relay = Relay::start_with(&refusing);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let r = get_auth(&mut c, &blob, &tok);
    let said: String = r.text().chars().take(300).collect();
    assert_eq!(r.status, 502, "{said}");
    assert!(said.contains("\"errors\""), "a registry JSON error: {said}");
    assert!(
        hub.log().for_host(Host::Cdn).is_empty(),
        "the CDN was asked: {:?}",
        hub.log().for_host(Host::Cdn)
    );
    // Manifests, which are not redirected, still come through.
    let m = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(m.status, 200, "{}", m.text());
    drop(relay);

    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let r = get_auth(&mut c, &blob, &tok);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256(&r.body), layer);
    assert!(!hub.log().for_host(Host::Cdn).is_empty());
}

/// An upstream's `Link` header (tags pagination) naming another address is
/// passed to the client, rewritten or not, but never fetched by ocirelay.
#[test]
fn an_upstream_link_header_is_never_followed() {
    let canary = Canary::start();
    let body = br#"{"name":"library/alpine","tags":["3.20"]}"#;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nLink: <http://{}/v2/library/alpine/tags/list?last=3.20&n=1>; rel=\"next\"\r\n\r\n",
        body.len(),
        canary.addr
    );
    let up = FakeUpstream::start(vec![Canned {
        path: "/v2/library/alpine/tags/list".into(),
        bytes: [head.as_bytes(), body].concat(),
        after: After::KeepAlive,
    }]);
    let relay = Relay::start_with(&config_with_upstream(&up.url()));
    let mut c = relay.client();
    let r = c
        .get("/v2/library/alpine/tags/list")
        .unwrap_or_else(|e| panic!("{e}: {}", relay.stderr()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, body);
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(canary.hits(), 0, "the Link target was fetched");
}
