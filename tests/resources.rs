//! What the relay holds on to, and when it lets go: memory while streaming
//! a large blob, upstream connections of clients that left or stopped
//! reading, the client header, idle and write timeouts, and the reuse of
//! pooled upstream connections (stale ones included).
//!
//! Every test starts its own Docker Hub double and its own ocirelay process
//! (see `common/`), talks to it over loopback only, and bounds every wait
//! with a timeout.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// memory
// ---------------------------------------------------------------------------

#[test]
fn large_blob_streams_in_bounded_memory() {
    const SIZE: usize = 128 << 20;
    let hub = hub();
    let (relay, _c, tok) = relay_with_alpine_token(&hub);
    let digest = hub.add_random_blob("library/alpine", SIZE, 0x5eed_0015);
    let pid = relay.pid();
    let before = proc_status_bytes(pid, "VmHWM:");

    let mut body = start_blob_download(&relay, &digest, &tok, SIZE as u64);
    let t = Instant::now();
    assert_eq!(body.read_until(SIZE as u64), SIZE as u64, "closed early");
    assert!(t.elapsed() < Duration::from_secs(20), "too slow");
    assert_eq!(body.digest(), digest);

    let peak = proc_status_bytes(pid, "VmHWM:");
    eprintln!(
        "relay VmHWM {} KiB before, {} KiB after 128 MiB in {:?}",
        before / 1024,
        peak / 1024,
        t.elapsed()
    );
    assert!(
        peak < 64 << 20,
        "relay peak RSS {} MiB while streaming 128 MiB",
        peak >> 20
    );
}

// ---------------------------------------------------------------------------
// connections the relay lets go
// ---------------------------------------------------------------------------

#[test]
fn client_disconnect_mid_blob_closes_the_upstream_connection() {
    let hub = hub();
    let (mut relay, mut c, tok) = relay_with_alpine_token(&hub);
    let digest = hub.add_random_blob("library/alpine", 64 << 20, 0x5eed_0001);
    assert_eq!(hub.active_connections(Host::Cdn), 0);

    let mut raw = Raw::get_with_token(
        relay.http,
        &format!("/v2/library/alpine/blobs/{digest}"),
        &tok,
    );
    let head = raw.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(64 << 20));
    while raw.buf.len() < 1 << 20 {
        assert!(raw.fill().expect("blob bytes") > 0, "blob ended early");
    }
    assert_eq!(
        hub.active_connections(Host::Cdn),
        1,
        "the blob streams from one CDN connection"
    );
    // Leave with most of the blob unread (the kernel answers with a reset).
    drop(raw);
    let t = Instant::now();

    // Well before client_write_secs (5 s): the relay noticed the client is
    // gone, not merely that it stopped reading.
    assert!(
        wait_until(Duration::from_secs(3), || hub.active_connections(Host::Cdn)
            == 0),
        "the relay kept its CDN connection open after the client left"
    );
    eprintln!(
        "CDN connection closed {:?} after the client left",
        t.elapsed()
    );
    assert!(relay.alive(), "relay died: {}", relay.stderr());

    let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{digest}"), &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 64 << 20);
    assert_eq!(sha256(&r.body), digest);
    assert!(relay.alive());
}

#[test]
fn client_that_stops_reading_is_cut_after_client_write_timeout() {
    let hub = hub();
    let (relay, _c, tok) = relay_with_alpine_token(&hub); // client_write_secs = 5
    let digest = hub.add_random_blob("library/alpine", 64 << 20, 0x5eed_0016);
    let mut raw = Raw::get_with_token(
        relay.http,
        &format!("/v2/library/alpine/blobs/{digest}"),
        &tok,
    );
    let head = raw.read_head().unwrap();
    assert_eq!(head.status, 200);
    // Stop reading, keep the connection open.
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(12), || hub
            .active_connections(Host::Cdn)
            == 0),
        "the relay held its CDN connection for a client that reads nothing"
    );
    eprintln!("cut after {:?}", t.elapsed());
    assert!(t.elapsed() >= Duration::from_secs(4));
}

// ---------------------------------------------------------------------------
// client timeouts
// ---------------------------------------------------------------------------

/// A config like the harness's, with client timeouts of one second.
fn short_client_timeouts_config(hub: &HubDouble) -> String {
    config_with_timeouts(
        hub,
        "",
        Timeouts {
            client_header: 1,
            client_idle: 1,
            ..Timeouts::default()
        },
    )
}

#[test]
fn incomplete_request_head_gets_408_after_client_header_timeout() {
    let hub = hub();
    let relay = Relay::start(&hub); // client_header_secs = 2
    let mut raw = Raw::connect(relay.http);
    raw.send(b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\n");
    let t = Instant::now();
    let (bytes, end) = raw.read_to_end(Duration::from_secs(8));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "closed after {took:?} with client_header_secs = 2"
    );
    let r = assert_error_then_close(&bytes, end, 408);
    assert!(r.text().contains("request head"), "{}", r.text());
    assert!(hub.log().is_empty());
}

