//! Serving while the upstream is gone: warm the cache through one ocirelay,
//! take the Docker Hub double down (registry, token service and CDN), start
//! a new ocirelay on the same cache directory, and run the whole client flow
//! against it: the `/v2/` ping and the challenge, the token step (answered
//! by ocirelay itself for anonymous clients), the manifest by tag (marked
//! stale) and every blob, digests checked. A private image stays private:
//! nothing of it is served offline, to anyone.

mod common;

use std::time::Duration;

use common::*;

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

#[test]
fn a_warm_cache_serves_the_whole_pull_after_a_restart_with_the_upstream_down() {
    let hub = hub();
    let dir = tempdir::Dir::new("cache-offline");
    let cfg = config_with_cache(&hub, dir.path());
    let img = hub.seeded().alpine.clone();
    let secret = hub.seeded().secret.clone();
    let blobs: Vec<String> = std::iter::once(&img.config)
        .chain(&img.layers)
        .map(|d| d.digest.clone())
        .collect();
    {
        // Warm: an anonymous pull of alpine, and alice's pull of the private image.
        let relay = Relay::start_with(&cfg);
        let mut c = relay.client();
        let tok = anonymous_token(&relay, &mut c, "library/alpine");
        let m = c
            .get_with(
                "/v2/library/alpine/manifests/latest",
                &[("Authorization", &bearer(&tok)), ("Accept", ACCEPT)],
            )
            .unwrap();
        assert_eq!(m.body, img.manifest_bytes);
        for b in &blobs {
            let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{b}"), &tok);
            assert_eq!(&sha256(&r.body), b);
        }
        let scope = format!("repository%3A{}%3Apull", secret.repo.replace('/', "%2F"));
        let alice = c
            .get_with(
                &format!("/token?service=registry.docker.io&scope={scope}"),
                &[("Authorization", &basic_auth("alice", "wonderland"))],
            )
            .unwrap();
        let alice = alice.json().unwrap()["token"].as_str().unwrap().to_string();
        let m = c
            .get_with(
                &format!("/v2/{}/manifests/latest", secret.repo),
                &[("Authorization", &bearer(&alice)), ("Accept", ACCEPT)],
            )
            .unwrap();
        assert_eq!(m.body, secret.manifest_bytes);
        // Stored once verified (just after the last byte went out).
        let stored = dir.path().join("blobs/sha256");
        assert!(wait_until(Duration::from_secs(5), || {
            blobs.iter().all(|b| {
                let hex = b.trim_start_matches("sha256:");
                stored.join(&hex[..2]).join(hex).exists()
            })
        }));
    }
    for host in Host::ALL {
        hub.set_down(host, true).unwrap();
    }

    let relay = Relay::start_with(&cfg);
    let mut c = relay.client();
    // The ping: the challenge, pointing at this relay.
    let ping = c.get("/v2/").unwrap();
    assert_eq!(ping.status, 401, "{}", ping.text());
    let realm = challenge_param(&ping, "realm").unwrap();
    assert!(
        realm.starts_with(&format!("http://{}", relay.http)),
        "{realm}"
    );
    // The token step, answered by ocirelay for an anonymous client.
    let t = c
        .get("/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull")
        .unwrap();
    assert_eq!(t.status, 200, "{}", t.text());
    let tok = t.json().unwrap()["token"].as_str().unwrap().to_string();
    // A manifest request without credentials gets the challenge too.
    let r = c
        .get_with("/v2/library/alpine/manifests/latest", &[("Accept", ACCEPT)])
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(challenge_param(&r, "scope").is_some_and(|s| s.contains("library/alpine")));
    // The manifest by tag, stale, and every blob, whole.
    let m = c
        .get_with(
            "/v2/library/alpine/manifests/latest",
            &[("Authorization", &bearer(&tok)), ("Accept", ACCEPT)],
        )
        .unwrap();
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.body, img.manifest_bytes);
    assert_eq!(m.header("x-ocirelay-cache"), Some("stale"));
    for b in &blobs {
        let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{b}"), &tok);
        assert_eq!(r.status, 200);
        assert_eq!(&sha256(&r.body), b);
    }
    // The private image: not to the offline token, not without credentials,
    // and credentials cannot be checked (no token for them).
    for path in [
        format!("/v2/{}/manifests/latest", secret.repo),
        format!("/v2/{}/manifests/{}", secret.repo, secret.manifest.digest),
        format!("/v2/{}/blobs/{}", secret.repo, secret.layers[0].digest),
    ] {
        let r = c
            .get_with(
                &path,
                &[("Authorization", &bearer(&tok)), ("Accept", ACCEPT)],
            )
            .unwrap();
        assert_ne!(r.status, 200, "{path} served offline");
        let r = c.get_with(&path, &[("Accept", ACCEPT)]).unwrap();
        assert_ne!(r.status, 200, "{path} served offline without credentials");
    }
    let scope = format!("repository%3A{}%3Apull", secret.repo.replace('/', "%2F"));
    let t = c
        .get_with(
            &format!("/token?service=registry.docker.io&scope={scope}"),
            &[("Authorization", &basic_auth("alice", "wonderland"))],
        )
        .unwrap();
    assert_ne!(t.status, 200, "credentials taken on trust offline");
    assert!(relay.stderr().contains("offline token"));
}
