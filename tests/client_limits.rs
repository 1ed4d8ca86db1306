//! Per-client limits (`[client_limits]`): a burst of requests then `429
//! TOOMANYREQUESTS` with `Retry-After`, until the bucket refills; IPv6
//! clients grouped by /64; a connection cap answered with a 429 and a
//! close; response bytes paced (whole and byte-exact, not faster than the
//! rate), per client and for the whole process; one budget across workers;
//! one client's limits leave another's alone.
//!
//! Clients other than loopback are presented by PROXY headers from a
//! trusted loopback peer (`proxy_protocol_listen`), as a load balancer
//! would. No upper bound on any time: the lower bounds are what a rate
//! promises.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A relay with a PROXY listener trusting loopback, and `limits` as the
/// body of its `[client_limits]` table.
fn limited_relay(hub: &HubDouble, limits: &str) -> Relay {
    Relay::start_with(&config_for(
        hub,
        &format!(
            "access_log_format = \"json\"\nproxy_protocol_listen = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[client_limits]\n{limits}"
        ),
    ))
}

/// A connection to the PROXY listener on which `client` is the client.
fn as_client(relay: &Relay, client: &str) -> Raw {
    let addr = relay.proxied_http.expect("a PROXY listener");
    let mut raw = Raw::connect(addr);
    let header = if client.contains(':') {
        format!("PROXY TCP6 {client} 2001:db8::1 40000 443\r\n")
    } else {
        format!("PROXY TCP4 {client} 192.0.2.1 40000 443\r\n")
    };
    raw.send(header.as_bytes());
    raw
}

/// One request for the landing page on `raw`: the status.
fn get_page(raw: &mut Raw) -> Response {
    raw.send(&request("GET", "/", &[]));
    raw.read_response(false).expect("an answer")
}

/// The status of one landing page request from `client` on a connection of
/// its own.
fn status_from(relay: &Relay, client: &str) -> u16 {
    get_page(&mut as_client(relay, client)).status
}

