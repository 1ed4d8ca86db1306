//! Broken upstreams with the cache on (issue 12, hardening item 8): an
//! upstream that resets mid-head or mid-body, stalls after the head, sends a
//! 200 whose length is wrong (short or long), a chunked body that never
//! ends, bytes after a complete body, a redirect loop, a 5xx storm, a CDN
//! 403 for an expired signed URL, or a TLS alert mid-body. For each:
//!
//! - the client gets a clean error: a JSON error status when no head went
//!   out yet, else a connection that ends before the body looks complete
//!   (never a wrong byte presented as complete);
//! - the pool is not poisoned: a good request right after, on the same (one)
//!   worker, is answered whole;
//! - nothing wrong is served or cached: no object for the broken digest,
//!   no partial file left, and the same request goes upstream again.
//!
//! (`upstream_faults.rs` has the same faults without the cache, and the
//! stalls and cuts timed; `cache_faults.rs` cuts shared by followers.)

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

/// A blob large enough that its head goes to the client before its body
/// is all there (small bodies are gathered first).
const BLOB: usize = 256 << 10;

/// One worker (so that "the next request" reuses the same pool), the cache
/// on in `dir`, the fake as Docker Hub. Not `serve_stale`: an anonymous
/// request the upstream failed would get the offline challenge (a 401, see
/// `cache_offline.rs`) instead of the error under test.
fn relay_for(fake: &FakeUpstream, dir: &Path) -> Relay {
    let config = config_with_upstream(&fake.url())
        .replace("workers = 2\n", "workers = 1\n")
        .replace(
            "debug = true\n",
            &format!(
                "debug = true\n[cache]\nenabled = true\nserve_stale = false\ndir = \"{}\"\n",
                dir.display()
            ),
        );
    assert!(config.contains("workers = 1") && config.contains("[cache]"));
    Relay::start_with(&config)
}

fn blob(seed: u64) -> (Vec<u8>, String) {
    let data = hubdouble::random_bytes(BLOB, seed).to_vec();
    let digest = sha256(&data);
    (data, digest)
}

