//! Self-tests: the double driven directly with the crate's own client.

use hubdouble::client::{basic_auth, fetch, Client, Response, Url};
use hubdouble::{sha256_digest, Flavor, Host, HubDouble, Options, TokenFields};
use std::time::{Duration, Instant};

fn hub() -> HubDouble {
    HubDouble::start(Options::default()).expect("start hub double")
}

/// Parses `Bearer realm="..",service="..",scope=".."` into pairs.
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

fn param<'a>(c: &'a [(String, String)], k: &str) -> Option<&'a str> {
    c.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// Asks the token host for `scope`, optionally with Basic credentials.
fn token(hub: &HubDouble, scope: &str, basic: Option<(&str, &str)>) -> Response {
    let mut c = hub.client(Host::Token).unwrap();
    let target = format!("/token?service=registry.docker.io&scope={scope}");
    let auth = basic.map(|(u, p)| basic_auth(u, p));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    c.get_with(&target, &headers).unwrap()
}

fn anon_token(hub: &HubDouble, repo: &str) -> String {
    let r = token(hub, &format!("repository:{repo}:pull"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["token"].as_str().unwrap().to_string()
}

fn get_auth(c: &mut Client, target: &str, tok: &str) -> Response {
    let auth = format!("Bearer {tok}");
    c.get_with(target, &[("Authorization", &auth)]).unwrap()
}

const UNAUTHORIZED: &str =
    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;

#[test]
fn anonymous_pull_flow() {
    let hub = hub();
    let mut reg = hub.client(Host::Registry).unwrap();

    // 1. ping
    let r = reg.get("/v2/").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), UNAUTHORIZED);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!(
            "Bearer realm=\"https://{}/token\",service=\"registry.docker.io\"",
            hub.token_addr()
        )
    );
    assert!(hub.token_url().starts_with("https://127.0.0.2:"));

    // 2. resource without token: scope added
    let r = reg.get("/v2/library/alpine/manifests/latest").unwrap();
    assert_eq!(r.status, 401);
    let ch = challenge(&r);
    assert_eq!(param(&ch, "realm"), Some(hub.token_url().as_str()));
    assert_eq!(param(&ch, "service"), Some("registry.docker.io"));
    assert_eq!(param(&ch, "scope"), Some("repository:library/alpine:pull"));

    // 3. token
    let t = token(&hub, "repository:library/alpine:pull", None);
    assert_eq!(t.status, 200);
    let j = t.json().unwrap();
    let tok = j["token"].as_str().unwrap().to_string();
    assert_eq!(j["access_token"].as_str(), Some(tok.as_str()));
    assert_eq!(j["expires_in"].as_i64(), Some(300));
    assert!(j["issued_at"].as_str().unwrap().ends_with('Z'));

    let r = get_auth(&mut reg, "/v2/", &tok);
    assert_eq!((r.status, r.text().as_str()), (200, "{}"));

    // 4. manifest
    let alpine = hub.seeded().alpine.clone();
    let r = get_auth(&mut reg, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some(hubdouble::DOCKER_MANIFEST_V2)
    );
    assert_eq!(r.content_length(), Some(r.body.len() as u64));
    assert_eq!(sha256_digest(&r.body), alpine.manifest.digest);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(alpine.manifest.digest.as_str())
    );
    assert_eq!(
        r.header("etag").unwrap(),
        format!("\"{}\"", alpine.manifest.digest)
    );
    assert_eq!(r.header("ratelimit-limit"), Some("100;w=21600"));
    assert_eq!(r.header("ratelimit-remaining"), Some("99;w=21600"));
    assert_eq!(r.header("docker-ratelimit-source"), Some("127.0.0.1"));
    let m = r.json().unwrap();
    assert_eq!(
        m["config"]["digest"].as_str(),
        Some(alpine.config.digest.as_str())
    );

    // 5. blobs: 307 to the CDN, then bytes without Authorization
    let mut digests = vec![alpine.config.digest.clone()];
    digests.extend(alpine.layers.iter().map(|l| l.digest.clone()));
    assert_eq!(digests.len(), 3);
    for digest in &digests {
        let r = get_auth(
            &mut reg,
            &format!("/v2/library/alpine/blobs/{digest}"),
            &tok,
        );
        assert_eq!(r.status, 307);
        assert_eq!(r.content_length(), Some(0));
        let loc = r.header("location").unwrap();
        let hex = &digest[7..];
        assert!(
            loc.starts_with(&format!(
                "https://{}/registry-v2/docker/registry/v2/blobs/sha256/{}/{hex}/data?verify=",
                hub.cdn_addr(),
                &hex[..2]
            )),
            "{loc}"
        );
        let b = fetch(loc, hub.ca_pem(), "GET", &[]).unwrap();
        assert_eq!(b.status, 200);
        assert_eq!(b.header("accept-ranges"), Some("bytes"));
        assert_eq!(&sha256_digest(&b.body), digest);
    }
    assert_eq!(reg.connections_opened(), 1, "keep-alive reuse");

    // The log saw it all, and nothing leaked to the CDN.
    let cdn = hub.log().for_host(Host::Cdn);
    assert_eq!(cdn.len(), 3);
    assert!(cdn.iter().all(|e| !e.has_header("authorization")));
    assert!(hub
        .log()
        .for_host(Host::Token)
        .iter()
        .all(|e| !e.has_basic_auth()));
    let regs = hub.log().for_host(Host::Registry);
    assert!(regs
        .iter()
        .any(|e| e.path() == "/v2/library/alpine/manifests/latest" && e.has_bearer_auth()));
    hub.log().clear();
    assert!(hub.log().is_empty());
}

