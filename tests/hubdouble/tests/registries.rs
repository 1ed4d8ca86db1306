//! Self-tests of the other-registry behaviours: ghcr.io, registry.k8s.io, k8s.gcr.io, quay.io,
//! gcr.io, manifest redirects, and several doubles side by side.

use hubdouble::client::{basic_auth, fetch, follow, Client, Response, Url};
use hubdouble::{
    ca_bundle_pem, sha256_digest, BlobLocation, Flavor, Host, HubDouble, Options, TestCa,
    UrlSigning, CLOUDFRONT_KEY_PAIR_ID, DOCKER_MANIFEST_V2,
};
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `Bearer k="v",k="v"` -> pairs.
fn challenge(r: &Response) -> Vec<(String, String)> {
    let v = r.header("www-authenticate").expect("challenge");
    let v = v.strip_prefix("Bearer ").expect("bearer challenge");
    v.split("\",")
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

fn param(c: &[(String, String)], k: &str) -> Option<String> {
    c.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

/// Follows the challenge's realm for an anonymous pull token on `repo`.
fn token_via_challenge(hub: &HubDouble, repo: &str) -> String {
    let mut reg = hub.client(Host::Registry).unwrap();
    let r = reg.get(&format!("/v2/{repo}/manifests/latest")).unwrap();
    assert_eq!(r.status, 401);
    let ch = challenge(&r);
    let realm = param(&ch, "realm").unwrap();
    let url = format!(
        "{realm}?service={}&scope=repository:{repo}:pull",
        param(&ch, "service").unwrap()
    );
    let t = fetch(&url, hub.ca_pem(), "GET", &[]).unwrap();
    assert_eq!(t.status, 200, "{}", t.text());
    t.json().unwrap()["token"].as_str().unwrap().to_string()
}

fn url(hub: &HubDouble, host: Host, target: &str) -> String {
    format!("{}{target}", hub.url(host))
}

// ---------------------------------------------------------------------------
// ghcr.io
// ---------------------------------------------------------------------------

#[test]
fn ghcr_like_challenge_and_token_shape() {
    let gh = HubDouble::start(Options::default().like_ghcr()).unwrap();
    assert_eq!(gh.service(), "ghcr.io");
    assert_eq!(gh.token_url(), format!("https://{}/token", gh.token_addr()));
    let mut reg = gh.client(Host::Registry).unwrap();
    let r = reg.get("/v2/").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!(
            "Bearer realm=\"https://{}/token\",service=\"ghcr.io\"",
            gh.token_addr()
        )
    );
    let r = reg.get("/v2/library/alpine/manifests/latest").unwrap();
    let ch = challenge(&r);
    assert_eq!(param(&ch, "service").as_deref(), Some("ghcr.io"));
    assert_eq!(
        param(&ch, "scope").as_deref(),
        Some("repository:library/alpine:pull")
    );

    let mut tok = gh.client(Host::Token).unwrap();
    let t = tok
        .get("/token?service=ghcr.io&scope=repository:library/alpine:pull")
        .unwrap();
    assert_eq!(t.status, 200);
    let j = t.json().unwrap();
    let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
    assert!(j["token"].is_string());
    assert!(j.get("access_token").is_none(), "{keys:?}");
    assert!(j.get("expires_in").is_none(), "{keys:?}");

    // The token works, and blobs still go 307 to the CDN.
    let auth = format!("Bearer {}", j["token"].as_str().unwrap());
    let r = reg
        .get_with(
            "/v2/library/alpine/manifests/latest",
            &[("Authorization", &auth)],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let layer = gh.seeded().alpine.layers[0].digest.clone();
    let r = reg
        .get_with(
            &format!("/v2/library/alpine/blobs/{layer}"),
            &[("Authorization", &auth)],
        )
        .unwrap();
    assert_eq!(r.status, 307);
    assert!(r.header("location").unwrap().starts_with(&gh.cdn_url()));
}

// ---------------------------------------------------------------------------
// Several doubles in one process
// ---------------------------------------------------------------------------

#[test]
fn two_doubles_side_by_side_with_a_shared_ca() {
    let hub = HubDouble::start(Options::default()).unwrap();
    let gh = HubDouble::start(Options::default().ca(hub.ca().unwrap()).like_ghcr()).unwrap();
    assert!(hub.ca().unwrap().same_as(&gh.ca().unwrap()));
    assert_eq!(hub.ca_pem(), gh.ca_pem());
    // Distinct ports on the same IPs, distinct files with the same PEM.
    for host in Host::ALL {
        assert_eq!(hub.addr(host).ip(), gh.addr(host).ip());
        assert_ne!(hub.addr(host).port(), gh.addr(host).port());
    }
    assert_ne!(hub.ca_path(), gh.ca_path());
    let hub_file = std::fs::read_to_string(hub.ca_path().unwrap()).unwrap();
    assert_eq!(
        hub_file,
        std::fs::read_to_string(gh.ca_path().unwrap()).unwrap()
    );
    // One CA file trusts every host of both.
    for d in [&hub, &gh] {
        for host in Host::ALL {
            let ip = d.addr(host).ip().to_string();
            let mut c = Client::new(d.addr(host), Some((&ip, &hub_file))).unwrap();
            c.connect().unwrap();
        }
    }
    // Independent content, services and logs.
    gh.add_random_image("owner/tool", "1.0", Flavor::Oci, &[1000], 1);
    assert!(gh.content().has_repo("owner/tool"));
    assert!(!hub.content().has_repo("owner/tool"));
    let tok = token_via_challenge(&gh, "owner/tool");
    assert!(!tok.is_empty());
    assert!(hub.log().is_empty());
    assert_eq!(hub.service(), "registry.docker.io");

    // A CA made up front works the same, and outlives the doubles.
    let ca = TestCa::generate().unwrap();
    let a = HubDouble::start(Options::default().ca(ca.clone()).seed(false)).unwrap();
    let b = HubDouble::start(Options::default().ca(ca.clone()).seed(false)).unwrap();
    assert_eq!(a.ca_pem(), Some(ca.pem()));
    drop(a);
    let mut c = Client::new(b.registry_addr(), Some(("127.0.0.1", ca.pem()))).unwrap();
    assert_eq!(c.get("/v2/").unwrap().status, 401);
}

#[test]
fn doubles_with_their_own_cas_trusted_through_a_bundle() {
    let a = HubDouble::start(Options::default().seed(false)).unwrap();
    let b = HubDouble::start(Options::default().seed(false)).unwrap();
    assert_ne!(a.ca_pem(), b.ca_pem());
    let only_a = a.ca_pem().unwrap();
    let mut c = Client::new(b.registry_addr(), Some(("127.0.0.1", only_a))).unwrap();
    assert!(c.connect().is_err());
    let bundle = ca_bundle_pem(&[&a, &b, &a]);
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    for d in [&a, &b] {
        let r = fetch(&d.registry_url(), Some(&bundle), "GET", &[]).unwrap();
        assert_eq!(r.status, 404);
        let r = fetch(&url(d, Host::Registry, "/v2/"), Some(&bundle), "GET", &[]).unwrap();
        assert_eq!(r.status, 401);
    }
}

// ---------------------------------------------------------------------------
// registry.k8s.io
// ---------------------------------------------------------------------------

#[test]
fn k8s_ping_is_open_and_everything_else_redirects_to_rotating_regions() {
    let k8s = HubDouble::start(Options::default().like_registry_k8s()).unwrap();
    let mut reg = k8s.client(Host::Registry).unwrap();
    let r = reg.get("/v2/").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "{}"));
    assert!(r.header("www-authenticate").is_none());
    assert_eq!(reg.head("/v2/").unwrap().status, 200);

    let regions = k8s.knobs().regions();
    assert_eq!(regions.len(), 3);
    let target = "/v2/library/alpine/manifests/latest";
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = reg.get(target).unwrap();
        assert_eq!(r.status, 307);
        let loc = r.header("location").unwrap().to_string();
        let rest = loc
            .strip_prefix(&format!("{}/regional/", k8s.cdn_url()))
            .unwrap_or_else(|| panic!("{loc}"));
        let (region, path) = rest.split_once('/').unwrap();
        assert_eq!(format!("/{path}"), target);
        seen.push(region.to_string());
    }
    assert_eq!(&seen[..3], &regions[..]);
    assert_eq!(seen[3], regions[0]);

    // Blobs, unknown repos, tags, POSTs: all redirected, query kept.
    let layer = k8s.seeded().alpine.layers[0].digest.clone();
    for t in [
        format!("/v2/library/alpine/blobs/{layer}"),
        "/v2/nope/nope/manifests/1".to_string(),
        "/v2/library/alpine/tags/list?n=1&last=3.20".to_string(),
    ] {
        let r = reg.get(&t).unwrap();
        assert_eq!(r.status, 307, "{t}");
        assert!(r.header("location").unwrap().ends_with(&t), "{t}");
    }
    let r = reg
        .request("POST", "/v2/library/alpine/blobs/uploads/", &[], Some(b""))
        .unwrap();
    assert_eq!(r.status, 307);
    assert!(k8s.log().for_host(Host::Token).is_empty());
}

