//! `/metrics` through the real binary against the Docker Hub double: the
//! counters move by exactly what the requests did (a miss, a hit, a
//! coalesced request, an upstream error, a redirect, the rate limit the
//! upstream announced, open connections), Debian's `promtool check metrics`
//! accepts the exposition, and where `/metrics` is served follows
//! `metrics_listen` (its own loopback listener by default, never the public
//! listeners unless asked).
//!
//! Every count is a difference between two scrapes around the requests
//! that should move it, so the requests a test makes on its way (tokens,
//! pings) do not blur it.

mod common;

use std::time::Duration;

use common::*;

const DOCKER: (&str, &str) = ("registry", "docker.io");
const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

fn cached_relay(hub: &HubDouble) -> Relay {
    Relay::start_with(&config_for(hub, "[cache]\nenabled = true\n"))
}

/// How much `name{labels}` moved between two scrapes.
fn moved(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[test]
fn a_miss_then_a_hit_count_once_each_with_their_bytes() {
    let hub = hub();
    let relay = cached_relay(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let size = 3 << 20;
    let digest = hub.add_random_blob("library/alpine", size, 0x3e7);
    let path = format!("/v2/library/alpine/blobs/{digest}");
    let blob = [("type", "blob"), DOCKER];
    let result = |r| [("type", "blob"), DOCKER, ("result", r)];

    let s0 = Scrape::of(&relay);
    assert_eq!(get_auth(&mut c, &path, &tok).status, 200);
    let s1 = Scrape::after(&relay, &s0, "blob", 1.0);
    let m = |name, labels: &[(&str, &str)]| moved(&s0, &s1, name, labels);
    assert_eq!(m("registry_proxy_misses_total", &blob), 1.0);
    assert_eq!(m("registry_proxy_hits_total", &blob), 0.0);
    assert_eq!(m("ocirelay_cache_requests_total", &result("miss")), 1.0);
    // The body, counted once, not the redirect hop's.
    assert_eq!(m("registry_proxy_pulled_bytes_total", &blob), size as f64);
    assert_eq!(m("registry_proxy_requests_total", &blob), 1.0);
    assert_eq!(m("ocirelay_cache_stored_bytes_total", &blob), size as f64);
    // The store's size: the last walk's, plus what was stored since.
    assert!(
        wait_until(Duration::from_secs(10), || Scrape::of(&relay)
            .value("ocirelay_cache_bytes", &[])
            == size as f64),
        "{}",
        Scrape::of(&relay).text
    );

    assert_eq!(get_auth(&mut relay.client(), &path, &tok).status, 200);
    let s2 = Scrape::after(&relay, &s1, "blob", 1.0);
    let m = |name, labels: &[(&str, &str)]| moved(&s1, &s2, name, labels);
    assert_eq!(m("registry_proxy_hits_total", &blob), 1.0);
    assert_eq!(m("registry_proxy_misses_total", &blob), 0.0);
    assert_eq!(m("ocirelay_cache_requests_total", &result("hit")), 1.0);
    assert_eq!(m("registry_proxy_pulled_bytes_total", &blob), 0.0);
    assert_eq!(m("ocirelay_cache_saved_bytes_total", &blob), size as f64);
    // Served: the body and its head.
    let served = m("ocirelay_cache_served_bytes_total", &blob);
    assert!(
        served > size as f64 && served < size as f64 + 1024.0,
        "{served}"
    );
    assert_eq!(
        m(
            "ocirelay_upstream_requests_total",
            &[DOCKER, ("code", "200")]
        ),
        0.0
    );
    let get = [("handler", "blob"), ("method", "GET")];
    assert_eq!(
        m(
            "registry_http_requests_total",
            &[get[0], get[1], ("code", "200"), DOCKER]
        ),
        1.0
    );
    assert_eq!(m("registry_http_request_duration_seconds_count", &get), 1.0);
    let bucket = [get[0], get[1], ("le", "+Inf")];
    assert_eq!(
        m("registry_http_request_duration_seconds_bucket", &bucket),
        1.0
    );
    assert_eq!(
        m(
            "ocirelay_http_response_bytes_total",
            &[("handler", "blob"), DOCKER]
        ),
        served
    );
}

#[test]
fn a_walk_of_the_store_measures_it_and_counts_what_it_evicts() {
    let hub = hub();
    let cache = tempdir::Dir::new("metrics-evict");
    let size = 2 << 20;
    let digest = hub.add_random_blob("library/alpine", size, 0xe71c7);
    {
        let relay = Relay::start_with(&config_with_cache(&hub, cache.path()));
        let mut c = relay.client();
        let tok = anonymous_token(&relay, &mut c, "library/alpine");
        let s0 = Scrape::of(&relay);
        let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{digest}"), &tok);
        assert_eq!(r.status, 200);
        // Stored once the request has finished.
        let s1 = Scrape::after(&relay, &s0, "blob", 1.0);
        let blob = [("type", "blob"), DOCKER];
        assert_eq!(
            s1.value("ocirelay_cache_stored_bytes_total", &blob),
            size as f64
        );
    }
    // The same directory under a cap of 1 MiB: the first walk, at start,
    // measures the blob and evicts it.
    let relay = Relay::start_with(&config_for(
        &hub,
        &format!(
            "[cache]\nenabled = true\ndir = \"{}\"\nmax_size = \"1MiB\"\n",
            cache.path().display()
        ),
    ));
    let mut s = Scrape::of(&relay);
    assert!(wait_until(Duration::from_secs(10), || {
        s = Scrape::of(&relay);
        s.has("ocirelay_cache_objects", &[])
    }));
    assert_eq!(s.value("ocirelay_cache_evicted_objects_total", &[]), 1.0);
    assert_eq!(
        s.value("ocirelay_cache_evicted_bytes_total", &[]),
        size as f64
    );
    assert_eq!(s.value("ocirelay_cache_objects", &[]), 0.0);
    assert_eq!(s.value("ocirelay_cache_bytes", &[]), 0.0);
}

#[test]
fn a_request_waiting_for_another_ones_fetch_counts_as_coalesced() {
    let hub = hub();
    let relay = cached_relay(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let path = "/v2/library/alpine/manifests/latest";
    let manifest = [("type", "manifest"), DOCKER];
    let s0 = Scrape::of(&relay);
    // The registry holds its answer until the second request waits for
    // the first one's: without coalescing it would send a GET of its own.
    hub.knobs().set_stall(Host::Registry, true);
    let gets = hub.knobs().manifest_gets();
    std::thread::scope(|s| {
        let first = s.spawn(|| get_manifest(&relay, path, &tok));
        assert!(
            wait_until(Duration::from_secs(10), || !hub
                .log()
                .matching(Host::Registry, path)
                .is_empty()),
            "the first request never reached the registry"
        );
        let second = s.spawn(|| get_manifest(&relay, path, &tok));
        // Its connection is counted once accepted; the request behind it
        // needs a moment more to start waiting.
        assert!(wait_until(Duration::from_secs(10), || Scrape::of(&relay)
            .value("ocirelay_client_connections", &[("listener", "http")])
            >= 3.0));
        std::thread::sleep(Duration::from_millis(200));
        hub.knobs().set_stall(Host::Registry, false);
        assert_eq!(first.join().unwrap(), 200);
        assert_eq!(second.join().unwrap(), 200);
    });
    assert_eq!(hub.knobs().manifest_gets() - gets, 1, "one upstream GET");
    let s1 = Scrape::after(&relay, &s0, "manifest", 2.0);
    let result = |r| [manifest[0], DOCKER, ("result", r)];
    assert_eq!(
        moved(&s0, &s1, "ocirelay_cache_requests_total", &result("miss")),
        1.0
    );
    assert_eq!(
        moved(
            &s0,
            &s1,
            "ocirelay_cache_requests_total",
            &result("coalesced")
        ),
        1.0
    );
    assert_eq!(moved(&s0, &s1, "registry_proxy_hits_total", &manifest), 1.0);
    assert_eq!(
        moved(&s0, &s1, "registry_proxy_misses_total", &manifest),
        1.0
    );
}

fn get_manifest(relay: &Relay, path: &str, tok: &str) -> u16 {
    relay
        .client()
        .get_with(path, &[("Authorization", &bearer(tok)), ("Accept", ACCEPT)])
        .unwrap()
        .status
}

#[test]
fn redirects_upstream_errors_and_the_rate_limit_are_counted_per_registry() {
    let hub = hub();
    hub.knobs().set_rate_limit(100, false);
    let (relay, mut c, tok) = relay_with_alpine_token(&hub);
    let layer = hub.seeded().alpine.layers[0].clone();

    // A blob: the registry's 307 to its CDN, followed; the CDN's 200.
    let s0 = Scrape::of(&relay);
    let r = get_auth(
        &mut c,
        &format!("/v2/library/alpine/blobs/{}", layer.digest),
        &tok,
    );
    assert_eq!(r.status, 200);
    let s1 = Scrape::after(&relay, &s0, "blob", 1.0);
    let m = |name, labels: &[(&str, &str)]| moved(&s0, &s1, name, labels);
    assert_eq!(m("ocirelay_upstream_redirects_total", &[DOCKER]), 1.0);
    assert_eq!(
        m(
            "ocirelay_upstream_requests_total",
            &[DOCKER, ("code", "307")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "ocirelay_upstream_requests_total",
            &[DOCKER, ("code", "200")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "ocirelay_upstream_request_duration_seconds_count",
            &[DOCKER]
        ),
        1.0
    );
    assert_eq!(
        m(
            "registry_proxy_pulled_bytes_total",
            &[("type", "blob"), DOCKER]
        ),
        layer.size as f64
    );

    // A manifest GET: Docker Hub's `ratelimit-remaining: 99;w=21600`.
    let r = c
        .get_with(
            "/v2/library/alpine/manifests/latest",
            &[("Authorization", &bearer(&tok)), ("Accept", ACCEPT)],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-remaining"), Some("99;w=21600"));
    let s2 = Scrape::after(&relay, &s1, "manifest", 1.0);
    assert_eq!(
        s2.value("ocirelay_upstream_ratelimit_remaining", &[DOCKER]),
        99.0
    );

    // The registry goes away: a connect error, and the client's 502.
    hub.set_down(Host::Registry, true).unwrap();
    let r = get_auth(
        &mut relay.client(),
        "/v2/library/alpine/manifests/latest",
        &tok,
    );
    assert_eq!(r.status, 502, "{}", r.text());
    let s3 = Scrape::after(&relay, &s2, "manifest", 1.0);
    let m = |name, labels: &[(&str, &str)]| moved(&s2, &s3, name, labels);
    assert_eq!(
        m(
            "ocirelay_upstream_errors_total",
            &[DOCKER, ("kind", "connect")]
        ),
        1.0
    );
    let refused = [
        ("handler", "manifest"),
        ("method", "GET"),
        ("code", "502"),
        DOCKER,
    ];
    assert_eq!(m("registry_http_requests_total", &refused), 1.0);
    assert!(
        s3.value(
            "ocirelay_upstream_last_failure_timestamp_seconds",
            &[DOCKER]
        ) >= s3.value("ocirelay_upstream_last_answer_timestamp_seconds", &[DOCKER])
    );
    // The rate limit seen last stays.
    assert_eq!(
        s3.value("ocirelay_upstream_ratelimit_remaining", &[DOCKER]),
        99.0
    );
}

#[test]
fn promtool_accepts_the_exposition() {
    let hub = hub();
    let relay = cached_relay(&hub);
    pull_alpine_layer(&hub, &relay, 2);
    let mut c = relay.client();
    assert_eq!(c.get("/").unwrap().status, 200);
    assert_eq!(c.get("/v2/Bad/manifests/x").unwrap().status, 400);
    hub.set_down(Host::Registry, true).unwrap();
    assert_eq!(c.get("/v2/library/alpine/manifests/3").unwrap().status, 401);
    // The store's size shows after the cache thread's first walk.
    assert!(wait_until(Duration::from_secs(10), || Scrape::of(&relay)
        .has("ocirelay_cache_objects", &[])));
    let s = Scrape::of(&relay);
    for family in [
        "registry_http_requests_total",
        "registry_http_request_duration_seconds",
        "registry_proxy_hits_total",
        "ocirelay_upstream_errors_total",
        "ocirelay_upstream_request_duration_seconds",
        "ocirelay_cache_objects",
        "ocirelay_ready",
    ] {
        assert!(
            s.text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{}",
            s.text
        );
    }
    if let Err(e) = promtool_check(&s.text) {
        panic!("{e}\n{}", s.text);
    }
}

#[test]
fn metrics_are_on_their_own_listener_and_not_on_the_public_ones() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let r = relay.client().get("/metrics").unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(error_code(&r.body), "NAME_UNKNOWN");
    let mut ops = relay.metrics_client();
    assert_eq!(ops.get("/metrics").unwrap().status, 200);
    assert_eq!(ops.get("/healthz").unwrap().status, 200);
    assert!(matches!(ops.get("/readyz").unwrap().status, 200 | 503));
    // No pulls through the operator's listener.
    let r = ops.get("/v2/").unwrap();
    assert_eq!(r.status, 404);
    assert!(error_message(&r.body).contains("/metrics"), "{}", r.text());
    assert_eq!(
        ops.request("POST", "/metrics", &[], Some(b""))
            .unwrap()
            .status,
        404
    );
}

#[test]
fn metrics_listen_public_serves_them_on_the_public_listeners_and_off_nowhere() {
    let hub = hub();
    let relay = Relay::start_with(&config_for(&hub, "metrics_listen = \"public\"\n"));
    assert!(relay.metrics.is_none());
    let r = relay.client().get("/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert!(Scrape::parse(r.text()).has(
        "ocirelay_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))]
    ));

    let relay = Relay::start_with(&config_for(&hub, "metrics_listen = \"off\"\n"));
    assert!(relay.metrics.is_none());
    assert_eq!(relay.client().get("/metrics").unwrap().status, 404);
}

#[test]
fn a_taken_default_metrics_address_is_passed_over_with_a_warning() {
    // Held here, or by another process already: either way taken.
    let held = std::net::TcpListener::bind("127.0.0.1:5001");
    let hub = hub();
    // The harness gives each relay a port of its own unless the config
    // mentions metrics_listen: this one leaves it to its default.
    let relay = Relay::start_with(&config_for(&hub, "# metrics_listen: the default\n"));
    assert!(relay.metrics.is_none());
    if held.is_ok() {
        assert!(
            wait_until(Duration::from_secs(5), || relay
                .stderr()
                .contains("metrics: cannot listen on 127.0.0.1:5001")),
            "{}",
            relay.stderr()
        );
    }
    assert_eq!(relay.client().get("/v2/").unwrap().status, 401);
}

#[test]
fn open_client_connections_are_a_gauge() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let open = || Scrape::of(&relay).value("ocirelay_client_connections", &[("listener", "http")]);
    assert_eq!(open(), 0.0);
    let mut a = relay.client();
    let mut b = relay.client();
    assert_eq!(a.get("/healthz").unwrap().status, 200);
    assert_eq!(b.get("/healthz").unwrap().status, 200);
    assert_eq!(open(), 2.0);
    drop(a);
    drop(b);
    assert!(wait_until(Duration::from_secs(10), || open() == 0.0));
}
