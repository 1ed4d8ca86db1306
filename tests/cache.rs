//! The content cache against the Docker Hub double: a blob is downloaded
//! once and then served from disk (GET, HEAD, ranges) with no upstream
//! contact; concurrent cold pulls make one download; a body that fails its
//! digest is never stored; and nothing private is served from the cache to
//! a client the upstream would refuse, under any name.
//!
//! Upstream traffic is counted from the double's own request log, never from
//! ocirelay's. Every test starts its own double and its own ocirelay with a
//! cache directory of its own.

mod common;

use std::time::Duration;

use common::*;

/// The test config with the cache on (in the relay's own directory).
fn cached_relay(hub: &HubDouble) -> Relay {
    Relay::start_with(&config_for(hub, "[cache]\nenabled = true\n"))
}

/// Requests the upstream saw for `digest`: (registry, CDN).
fn upstream_hits(hub: &HubDouble, digest: &str) -> (usize, usize) {
    let hex = digest.trim_start_matches("sha256:");
    let reg = hub
        .log()
        .for_host(Host::Registry)
        .iter()
        .filter(|e| e.path().ends_with(digest))
        .count();
    let cdn = hub
        .log()
        .for_host(Host::Cdn)
        .iter()
        .filter(|e| e.path().contains(hex))
        .count();
    (reg, cdn)
}

fn token_for(c: &mut Client, repo: &str, basic: Option<&str>) -> String {
    let scope = format!("repository%3A{}%3Apull", repo.replace('/', "%2F"));
    let mut headers = Vec::new();
    if let Some(b) = basic {
        headers.push(("Authorization", b));
    }
    let r = c
        .get_with(
            &format!("/token?service=registry.docker.io&scope={scope}"),
            &headers,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["token"].as_str().unwrap().to_string()
}

fn access_log_has(relay: &Relay, needle: &str) -> bool {
    wait_until(Duration::from_secs(5), || relay.stderr().contains(needle))
}

#[test]
fn a_blob_is_downloaded_once_then_served_from_disk_with_head_and_ranges() {
    let hub = hub();
    let relay = cached_relay(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let digest = hub.add_random_blob("library/alpine", 3 << 20, 0xcace);
    let full = hub.content().blob(&digest).unwrap();
    let path = format!("/v2/library/alpine/blobs/{digest}");

    let first = get_auth(&mut c, &path, &tok);
    assert_eq!(first.status, 200);
    assert_eq!(sha256(&first.body), digest);
    assert_eq!(upstream_hits(&hub, &digest), (1, 1));

    // Again, on another connection: from disk, no upstream request at all.
    let mut c2 = relay.client();
    let second = get_auth(&mut c2, &path, &tok);
    assert_eq!(second.status, 200);
    assert_eq!(sha256(&second.body), digest);
    assert_eq!(
        second.header("docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(
        upstream_hits(&hub, &digest),
        (1, 1),
        "the hit went upstream"
    );

    // HEAD answers length and digest, from disk.
    let head = c2
        .request("HEAD", &path, &[("Authorization", &bearer(&tok))], None)
        .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(full.len().to_string().as_str())
    );
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
    assert!(head.body.is_empty());

    // A resume (`bytes=N-`) and a middle range: 206 from disk.
    for (spec, from, to) in [
        (format!("bytes={}-", 1_000_001), 1_000_001, full.len() - 1),
        ("bytes=10-19".to_string(), 10, 19),
    ] {
        let r = c2
            .get_with(&path, &[("Authorization", &bearer(&tok)), ("Range", &spec)])
            .unwrap();
        assert_eq!(r.status, 206, "{spec}");
        assert_eq!(
            r.header("content-range").unwrap(),
            format!("bytes {from}-{to}/{}", full.len())
        );
        assert_eq!(&r.body[..], &full[from..=to], "{spec}");
    }
    assert_eq!(upstream_hits(&hub, &digest), (1, 1));
    assert!(access_log_has(&relay, "cache=hit"));
    assert!(access_log_has(&relay, "cache=miss"));
}

#[test]
fn a_private_blob_is_never_served_from_the_cache_to_a_client_the_upstream_refuses() {
    let hub = hub();
    let relay = cached_relay(&hub);
    let secret = hub.seeded().secret.clone();
    let layer = secret.layers[0].digest.clone();
    let mut c = relay.client();
    let alice = token_for(
        &mut c,
        &secret.repo,
        Some(&basic_auth("alice", "wonderland")),
    );
    let own = format!("/v2/{}/blobs/{layer}", secret.repo);

    // Alice pulls it: stored.
    let r = get_auth(&mut c, &own, &alice);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), layer);
    let after_alice = upstream_hits(&hub, &layer);

    // Anonymous, under its own name: refused as the upstream refuses.
    let anon = token_for(&mut c, &secret.repo, None);
    let r = get_auth(&mut c, &own, &anon);
    assert_ne!(r.status, 200, "private blob served to an anonymous token");
    assert!(r.body.len() < 1000 && sha256(&r.body) != layer);
    let r = c.get(&own).unwrap();
    assert_ne!(r.status, 200, "private blob served without credentials");

    // Under another repository's name (a public one the client may read):
    // not served on the digest alone.
    let pub_tok = token_for(&mut c, "library/alpine", None);
    let other = format!("/v2/library/alpine/blobs/{layer}");
    let r = get_auth(&mut c, &other, &pub_tok);
    assert_ne!(r.status, 200, "private blob served under another name");
    assert_ne!(sha256(&r.body), layer);

    // Alice again: from disk.
    let before = upstream_hits(&hub, &layer);
    let r = get_auth(&mut c, &own, &alice);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), layer);
    assert_eq!(
        upstream_hits(&hub, &layer).1,
        before.1,
        "a hit downloaded again"
    );
    assert_eq!(after_alice.1, 1);
}

