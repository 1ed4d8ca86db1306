//! Upstreams that fail the relay: unreachable, stalled before the head or
//! mid-body, a small body split from its head, blobs cut by the CDN, and
//! malformed responses. The client gets a clean JSON error where the head has
//! not gone out yet, and otherwise a connection that ends without looking
//! complete; the relay recovers and never leaks upstream addresses.
//!
//! Every test starts its own upstream (the Docker Hub double or a scripted
//! fake) and its own ocirelay process (see `common/`), talks to it over
//! loopback only, and bounds every wait with a timeout.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// upstream down
// ---------------------------------------------------------------------------

#[test]
fn unreachable_upstream_is_502_without_leaking_its_address_and_recovers() {
    let hub = hub();
    let (_relay, mut c, tok) = relay_with_alpine_token(&hub);
    // Pool a registry connection, so that "down" also kills a pooled one.
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 200);

    hub.set_down(Host::Registry, true).unwrap();
    let addr = hub.registry_addr();
    for target in [
        "/v2/library/alpine/manifests/latest",
        "/v2/",
        &format!(
            "/v2/library/alpine/blobs/{}",
            hub.seeded().alpine.layers[0].digest
        ),
    ] {
        let t = Instant::now();
        let r = get_auth(&mut c, target, &tok);
        assert_eq!(r.status, 502, "{target}: {}", r.text());
        assert!(t.elapsed() < Duration::from_secs(4), "{target}");
        assert_eq!(error_code(&r.body), "UNAVAILABLE", "{target}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let everything = format!("{:?} {}", r.headers, r.text());
        for leak in [
            addr.ip().to_string(),
            format!(":{}", addr.port()),
            hub.registry_url(),
        ] {
            assert!(
                !everything.contains(&leak),
                "{target}: the 502 leaks {leak:?}: {everything}"
            );
        }
    }

    assert_eq!(
        c.connections_opened(),
        1,
        "a 502 keeps the client connection alive"
    );

    hub.set_down(Host::Registry, false).unwrap();
    for _ in 0..3 {
        let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
        assert_eq!(r.status, 200, "after the upstream came back: {}", r.text());
        assert_eq!(
            r.header("docker-content-digest"),
            Some(hub.seeded().alpine.manifest.digest.as_str())
        );
    }
    let layer = &hub.seeded().alpine.layers[0];
    let r = get_auth(
        &mut c,
        &format!("/v2/library/alpine/blobs/{}", layer.digest),
        &tok,
    );
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), layer.digest);
}

// ---------------------------------------------------------------------------
// stalled upstreams
// ---------------------------------------------------------------------------

#[test]
fn stalled_registry_is_504_within_the_read_timeout() {
    let hub = hub();
    let (_relay, mut c, tok) = relay_with_alpine_token(&hub);

    hub.set_stall(Host::Registry, true);
    let t = Instant::now();
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    let took = t.elapsed();
    hub.set_stall(Host::Registry, false);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(error_code(&r.body), "UNAVAILABLE");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "504 after {took:?} with upstream_read_secs = 2"
    );
    // And it answers normally afterwards.
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 200);
    assert_eq!(
        c.connections_opened(),
        1,
        "a 504 keeps the client connection"
    );
}

#[test]
fn stalled_cdn_is_504_within_the_read_timeout() {
    let hub = hub();
    let (_relay, mut c, tok) = relay_with_alpine_token(&hub);
    let layer = hub.seeded().alpine.layers[0].clone();
    let target = format!("/v2/library/alpine/blobs/{}", layer.digest);

    hub.set_stall(Host::Cdn, true);
    let t = Instant::now();
    let r = get_auth(&mut c, &target, &tok);
    let took = t.elapsed();
    hub.set_stall(Host::Cdn, false);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(error_code(&r.body), "UNAVAILABLE");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "504 after {took:?}"
    );
    assert!(
        !hub.log().for_host(Host::Cdn).is_empty(),
        "the relay did reach the CDN"
    );
    let cdn = hub.cdn_addr();
    assert!(!r.text().contains(&cdn.ip().to_string()), "{}", r.text());
    let r = get_auth(&mut c, &target, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), layer.digest);
}

#[test]
fn upstream_stalling_mid_body_ends_the_client_connection() {
    let data = hubdouble::random_bytes(1 << 20, 0x5eed_0017).to_vec();
    let digest = sha256(&data);
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&data[..300_000]);
    let fake = FakeUpstream::start(vec![Canned {
        path: format!("/v2/library/stall/blobs/{digest}"),
        bytes,
        after: After::Hold,
    }]);
    let relay = Relay::start_with(&config_with_upstream(&fake.url())); // upstream_read 2 s
    let mut raw = Raw::connect(relay.http);
    raw.send(&request(
        "GET",
        &format!("/v2/library/stall/blobs/{digest}"),
        &[],
    ));
    let head = raw.read_head().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(data.len() as u64));
    let body = read_until_cut(&mut raw, Instant::now());
    assert!(body.len() <= 300_000, "{}", body.len());
    assert_eq!(&body[..], &data[..body.len()]);
    assert!(
        wait_until(Duration::from_secs(3), || fake
            .released
            .load(Ordering::SeqCst)
            == 1),
        "the stalled upstream connection was not closed"
    );
}