#[test]
fn k8s_regional_host_serves_without_auth() {
    let k8s = HubDouble::start(
        Options::default()
            .like_registry_k8s()
            .regions(&["r1", "r2"]),
    )
    .unwrap();
    let alpine = k8s.seeded().alpine.clone();
    let ca = k8s.ca_pem();
    let reg = |t: &str| url(&k8s, Host::Registry, t);

    // Manifest HEAD stays HEAD, with the headers a client needs.
    let f = follow(
        &reg("/v2/library/alpine/manifests/latest"),
        ca,
        "HEAD",
        &[("Accept", DOCKER_MANIFEST_V2)],
        5,
    )
    .unwrap();
    assert_eq!(f.hops.len(), 2);
    assert_eq!(f.hops[0].status, 307);
    assert!(f
        .final_url()
        .contains("/regional/r1/v2/library/alpine/manifests/latest"));
    let r = &f.response;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST_V2));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(alpine.manifest.digest.as_str())
    );
    assert_eq!(r.content_length(), Some(alpine.manifest_bytes.len() as u64));

    // Manifest GET (by digest), with an Authorization the follower drops cross-host.
    let f = follow(
        &reg(&format!(
            "/v2/library/alpine/manifests/{}",
            alpine.manifest.digest
        )),
        ca,
        "GET",
        &[("Authorization", "Bearer whatever")],
        5,
    )
    .unwrap();
    assert_eq!(f.response.status, 200);
    assert_eq!(f.response.body, alpine.manifest_bytes);
    assert!(f.final_url().contains("/regional/r2/"));
    assert!(f.hops[0].sent_authorization && !f.hops[1].sent_authorization);

    // Blob with a range.
    let layer = alpine.layers[0].clone();
    let data = k8s.content().blob(&layer.digest).unwrap();
    let f = follow(
        &reg(&format!("/v2/library/alpine/blobs/{}", layer.digest)),
        ca,
        "GET",
        &[("Range", "bytes=5-")],
        5,
    )
    .unwrap();
    assert_eq!(f.response.status, 206);
    assert_eq!(&f.response.body[..], &data[5..]);
    let f = follow(
        &reg(&format!("/v2/library/alpine/blobs/{}", layer.digest)),
        ca,
        "GET",
        &[],
        5,
    )
    .unwrap();
    assert_eq!(sha256_digest(&f.response.body), layer.digest);

    // Tags, paginated: the query reaches the regional host and Link stays on it.
    let f = follow(&reg("/v2/library/alpine/tags/list?n=1"), ca, "GET", &[], 5).unwrap();
    assert_eq!(f.response.status, 200);
    assert_eq!(f.response.json().unwrap()["tags"][0], "3.20");
    let link = f.response.header("link").unwrap();
    assert!(
        link.starts_with("</regional/r1/v2/library/alpine/tags/list?last=3.20&n=1>"),
        "{link}"
    );

    // Unknown things are 404 on the regional host; writes are refused there.
    let f = follow(&reg("/v2/nope/x/manifests/1"), ca, "GET", &[], 5).unwrap();
    assert_eq!((f.hops.len(), f.response.status), (2, 404));
    let mut cdn = k8s.client(Host::Cdn).unwrap();
    assert_eq!(
        cdn.get("/regional/mars/v2/library/alpine/manifests/latest")
            .unwrap()
            .status,
        404
    );
    let r = cdn
        .request(
            "DELETE",
            "/regional/r1/v2/library/alpine/manifests/latest",
            &[],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 405);
    // Like the rest of the CDN, the regional host refuses Authorization outright.
    let r = cdn
        .get_with(
            "/regional/r1/v2/library/alpine/manifests/latest",
            &[("Authorization", "Bearer x")],
        )
        .unwrap();
    assert_eq!(r.status, 400);

    // The log shows every hop: HEAD stayed HEAD, queries intact, no auth followed.
    let regional = k8s.log().with_prefix(Host::Cdn, "/regional/");
    assert_eq!(regional[0].method, "HEAD");
    assert!(regional[1..4]
        .iter()
        .all(|e| !e.has_header("authorization")));
    assert!(regional
        .iter()
        .any(|e| e.target == "/regional/r1/v2/library/alpine/tags/list?n=1"));
    assert!(k8s.log().for_host(Host::Token).is_empty());
}

