//! Manifests in the cache: by digest, stored for good; by tag, trusted for
//! `tag_ttl` and then revalidated with one upstream HEAD (never a GET, which
//! counts against Docker Hub's pull limit), fetched again only when the tag
//! moved; served stale (and marked so) while the upstream is down; served
//! only when the client's `Accept` allows the stored type; and never served
//! to a client the upstream would refuse.
//!
//! Manifest GETs are counted by the double itself (`manifest_gets`), HEADs
//! from its request log.

mod common;

use std::time::Duration;

use common::*;
use hubdouble::Flavor;

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

fn cached_relay(hub: &HubDouble, ttl: &str) -> Relay {
    Relay::start_with(&config_for(
        hub,
        &format!("[cache]\nenabled = true\ntag_ttl = \"{ttl}\"\n"),
    ))
}

fn get_manifest(c: &mut Client, path: &str, tok: &str) -> Response {
    c.get_with(path, &[("Authorization", &bearer(tok)), ("Accept", ACCEPT)])
        .unwrap()
}

fn heads_of(hub: &HubDouble, path: &str) -> usize {
    hub.log()
        .matching(Host::Registry, path)
        .iter()
        .filter(|e| e.method == "HEAD")
        .count()
}

#[test]
fn a_tag_is_served_from_the_cache_within_its_ttl_then_revalidated_with_one_head() {
    let hub = hub();
    let relay = cached_relay(&hub, "2s");
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let img = hub.seeded().alpine.clone();
    let path = "/v2/library/alpine/manifests/latest";

    let first = get_manifest(&mut c, path, &tok);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, img.manifest_bytes);
    let gets = hub.knobs().manifest_gets();

    // Within the TTL: no upstream request at all.
    for _ in 0..3 {
        let again = get_manifest(&mut relay.client(), path, &tok);
        assert_eq!(again.status, 200);
        assert_eq!(again.body, img.manifest_bytes);
        assert_eq!(
            again.header("docker-content-digest"),
            Some(img.manifest.digest.as_str())
        );
        assert_eq!(
            again.header("content-type"),
            Some(img.manifest.media_type.as_str())
        );
    }
    assert_eq!(hub.knobs().manifest_gets(), gets);
    assert_eq!(heads_of(&hub, path), 0);

    // After it: one HEAD, no GET, the same bytes.
    std::thread::sleep(Duration::from_millis(2200));
    let later = get_manifest(&mut relay.client(), path, &tok);
    assert_eq!(later.status, 200);
    assert_eq!(later.body, img.manifest_bytes);
    assert_eq!(heads_of(&hub, path), 1);
    assert_eq!(hub.knobs().manifest_gets(), gets);
    // And the record is fresh again.
    let _ = get_manifest(&mut relay.client(), path, &tok);
    assert_eq!(heads_of(&hub, path), 1);
    assert!(wait_until(Duration::from_secs(5), || relay
        .stderr()
        .contains("cache=revalidated")));

    // By digest: stored for good, no upstream request.
    let by_digest = format!("/v2/library/alpine/manifests/{}", img.manifest.digest);
    let d = get_manifest(&mut relay.client(), &by_digest, &tok);
    assert_eq!(d.status, 200);
    assert_eq!(d.body, img.manifest_bytes);
    assert_eq!(hub.knobs().manifest_gets(), gets);
    assert!(hub.log().matching(Host::Registry, &by_digest).is_empty());
}

#[test]
fn a_moved_tag_is_fetched_again_after_its_ttl() {
    let hub = hub();
    let relay = cached_relay(&hub, "1s");
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/moving");
    let path = "/v2/library/moving/manifests/v1";
    let a = hub.add_random_image("library/moving", "v1", Flavor::Docker, &[1000], 1);
    let r = get_manifest(&mut c, path, &tok);
    assert_eq!(r.body, a.manifest_bytes);
    let b = hub.add_random_image("library/moving", "v1", Flavor::Docker, &[2000], 2);
    assert_ne!(a.manifest.digest, b.manifest.digest);
    // Within the TTL the old one (that is what a TTL means)...
    assert_eq!(get_manifest(&mut c, path, &tok).body, a.manifest_bytes);
    // ...after it, the new one.
    std::thread::sleep(Duration::from_millis(1200));
    let r = get_manifest(&mut c, path, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b.manifest_bytes);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(b.manifest.digest.as_str())
    );
}