#[test]
fn trickled_request_head_is_cut_at_the_header_deadline() {
    let hub = hub();
    let relay = Relay::start_with(&short_client_timeouts_config(&hub)); // header 1 s
    let mut raw = Raw::connect(relay.http);
    let mut writer = raw.s.try_clone().unwrap();
    // One byte every 200 ms: never idle for long, never done.
    let head = b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\nUser-Agent: slowloris-slowloris\r\n\r\n";
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let trickle = std::thread::spawn(move || {
        for b in head {
            if st.load(Ordering::SeqCst) || writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let t = Instant::now();
    let (bytes, end) = raw.read_to_end(Duration::from_secs(6));
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = trickle.join();
    assert!(
        took < Duration::from_secs(3),
        "a trickling head held the connection for {took:?} (client_header_secs = 1)"
    );
    assert_error_then_close(&bytes, end, 408);
}

#[test]
fn idle_keep_alive_connection_is_closed_after_client_idle_timeout() {
    let hub = hub();
    let relay = Relay::start_with(&short_client_timeouts_config(&hub)); // idle 1 s

    // After a response.
    let mut raw = Raw::connect(relay.http);
    raw.send(&request("GET", "/healthz", &[]));
    let r = raw.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.closes());
    let t = Instant::now();
    let (bytes, end) = raw.read_to_end(Duration::from_secs(6));
    let took = t.elapsed();
    assert_ne!(end, End::Open, "idle connection never closed");
    assert!(
        bytes.is_empty(),
        "an idle close says nothing: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "idle close after {took:?} with client_idle_secs = 1"
    );

    // A connection that never sends anything.
    let mut raw = Raw::connect(relay.http);
    let t = Instant::now();
    let (bytes, end) = raw.read_to_end(Duration::from_secs(6));
    assert_ne!(end, End::Open);
    assert!(bytes.is_empty());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

// ---------------------------------------------------------------------------
// keep-alive and upstream pool reuse
// ---------------------------------------------------------------------------

#[test]
fn keep_alive_client_requests_reuse_pooled_upstream_connections() {
    let hub = hub();
    let (_relay, mut c, tok) = relay_with_alpine_token(&hub);
    hub.log().clear();
    for i in 0..6 {
        let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.body, hub.seeded().alpine.manifest_bytes);
        if i > 0 {
            assert!(
                r.reused_connection,
                "request {i} on a new client connection"
            );
        }
    }
    assert_eq!(
        c.connections_opened(),
        1,
        "one client connection throughout"
    );
    let entries = hub
        .log()
        .matching(Host::Registry, "/v2/library/alpine/manifests/latest");
    assert_eq!(entries.len(), 6);
    let mut conns: Vec<u64> = entries.iter().map(|e| e.conn).collect();
    conns.dedup();
    assert_eq!(
        conns.len(),
        1,
        "sequential requests through one worker should reuse one upstream connection: {:?}",
        entries.iter().map(|e| e.conn).collect::<Vec<_>>()
    );
    // Blobs too: the registry redirect and the CDN connection are pooled.
    let layer = &hub.seeded().alpine.layers[0];
    for _ in 0..3 {
        let r = get_auth(
            &mut c,
            &format!("/v2/library/alpine/blobs/{}", layer.digest),
            &tok,
        );
        assert_eq!(r.status, 200);
        assert_eq!(sha256(&r.body), layer.digest);
    }
    let mut cdn: Vec<u64> = hub
        .log()
        .for_host(Host::Cdn)
        .iter()
        .map(|e| e.conn)
        .collect();
    assert_eq!(cdn.len(), 3);
    cdn.dedup();
    assert_eq!(cdn.len(), 1, "CDN connections are reused too");
}

#[test]
fn stale_pooled_upstream_connection_is_retried_silently() {
    let hub = HubDouble::start(Options {
        idle_timeout: Duration::from_millis(700),
        ..Options::default()
    })
    .unwrap();
    let (relay, mut c, tok) = relay_with_alpine_token(&hub);
    let layer = hub.seeded().alpine.layers[0].clone();
    let blob = format!("/v2/library/alpine/blobs/{}", layer.digest);

    for round in 0..3 {
        let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        let r = get_auth(&mut c, &blob, &tok);
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_eq!(sha256(&r.body), layer.digest);
        // Past the double's idle timeout: it closes the pooled connections.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            wait_until(Duration::from_secs(2), || hub
                .active_connections(Host::Registry)
                == 0
                && hub.active_connections(Host::Cdn) == 0),
            "the double did not drop idle connections"
        );
    }
    let manifests = hub
        .log()
        .matching(Host::Registry, "/v2/library/alpine/manifests/latest");
    let ids: std::collections::HashSet<u64> = manifests.iter().map(|e| e.conn).collect();
    assert!(
        ids.len() >= 3,
        "each round needed a fresh upstream connection: {ids:?}"
    );
    assert!(
        !relay.stderr().contains("-> "),
        "a stale connection surfaced as an error: {}",
        relay.stderr()
    );
}