#[test]
fn k8s_mode_is_a_runtime_knob() {
    let hub = HubDouble::start(Options::default()).unwrap();
    let mut reg = hub.client(Host::Registry).unwrap();
    assert_eq!(reg.get("/v2/").unwrap().status, 401);
    hub.knobs().set_k8s_redirects(true);
    hub.knobs().set_regions(&["only"]);
    assert_eq!(reg.get("/v2/").unwrap().status, 200);
    let r = reg.head("/v2/library/alpine/manifests/latest").unwrap();
    assert_eq!(r.status, 307);
    assert!(r
        .header("location")
        .unwrap()
        .contains("/regional/only/v2/library/alpine/manifests/latest"));
    hub.knobs().set_k8s_redirects(false);
    assert_eq!(reg.get("/v2/").unwrap().status, 401);
}

// ---------------------------------------------------------------------------
// k8s.gcr.io
// ---------------------------------------------------------------------------

#[test]
fn k8s_gcr_redirects_every_v2_request_to_registry_k8s() {
    let k8s = HubDouble::start(Options::default().like_registry_k8s()).unwrap();
    let old = HubDouble::start(
        Options::default()
            .ca(k8s.ca().unwrap())
            .seed(false)
            .like_k8s_gcr(k8s.registry_url()),
    )
    .unwrap();
    let mut c = old.client(Host::Registry).unwrap();
    let r = c.get("/v2/").unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").unwrap(),
        format!("{}/v2/", k8s.registry_url())
    );
    let r = c.get("/v2").unwrap();
    assert_eq!(
        r.header("location").unwrap(),
        format!("{}/v2", k8s.registry_url())
    );
    let r = c.get("/v1/x").unwrap();
    assert_eq!(r.status, 404);

    // Three hops across two doubles: k8s.gcr.io -> registry.k8s.io -> regional.
    let ca = old.ca_pem();
    let f = follow(
        &url(
            &old,
            Host::Registry,
            "/v2/library/alpine/tags/list?n=1&last=3.20",
        ),
        ca,
        "GET",
        &[],
        10,
    )
    .unwrap();
    let statuses: Vec<u16> = f.hops.iter().map(|h| h.status).collect();
    assert_eq!(statuses, [302, 307, 200]);
    assert_eq!(f.response.json().unwrap()["tags"][0], "latest");
    let logged = k8s.log().with_prefix(Host::Cdn, "/regional/");
    assert!(logged[0]
        .target
        .ends_with("/v2/library/alpine/tags/list?n=1&last=3.20"));
    assert_eq!(
        k8s.log().for_host(Host::Registry)[0].target,
        "/v2/library/alpine/tags/list?n=1&last=3.20"
    );

    // HEAD stays HEAD on every hop.
    let f = follow(
        &url(&old, Host::Registry, "/v2/library/alpine/manifests/latest"),
        ca,
        "HEAD",
        &[],
        10,
    )
    .unwrap();
    assert_eq!(f.response.status, 200);
    assert!(f.hops.iter().all(|h| h.method == "HEAD"));
    let manifest_hits = |d: &HubDouble, host: Host| -> Vec<String> {
        d.log()
            .for_host(host)
            .into_iter()
            .filter(|e| e.path().ends_with("/manifests/latest"))
            .map(|e| e.method)
            .collect()
    };
    assert_eq!(manifest_hits(&old, Host::Registry), ["HEAD"]);
    assert_eq!(manifest_hits(&k8s, Host::Registry), ["HEAD"]);
    assert_eq!(manifest_hits(&k8s, Host::Cdn), ["HEAD"]);

    // Runtime: another status, then off (the double answers for itself again).
    old.knobs().set_redirect_all_status(301);
    assert_eq!(c.get("/v2/").unwrap().status, 301);
    old.knobs().set_redirect_all_to(None);
    assert_eq!(c.get("/v2/").unwrap().status, 401);
}