#[test]
fn seeded_layers_are_real_tar_gz() {
    let hub = hub();
    let alpine = &hub.seeded().alpine;
    let config = hub.content().blob(&alpine.config.digest).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    for (i, layer) in alpine.layers.iter().enumerate() {
        let gz = hub.content().blob(&layer.digest).unwrap();
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(gz.len() as u64, layer.size);
        assert!(config["rootfs"]["diff_ids"][i]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
    }
}

#[test]
fn head_and_rate_limit() {
    let hub = hub();
    let tok = anon_token(&hub, "library/alpine");
    let auth = format!("Bearer {tok}");
    let mut reg = hub.client(Host::Registry).unwrap();
    let h = reg
        .request(
            "HEAD",
            "/v2/library/alpine/manifests/latest",
            &[("Authorization", &auth)],
            None,
        )
        .unwrap();
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    let g = get_auth(&mut reg, "/v2/library/alpine/manifests/latest", &tok);
    for name in [
        "content-type",
        "content-length",
        "docker-content-digest",
        "etag",
    ] {
        assert_eq!(h.header(name), g.header(name), "{name}");
    }
    assert_eq!(h.header("ratelimit-remaining"), Some("100;w=21600"));
    assert_eq!(g.header("ratelimit-remaining"), Some("99;w=21600"));
    assert_eq!(hub.knobs().manifest_gets(), 1);
    // HEAD of a blob redirects too.
    let d = &hub.seeded().alpine.layers[0].digest;
    let h = reg
        .request(
            "HEAD",
            &format!("/v2/library/alpine/blobs/{d}"),
            &[("Authorization", &auth)],
            None,
        )
        .unwrap();
    assert_eq!(h.status, 307);
    assert!(h.header("location").is_some());
    let log = hub.log().for_host(Host::Registry);
    assert_eq!(log.iter().filter(|e| e.method == "HEAD").count(), 2);

    hub.knobs().set_rate_limit(1, true);
    assert_eq!(
        get_auth(&mut reg, "/v2/library/alpine/manifests/latest", &tok).status,
        200
    );
    let r = get_auth(&mut reg, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 429);
    assert!(r.text().contains("TOOMANYREQUESTS"));
}

#[test]
fn registry_errors() {
    let hub = hub();
    let mut reg = hub.client(Host::Registry).unwrap();
    let tok = anon_token(&hub, "library/alpine");
    let r = get_auth(&mut reg, "/v2/library/alpine/manifests/badtag", &tok);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"badtag"}}]}"#
    );
    let zero = format!("sha256:{}", "0".repeat(64));
    let r = get_auth(&mut reg, &format!("/v2/library/alpine/blobs/{zero}"), &tok);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("BLOB_UNKNOWN"));
    let r = get_auth(
        &mut reg,
        &format!("/v2/library/alpine/manifests/{zero}"),
        &tok,
    );
    assert_eq!(r.status, 404);
    assert!(r.text().contains("MANIFEST_UNKNOWN"));

    // Unknown repo: the token host still grants pull, the registry says NAME_UNKNOWN.
    let tok2 = anon_token(&hub, "library/nope");
    let r = get_auth(&mut reg, "/v2/library/nope/manifests/latest", &tok2);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("NAME_UNKNOWN"));

    // A token for another repo is not enough.
    let r = get_auth(&mut reg, "/v2/library/multi/manifests/latest", &tok);
    assert_eq!(r.status, 401);
    assert_eq!(param(&challenge(&r), "error"), Some("insufficient_scope"));

    // Garbage and expired tokens.
    let r = get_auth(&mut reg, "/v2/", "nope");
    assert_eq!(r.status, 401);
    assert_eq!(param(&challenge(&r), "error"), Some("invalid_token"));
    hub.knobs().set_token_ttl(-1);
    let expired = anon_token(&hub, "library/alpine");
    let r = get_auth(&mut reg, "/v2/library/alpine/manifests/latest", &expired);
    assert_eq!(r.status, 401);
    hub.knobs().set_token_ttl(300);

    // Push is not supported.
    let auth = format!("Bearer {tok}");
    let r = reg
        .request(
            "POST",
            "/v2/library/alpine/blobs/uploads/",
            &[("Authorization", &auth)],
            Some(b""),
        )
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(reg.get("/nothing").unwrap().status, 404);
}

