//! What each real registry does differently, and that a pull through the
//! mirror works anyway: registry.k8s.io (open ping, every path redirected
//! to a region chosen per request), k8s.gcr.io (everything redirected to
//! registry.k8s.io), quay.io (302 to CloudFront-signed URLs, realm
//! `/v2/auth`), gcr.io (relative Locations, manifest HEAD without length or
//! digest), ghcr.io (tokens without `expires_in`), manifest redirects.

mod common;

use common::*;
use hubdouble::{BlobLocation, Flavor, Image};

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json";

/// A relay with one registry `name` pointed at `hub` (built-ins kept).
fn relay_for(name: &str, hub: &HubDouble) -> Relay {
    Relay::start_with(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\n[timeouts]\nconnect_secs = 2\nupstream_read_secs = 3\n\n{}",
        registry_block(hub, name)
    ))
}

fn image(hub: &HubDouble, repo: &str) -> Image {
    hub.add_random_image(repo, "v1", Flavor::Oci, &[5000, 300_000], 21)
}

/// Gets a token for `path` through the relay if the registry challenges.
fn auth_for(c: &mut Client, path: &str) -> Vec<(String, String)> {
    let r = c.get_with(path, &[("Accept", ACCEPT)]).unwrap();
    if r.status != 401 {
        return Vec::new();
    }
    let j = token_answer(c, &realm_token_path(&r), &r, &[]);
    let token = j["token"]
        .as_str()
        .or(j["access_token"].as_str())
        .unwrap()
        .to_string();
    vec![("Authorization".into(), format!("Bearer {token}"))]
}

/// Pulls `img` (manifest, HEAD, every blob) through the relay under
/// `/v2/<prefix><repo>` and checks every digest.
fn pull_through(relay: &Relay, prefix: &str, img: &Image) {
    let mut c = relay.client();
    let base = format!("/v2/{prefix}{}", img.repo);
    let auth = auth_for(&mut c, &format!("{base}/manifests/{}", img.tag));
    let mut h: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    h.push(("Accept", ACCEPT));
    let m = c
        .get_with(&format!("{base}/manifests/{}", img.tag), &h)
        .unwrap();
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.body, img.manifest_bytes);
    let head = c
        .request("HEAD", &format!("{base}/manifests/{}", img.tag), &h, None)
        .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(img.manifest.size));
    assert_eq!(
        head.header("docker-content-digest"),
        Some(img.manifest.digest.as_str())
    );
    for blob in std::iter::once(&img.config).chain(&img.layers) {
        let b = c
            .get_with(&format!("{base}/blobs/{}", blob.digest), &h)
            .unwrap();
        assert_eq!(b.status, 200);
        assert_eq!(sha256(&b.body), blob.digest);
    }
}

#[test]
fn registry_k8s_io_open_ping_and_regional_redirects() {
    let k8s = HubDouble::start(Options::default().like_registry_k8s()).unwrap();
    let img = image(&k8s, "pause");
    let relay = relay_for("registry.k8s.io", &k8s);
    let mut c = relay.client();
    let ping = c.get("/v2/registry.k8s.io/x/manifests/y").unwrap();
    assert_ne!(ping.status, 401, "no auth anywhere");
    pull_through(&relay, "registry.k8s.io/", &img);
    let regional = k8s.log().for_host(Host::Cdn);
    assert!(regional.iter().any(|e| e.target.starts_with("/regional/")));
    assert!(
        regional.iter().any(|e| e.method == "HEAD"),
        "HEAD stayed HEAD across the redirect"
    );
    assert!(regional.iter().all(|e| !e.has_header("authorization")));
    assert!(k8s.log().for_host(Host::Token).is_empty());
}

#[test]
fn k8s_gcr_io_redirects_everything_to_registry_k8s_io() {
    let k8s = HubDouble::start(Options::default().like_registry_k8s()).unwrap();
    let old = HubDouble::start(
        Options::default()
            .ca(k8s.ca().unwrap())
            .like_k8s_gcr(k8s.registry_url()),
    )
    .unwrap();
    let img = image(&k8s, "pause");
    let relay = relay_for("k8s.gcr.io", &old);
    pull_through(&relay, "k8s.gcr.io/", &img);
    assert!(!old.log().for_host(Host::Registry).is_empty());
    assert!(!k8s.log().for_host(Host::Registry).is_empty());
}

