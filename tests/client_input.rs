//! What clients send the relay, and what it answers: oversized, malformed
//! and non-HTTP request heads, ambiguous body framing, invalid names, tags
//! and digests, writes to a read-only mirror, pipelining, HTTP/1.0 and HEAD,
//! and token POST bodies (chunked, `Expect: 100-continue`, pipelined).
//!
//! Every test starts its own Docker Hub double and its own ocirelay process
//! (see `common/`), talks to it over loopback only, and bounds every wait
//! with a timeout.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// request heads: oversized, malformed, not HTTP
// ---------------------------------------------------------------------------

#[test]
fn oversized_request_head_is_431_json_and_closed() {
    let hub = hub();
    let relay = Relay::start(&hub);

    // One huge header line (default max_header_bytes is 16384), sent whole.
    let big = "a".repeat(20_000);
    let (bytes, end) = Raw::one_shot(
        relay.http,
        &request("GET", "/v2/", &[("X-Big", &big)]),
        Duration::from_secs(5),
    );
    let r = assert_error_then_close(&bytes, end, 431);
    assert_eq!(error_code(&r.body), "UNKNOWN");

    // A head that never ends: the relay must not wait for the blank line.
    let mut raw = Raw::connect(relay.http);
    let mut endless = b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\n".to_vec();
    for i in 0..2000 {
        endless.extend_from_slice(format!("X-Filler-{i}: yyyyyyyy\r\n").as_bytes());
    }
    let _ = raw.s.write_all(&endless[..16 * 1024]);
    let (bytes, end) = raw.read_to_end(Duration::from_secs(5));
    assert_error_then_close(&bytes, end, 431);

    // Too many header lines, though few bytes.
    let mut many = b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let (bytes, end) = Raw::one_shot(relay.http, &many, Duration::from_secs(5));
    assert_error_then_close(&bytes, end, 431);

    assert!(
        hub.log().for_host(Host::Registry).is_empty(),
        "nothing goes upstream"
    );
}

#[test]
fn oversized_head_with_unread_bytes_still_delivers_its_431() {
    let hub = hub();
    let relay = Relay::start(&hub);
    // The relay stops reading at max_header_bytes and closes with bytes
    // unread; the client must still be able to read the 431 (no reset first).
    for _ in 0..10 {
        let mut raw = Raw::connect(relay.http);
        let big = "a".repeat(64 * 1024);
        let _ = raw.s.write_all(&request("GET", "/v2/", &[("X-Big", &big)]));
        let (bytes, end) = raw.read_to_end(Duration::from_secs(5));
        assert_error_then_close(&bytes, end, 431);
    }
}

#[test]
fn malformed_request_head_is_400_and_closed() {
    let hub = hub();
    let mut relay = Relay::start(&hub);
    let cases: [&[u8]; 4] = [
        b"\x00\x01\x02 garbage \xff\xfe\r\n\r\n",
        b"GET /v2/ HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
    ];
    for case in cases {
        let (bytes, end) = Raw::one_shot(relay.http, case, Duration::from_secs(5));
        assert!(
            !bytes.is_empty(),
            "no answer to {:?}",
            String::from_utf8_lossy(case)
        );
        assert_error_then_close(&bytes, end, 400);
    }
    assert!(relay.alive());
    assert!(hub.log().is_empty(), "nothing goes upstream");
}