fn blob_path(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

fn ok_head(len: usize) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n")
        .into_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// What the client saw of a broken transfer. Either an error status before
/// any body (JSON, as the registry API has it), or a 200 whose body ended
/// (connection cut) before its framing said it was complete, with only
/// bytes of `good` (when the upstream sent a true prefix).
fn assert_clean_failure(relay: &Relay, path: &str, good: Option<&[u8]>, case: &str) {
    let mut raw = Raw::connect(relay.http);
    raw.send(&request("GET", path, &[]));
    let head = match raw.read_head() {
        Ok(h) => h,
        Err(e) => panic!("{case}: no head at all: {e}"),
    };
    if head.status != 200 {
        assert!(head.status >= 500, "{case}: {}", head.status);
        let r = raw.read_response_body_after(head).unwrap();
        assert_eq!(r.header("content-type"), Some("application/json"), "{case}");
        error_code(&r.body);
        return;
    }
    let (body, end) = raw.read_to_end(Duration::from_secs(8));
    assert_ne!(end, End::Open, "{case}: the client was left hanging");
    match head.content_length() {
        Some(len) => assert!(
            (body.len() as u64) < len,
            "{case}: a broken body looked complete ({} of {len})",
            body.len()
        ),
        None => {
            assert_eq!(head.header("transfer-encoding"), Some("chunked"), "{case}");
            assert!(
                !body.ends_with(b"0\r\n\r\n"),
                "{case}: a broken chunked body was ended as complete"
            );
        }
    }
    if let (Some(good), Some(_)) = (good, head.content_length()) {
        let n = body.len().min(good.len());
        assert_eq!(&body[..n], &good[..n], "{case}: wrong bytes");
    }
}

/// A broken answer: its name, the blob, the blob's digest, the canned
/// response, what the fake does after it.
type Case = (&'static str, Vec<u8>, String, Vec<u8>, After);

#[test]
fn broken_blob_responses_are_never_completed_cached_or_left_in_the_pool() {
    let (good, good_digest) = blob(0x600d);
    let good_path = blob_path("library/good", &good_digest);
    let half = BLOB / 2;

    let mut cases: Vec<Case> = Vec::new();
    let mut add = |case, seed, make: &dyn Fn(&[u8]) -> Vec<u8>, after| {
        let (data, digest) = blob(seed);
        let bytes = make(&data);
        cases.push((case, data, digest, bytes, after));
    };
    add(
        "reset mid-head",
        1,
        &|_| b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(),
        After::Reset,
    );
    add(
        "closed mid-head",
        2,
        &|_| b"HTTP/1.1 200 OK\r\nContent-Type: app".to_vec(),
        After::Close,
    );
    add(
        "reset mid-body",
        3,
        &|d| cat(&[&ok_head(d.len()), &d[..half]]),
        After::Reset,
    );
    add(
        "stall after the head",
        4,
        &|d| ok_head(d.len()),
        After::Hold,
    );
    add(
        "200 shorter than its length, then closed",
        5,
        &|d| cat(&[&ok_head(d.len()), &d[..half]]),
        After::Close,
    );
    add(
        "length short of the blob",
        6,
        &|d| cat(&[&ok_head(d.len() - 100), &d[..d.len() - 100]]),
        After::KeepAlive,
    );
    add(
        "length past the blob, padded",
        7,
        &|d| cat(&[&ok_head(d.len() + 100), d, &[b'x'; 100]]),
        After::KeepAlive,
    );
    add(
        "chunked, never ended",
        8,
        &|d| {
            let mut r = chunked_response(&sha256(d), d, 16 << 10);
            r.truncate(r.len() - b"0\r\n\r\n".len());
            r
        },
        After::Hold,
    );
    add(
        "chunked, cut between chunks",
        9,
        &|d| {
            let r = chunked_response(&sha256(d), d, 16 << 10);
            r[..r.len() / 2].to_vec()
        },
        After::Close,
    );

    let mut routes = vec![Canned {
        path: good_path.clone(),
        bytes: cat(&[&ok_head(good.len()), &good]),
        after: After::KeepAlive,
    }];
    for (i, (_, _, digest, bytes, after)) in cases.iter().enumerate() {
        routes.push(Canned {
            path: blob_path(&format!("library/broken{i}"), digest),
            bytes: bytes.clone(),
            after: *after,
        });
    }
    let fake = FakeUpstream::start(routes);
    let dir = tempdir::Dir::new("broken-upstreams");
    let mut relay = relay_for(&fake, dir.path());
    let mut c = relay.client();

    for (i, (case, data, digest, _, _)) in cases.iter().enumerate() {
        let path = blob_path(&format!("library/broken{i}"), digest);
        let truthful = !case.contains("padded");
        for attempt in 0..2 {
            let before = fake.requests.load(Ordering::SeqCst);
            assert_clean_failure(&relay, &path, truthful.then_some(&data[..]), case);
            assert!(
                fake.requests.load(Ordering::SeqCst) > before,
                "{case} (attempt {attempt}): answered without asking the upstream"
            );
            // The pool is not poisoned: the next request on this worker.
            let r = c.get(&good_path).unwrap();
            assert_eq!(r.status, 200, "{case}: after it: {}", r.text());
            assert_eq!(sha256(&r.body), good_digest, "{case}: after it");
        }
        // Nothing of it stored, nothing left half-written.
        let hex = digest.trim_start_matches("sha256:");
        assert!(
            wait_until(Duration::from_secs(5), || {
                files_under(dir.path()).iter().all(|p| {
                    !p.to_string_lossy().contains(hex) && !p.starts_with(dir.path().join("tmp"))
                })
            }),
            "{case}: left in the cache: {:?}",
            files_under(dir.path())
        );
    }
    assert!(relay.alive(), "{}", relay.stderr());
    // The good blob was stored once and is served from disk.
    let r = c.get(&good_path).unwrap();
    assert_eq!(sha256(&r.body), good_digest);
}

/// An upstream that sends bytes after a complete body: the body is right
/// and served, but the connection must not go back to the pool, where the
/// extra bytes (here a whole other manifest) would be read as the next
/// request's answer: a manifest by tag has no digest to catch it.
#[test]
fn bytes_after_a_complete_body_do_not_answer_the_next_request() {
    let manifest = |pad: &str| {
        format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"layers\":[],\"pad\":\"{pad}\"}}",
            hubdouble::OCI_MANIFEST
        )
        .into_bytes()
    };
    let (good, evil, first) = (manifest("good"), manifest("evil"), manifest("first"));
    let evil_answer = length_response(hubdouble::OCI_MANIFEST, &sha256(&evil), &evil);
    let (data, digest) = blob(0xe57a);
    let blob_path = blob_path("library/trailing", &digest);
    let tag_path = "/v2/library/trailing/manifests/latest";
    let good_path = "/v2/library/good/manifests/latest";
    let fake = FakeUpstream::start(vec![
        Canned {
            path: blob_path.clone(),
            bytes: cat(&[&ok_head(data.len()), &data, &evil_answer]),
            after: After::KeepAlive,
        },
        Canned {
            path: tag_path.into(),
            bytes: cat(&[
                &length_response(hubdouble::OCI_MANIFEST, &sha256(&first), &first),
                &evil_answer,
            ]),
            after: After::KeepAlive,
        },
        Canned {
            path: good_path.into(),
            bytes: length_response(hubdouble::OCI_MANIFEST, &sha256(&good), &good),
            after: After::KeepAlive,
        },
        Canned {
            path: "/v2/library/good2/manifests/latest".into(),
            bytes: length_response(hubdouble::OCI_MANIFEST, &sha256(&good), &good),
            after: After::KeepAlive,
        },
    ]);
    let dir = tempdir::Dir::new("trailing-bytes");
    let relay = relay_for(&fake, dir.path());
    let mut c = relay.client();
    let r = c.get(&blob_path).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), digest);
    let r = c.get(good_path).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, good, "answered with the bytes after the blob");
    let r = c.get(tag_path).unwrap();
    assert_eq!(r.body, first);
    // (The good tag is cached now: another one, not yet seen.)
    let r = c.get("/v2/library/good2/manifests/latest").unwrap();
    assert_eq!(r.body, good, "answered with the bytes after the manifest");
}