// ---------------------------------------------------------------------------
// quay.io
// ---------------------------------------------------------------------------

#[test]
fn quay_like_challenge_and_cloudfront_blob_redirects() {
    let quay = HubDouble::start(Options::default().like_quay()).unwrap();
    let mut reg = quay.client(Host::Registry).unwrap();
    let r = reg.get("/v2/").unwrap();
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!(
            "Bearer realm=\"https://{}/v2/auth\",service=\"quay.io\"",
            quay.token_addr()
        )
    );
    let mut tok = quay.client(Host::Token).unwrap();
    assert_eq!(tok.get("/token?scope=x").unwrap().status, 404);
    let token = token_via_challenge(&quay, "library/alpine");
    let auth = format!("Bearer {token}");

    let digest = quay.add_random_blob("library/alpine", 50_000, 9);
    let data = quay.content().blob(&digest).unwrap();
    let blob = format!("/v2/library/alpine/blobs/{digest}");
    let r = reg.get_with(&blob, &[("Authorization", &auth)]).unwrap();
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap().to_string();
    let u = Url::parse(&loc).unwrap();
    assert_eq!(u.authority(), quay.cdn_addr().to_string());
    let (path, query) = u.target.split_once('?').unwrap();
    let parts: Vec<(&str, &str)> = query
        .split('&')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let keys: Vec<&str> = parts.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, ["Expires", "Signature", "Key-Pair-Id"]);
    let expires: i64 = parts[0].1.parse().unwrap();
    assert!((expires - (now() + 600)).abs() <= 5, "{expires}");
    assert_eq!(parts[2].1, CLOUDFRONT_KEY_PAIR_ID);
    let sig = parts[1].1;
    assert!(
        sig.ends_with('_') && !sig.contains(['+', '/', '=']),
        "{sig}"
    );

    // The CDN serves it (HEAD and ranges too) and saw the query byte for byte.
    let mut cdn = quay.client(Host::Cdn).unwrap();
    let r = cdn.get(&u.target).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], &data[..]);
    let r = cdn.head(&u.target).unwrap();
    assert_eq!((r.status, r.content_length()), (200, Some(50_000)));
    let r = cdn.get_with(&u.target, &[("Range", "bytes=0-9")]).unwrap();
    assert_eq!((r.status, &r.body[..]), (206, &data[..10]));
    let logged = quay.log().for_host(Host::Cdn);
    assert_eq!(logged[0].target, u.target);
    assert_eq!(logged[1].method, "HEAD");

    // Any change to the signed values is refused; so is a missing one.
    let bad_sig = u.target.replace("Signature=", "Signature=A");
    let bad_exp = u.target.replace(
        &format!("Expires={expires}"),
        &format!("Expires={}", expires + 1),
    );
    let bad_key = u.target.replace(CLOUDFRONT_KEY_PAIR_ID, "APKAOTHER");
    let no_key = format!("{path}?Expires={expires}&Signature={sig}");
    let other_path = u.target.replace(&digest[7..17], "0000000000");
    for t in [bad_sig, bad_exp, bad_key, no_key, other_path] {
        let r = cdn.get(&t).unwrap();
        assert!(r.status == 403 || r.status == 404, "{t}: {}", r.status);
        assert_ne!(r.status, 200);
    }
    // HEAD on the registry redirects the same way.
    let r = reg.head_with_auth(&blob, &auth);
    assert_eq!(r.status, 302);

    // Expired signatures.
    quay.knobs().set_cdn_signature_ttl(-1);
    let r = reg.get_with(&blob, &[("Authorization", &auth)]).unwrap();
    let r = fetch(r.header("location").unwrap(), quay.ca_pem(), "GET", &[]).unwrap();
    assert_eq!(r.status, 403);
    assert!(r.text().contains("expired"));
}