#[test]
fn cdn_ranges_auth_and_signatures() {
    let hub = hub();
    let digest = hub.add_random_blob("library/alpine", 100_000, 3);
    let data = hub.content().blob(&digest).unwrap();
    let tok = anon_token(&hub, "library/alpine");
    let mut reg = hub.client(Host::Registry).unwrap();
    let loc = get_auth(
        &mut reg,
        &format!("/v2/library/alpine/blobs/{digest}"),
        &tok,
    )
    .header("location")
    .unwrap()
    .to_string();
    let u = Url::parse(&loc).unwrap();
    let mut cdn = hub.client(Host::Cdn).unwrap();

    let r = cdn
        .get_with(&u.target, &[("Range", "bytes=1000-")])
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 1000-99999/100000"));
    assert_eq!(r.content_length(), Some(99_000));
    assert_eq!(&r.body[..], &data[1000..]);
    let r = cdn
        .get_with(&u.target, &[("Range", "bytes=10-19")])
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/100000"));
    assert_eq!(&r.body[..], &data[10..20]);
    let r = cdn
        .get_with(&u.target, &[("Range", "bytes=100000-")])
        .unwrap();
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */100000"));
    let r = cdn.head(&u.target).unwrap();
    assert_eq!((r.status, r.content_length()), (200, Some(100_000)));
    assert!(r.body.is_empty());
    assert_eq!(cdn.connections_opened(), 1);

    let r = cdn
        .get_with(&u.target, &[("Authorization", "Bearer x")])
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Missing x-amz-content-sha256"));

    let tampered = u.target.replace("verify=", "verify=1");
    assert_eq!(cdn.get(&tampered).unwrap().status, 403);
    let unsigned = u.target.split('?').next().unwrap();
    assert_eq!(cdn.get(unsigned).unwrap().status, 403);

    hub.knobs().set_cdn_signature_ttl(-5);
    let loc = get_auth(
        &mut reg,
        &format!("/v2/library/alpine/blobs/{digest}"),
        &tok,
    )
    .header("location")
    .unwrap()
    .to_string();
    let r = fetch(&loc, hub.ca_pem(), "GET", &[]).unwrap();
    assert_eq!(r.status, 403);
    assert!(r.text().contains("expired"));
    let ranged: Vec<_> = hub
        .log()
        .for_host(Host::Cdn)
        .into_iter()
        .filter(|e| e.header("range") == Some("bytes=10-19"))
        .collect();
    assert_eq!(ranged.len(), 1);
}