/// skopeo and podman try https first on an insecure registry: a TLS
/// ClientHello on the plain port must be refused at once, not after the
/// header timeout, so that they fall back to http without a 10 s stall.
#[test]
fn tls_client_hello_on_the_plain_port_is_refused_at_once() {
    let hub = hub();
    let relay = Relay::start_with(&config_with_timeouts(
        &hub,
        "",
        Timeouts {
            client_header: 20,
            ..Timeouts::default()
        },
    ));
    let mut raw = relay.client();
    let started = Instant::now();
    raw.write_raw(&[
        0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03,
    ])
    .unwrap();
    let got = raw.read_raw(Duration::from_secs(5)).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(!raw.is_connected());
    // Requests after empty lines are still fine.
    let mut ok = relay.client();
    ok.write_raw(b"\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = ok.read_response(false).unwrap();
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------
// body framing
// ---------------------------------------------------------------------------

#[test]
fn ambiguous_body_framing_is_400_and_closed() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let cases: [&[u8]; 5] = [
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ];
    for case in cases {
        let (bytes, end) = Raw::one_shot(relay.http, case, Duration::from_secs(5));
        assert_error_then_close(&bytes, end, 400);
    }
    // Also a GET carrying both (smuggling attempt) on a kept-alive connection:
    // the request behind it must not be answered.
    let mut raw = Raw::connect(relay.http);
    raw.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let first = raw.read_response(false).unwrap();
    assert_eq!(first.status, 200);
    let (bytes, end) = raw.read_to_end(Duration::from_secs(5));
    assert_error_then_close(&bytes, end, 400);
    assert!(hub.log().is_empty(), "nothing goes upstream");
}

// ---------------------------------------------------------------------------
// invalid names, tags, digests
// ---------------------------------------------------------------------------

#[test]
fn invalid_name_tag_or_digest_is_400_and_never_sent_upstream() {
    let hub = hub();
    let relay = Relay::start(&hub);
    hub.log().clear();
    let long_tag = "t".repeat(129);
    let zeros = "0".repeat(64);
    let cases: Vec<(String, &str)> = vec![
        ("/v2/Library/Alpine/manifests/latest".into(), "NAME_INVALID"),
        ("/v2/library/../etc/manifests/latest".into(), "NAME_INVALID"),
        (
            "/v2/library//alpine/manifests/latest".into(),
            "NAME_INVALID",
        ),
        ("/v2/-alpine/tags/list".into(), "NAME_INVALID"),
        (
            "/v2/library%2falpine/manifests/latest".into(),
            "NAME_INVALID",
        ),
        (
            format!("/v2/{}/manifests/latest", "a".repeat(300)),
            "NAME_INVALID",
        ),
        ("/v2/library/alpine/manifests/-latest".into(), "TAG_INVALID"),
        ("/v2/library/alpine/manifests/.hidden".into(), "TAG_INVALID"),
        (
            format!("/v2/library/alpine/manifests/{long_tag}"),
            "TAG_INVALID",
        ),
        (
            "/v2/library/alpine/manifests/la%20test".into(),
            "TAG_INVALID",
        ),
        ("/v2/library/alpine/blobs/latest".into(), "DIGEST_INVALID"),
        (
            "/v2/library/alpine/blobs/sha256:xyz".into(),
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/library/alpine/blobs/sha256:{}", "A".repeat(64)),
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/library/alpine/blobs/sha256:{}", &zeros[..63]),
            "DIGEST_INVALID",
        ),
        (
            "/v2/library/alpine/manifests/sha256:abc".into(),
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/library/alpine/referrers/SHA256:{zeros}"),
            "DIGEST_INVALID",
        ),
    ];
    let mut c = relay.client();
    for (target, code) in &cases {
        for method in ["GET", "HEAD"] {
            let r = c
                .request(method, target, &[], None)
                .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
            assert_eq!(r.status, 400, "{method} {target}: {}", r.text());
            if method == "GET" {
                assert_eq!(error_code(&r.body), *code, "{target}: {}", r.text());
                assert_eq!(r.header("content-type"), Some("application/json"));
            } else {
                assert!(r.body.is_empty());
                assert!(r.content_length().is_some_and(|n| n > 0));
            }
        }
    }
    assert_eq!(
        c.connections_opened(),
        1,
        "a 400 for a bad name keeps the connection"
    );
    let logged: Vec<String> = hub
        .log()
        .entries()
        .iter()
        .map(|e| format!("{} {} {}", e.host.label(), e.method, e.target))
        .collect();
    assert!(
        logged.is_empty(),
        "invalid requests reached the upstream: {logged:?}"
    );
}

// ---------------------------------------------------------------------------
// writes
// ---------------------------------------------------------------------------

#[test]
fn writes_are_refused_with_405_unsupported() {
    let hub = hub();
    let relay = Relay::start(&hub);
    hub.log().clear();
    let d = &hub.seeded().alpine.layers[0].digest;
    let manifest = hub.seeded().alpine.manifest_bytes.clone();
    let cases: Vec<(&str, String, Option<&[u8]>)> = vec![
        (
            "PUT",
            "/v2/library/alpine/manifests/latest".into(),
            Some(&manifest[..]),
        ),
        ("POST", "/v2/library/alpine/blobs/uploads/".into(), None),
        (
            "POST",
            format!("/v2/library/alpine/blobs/uploads/?mount={d}&from=library/x"),
            Some(b""),
        ),
        (
            "PATCH",
            "/v2/library/alpine/blobs/uploads/abc".into(),
            Some(b"data"),
        ),
        (
            "PUT",
            format!("/v2/library/alpine/blobs/uploads/abc?digest={d}"),
            Some(b"data"),
        ),
        ("DELETE", format!("/v2/library/alpine/blobs/{d}"), None),
        ("DELETE", "/v2/library/alpine/manifests/latest".into(), None),
        ("GET", "/v2/library/alpine/blobs/uploads/abc".into(), None),
    ];
    for (method, target, body) in &cases {
        let mut c = relay.client();
        let headers: &[(&str, &str)] = if body.is_some() {
            &[(
                "Content-Type",
                "application/vnd.docker.distribution.manifest.v2+json",
            )]
        } else {
            &[]
        };
        let r = c
            .request(method, target, headers, *body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        assert_eq!(r.status, 405, "{method} {target}: {}", r.text());
        assert_eq!(error_code(&r.body), "UNSUPPORTED", "{method} {target}");
        let msg = error_message(&r.body);
        assert!(
            msg.contains("read-only mirror"),
            "{method} {target}: message {msg:?}"
        );
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    assert!(hub.log().is_empty(), "a write reached the upstream");
}

// ---------------------------------------------------------------------------
// pipelining
// ---------------------------------------------------------------------------

#[test]
fn pipelined_requests_are_answered_in_order_and_close_is_honoured() {
    let hub = hub();
    let (relay, _c, tok) = relay_with_alpine_token(&hub);
    let auth = format!("Bearer {tok}");
    let alpine = &hub.seeded().alpine;

    let mut pipeline = request("GET", "/healthz", &[]);
    pipeline.extend(request(
        "GET",
        "/v2/library/alpine/manifests/latest",
        &[("Authorization", &auth)],
    ));
    pipeline.extend(request(
        "HEAD",
        &format!("/v2/library/alpine/blobs/{}", alpine.config.digest),
        &[("Authorization", &auth)],
    ));
    pipeline.extend(request("GET", "/v2/", &[("Connection", "close")]));
    // After the close: must never be answered.
    pipeline.extend(request("GET", "/healthz", &[]));

    let mut raw = Raw::connect(relay.http);
    raw.send(&pipeline);
    let r1 = raw.read_response(false).unwrap();
    assert_eq!((r1.status, r1.text().as_str()), (200, "ok\n"));
    let r2 = raw.read_response(false).unwrap();
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_eq!(
        r2.header("docker-content-digest"),
        Some(alpine.manifest.digest.as_str())
    );
    assert_eq!(r2.body, alpine.manifest_bytes);
    let r3 = raw.read_response(true).unwrap();
    assert_eq!(r3.status, 200);
    assert_eq!(r3.content_length(), Some(alpine.config.size));
    let r4 = raw.read_response(false).unwrap();
    assert_eq!(r4.status, 401, "{}", r4.text());
    assert!(r4.header("www-authenticate").is_some());
    assert!(r4.closes(), "Connection: close is echoed");
    let (rest, end) = raw.read_to_end(Duration::from_secs(5));
    assert!(
        rest.is_empty(),
        "bytes after the closing response: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_ne!(
        end,
        End::Open,
        "the relay must close after Connection: close"
    );
}

// ---------------------------------------------------------------------------
// HTTP/1.0 and HEAD
// ---------------------------------------------------------------------------

#[test]
fn http10_client_gets_a_complete_response_and_a_close() {
    let hub = hub();
    let (relay, _c, tok) = relay_with_alpine_token(&hub);
    let alpine = &hub.seeded().alpine;

    for (target, want) in [
        (
            "/v2/library/alpine/manifests/latest".to_string(),
            alpine.manifest_bytes.clone(),
        ),
        (
            format!("/v2/library/alpine/blobs/{}", alpine.layers[0].digest),
            hub.content()
                .blob(&alpine.layers[0].digest)
                .unwrap()
                .to_vec(),
        ),
        ("/healthz".to_string(), b"ok\n".to_vec()),
    ] {
        let (bytes, end) = Raw::one_shot(
            relay.http,
            format!("GET {target} HTTP/1.0\r\nAuthorization: Bearer {tok}\r\n\r\n").as_bytes(),
            Duration::from_secs(8),
        );
        assert_ne!(
            end,
            End::Open,
            "{target}: HTTP/1.0 without keep-alive must close"
        );
        let r = parse_one(&bytes);
        assert_eq!(r.status, 200, "{target}");
        assert!(r.header("transfer-encoding").is_none(), "{target}");
        assert_eq!(r.content_length(), Some(want.len() as u64), "{target}");
        assert_eq!(r.body, want, "{target}: complete body, nothing more");
    }
}

/// RFC 9112 §6.1: a server must not send `Transfer-Encoding` to an HTTP/1.0
/// client. The double sends tag lists chunked.
#[test]
fn http10_client_never_gets_a_chunked_response() {
    let hub = hub();
    let (relay, mut c, tok) = relay_with_alpine_token(&hub);
    // Sanity: through HTTP/1.1 the tag list is chunked.
    let r = get_auth(&mut c, "/v2/library/alpine/tags/list", &tok);
    assert_eq!(r.status, 200);
    assert!(r.chunked, "the double's tag list is expected chunked");

    let (bytes, end) = Raw::one_shot(
        relay.http,
        format!("GET /v2/library/alpine/tags/list HTTP/1.0\r\nAuthorization: Bearer {tok}\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(8),
    );
    assert_ne!(end, End::Open, "HTTP/1.0 without keep-alive must close");
    let r = parse_one(&bytes);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("transfer-encoding"),
        None,
        "chunked sent to an HTTP/1.0 client: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("body is not the tag list ({e}): {:?}", r.text()));
    assert_eq!(v["name"], "library/alpine");
}

#[test]
fn head_responses_carry_content_length_and_no_body() {
    let hub = hub();
    let (relay, _c, tok) = relay_with_alpine_token(&hub);
    let auth = format!("Bearer {tok}");
    let alpine = &hub.seeded().alpine;
    let layer = &alpine.layers[0];

    // Each HEAD is followed on the same connection by a GET /healthz: any
    // body bytes after a HEAD head would break the next response's parse.
    let cases: Vec<(String, u64, Option<&str>, u16)> = vec![
        (
            "/v2/library/alpine/manifests/latest".into(),
            alpine.manifest.size,
            Some(alpine.manifest.digest.as_str()),
            200,
        ),
        (
            format!("/v2/library/alpine/blobs/{}", layer.digest),
            layer.size,
            None,
            200,
        ),
        ("/healthz".into(), 3, None, 200),
        ("/v2/library/alpine/manifests/nope".into(), 0, None, 404),
        ("/v2/Bad/manifests/latest".into(), 0, None, 400),
    ];
    let mut raw = Raw::connect(relay.http);
    for (target, len, digest, status) in &cases {
        let mut two = request("HEAD", target, &[("Authorization", &auth)]);
        two.extend(request("GET", "/healthz", &[]));
        raw.send(&two);
        let h = raw.read_response(true).unwrap();
        assert_eq!(h.status, *status, "HEAD {target}");
        let cl = h.content_length();
        assert!(cl.is_some(), "HEAD {target} without Content-Length");
        if *status == 200 {
            assert_eq!(cl, Some(*len), "HEAD {target}");
        }
        if let Some(d) = digest {
            assert_eq!(h.header("docker-content-digest"), Some(*d));
        }
        let next = raw.read_response(false).unwrap();
        assert_eq!(
            (next.status, next.text().as_str()),
            (200, "ok\n"),
            "after HEAD {target}"
        );
    }
    let logged: Vec<_> = hub
        .log()
        .entries()
        .into_iter()
        .filter(|e| e.target.contains("/manifests/latest") && e.has_bearer_auth())
        .map(|e| e.method)
        .collect();
    assert!(
        logged.iter().all(|m| m == "HEAD"),
        "HEAD stays HEAD upstream: {logged:?}"
    );
    assert!(!logged.is_empty());
}

// ---------------------------------------------------------------------------
// token POST bodies
// ---------------------------------------------------------------------------

const TOKEN_FORM: &str = "grant_type=password&service=registry.docker.io&scope=repository%3Aalpine%3Apull&client_id=robustness&username=alice&password=wonderland";

/// Checks a token response and that the token pulls through the relay.
fn assert_token_works(relay: &Relay, r: &Response) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("token JSON");
    let tok = v["access_token"].as_str().expect("access_token");
    let mut c = relay.client();
    let m = get_auth(&mut c, "/v2/alpine/manifests/latest", tok);
    assert_eq!(m.status, 200, "{}", m.text());
}

/// Sends a token POST of [`TOKEN_FORM`] with a chunked body in two chunks
/// 300 ms apart (`ext` after the first chunk's size), and `after` right
/// behind the last chunk.
fn send_token_form_in_two_chunks(raw: &mut Raw, ext: &str, after: &[u8]) {
    let (a, b) = TOKEN_FORM.split_at(40);
    let mut first = request(
        "POST",
        "/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Transfer-Encoding", "chunked"),
        ],
    );
    first.extend_from_slice(format!("{:x}{ext}\r\n{a}\r\n", a.len()).as_bytes());
    raw.send(&first);
    std::thread::sleep(Duration::from_millis(300));
    let mut rest = format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len()).into_bytes();
    rest.extend_from_slice(after);
    raw.send(&rest);
}