/// HEAD with a bearer token.
trait HeadAuth {
    fn head_with_auth(&mut self, target: &str, auth: &str) -> Response;
}

impl HeadAuth for Client {
    fn head_with_auth(&mut self, target: &str, auth: &str) -> Response {
        self.request("HEAD", target, &[("Authorization", auth)], None)
            .unwrap()
    }
}

#[test]
fn cloudfront_ttl_is_configurable_and_signing_is_a_knob() {
    let quay = HubDouble::start(Options::default().like_quay().cdn_signature_ttl(30)).unwrap();
    let tok = quay.mint_token(None, &["library/alpine"]);
    let auth = format!("Bearer {tok}");
    let layer = quay.seeded().alpine.layers[1].digest.clone();
    let mut reg = quay.client(Host::Registry).unwrap();
    let blob = format!("/v2/library/alpine/blobs/{layer}");
    let loc = reg.get_with(&blob, &[("Authorization", &auth)]).unwrap();
    let loc = loc.header("location").unwrap();
    let expires: i64 = loc
        .split("Expires=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((expires - (now() + 30)).abs() <= 5);
    quay.knobs().set_url_signing(UrlSigning::Verify);
    quay.knobs().set_blob_redirect_status(307);
    let r = reg.get_with(&blob, &[("Authorization", &auth)]).unwrap();
    assert_eq!(r.status, 307);
    assert!(r.header("location").unwrap().contains("?verify="));
    let f = follow(
        &url(&quay, Host::Registry, &blob),
        quay.ca_pem(),
        "GET",
        &[("Authorization", &auth)],
        5,
    )
    .unwrap();
    assert_eq!(sha256_digest(&f.response.body), layer);
}

// ---------------------------------------------------------------------------
// gcr.io
// ---------------------------------------------------------------------------

#[test]
fn gcr_like_relative_blob_locations() {
    let gcr = HubDouble::start(Options::default().like_gcr()).unwrap();
    let mut reg = gcr.client(Host::Registry).unwrap();
    let r = reg.get("/v2/").unwrap();
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!(
            "Bearer realm=\"https://{}/v2/token\",service=\"gcr.io\"",
            gcr.token_addr()
        )
    );
    let token = token_via_challenge(&gcr, "library/alpine");
    let auth = format!("Bearer {token}");
    let layer = gcr.seeded().alpine.layers[0].digest.clone();
    let blob = format!("/v2/library/alpine/blobs/{layer}");

    // Absolute-path reference on the registry host itself.
    let r = reg.get_with(&blob, &[("Authorization", &auth)]).unwrap();
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap().to_string();
    assert!(
        loc.starts_with("/registry-v2/docker/registry/v2/blobs/sha256/"),
        "{loc}"
    );
    assert!(loc.contains("?verify="));
    let r = reg.get(&loc).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256_digest(&r.body), layer);
    let f = follow(
        &url(&gcr, Host::Registry, &blob),
        gcr.ca_pem(),
        "GET",
        &[("Authorization", &auth), ("Range", "bytes=3-")],
        5,
    )
    .unwrap();
    assert_eq!(f.response.status, 206);
    assert!(f
        .hops
        .iter()
        .all(|h| h.url.starts_with(&gcr.registry_url())));
    // Same origin: a client keeps Authorization, and the storage path ignores it.
    assert!(f.hops[1].sent_authorization);
    let data = gcr.content().blob(&layer).unwrap();
    assert_eq!(&f.response.body[..], &data[3..]);
    assert!(gcr.log().for_host(Host::Cdn).is_empty());
    // Unsigned or tampered storage paths are refused.
    let unsigned = loc.split('?').next().unwrap();
    assert_eq!(reg.get(unsigned).unwrap().status, 403);

    // Dot segments climbing back to the root, for names of any depth.
    gcr.knobs()
        .set_blob_location(BlobLocation::RegistryDotSegments);
    let r = reg.get_with(&blob, &[("Authorization", &auth)]).unwrap();
    let loc = r.header("location").unwrap().to_string();
    assert!(loc.starts_with("../../../../registry-v2/"), "{loc}");
    let deep = gcr.add_random_image("a/b/c", "v1", Flavor::Oci, &[4096], 5);
    let deep_tok = format!("Bearer {}", gcr.mint_token(None, &["a/b/c"]));
    let deep_blob = format!("/v2/a/b/c/blobs/{}", deep.layers[0].digest);
    let r = reg
        .get_with(&deep_blob, &[("Authorization", &deep_tok)])
        .unwrap();
    assert!(r
        .header("location")
        .unwrap()
        .starts_with("../../../../../registry-v2/"));
    for (b, a, d) in [
        (&blob, &auth, &layer),
        (&deep_blob, &deep_tok, &deep.layers[0].digest),
    ] {
        let f = follow(
            &url(&gcr, Host::Registry, b),
            gcr.ca_pem(),
            "GET",
            &[("Authorization", a)],
            5,
        )
        .unwrap();
        assert_eq!(f.response.status, 200);
        assert_eq!(&sha256_digest(&f.response.body), d);
        assert!(f.hops[1].url.contains(":") && f.hops[1].url.contains("/registry-v2/"));
    }

    // With extra hops the relative redirects chain on the registry host.
    gcr.knobs().set_blob_location(BlobLocation::RegistryPath);
    gcr.knobs().set_extra_hops(2);
    let f = follow(
        &url(&gcr, Host::Registry, &blob),
        gcr.ca_pem(),
        "GET",
        &[("Authorization", &auth)],
        5,
    )
    .unwrap();
    let statuses: Vec<u16> = f.hops.iter().map(|h| h.status).collect();
    assert_eq!(statuses, [302, 302, 302, 200]);
    assert_eq!(sha256_digest(&f.response.body), layer);
    let logged = gcr.log().with_prefix(Host::Registry, "/hop/");
    assert_eq!(logged.len(), 2);
    assert!(logged.iter().all(|e| e.query().starts_with("verify=")));
}