/// Asserts `r` is the registry's 429: JSON `TOOMANYREQUESTS` and a
/// `Retry-After` in whole seconds; returns the seconds.
fn assert_too_many(r: &Response) -> u64 {
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(error_code(&r.body), "TOOMANYREQUESTS", "{}", r.text());
    let secs: u64 = r
        .header("retry-after")
        .expect("a Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

#[test]
fn a_burst_is_served_then_429_with_retry_after_until_the_bucket_refills() {
    let hub = hub();
    // One request every 2 s, 3 at once.
    let relay = limited_relay(&hub, "requests_per_sec = 0.5\nburst = 3\n");
    let mut raw = as_client(&relay, "203.0.113.9");
    for _ in 0..3 {
        assert_eq!(get_page(&mut raw).status, 200);
    }
    let refused = get_page(&mut raw);
    let wait = assert_too_many(&refused);
    // The next token is at most 2 s away, rounded up.
    assert!(wait <= 2, "Retry-After {wait} at 0.5 requests a second");
    // A refused request leaves the connection open for later ones.
    assert!(!refused.closes());
    // The access log shows the 429, the metrics count it.
    assert!(
        relay.wait_for_log("\"status\":429", Duration::from_secs(5)),
        "{}",
        relay.stderr()
    );
    let s = Scrape::of(&relay);
    assert_eq!(
        s.sum("ocirelay_limited_requests_total", &[("limit", "requests")]),
        1.0
    );
    // Waiting as told lets the next request through.
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(get_page(&mut raw).status, 200);
    assert_too_many(&get_page(&mut raw));
}

#[test]
fn one_clients_limits_leave_another_alone_and_ipv6_counts_by_64() {
    let hub = hub();
    let relay = limited_relay(&hub, "requests_per_sec = 0.001\nburst = 2\n");
    for _ in 0..2 {
        assert_eq!(status_from(&relay, "203.0.113.9"), 200);
    }
    assert_eq!(status_from(&relay, "203.0.113.9"), 429);
    // The neighbouring IPv4 address is another client (/32).
    assert_eq!(status_from(&relay, "203.0.113.10"), 200);
    // IPv6: the whole /64 is one client, the next /64 another.
    assert_eq!(status_from(&relay, "2001:db8:1:2::1"), 200);
    assert_eq!(status_from(&relay, "2001:db8:1:2:ffff:ffff:ffff:fffe"), 200);
    assert_eq!(status_from(&relay, "2001:db8:1:2::7"), 429);
    assert_eq!(status_from(&relay, "2001:db8:1:3::1"), 200);
    // Health checks are never refused.
    let mut raw = as_client(&relay, "203.0.113.9");
    raw.send(&request("GET", "/healthz", &[]));
    assert_eq!(raw.read_response(false).unwrap().status, 200);
}

#[test]
fn configured_prefixes_group_wider() {
    let hub = hub();
    let relay = limited_relay(
        &hub,
        "ipv4_prefix = 24\nipv6_prefix = 48\nrequests_per_sec = 0.001\nburst = 1\n",
    );
    assert_eq!(status_from(&relay, "198.51.100.1"), 200);
    assert_eq!(status_from(&relay, "198.51.100.250"), 429);
    assert_eq!(status_from(&relay, "2001:db8:5::1"), 200);
    assert_eq!(status_from(&relay, "2001:db8:5:ffff::1"), 429);
}

#[test]
fn over_the_connection_cap_a_connection_gets_429_and_is_closed() {
    let hub = hub();
    let relay = limited_relay(&hub, "max_connections = 2\n");
    let mut held: Vec<Raw> = (0..2)
        .map(|_| {
            let mut raw = as_client(&relay, "203.0.113.9");
            // Answered: accepted and counted.
            assert_eq!(get_page(&mut raw).status, 200);
            raw
        })
        .collect();
    let mut third = as_client(&relay, "203.0.113.9");
    third.send(&request("GET", "/", &[]));
    let (bytes, end) = third.read_to_end(Duration::from_secs(5));
    let r = assert_error_then_close(&bytes, end, 429);
    assert_too_many(&r);
    // Another client is not held back by this one's connections.
    assert_eq!(status_from(&relay, "203.0.113.10"), 200);
    // A closed connection gives its slot back.
    drop(held.pop());
    let mut last = 0;
    let freed = wait_until(Duration::from_secs(5), || {
        last = status_from(&relay, "203.0.113.9");
        last == 200
    });
    assert!(freed, "still {last} after a connection closed");
    let s = Scrape::of(&relay);
    assert!(
        s.sum(
            "ocirelay_limited_requests_total",
            &[("limit", "connections")]
        ) >= 1.0
    );
    if let Err(e) = promtool_check(&s.text) {
        panic!("{e}\n{}", s.text);
    }
}

#[test]
fn with_two_workers_a_client_spreading_connections_gets_one_budget() {
    let hub = hub();
    // Two workers (the test config's): 40 connections, each hashed by the
    // kernel (SO_REUSEPORT) to one of them, all land on both but with a
    // chance of 2^-39. Per-worker budgets would let about twice the burst
    // through; one shared budget lets exactly the burst.
    let relay = limited_relay(&hub, "requests_per_sec = 0.001\nburst = 5\n");
    let mut conns: Vec<Raw> = (0..40).map(|_| as_client(&relay, "203.0.113.9")).collect();
    for raw in &mut conns {
        raw.send(&request("GET", "/", &[]));
    }
    let statuses: Vec<u16> = conns
        .iter_mut()
        .map(|raw| raw.read_response(false).unwrap().status)
        .collect();
    let served = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((served, refused), (5, 35), "{statuses:?}");
}

/// Adds a random blob of `len` bytes to library/alpine on `hub`; its digest.
fn blob(hub: &HubDouble, len: usize, seed: u64) -> String {
    hub.add_random_blob("library/alpine", len, seed)
}

/// Downloads blob `digest` (of `len` bytes) through `addr` as the client
/// `raw` presents: the body's digest and how long the body took.
fn download(mut raw: Raw, digest: &str, tok: &str, len: u64) -> (String, Duration) {
    let started = Instant::now();
    raw.send(&request(
        "GET",
        &format!("/v2/library/alpine/blobs/{digest}"),
        &[("Authorization", &bearer(tok))],
    ));
    let head = raw.read_head().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(len));
    let mut body = HashedBody::after_head(raw);
    assert_eq!(body.read_until(len), len, "the whole body arrives");
    (body.digest(), started.elapsed())
}

#[test]
fn a_shaped_blob_arrives_whole_and_no_faster_than_its_rate() {
    let hub = hub();
    let dir = tempdir::Dir::new("limits-cache");
    let relay = Relay::start_with(&config_for(
        &hub,
        &format!(
            "[client_limits]\nbytes_per_sec = \"256KiB\"\nbytes_burst = \"64KiB\"\n[cache]\nenabled = true\ndir = \"{}\"\n",
            dir.path().display()
        ),
    ));
    let len = 768 * 1024;
    let digest = blob(&hub, len, 7);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    // Relayed from upstream (a miss), then from the cache (a hit, which
    // would otherwise go out with sendfile): both paced.
    for _ in 0..2 {
        let (got, took) = download(Raw::connect(relay.http), &digest, &tok, len as u64);
        assert_eq!(got, digest, "byte-exact");
        // 768 KiB at 256 KiB/s after a 64 KiB burst, less one paced write
        // (32 KiB) that may go at the end of its wait: at least 2.5 s.
        assert!(
            took >= Duration::from_millis(2500),
            "768 KiB in {took:?} at 256 KiB/s"
        );
    }
    let s = Scrape::of(&relay);
    assert!(s.sum("ocirelay_limited_requests_total", &[("limit", "bytes")]) >= 2.0);
}

#[test]
fn the_process_egress_rate_is_shared_by_all_clients() {
    let hub = hub();
    let relay = limited_relay(&hub, "egress_bytes_per_sec = \"256KiB\"\n");
    let len = 512 * 1024;
    let digest = blob(&hub, len, 11);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let started = Instant::now();
    let downloads: Vec<_> = ["203.0.113.9", "198.51.100.4"]
        .into_iter()
        .map(|client| {
            let raw = as_client(&relay, client);
            let (digest, tok) = (digest.clone(), tok.clone());
            std::thread::spawn(move || download(raw, &digest, &tok, len as u64))
        })
        .collect();
    for d in downloads {
        let (got, _) = d.join().unwrap();
        assert_eq!(got, digest, "byte-exact");
    }
    let took = started.elapsed();
    // 1 MiB in all at 256 KiB/s after a burst of 256 KiB (one second's
    // worth), less a paced write each: at least 2.5 s, though each client
    // alone has no limit.
    assert!(
        took >= Duration::from_millis(2500),
        "two 512 KiB bodies in {took:?} under a 256 KiB/s egress"
    );
}

#[test]
fn a_bad_client_limits_table_is_refused_with_its_line() {
    let hub = hub();
    let (ok, err) = config_check(&config_for(
        &hub,
        "[client_limits]\nrequests_per_sec = 10\nbytes_per_sec = \"1KiB\"\n",
    ));
    assert!(!ok);
    assert!(err.contains("bytes_per_sec"), "{err}");
    assert!(err.contains("line"), "{err}");
}

#[test]
fn over_tls_a_shaped_blob_is_byte_exact_and_the_cap_is_a_readable_429() {
    let hub = hub();
    let (relay, ca_pem) = start_with_tls(
        &hub,
        "[client_limits]\nbytes_per_sec = \"256KiB\"\nbytes_burst = \"64KiB\"\nmax_connections = 1\n",
    );
    let len = 768 * 1024;
    let digest = blob(&hub, len, 13);
    // One connection (the cap): TLS upstream to TLS client, which unshaped
    // would be re-encrypted in place and sent past the pacer.
    let mut c = relay.tls_client(&ca_pem);
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let started = Instant::now();
    let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{digest}"), &tok);
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(hubdouble::sha256_digest(&r.body), digest, "byte-exact");
    assert!(
        took >= Duration::from_millis(2500),
        "768 KiB in {took:?} at 256 KiB/s"
    );
    // A second connection is over the cap: the 429 comes inside TLS, after
    // the handshake, where the client can read it; then the close.
    let mut second = relay.tls_client(&ca_pem);
    let r = second.get("/").expect("a readable answer");
    assert_too_many(&r);
    assert!(r.closes());
}