#[test]
fn token_post_with_a_chunked_body_works() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut raw = Raw::connect(relay.http);
    send_token_form_in_two_chunks(&mut raw, ";ext=1", &[]);
    let r = raw.read_response(false).unwrap();
    assert_token_works(&relay, &r);
    let posted: Vec<_> = hub
        .log()
        .for_host(Host::Token)
        .into_iter()
        .filter(|e| e.method == "POST")
        .collect();
    assert_eq!(posted.len(), 1);
    let body = String::from_utf8_lossy(&posted[0].body).into_owned();
    assert!(
        body.contains("grant_type=password") && body.contains("username=alice"),
        "{body}"
    );
    assert!(
        body.contains("library%2Falpine") || body.contains("library/alpine"),
        "scope mapped to library/: {body}"
    );
    // The connection is still usable after a chunked body.
    raw.send(&request("GET", "/healthz", &[]));
    let h = raw.read_response(false).unwrap();
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
}

#[test]
fn token_post_with_expect_100_continue_works() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let len = TOKEN_FORM.len().to_string();
    // docker login credentials ride along and must reach the token host.
    let basic = basic_auth("alice", "wonderland");
    for chunked in [false, true] {
        let mut raw = Raw::connect(relay.http);
        let framing = if chunked {
            ("Transfer-Encoding", "chunked")
        } else {
            ("Content-Length", len.as_str())
        };
        raw.send(&request(
            "POST",
            "/token",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                framing,
                ("Expect", "100-continue"),
                ("Authorization", &basic),
            ],
        ));
        // The body is only sent after the interim response.
        let interim = raw.read_head().expect("100 Continue");
        assert_eq!(interim.status, 100, "chunked={chunked}");
        if chunked {
            raw.send(format!("{:x}\r\n{TOKEN_FORM}\r\n0\r\n\r\n", TOKEN_FORM.len()).as_bytes());
        } else {
            raw.send(TOKEN_FORM.as_bytes());
        }
        let r = raw.read_response(false).unwrap();
        assert_token_works(&relay, &r);
        raw.send(&request("GET", "/healthz", &[]));
        let h = raw.read_response(false).unwrap();
        assert_eq!(h.status, 200, "chunked={chunked}");
    }
    let posts: Vec<_> = hub
        .log()
        .for_host(Host::Token)
        .into_iter()
        .filter(|e| e.method == "POST")
        .collect();
    assert_eq!(posts.len(), 2);
    assert!(posts.iter().all(|e| e.has_basic_auth()));
    assert!(posts
        .iter()
        .all(|e| e.body.starts_with(b"grant_type=password")));
}

#[test]
fn chunked_token_post_followed_by_a_pipelined_request_is_answered() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut raw = Raw::connect(relay.http);
    send_token_form_in_two_chunks(&mut raw, "", &request("GET", "/healthz", &[]));
    let r = raw.read_response(false).expect("an answer to the POST");
    assert_token_works(&relay, &r);
}