#[test]
fn quay_io_302s_to_cloudfront_signed_urls() {
    let quay = HubDouble::start(Options::default().like_quay()).unwrap();
    let img = image(&quay, "coreos/etcd");
    let relay = relay_for("quay.io", &quay);
    let mut c = relay.client();
    let r = c.get("/v2/quay.io/coreos/etcd/manifests/v1").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        challenge_param(&r, "realm").unwrap(),
        format!("http://{}/token/quay.io", relay.http)
    );
    pull_through(&relay, "quay.io/", &img);
    let cdn = quay.log().for_host(Host::Cdn);
    assert!(!cdn.is_empty());
    for e in &cdn {
        let q = e.query();
        assert!(
            q.contains("Expires=") && q.contains("Signature=") && q.contains("Key-Pair-Id="),
            "{q}"
        );
        assert!(!e.has_header("authorization"));
    }
    // The token went to quay's own realm path.
    assert!(quay
        .log()
        .for_host(Host::Token)
        .iter()
        .all(|e| e.path() == "/v2/auth"));
}

#[test]
fn gcr_io_relative_locations_are_resolved() {
    for location in [
        BlobLocation::RegistryPath,
        BlobLocation::RegistryDotSegments,
    ] {
        let gcr = HubDouble::start(Options::default().like_gcr().blob_location(location)).unwrap();
        let img = image(&gcr, "google-containers/busybox");
        let relay = relay_for("gcr.io", &gcr);
        pull_through(&relay, "gcr.io/", &img);
        let reg = gcr.log().for_host(Host::Registry);
        assert!(
            reg.iter().any(|e| e.target.starts_with("/registry-v2/")),
            "{location:?}"
        );
        // The relative hop is on the registry's own host, so the bearer token
        // may go there; nothing reached the CDN.
        assert!(gcr.log().for_host(Host::Cdn).is_empty());
    }
}

#[test]
fn gcr_io_manifest_heads_without_length_or_digest_are_completed() {
    let gcr = HubDouble::start(Options::default().like_gcr()).unwrap();
    gcr.knobs().set_manifest_head_digest(false);
    let img = image(&gcr, "proj/app");
    let relay = relay_for("gcr.io", &gcr);
    // pull_through asserts the HEAD carries Content-Length and the digest.
    pull_through(&relay, "gcr.io/", &img);
    let heads = gcr
        .log()
        .matching(Host::Registry, "/v2/proj/app/manifests/v1");
    assert!(
        heads.iter().any(|e| e.method == "HEAD"),
        "the HEAD was tried first"
    );
}

#[test]
fn ghcr_io_tokens_without_expires_in_pass_unchanged() {
    let gh = HubDouble::start(Options::default().like_ghcr()).unwrap();
    let img = image(&gh, "owner/tool");
    let relay = relay_for("ghcr.io", &gh);
    let mut c = relay.client();
    let t = c
        .get("/token/ghcr.io?service=ghcr.io&scope=repository%3Aowner%2Ftool%3Apull")
        .unwrap();
    assert_eq!(t.status, 200);
    let j = t.json().unwrap();
    assert!(j["token"].is_string());
    assert!(
        j.get("expires_in").is_none() && j.get("access_token").is_none(),
        "{j}"
    );
    pull_through(&relay, "ghcr.io/", &img);
}

#[test]
fn redirected_manifests_are_followed_and_keep_their_headers() {
    let hub = HubDouble::start(Options::default().manifest_redirect(true)).unwrap();
    let img = image(&hub, "library/redirected");
    let relay = relay_for("docker.io", &hub);
    pull_through(&relay, "", &img);
    assert!(hub
        .log()
        .for_host(Host::Cdn)
        .iter()
        .any(|e| e.target.starts_with("/manifests/")));
}