#[test]
fn a_redirect_loop_ends_in_a_502_after_a_bounded_number_of_hops() {
    let (_, digest) = blob(0x100b);
    let path = blob_path("library/loop", &digest);
    let (good, good_digest) = blob(0x600d);
    let good_path = blob_path("library/good", &good_digest);
    let fake = FakeUpstream::start(vec![
        Canned {
            path: path.clone(),
            bytes:
                b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /loop/b\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            after: After::KeepAlive,
        },
        Canned {
            path: "/loop/b".into(),
            bytes: format!("HTTP/1.1 302 Found\r\nLocation: {path}\r\nContent-Length: 0\r\n\r\n")
                .into_bytes(),
            after: After::KeepAlive,
        },
        Canned {
            path: good_path.clone(),
            bytes: cat(&[&ok_head(good.len()), &good]),
            after: After::KeepAlive,
        },
    ]);
    let dir = tempdir::Dir::new("redirect-loop");
    let relay = relay_for(&fake, dir.path());
    let mut c = relay.client();
    let r = c.get(&path).unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(error_code(&r.body), "UNAVAILABLE");
    let hops = fake.requests.load(Ordering::SeqCst);
    assert!((2..=12).contains(&hops), "{hops} upstream requests");
    let r = c.get(&good_path).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), good_digest);
}

#[test]
fn an_expired_signed_url_is_an_error_and_the_next_pull_signs_again() {
    let hub = hub();
    let dir = tempdir::Dir::new("expired-url");
    let relay = Relay::start_with(&config_with_cache(&hub, dir.path()));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let digest = hub.add_random_blob("library/alpine", BLOB, 0xe8b1);
    let path = blob_path("library/alpine", &digest);

    hub.knobs().set_cdn_signature_ttl(-60);
    let r = get_auth(&mut c, &path, &tok);
    // The CDN's own refusal (403, its XML) is passed on, not a body.
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        cdn_downloads(&hub, &digest),
        1,
        "the relay did reach the CDN"
    );
    assert!(
        files_under(&dir.path().join("blobs")).is_empty(),
        "{:?}",
        files_under(dir.path())
    );

    hub.knobs().set_cdn_signature_ttl(600);
    let r = get_auth(&mut c, &path, &tok);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256(&r.body), digest);
    assert_eq!(
        cdn_downloads(&hub, &digest),
        2,
        "a new signed URL was asked for"
    );
}

#[test]
fn a_5xx_storm_passes_and_leaves_nothing_behind() {
    let hub = hub();
    let dir = tempdir::Dir::new("5xx-storm");
    let relay = Relay::start_with(&config_with_cache(&hub, dir.path()));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let digest = hub.add_random_blob("library/alpine", BLOB, 0x5707);
    let path = blob_path("library/alpine", &digest);
    let manifest = "/v2/library/alpine/manifests/latest";

    // The CDN last: the manifest it does not serve is cached by then.
    for (host, status) in [
        (Host::Registry, 503),
        (Host::Registry, 502),
        (Host::Cdn, 500),
    ] {
        hub.knobs().inject_status(host, status, 1000);
        let targets = match host {
            Host::Cdn => vec![path.as_str()],
            _ => vec![manifest, path.as_str()],
        };
        for target in targets {
            for _ in 0..20 {
                let r = get_auth(&mut c, target, &tok);
                assert!(
                    r.status >= 500,
                    "{target} in a {status} storm: {}",
                    r.status
                );
                assert_eq!(r.header("content-type"), Some("application/json"));
                error_code(&r.body);
            }
        }
        hub.knobs().inject_status(host, status, 0);
        assert!(
            files_under(&dir.path().join("blobs")).is_empty(),
            "{:?}",
            files_under(dir.path())
        );
    }
    assert_eq!(
        c.connections_opened(),
        1,
        "errors kept the client connection"
    );
    let r = get_auth(&mut c, manifest, &tok);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(hub.seeded().alpine.manifest.digest.as_str())
    );
    let r = get_auth(&mut c, &path, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), digest);
}