#[test]
fn gcr_like_manifest_heads_without_length_or_digest() {
    let gcr = HubDouble::start(Options::default().like_gcr()).unwrap();
    let alpine = gcr.seeded().alpine.clone();
    let auth = format!("Bearer {}", gcr.mint_token(None, &["library/alpine"]));
    let mut reg = gcr.client(Host::Registry).unwrap();
    let m = "/v2/library/alpine/manifests/latest";

    let r = reg.head_with_auth(m, &auth);
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_none(), "{:?}", r.headers);
    assert!(r.header("transfer-encoding").is_none());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(alpine.manifest.digest.as_str())
    );
    assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST_V2));
    // The connection stays usable after a length-less HEAD.
    let r = reg.get_with(m, &[("Authorization", &auth)]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), Some(alpine.manifest_bytes.len() as u64));
    assert_eq!(r.body, alpine.manifest_bytes);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(alpine.manifest.digest.as_str())
    );
    assert!(r.reused_connection);

    gcr.knobs().set_manifest_head_digest(false);
    let r = reg.head_with_auth(m, &auth);
    assert!(r.header("content-length").is_none());
    assert!(r.header("docker-content-digest").is_none());
    gcr.knobs().set_manifest_head_content_length(true);
    let r = reg.head_with_auth(m, &auth);
    assert_eq!(r.content_length(), Some(alpine.manifest_bytes.len() as u64));
    assert!(r.header("docker-content-digest").is_none());
    let r = reg.get_with(m, &[("Authorization", &auth)]).unwrap();
    assert!(r.header("docker-content-digest").is_some());

    // Raw bytes: a length-less HEAD really carries neither framing header.
    gcr.knobs().set_manifest_head_content_length(false);
    let mut raw = gcr.client(Host::Registry).unwrap();
    raw.write_raw(
        format!(
            "HEAD {m} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let text = String::from_utf8(raw.read_raw(std::time::Duration::from_secs(5)).unwrap()).unwrap();
    let lower = text.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{text}");
    assert!(
        !lower.contains("content-length") && !lower.contains("transfer-encoding"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// Manifest redirects
// ---------------------------------------------------------------------------

#[test]
fn manifest_redirects_to_the_cdn() {
    let hub = HubDouble::start(Options::default().manifest_redirect(true)).unwrap();
    let alpine = hub.seeded().alpine.clone();
    let tok = hub.mint_token(None, &["library/alpine"]);
    let auth = format!("Bearer {tok}");
    let mut reg = hub.client(Host::Registry).unwrap();
    let m = "/v2/library/alpine/manifests/latest";

    // Auth still comes first.
    assert_eq!(reg.get(m).unwrap().status, 401);
    let r = reg.get_with(m, &[("Authorization", &auth)]).unwrap();
    assert_eq!(r.status, 307);
    let loc = r.header("location").unwrap().to_string();
    let hex = &alpine.manifest.digest[7..];
    assert!(
        loc.starts_with(&format!("{}/manifests/sha256/{hex}?verify=", hub.cdn_url())),
        "{loc}"
    );
    assert!(r.header("ratelimit-remaining").is_some());
    assert_eq!(hub.knobs().manifest_gets(), 1);

    for method in ["GET", "HEAD"] {
        let f = follow(
            &url(&hub, Host::Registry, m),
            hub.ca_pem(),
            method,
            &[("Authorization", &auth)],
            5,
        )
        .unwrap();
        let r = &f.response;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST_V2));
        assert_eq!(
            r.header("docker-content-digest"),
            Some(alpine.manifest.digest.as_str())
        );
        assert_eq!(r.content_length(), Some(alpine.manifest_bytes.len() as u64));
        if method == "GET" {
            assert_eq!(r.body, alpine.manifest_bytes);
        } else {
            assert!(r.body.is_empty());
        }
    }
    let at_cdn = hub.log().with_prefix(Host::Cdn, "/manifests/");
    assert_eq!(at_cdn.len(), 2);
    assert_eq!(at_cdn[1].method, "HEAD");
    assert!(at_cdn.iter().all(|e| !e.has_header("authorization")));

    // Unknown manifests are answered by the registry; bad signatures by the CDN.
    let r = reg
        .get_with(
            "/v2/library/alpine/manifests/nope",
            &[("Authorization", &auth)],
        )
        .unwrap();
    assert_eq!(r.status, 404);
    let mut cdn = hub.client(Host::Cdn).unwrap();
    assert_eq!(
        cdn.get(&format!("/manifests/sha256/{hex}")).unwrap().status,
        403
    );

    // Works with CloudFront signing and with a multi-arch index too.
    hub.knobs().set_url_signing(UrlSigning::CloudFront);
    let multi = hub.seeded().multi.clone();
    let mauth = format!("Bearer {}", hub.mint_token(None, &["library/multi"]));
    let f = follow(
        &url(&hub, Host::Registry, "/v2/library/multi/manifests/latest"),
        hub.ca_pem(),
        "GET",
        &[("Authorization", &mauth)],
        5,
    )
    .unwrap();
    assert!(f.hops[1].url.contains("&Key-Pair-Id="));
    assert_eq!(f.response.body, multi.manifest_bytes);
    assert_eq!(
        f.response.header("content-type"),
        Some(multi.manifest.media_type.as_str())
    );
    hub.knobs().set_manifest_redirect(false);
    assert_eq!(
        reg.get_with(m, &[("Authorization", &auth)]).unwrap().status,
        200
    );
}

#[test]
fn token_path_and_service_setters() {
    let hub = HubDouble::start(
        Options::default()
            .service("example.test")
            .token_path("oauth2/token")
            .seed(false),
    )
    .unwrap();
    assert_eq!(
        hub.token_url(),
        format!("https://{}/oauth2/token", hub.token_addr())
    );
    let mut tok = hub.client(Host::Token).unwrap();
    assert_eq!(tok.get("/oauth2/token?scope=").unwrap().status, 200);
    assert_eq!(tok.get("/oauth2/token/").unwrap().status, 200);
    assert_eq!(tok.get("/token").unwrap().status, 404);
    let r = tok
        .request(
            "POST",
            "/oauth2/token",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &basic_auth("alice", "wonderland")),
            ],
            Some(b"grant_type=client_credentials&service=example.test"),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