#[test]
fn private_repo_needs_basic_auth() {
    let hub = hub();
    let mut reg = hub.client(Host::Registry).unwrap();
    let anon = anon_token(&hub, "private/secret");
    let r = get_auth(&mut reg, "/v2/private/secret/manifests/latest", &anon);
    assert_eq!(r.status, 401);
    assert_eq!(param(&challenge(&r), "error"), Some("insufficient_scope"));

    let bad = token(
        &hub,
        "repository:private/secret:pull",
        Some(("alice", "nope")),
    );
    assert_eq!(bad.status, 401);

    let ok = token(
        &hub,
        "repository:private/secret:pull",
        Some(("alice", "wonderland")),
    );
    assert_eq!(ok.status, 200);
    let tok = ok.json().unwrap()["token"].as_str().unwrap().to_string();
    let r = get_auth(&mut reg, "/v2/private/secret/manifests/latest", &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256_digest(&r.body), hub.seeded().secret.manifest.digest);

    let tl = hub.log().for_host(Host::Token);
    assert_eq!(tl.iter().filter(|e| e.has_basic_auth()).count(), 2);
    assert!(!tl[0].has_basic_auth());
}

#[test]
fn token_variants_and_oauth_post() {
    let hub = hub();
    // Repeated scopes.
    let r = token(
        &hub,
        "repository:library/alpine:pull&scope=repository:library/multi:pull,push",
        None,
    );
    let tok = r.json().unwrap()["token"].as_str().unwrap().to_string();
    let mut reg = hub.client(Host::Registry).unwrap();
    assert_eq!(
        get_auth(&mut reg, "/v2/library/multi/manifests/latest", &tok).status,
        200
    );
    assert_eq!(
        get_auth(&mut reg, "/v2/library/alpine/manifests/latest", &tok).status,
        200
    );

    hub.knobs().set_token_fields(TokenFields::TokenOnly);
    let j = token(&hub, "repository:library/alpine:pull", None)
        .json()
        .unwrap();
    assert!(j.get("token").is_some() && j.get("access_token").is_none());
    hub.knobs().set_token_fields(TokenFields::AccessTokenOnly);
    hub.knobs().set_expires_in(false);
    let j = token(&hub, "repository:library/alpine:pull", None)
        .json()
        .unwrap();
    assert!(j.get("token").is_none() && j.get("access_token").is_some());
    assert!(j.get("expires_in").is_none());
    hub.knobs().set_token_fields(TokenFields::Both);

    // OAuth2 password grant with a refresh token, then the refresh grant.
    let mut t = hub.client(Host::Token).unwrap();
    let form = "grant_type=password&service=registry.docker.io&scope=repository%3Aprivate%2Fsecret%3Apull&client_id=test&access_type=offline&username=alice&password=wonderland";
    let r = t
        .request(
            "POST",
            "/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(form.as_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json().unwrap();
    let refresh = j["refresh_token"].as_str().unwrap().to_string();
    let tok = j["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        get_auth(&mut reg, "/v2/private/secret/manifests/latest", &tok).status,
        200
    );
    let form = format!(
        "grant_type=refresh_token&service=registry.docker.io&scope=repository:private/secret:pull&client_id=test&refresh_token={refresh}"
    );
    let r = t
        .request("POST", "/token", &[], Some(form.as_bytes()))
        .unwrap();
    assert_eq!(r.status, 200);
    let form =
        "grant_type=password&service=registry.docker.io&client_id=test&username=alice&password=x";
    let r = t
        .request("POST", "/token", &[], Some(form.as_bytes()))
        .unwrap();
    assert_eq!(r.status, 401);
    let logged = hub.log().for_host(Host::Token);
    assert!(logged
        .iter()
        .any(|e| e.method == "POST" && e.body.starts_with(b"grant_type=refresh_token")));
}

#[test]
fn tags_list_is_chunked_and_paginates() {
    let hub = hub();
    let tok = anon_token(&hub, "library/alpine");
    let mut reg = hub.client(Host::Registry).unwrap();
    let r = get_auth(&mut reg, "/v2/library/alpine/tags/list", &tok);
    assert_eq!(r.status, 200);
    assert!(r.chunked);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        r.text(),
        r#"{"name":"library/alpine","tags":["3.20","latest"]}"#
    );
    let r = get_auth(&mut reg, "/v2/library/alpine/tags/list?n=1", &tok);
    assert_eq!(r.json().unwrap()["tags"], serde_json::json!(["3.20"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/library/alpine/tags/list?last=3.20&n=1>; rel=\"next\"")
    );
    // The connection survived the chunked bodies.
    assert_eq!(get_auth(&mut reg, "/v2/", &tok).status, 200);
    assert_eq!(reg.connections_opened(), 1);
}

#[test]
fn multi_arch_index() {
    let hub = hub();
    let multi = hub.seeded().multi.clone();
    let tok = anon_token(&hub, "library/multi");
    let mut reg = hub.client(Host::Registry).unwrap();
    let r = get_auth(&mut reg, "/v2/library/multi/manifests/latest", &tok);
    assert_eq!(r.header("content-type"), Some(hubdouble::OCI_INDEX));
    let j = r.json().unwrap();
    assert_eq!(j["manifests"].as_array().unwrap().len(), 2);
    for (img, entry) in multi.images.iter().zip(j["manifests"].as_array().unwrap()) {
        assert_eq!(entry["digest"].as_str(), Some(img.manifest.digest.as_str()));
        let r = get_auth(
            &mut reg,
            &format!("/v2/library/multi/manifests/{}", img.manifest.digest),
            &tok,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some(hubdouble::OCI_MANIFEST));
        assert_eq!(sha256_digest(&r.body), img.manifest.digest);
    }
    assert_eq!(multi.images[1].config.media_type, hubdouble::OCI_CONFIG);
}

/// Follows redirects from the registry like a client would, without Authorization.
fn pull_blob(hub: &HubDouble, repo: &str, digest: &str, tok: &str) -> Response {
    let mut reg = hub.client(Host::Registry).unwrap();
    let r = get_auth(&mut reg, &format!("/v2/{repo}/blobs/{digest}"), tok);
    assert_eq!(r.status, 307);
    let mut url = Url::parse(r.header("location").unwrap()).unwrap();
    for _ in 0..10 {
        let r = fetch(
            &format!("{}://{}{}", url.scheme, url.authority(), url.target),
            hub.ca_pem(),
            "GET",
            &[],
        )
        .unwrap();
        if r.status != 302 && r.status != 307 {
            return r;
        }
        url = url.join(r.header("location").unwrap()).unwrap();
    }
    panic!("too many redirects");
}

#[test]
fn extra_hops_are_relative() {
    let hub = HubDouble::start(Options::default().extra_hops(2)).unwrap();
    let d = hub.seeded().alpine.layers[0].digest.clone();
    let tok = anon_token(&hub, "library/alpine");
    let r = pull_blob(&hub, "library/alpine", &d, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256_digest(&r.body), d);
    let cdn = hub.log().for_host(Host::Cdn);
    assert_eq!(cdn.len(), 3);
    assert!(cdn[0].path().starts_with("/hop/2/"));
    assert!(cdn[1].path().starts_with("/hop/1/"));
    assert!(cdn[2].path().starts_with("/registry-v2/"));
    assert!(cdn.iter().all(|e| e.query().starts_with("verify=")));
}

#[test]
fn big_blob_cut_and_resume() {
    let hub = hub();
    let size = 64 << 20;
    let t0 = Instant::now();
    let img = hub.add_random_image("library/big", "latest", Flavor::Docker, &[size], 9);
    eprintln!("64 MiB generated + hashed in {:?}", t0.elapsed());
    let d = img.layers[0].digest.clone();
    let tok = anon_token(&hub, "library/big");

    let t0 = Instant::now();
    let r = pull_blob(&hub, "library/big", &d, &tok);
    eprintln!("64 MiB over TLS in {:?}", t0.elapsed());
    assert_eq!(r.body.len(), size);
    assert_eq!(sha256_digest(&r.body), d);

    // Cut once after 1 MiB, then resume with Range.
    hub.knobs().cut_blobs_after(1 << 20, Some(1));
    let mut reg = hub.client(Host::Registry).unwrap();
    let loc = get_auth(&mut reg, &format!("/v2/library/big/blobs/{d}"), &tok)
        .header("location")
        .unwrap()
        .to_string();
    let u = Url::parse(&loc).unwrap();
    let mut cdn = hub.client(Host::Cdn).unwrap();
    cdn.send_request("GET", &u.target, &[], None).unwrap();
    let err = cdn.read_response(false).unwrap_err();
    assert!(
        err.to_string().contains("cut after") || err.kind() == std::io::ErrorKind::UnexpectedEof,
        "{err}"
    );
    let mut cdn = hub.client(Host::Cdn).unwrap();
    let r = cdn
        .get_with(&u.target, &[("Range", &format!("bytes={}-", 1 << 20))])
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body.len(), size - (1 << 20));
    let full = hub.content().blob(&d).unwrap();
    assert_eq!(&r.body[..], &full[1 << 20..]);
}