/// A small body (a manifest by tag) sent apart from its head is gathered and
/// sent whole; one that stalls half way gives the client the head and the
/// bytes that came, then the end of the connection after the read timeout,
/// and the relay goes on serving (it once crashed here).
#[test]
fn small_body_split_from_its_head_or_stalled_half_way() {
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"layers\":[],\"pad\":\"{}\"}}",
        hubdouble::OCI_MANIFEST,
        "x".repeat(1800)
    )
    .into_bytes();
    let mut whole = length_response(hubdouble::OCI_MANIFEST, &sha256(&manifest), &manifest);
    let head_len = head_len(&whole).unwrap();
    let half = whole[..head_len + manifest.len() / 2].to_vec();
    whole.truncate(head_len + manifest.len());
    let fake = FakeUpstream::start(vec![
        Canned {
            path: "/v2/library/split/manifests/1".into(),
            bytes: whole,
            after: After::SplitAt(head_len),
        },
        Canned {
            path: "/v2/library/stall/manifests/1".into(),
            bytes: half,
            after: After::Hold,
        },
    ]);
    let mut relay = Relay::start_with(&config_with_upstream(&fake.url())); // upstream_read 2 s
    let mut c = relay.client();
    for _ in 0..2 {
        let r = c.get("/v2/library/split/manifests/1").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, manifest);
    }

    let mut raw = Raw::connect(relay.http);
    raw.send(&request("GET", "/v2/library/stall/manifests/1", &[]));
    let t = Instant::now();
    let head = raw.read_head().expect("the head of a stalled small body");
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(manifest.len() as u64));
    let body = read_until_cut(&mut raw, t);
    assert!(body.len() < manifest.len(), "a cut body looked complete");
    assert_eq!(&body[..], &manifest[..body.len()]);

    // Still serving, on both workers.
    assert!(relay.alive(), "the relay died: {}", relay.stderr());
    for _ in 0..4 {
        let mut c = relay.client();
        let r = c.get("/v2/library/split/manifests/1").unwrap();
        assert_eq!(r.status, 200);
    }
}

// ---------------------------------------------------------------------------
// cut and malformed upstream responses
// ---------------------------------------------------------------------------

#[test]
fn blob_cut_by_the_cdn_is_never_completed_and_a_retry_succeeds() {
    let hub = hub();
    let (relay, mut c, tok) = relay_with_alpine_token(&hub);
    let size = 4 << 20;
    let digest = hub.add_random_blob("library/alpine", size, 0x5eed_0007);
    let target = format!("/v2/library/alpine/blobs/{digest}");

    hub.knobs().cut_blobs_after(1 << 20, Some(1));
    let mut raw = Raw::get_with_token(relay.http, &target, &tok);
    let head = raw.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(size as u64));
    let (body, end) = raw.read_to_end(Duration::from_secs(8));
    assert_ne!(end, End::Open, "the relay must close a cut transfer");
    assert!(
        body.len() < size,
        "a cut body looked complete ({} bytes)",
        body.len()
    );
    assert!(
        body.len() <= 1 << 20,
        "more bytes than the CDN sent: {}",
        body.len()
    );
    let blob = hub.content().blob(&digest).unwrap();
    assert_eq!(
        &body[..],
        &blob[..body.len()],
        "the bytes that came are right"
    );

    let r = get_auth(&mut c, &target, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), size);
    assert_eq!(sha256(&r.body), digest);
}

#[test]
fn malformed_upstream_response_is_502() {
    let routes = vec![
        Canned {
            path: "/v2/library/badlen/manifests/latest".into(),
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n{}".to_vec(),
            after: After::KeepAlive,
        },
        Canned {
            path: "/v2/library/nothttp/manifests/latest".into(),
            bytes: b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
            after: After::Close,
        },
        Canned {
            path: "/v2/library/twolengths/manifests/latest".into(),
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
            after: After::KeepAlive,
        },
    ];
    let fake = FakeUpstream::start(routes);
    let mut relay = Relay::start_with(&config_with_upstream(&fake.url()));
    let mut c = relay.client();
    for name in ["badlen", "nothttp", "twolengths"] {
        let r = c
            .get(&format!("/v2/library/{name}/manifests/latest"))
            .unwrap();
        assert_eq!(r.status, 502, "{name}: {}", r.text());
        assert_eq!(error_code(&r.body), "UNAVAILABLE");
        assert!(!r.text().contains("127.0.0.1"), "{}", r.text());
    }
    assert!(relay.alive());
}