/// A TLS upstream that, after a head and part of a body, sends a fatal
/// alert (sealed like any record, so the relay's record layer opens it) and
/// keeps the connection open. `good` and the alert path are served on any
/// connection; the alert path's blob is `data` with its digest.
fn alerting_upstream(dir: &Path, data: Vec<u8>, good: Vec<u8>) -> std::net::SocketAddr {
    use ocirelay::tls::record::{RecordCipher, Version, ALERT, APPLICATION_DATA};
    use std::io::{Read, Write};

    write_test_ca(dir);
    let certs = rustls_pemfile::certs(&mut &std::fs::read(dir.join("cert.pem")).unwrap()[..])
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(dir.join("key.pem")).unwrap()[..])
        .unwrap()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.enable_secret_extraction = true;
    config.send_tls13_tickets = 0;
    let config = std::sync::Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // Bounded: the test makes a handful of connections.
        for tcp in listener.incoming().take(16) {
            let Ok(mut tcp) = tcp else { continue };
            let (config, data, good) = (config.clone(), data.clone(), good.clone());
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut tls = rustls::ServerConnection::new(config).unwrap();
                let mut req = Vec::new();
                // Handshake, then the request head (one per connection: the
                // relay's pool takes a fresh one after a cut).
                while head_len(&req).is_none() {
                    if tls.complete_io(&mut tcp).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    match tls.reader().read(&mut buf) {
                        Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                        Ok(_) => return,
                        Err(_) => {}
                    }
                }
                let alerting = String::from_utf8_lossy(&req).contains("/alert/");
                if !alerting {
                    // In pieces: rustls buffers 64 KiB of plaintext at most.
                    for piece in cat(&[&ok_head(good.len()), &good]).chunks(16 << 10) {
                        if tls.writer().write_all(piece).is_err() {
                            return;
                        }
                        while tls.wants_write() {
                            if tls.write_tls(&mut tcp).is_err() {
                                return;
                            }
                        }
                    }
                    let _ = tcp.read(&mut [0u8; 1]); // until the relay closes it
                    return;
                }
                while tls.wants_write() {
                    let _ = tls.write_tls(&mut tcp);
                }
                let secrets = tls.dangerous_extract_secrets().unwrap();
                let mut tx = RecordCipher::new(Version::Tls13, secrets.tx).unwrap();
                let mut out = Vec::new();
                let part = cat(&[&ok_head(data.len()), &data[..data.len() / 2]]);
                for piece in part.chunks(16 << 10) {
                    tx.seal(APPLICATION_DATA, piece, &mut out).unwrap();
                }
                // Fatal internal_error.
                tx.seal(ALERT, &[2, 80], &mut out).unwrap();
                let _ = tcp.write_all(&out);
                let _ = tcp.read(&mut [0u8; 1]); // held open until the relay lets go
            });
        }
    });
    addr
}

#[test]
fn a_tls_alert_mid_body_cuts_the_client_and_stores_nothing() {
    let dir = tempdir::Dir::new("tls-alert");
    let (data, digest) = blob(0xa1e7);
    let (good, good_digest) = blob(0x600d);
    let addr = alerting_upstream(dir.path(), data.clone(), good.clone());
    let cache = dir.path().join("cache");
    let config = config_text(
        false,
        &format!(
            "workers = 1\n[cache]\nenabled = true\nserve_stale = false\ndir = \"{}\"\n",
            cache.display()
        ),
        Timeouts::default(),
        &format!(
            "[[registry]]\nname = \"docker.io\"\nupstream = \"https://127.0.0.1:{}\"\nca_file = \"{}\"\n",
            addr.port(),
            dir.path().join("ca.pem").display()
        ),
    )
    .replace("workers = 2\n", "");
    let relay = Relay::start_with(&config);
    let path = blob_path("library/alert", &digest);
    assert_clean_failure(&relay, &path, Some(&data), "a TLS alert mid-body");
    let r = relay
        .client()
        .get(&blob_path("library/good", &good_digest))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256(&r.body), good_digest);
    let hex = digest.trim_start_matches("sha256:");
    assert!(
        wait_until(Duration::from_secs(5), || files_under(&cache).iter().all(
            |p| !p.to_string_lossy().contains(hex) && !p.starts_with(cache.join("tmp"))
        )),
        "{:?}",
        files_under(&cache)
    );
}