#[test]
fn stall_down_and_injected_faults() {
    let hub = hub();
    // Stall: the request is read and logged, but never answered.
    hub.set_stall(Host::Registry, true);
    let mut reg = hub.client(Host::Registry).unwrap();
    reg.set_timeout(Duration::from_millis(300));
    let t0 = Instant::now();
    let err = reg.get("/v2/").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(hub.log().matching(Host::Registry, "/v2/").len(), 1);
    hub.set_stall(Host::Registry, false);
    let mut reg = hub.client(Host::Registry).unwrap();
    assert_eq!(reg.get("/v2/").unwrap().status, 401);

    // Down: connections refused, existing ones closed; then up again on the same address.
    let addr = hub.registry_addr();
    hub.set_down(Host::Registry, true).unwrap();
    assert!(hub.is_down(Host::Registry));
    let e = std::net::TcpStream::connect(addr).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(reg.get("/v2/").is_err());
    hub.set_down(Host::Registry, false).unwrap();
    let mut reg = hub.client(Host::Registry).unwrap();
    assert_eq!(reg.get("/v2/").unwrap().status, 401);
    assert_eq!(hub.registry_addr(), addr);

    // Injected statuses.
    hub.knobs().inject_status(Host::Token, 503, 2);
    assert_eq!(
        token(&hub, "repository:library/alpine:pull", None).status,
        503
    );
    assert_eq!(
        token(&hub, "repository:library/alpine:pull", None).status,
        503
    );
    assert_eq!(
        token(&hub, "repository:library/alpine:pull", None).status,
        200
    );

    let refused = hubdouble::unused_addr();
    assert!(std::net::TcpStream::connect(refused).is_err());
}