#[test]
fn concurrent_cold_pulls_of_one_blob_make_one_upstream_download() {
    let hub = hub();
    let relay = cached_relay(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let digest = hub.add_random_blob("library/alpine", 48 << 20, 0xc0a1);
    let path = format!("/v2/library/alpine/blobs/{digest}");
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (relay, path, tok) = (&relay, &path, &tok);
                s.spawn(move || {
                    let mut c = relay.client();
                    let r = get_auth(&mut c, path, tok);
                    (r.status, sha256(&r.body))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, sum) in &results {
        assert_eq!(*status, 200);
        assert_eq!(sum, &digest);
    }
    assert_eq!(
        upstream_hits(&hub, &digest),
        (1, 1),
        "one registry request, one CDN download"
    );
    // One request led (stored while it streamed); the others followed it
    // (or, if they came late, hit the stored copy).
    assert!(access_log_has(&relay, "cache=miss"));
    let log = relay.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&path)).collect();
    let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count("cache=miss"), 1, "{lines:#?}");
    assert_eq!(
        count("cache=coalesced") + count("cache=hit"),
        7,
        "{lines:#?}"
    );
}

#[test]
fn a_body_that_fails_its_digest_is_never_stored_and_the_next_pull_fetches_again() {
    let hub = hub();
    let relay = cached_relay(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let digest = hub.add_random_blob("library/alpine", 2 << 20, 0xbad);
    let path = format!("/v2/library/alpine/blobs/{digest}");

    hub.knobs().corrupt_blobs(1);
    // Corrupted in transit: the client never gets a complete body.
    if let Ok(r) = c.get_with(&path, &[("Authorization", &bearer(&tok))]) {
        assert!(
            r.status != 200 || r.body.len() < 2 << 20,
            "a body failing its digest was completed"
        );
    }
    assert_eq!(upstream_hits(&hub, &digest).1, 1);

    let mut c = relay.client();
    let r = get_auth(&mut c, &path, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), digest);
    // The corrupt copy was not kept: this one was downloaded again.
    assert_eq!(upstream_hits(&hub, &digest).1, 2);
    // And now it is a hit.
    let r = get_auth(&mut relay.client(), &path, &tok);
    assert_eq!(sha256(&r.body), digest);
    assert_eq!(upstream_hits(&hub, &digest).1, 2);
}

/// Drops the page cache's copy of every stored blob, so the next hit reads
/// from the disk (the path a hit takes when the page cache does not hold it).
fn evict_page_cache(cache_dir: &std::path::Path) {
    let mut dirs = vec![cache_dir.join("blobs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let f = std::fs::File::open(&p).unwrap();
                use std::os::fd::AsRawFd;
                // SAFETY: a plain advice call on an open descriptor.
                let r =
                    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                assert_eq!(r, 0);
            }
        }
    }
}

/// TLS hits are read into record slots and sealed there; plain-HTTP hits
/// go out with sendfile. Either way, whether the page cache
/// holds the file or not (then the bytes come through io_uring), the client
/// gets exactly the stored bytes, whole and in ranges.
#[test]
fn hits_are_exact_over_tls_and_plain_whole_and_in_ranges_cached_or_not() {
    let hub = hub();
    let (relay, ca_pem) = start_with_tls(&hub, "[cache]\nenabled = true\n");
    let cache_dir = relay.dir.path().join("xdg-cache/ocirelay");
    let mut c = relay.tls_client(&ca_pem);
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    // Several 256 KiB batches, and a last record shorter than the others.
    let digest = hub.add_random_blob("library/alpine", (5 << 20) + 12_345, 0x7157);
    let full = hub.content().blob(&digest).unwrap();
    let path = format!("/v2/library/alpine/blobs/{digest}");
    let first = get_auth(&mut c, &path, &tok);
    assert_eq!(first.status, 200);
    assert_eq!(sha256(&first.body), digest);

    for (tls, cold) in [(true, false), (true, true), (false, false), (false, true)] {
        if cold {
            evict_page_cache(&cache_dir);
        }
        let mut c = match tls {
            true => relay.tls_client(&ca_pem),
            false => relay.client(),
        };
        let r = get_auth(&mut c, &path, &tok);
        assert_eq!(r.status, 200, "tls {tls} cold {cold}");
        assert_eq!(sha256(&r.body), digest, "tls {tls} cold {cold}: whole body");
        if cold {
            evict_page_cache(&cache_dir);
        }
        let (from, to) = (300_001usize, 2_000_000usize);
        let r = c
            .get_with(
                &path,
                &[
                    ("Authorization", &bearer(&tok)),
                    ("Range", &format!("bytes={from}-{to}")),
                ],
            )
            .unwrap();
        assert_eq!(r.status, 206, "tls {tls} cold {cold}");
        assert!(
            r.body[..] == full[from..=to],
            "tls {tls} cold {cold}: range bytes"
        );
    }
    assert_eq!(upstream_hits(&hub, &digest), (1, 1), "hits went upstream");
    assert!(access_log_has(&relay, "cache=hit"));
}