#[test]
fn a_tag_is_served_stale_while_the_upstream_is_down() {
    let hub = hub();
    let relay = cached_relay(&hub, "1s");
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let img = hub.seeded().alpine.clone();
    let path = "/v2/library/alpine/manifests/latest";
    assert_eq!(get_manifest(&mut c, path, &tok).status, 200);
    std::thread::sleep(Duration::from_millis(1200));
    hub.set_down(Host::Registry, true).unwrap();
    let r = get_manifest(&mut relay.client(), path, &tok);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, img.manifest_bytes);
    assert_eq!(r.header("x-ocirelay-cache"), Some("stale"));
    assert!(wait_until(Duration::from_secs(5), || relay
        .stderr()
        .contains("stale")));
    hub.set_down(Host::Registry, false).unwrap();
}

#[test]
fn a_cached_manifest_is_served_only_when_the_accept_allows_its_type() {
    let hub = hub();
    let relay = cached_relay(&hub, "1h");
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let path = "/v2/library/alpine/manifests/latest";
    assert_eq!(get_manifest(&mut c, path, &tok).status, 200);
    let gets = hub.knobs().manifest_gets();
    // A client that only takes OCI image manifests: not the stored Docker
    // v2 manifest; the upstream answers it.
    let _ = c
        .get_with(
            path,
            &[
                ("Authorization", &bearer(&tok)),
                ("Accept", "application/vnd.oci.image.manifest.v1+json"),
            ],
        )
        .unwrap();
    assert_eq!(hub.knobs().manifest_gets(), gets + 1);
}

#[test]
fn a_private_manifest_is_never_served_from_the_cache_to_a_client_the_upstream_refuses() {
    let hub = hub();
    let relay = cached_relay(&hub, "1h");
    let secret = hub.seeded().secret.clone();
    let mut c = relay.client();
    let scope = format!("repository%3A{}%3Apull", secret.repo.replace('/', "%2F"));
    let tok = |c: &mut Client, auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = c
            .get_with(
                &format!("/token?service=registry.docker.io&scope={scope}"),
                &h,
            )
            .unwrap();
        r.json().unwrap()["token"].as_str().unwrap().to_string()
    };
    let alice = tok(&mut c, Some(&basic_auth("alice", "wonderland")));
    let anon = tok(&mut c, None);
    let by_tag = format!("/v2/{}/manifests/latest", secret.repo);
    let by_digest = format!("/v2/{}/manifests/{}", secret.repo, secret.manifest.digest);
    assert_eq!(
        get_manifest(&mut c, &by_tag, &alice).body,
        secret.manifest_bytes
    );
    assert_eq!(
        get_manifest(&mut c, &by_digest, &alice).body,
        secret.manifest_bytes
    );
    for path in [&by_tag, &by_digest] {
        let r = get_manifest(&mut c, path, &anon);
        assert_ne!(r.status, 200, "{path} served to an anonymous token");
        assert_ne!(r.body, secret.manifest_bytes);
        let r = c.get_with(path, &[("Accept", ACCEPT)]).unwrap();
        assert_ne!(r.status, 200, "{path} served without credentials");
    }
    // Under another name the client may read: not on the digest alone.
    let pub_tok = anonymous_token(&relay, &mut c, "library/alpine");
    let other = format!("/v2/library/alpine/manifests/{}", secret.manifest.digest);
    let r = get_manifest(&mut c, &other, &pub_tok);
    assert_ne!(r.status, 200);
    // Alice still gets it, from the cache.
    let gets = hub.knobs().manifest_gets();
    assert_eq!(
        get_manifest(&mut c, &by_tag, &alice).body,
        secret.manifest_bytes
    );
    assert_eq!(hub.knobs().manifest_gets(), gets);
}