#[test]
fn shutdown_is_prompt_with_stalled_and_idle_connections() {
    let hub = hub();
    hub.set_stall(Host::Registry, true);
    let mut stalled = hub.client(Host::Registry).unwrap();
    stalled.set_timeout(Duration::from_millis(100));
    let _ = stalled.get("/v2/");
    let mut idle = hub.client(Host::Cdn).unwrap();
    idle.connect().unwrap();
    let t0 = Instant::now();
    drop(hub);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn keep_alive_pipelining_and_malformed_input() {
    let hub = hub();
    let mut reg = hub.client(Host::Registry).unwrap();
    for _ in 0..50 {
        assert_eq!(reg.get("/v2/").unwrap().status, 401);
    }
    assert_eq!(reg.connections_opened(), 1);
    let conns: std::collections::HashSet<u64> = hub
        .log()
        .for_host(Host::Registry)
        .iter()
        .map(|e| e.conn)
        .collect();
    assert_eq!(conns.len(), 1);

    // Two requests in one write, two responses back in order.
    reg.write_raw(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nHEAD /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let a = reg.read_response(false).unwrap();
    let b = reg.read_response(true).unwrap();
    assert_eq!(
        (a.status, a.body.len(), b.status, b.body.len()),
        (401, UNAUTHORIZED.len(), 401, 0)
    );
    assert_eq!(b.content_length(), Some(UNAUTHORIZED.len() as u64));

    // Garbage gets a 400 and a close.
    reg.write_raw(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    let raw = reg.read_raw(Duration::from_secs(2)).unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(!reg.is_connected());
    // The client reconnects by itself.
    assert_eq!(reg.get("/v2/").unwrap().status, 401);
    assert_eq!(reg.connections_opened(), 2);

    // Connection: close is honoured.
    let r = reg.get_with("/v2/", &[("Connection", "close")]).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(!reg.is_connected());
}

#[test]
fn plain_http_and_direct_blobs() {
    let hub = HubDouble::start(Options::default().plain_http().blob_redirect(false)).unwrap();
    assert!(hub.ca_pem().is_none() && hub.ca_path().is_none());
    assert!(hub.registry_url().starts_with("http://127.0.0.1:"));
    let mut reg = Client::from_url(&hub.registry_url(), None).unwrap();
    let r = reg.get("/v2/").unwrap();
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("realm=\"http://127.0.0.2:"));
    let tok = hub.mint_token(None, &["library/alpine"]);
    let d = hub.seeded().alpine.layers[1].digest.clone();
    let r = get_auth(&mut reg, &format!("/v2/library/alpine/blobs/{d}"), &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(sha256_digest(&r.body), d);
    let auth = format!("Bearer {tok}");
    let r = reg
        .get_with(
            &format!("/v2/library/alpine/blobs/{d}"),
            &[("Authorization", &auth), ("Range", "bytes=5-")],
        )
        .unwrap();
    assert_eq!(r.status, 206);
    assert!(hub.log().for_host(Host::Cdn).is_empty());
}

#[test]
fn ca_file_and_tls_trust() {
    let hub = hub();
    let path = hub.ca_path().unwrap().to_path_buf();
    let pem = std::fs::read_to_string(&path).unwrap();
    assert_eq!(pem, hub.ca_pem().unwrap());
    assert!(pem.contains("BEGIN CERTIFICATE"));
    // Every host answers TLS for its own IP and for localhost.
    for host in Host::ALL {
        let mut c = hub.client(host).unwrap();
        c.connect().unwrap();
        let mut c =
            Client::new(hub.addr(host), Some(("localhost", hub.ca_pem().unwrap()))).unwrap();
        c.connect().unwrap();
    }
    // A client trusting another CA fails the handshake.
    let other = HubDouble::start(Options::default().seed(false)).unwrap();
    let mut c = Client::new(
        hub.registry_addr(),
        Some(("127.0.0.1", other.ca_pem().unwrap())),
    )
    .unwrap();
    assert!(c.connect().is_err());
    drop(hub);
    assert!(!path.exists());
}
