//! `/healthz` and `/readyz` through the real binary: liveness is always
//! `ok`; readiness follows its checks, each from state kept as things
//! happen (no probe on the request): the cache directory's file system
//! filling up and being freed (a tmpfs: needs root), an upstream that stops
//! answering and comes back, a cache that could not be opened, certificates
//! loaded for a TLS listener. The checks show in `/metrics` too.

mod common;

use std::time::Duration;

use common::*;

/// `/readyz` on the metrics listener: (status, body).
fn readyz(relay: &Relay) -> (u16, String) {
    let r = relay.metrics_client().get("/readyz").unwrap();
    (r.status, r.text())
}

/// Polls `/readyz` (at most 10 s) until its status is `status`; the body.
fn wait_ready(relay: &Relay, status: u16) -> String {
    let mut last = (0, String::new());
    let done = wait_until(Duration::from_secs(10), || {
        last = readyz(relay);
        last.0 == status
    });
    assert!(done, "/readyz stayed {}: {}", last.0, last.1);
    last.1
}

#[test]
fn healthz_and_readyz_answer_on_the_public_and_the_metrics_listeners() {
    let hub = hub();
    let relay = Relay::start(&hub);
    for mut c in [relay.client(), relay.metrics_client()] {
        let r = c.get("/healthz").unwrap();
        assert_eq!((r.status, r.text()), (200, "ok\n".to_string()));
        let r = c.get("/readyz").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        let text = r.text();
        assert!(text.starts_with("ready\n"), "{text}");
        for line in [
            "listeners: ok (every worker listens)",
            "cache: ok (off)",
            "certificates: ok (no TLS listener)",
            "upstreams: ok (none asked in the last 60s)",
        ] {
            assert!(text.contains(line), "missing {line:?}:\n{text}");
        }
        assert!(c.head("/readyz").unwrap().body.is_empty());
    }
}

#[test]
fn readyz_fails_while_the_cache_directory_takes_no_writes() {
    let fs = Tmpfs::mount("4m");
    let hub = hub();
    let relay = Relay::start_with(&config_with_cache(&hub, fs.path()));
    let body = wait_ready(&relay, 200);
    assert!(body.contains("cache: ok (directory writable)"), "{body}");

    let filler = fs.fill();
    let body = wait_ready(&relay, 503);
    assert!(body.starts_with("not ready\n"), "{body}");
    assert!(
        body.contains("cache: failing (directory not writable)"),
        "{body}"
    );
    let s = Scrape::of(&relay);
    assert_eq!(s.value("ocirelay_ready", &[("check", "cache")]), 0.0);
    assert_eq!(s.value("ocirelay_ready", &[("check", "listeners")]), 1.0);
    // Pulls go on, relayed without storing.
    pull_alpine_layer(&hub, &relay, 1);
    assert!(
        relay.stderr().contains("does not take writes"),
        "{}",
        relay.stderr()
    );

    std::fs::remove_file(filler).unwrap();
    let body = wait_ready(&relay, 200);
    assert!(body.contains("cache: ok (directory writable)"), "{body}");
    assert!(wait_until(Duration::from_secs(5), || relay
        .stderr()
        .contains("takes writes again")));
}

#[test]
fn readyz_fails_while_the_upstream_does_not_answer_and_recovers_with_it() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    assert_eq!(c.get("/v2/").unwrap().status, 401);
    let body = wait_ready(&relay, 200);
    assert!(
        body.contains("upstreams: ok (answering: docker.io)"),
        "{body}"
    );

    hub.set_down(Host::Registry, true).unwrap();
    assert_eq!(relay.client().get("/v2/").unwrap().status, 502);
    let (status, body) = readyz(&relay);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("upstreams: failing (failing: docker.io: connect error"),
        "{body}"
    );
    let s = Scrape::of(&relay);
    assert_eq!(s.value("ocirelay_ready", &[("check", "upstreams")]), 0.0);
    // A fleet that serves from its caches may leave the upstream out of
    // the verdict (Kubernetes' own `exclude=` convention): shown, not
    // counted.
    let mut m = relay.metrics_client();
    let r = m.get("/readyz?exclude=upstreams").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text()
            .contains("upstreams: failing, excluded (failing: docker.io"),
        "{}",
        r.text()
    );
    let r = m.get("/readyz?exclude=cache").unwrap();
    assert_eq!(r.status, 503, "another check excluded: still not ready");

    hub.set_down(Host::Registry, false).unwrap();
    assert_eq!(relay.client().get("/v2/").unwrap().status, 401);
    let (status, body) = readyz(&relay);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("upstreams: ok (answering: docker.io)"),
        "{body}"
    );
}

#[test]
fn a_cache_that_could_not_be_opened_is_not_ready() {
    let hub = hub();
    let dir = tempdir::Dir::new("cache-file");
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let relay = Relay::start_with(&config_with_cache(&hub, &file.join("cache")));
    let (status, body) = readyz(&relay);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("cache: failing (configured but not in use: it could not be opened)"),
        "{body}"
    );
}

#[test]
fn certificates_loaded_for_a_tls_listener_are_ready() {
    let hub = hub();
    let (relay, ca) = start_with_tls(&hub, "");
    let r = relay.tls_client(&ca).get("/readyz").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("certificates: ok (loaded)"),
        "{}",
        r.text()
    );
}