/// docker's OAuth2 POST carries the password in its form, not in an
/// `Authorization` header: a token from it is not an anonymous one, and what
/// it pulled stays private.
#[test]
fn a_token_from_an_oauth2_password_post_is_not_taken_for_an_anonymous_one() {
    let hub = hub();
    let relay = cached_relay(&hub, "1h");
    let secret = hub.seeded().secret.clone();
    let mut c = relay.client();
    let _ = c.get("/v2/").unwrap(); // learn the realm, as a client would
    let scope = format!("repository%3A{}%3Apull", secret.repo.replace('/', "%2F"));
    let form = format!(
        "grant_type=password&username=alice&password=wonderland&service=registry.docker.io&client_id=test&scope={scope}"
    );
    let r = c
        .request(
            "POST",
            "/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(form.as_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let alice = r.json().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let by_tag = format!("/v2/{}/manifests/latest", secret.repo);
    assert_eq!(
        get_manifest(&mut c, &by_tag, &alice).body,
        secret.manifest_bytes
    );
    let layer = format!("/v2/{}/blobs/{}", secret.repo, secret.layers[0].digest);
    assert_eq!(get_auth(&mut c, &layer, &alice).status, 200);

    let anon = c
        .get(&format!("/token?service=registry.docker.io&scope={scope}"))
        .unwrap();
    let anon = anon.json().unwrap()["token"].as_str().unwrap().to_string();
    for path in [&by_tag, &layer] {
        let r = get_manifest(&mut c, path, &anon);
        assert_ne!(r.status, 200, "{path} served to an anonymous token");
        let r = c.get_with(path, &[("Accept", ACCEPT)]).unwrap();
        assert_ne!(r.status, 200, "{path} served without credentials");
    }
}

/// Without credentials, a client gets the upstream's challenge first, as it
/// would without the cache, even for a public repository the cache holds.
#[test]
fn a_request_without_credentials_still_gets_the_challenge() {
    let hub = hub();
    let relay = cached_relay(&hub, "1h");
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let path = "/v2/library/alpine/manifests/latest";
    assert_eq!(get_manifest(&mut c, path, &tok).status, 200);
    let r = c.get_with(path, &[("Accept", ACCEPT)]).unwrap();
    assert_eq!(r.status, 401);
    assert!(challenge_param(&r, "realm").is_some());
}

/// A manifest damaged on disk is checked as it is loaded: dropped and
/// fetched again, never served.
#[test]
fn a_manifest_damaged_on_disk_is_never_served() {
    let hub = hub();
    let dir = tempdir::Dir::new("cache-damaged");
    let relay = Relay::start_with(&config_with_cache(&hub, dir.path()));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let img = hub.seeded().alpine.clone();
    let by_digest = format!("/v2/library/alpine/manifests/{}", img.manifest.digest);
    assert_eq!(
        get_manifest(&mut c, &by_digest, &tok).body,
        img.manifest_bytes
    );
    let hex = img.manifest.digest.trim_start_matches("sha256:");
    let file = dir
        .path()
        .join("manifests/sha256")
        .join(&hex[..2])
        .join(hex);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    std::fs::write(&file, bytes).unwrap();
    let gets = hub.knobs().manifest_gets();
    let r = get_manifest(&mut relay.client(), &by_digest, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, img.manifest_bytes);
    assert_eq!(hub.knobs().manifest_gets(), gets + 1, "fetched again");
}

#[test]
fn concurrent_cold_pulls_of_one_manifest_make_one_upstream_get() {
    let hub = hub();
    let relay = cached_relay(&hub, "5m");
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/multi");
    let multi = hub.seeded().multi.clone();
    let tag = "/v2/library/multi/manifests/latest".to_string();
    let child = format!(
        "/v2/library/multi/manifests/{}",
        multi.images[0].manifest.digest
    );
    for (path, expected) in [
        (&tag, &multi.manifest_bytes),
        (&child, &multi.images[0].manifest_bytes),
    ] {
        let before = hub.knobs().manifest_gets();
        // The registry holds its answers until all eight requests are in
        // flight: without coalescing each would send its own GET.
        hub.knobs().set_stall(Host::Registry, true);
        let results: Vec<(u16, Vec<u8>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (relay, path, tok) = (&relay, path, &tok);
                    s.spawn(move || {
                        let r = get_manifest(&mut relay.client(), path, tok);
                        (r.status, r.body)
                    })
                })
                .collect();
            assert!(
                wait_until(Duration::from_secs(10), || {
                    !hub.log().matching(Host::Registry, path).is_empty()
                }),
                "the first request never reached the registry"
            );
            // Time for the other seven to arrive (and be held back).
            std::thread::sleep(Duration::from_millis(300));
            hub.knobs().set_stall(Host::Registry, false);
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (status, body) in &results {
            assert_eq!(*status, 200);
            assert_eq!(body, expected);
        }
        assert_eq!(
            hub.knobs().manifest_gets() - before,
            1,
            "{path}: one upstream GET for eight concurrent cold pulls"
        );
        let log = relay.stderr();
        let coalesced = log
            .lines()
            .filter(|l| l.contains(path.as_str()) && l.contains("cache=coalesced"))
            .count();
        assert!(
            wait_until(Duration::from_secs(5), || relay
                .stderr()
                .lines()
                .filter(|l| l.contains(path.as_str()) && l.contains("cache=coalesced"))
                .count()
                == 7),
            "{path}: {coalesced} coalesced\n{log}"
        );
    }
}
