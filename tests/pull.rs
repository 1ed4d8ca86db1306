//! The Docker Hub pull, end to end through the real ocirelay binary against
//! the Docker Hub double (registry + token host + signed-URL CDN, all TLS).
//! One behaviour per test.

mod common;

use std::time::Duration;

use common::*;

const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// `GET target` with the bearer `token` and the Accept of a manifest pull.
fn get_manifest(c: &mut Client, target: &str, token: &str) -> Response {
    c.get_with(
        target,
        &[
            ("Authorization", &bearer(token)),
            ("Accept", MANIFEST_ACCEPT),
        ],
    )
    .unwrap()
}

/// No header of the response names one of the double's hosts.
fn assert_no_upstream_host(r: &Response, hub: &HubDouble) {
    for (name, value) in &r.headers {
        for host in Host::ALL {
            let addr = hub.addr(host).to_string();
            assert!(
                !value.contains(&addr),
                "{name}: {value} leaks upstream {addr}"
            );
        }
    }
}

#[test]
fn ping_challenge_realm_points_at_the_relay_and_keeps_the_service() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let r = c.get("/v2/").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        challenge_param(&r, "realm").unwrap(),
        format!("http://{}/token", relay.http)
    );
    assert_eq!(
        challenge_param(&r, "service").unwrap(),
        "registry.docker.io"
    );
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert!(r.text().contains("UNAUTHORIZED"));
    assert_no_upstream_host(&r, &hub);
}

#[test]
fn realm_uses_the_host_the_client_addressed() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let r = c
        .get_with("/v2/", &[("Host", "mirror.example.com:8443")])
        .unwrap();
    assert_eq!(
        challenge_param(&r, "realm").unwrap(),
        "http://mirror.example.com:8443/token"
    );
}

#[test]
fn configured_public_url_wins_in_the_realm() {
    let hub = hub();
    let relay = Relay::start_with(&config_for(
        &hub,
        "public_url = \"https://hub.mirror.test\"",
    ));
    let mut c = relay.client();
    let r = c.get("/v2/").unwrap();
    assert_eq!(
        challenge_param(&r, "realm").unwrap(),
        "https://hub.mirror.test/token"
    );
}

#[test]
fn anonymous_pull_of_manifest_and_blobs_matches_the_digests() {
    let hub = hub();
    let (_relay, mut c, token) = relay_with_alpine_token(&hub);
    let img = hub.seeded().alpine.clone();

    let auth = bearer(&token);
    let m = get_manifest(&mut c, "/v2/library/alpine/manifests/latest", &token);
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.body, img.manifest_bytes);
    assert_eq!(
        m.header("docker-content-digest"),
        Some(img.manifest.digest.as_str())
    );
    assert_eq!(
        m.header("content-type"),
        Some(img.manifest.media_type.as_str())
    );
    assert_eq!(
        m.header("etag"),
        Some(format!("\"{}\"", img.manifest.digest).as_str())
    );
    assert!(
        m.header("ratelimit-limit").is_some(),
        "rate limit headers are forwarded"
    );

    for blob in std::iter::once(&img.config).chain(&img.layers) {
        let b = c
            .get_with(
                &format!("/v2/library/alpine/blobs/{}", blob.digest),
                &[("Authorization", &auth)],
            )
            .unwrap();
        assert_eq!(b.status, 200);
        assert_eq!(b.body.len() as u64, blob.size);
        assert_eq!(sha256(&b.body), blob.digest);
        assert_eq!(
            b.header("docker-content-digest"),
            Some(blob.digest.as_str())
        );
        assert_eq!(b.header_all("etag"), vec![format!("\"{}\"", blob.digest)]);
        assert_no_upstream_host(&b, &hub);
    }
    // The CDN was reached by ocirelay, never with credentials.
    let cdn = hub.log().for_host(Host::Cdn);
    assert_eq!(cdn.len(), 1 + img.layers.len());
    assert!(cdn.iter().all(|e| !e.has_header("authorization")));
    // And the registry got the client's bearer token.
    assert!(hub
        .log()
        .matching(Host::Registry, "/v2/library/alpine/manifests/latest")
        .iter()
        .any(|e| e.has_bearer_auth()));
}

#[test]
fn library_prefix_is_added_to_path_and_token_scope() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let img = hub.seeded().alpine.clone();
    let mut c = relay.client();

    let r = c.get("/v2/alpine/manifests/latest").unwrap();
    assert_eq!(r.status, 401);
    // The client is told the scope in its own name...
    assert_eq!(
        challenge_param(&r, "scope").unwrap(),
        "repository:alpine:pull"
    );
    // ...while the registry was asked for the library/ name.
    assert!(!hub
        .log()
        .matching(Host::Registry, "/v2/library/alpine/manifests/latest")
        .is_empty());
    assert!(hub
        .log()
        .matching(Host::Registry, "/v2/alpine/manifests/latest")
        .is_empty());

    let t = c
        .get("/token?service=registry.docker.io&scope=repository%3Aalpine%3Apull")
        .unwrap();
    assert_eq!(t.status, 200);
    let tok = hub.log().for_host(Host::Token);
    assert_eq!(tok.len(), 1);
    assert!(
        tok[0]
            .query()
            .contains("scope=repository%3Alibrary%2Falpine%3Apull"),
        "token host got {}",
        tok[0].target
    );
    let token = t.json().unwrap()["token"].as_str().unwrap().to_string();
    let m = get_manifest(&mut c, "/v2/alpine/manifests/latest", &token);
    assert_eq!(m.status, 200);
    assert_eq!(m.body, img.manifest_bytes);
    let layer = &img.layers[0];
    let b = get_auth(
        &mut c,
        &format!("/v2/alpine/blobs/{}", layer.digest),
        &token,
    );
    assert_eq!(sha256(&b.body), layer.digest);
}

#[test]
fn head_stays_head_and_carries_length_and_digest() {
    let hub = hub();
    let (_relay, mut c, token) = relay_with_alpine_token(&hub);
    let img = hub.seeded().alpine.clone();
    let gets_before = hub.knobs().manifest_gets();
    let r = c
        .request(
            "HEAD",
            "/v2/library/alpine/manifests/latest",
            &[
                ("Authorization", &bearer(&token)),
                ("Accept", MANIFEST_ACCEPT),
            ],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.content_length(), Some(img.manifest.size));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.manifest.digest.as_str())
    );
    assert_eq!(
        hub.knobs().manifest_gets(),
        gets_before,
        "a HEAD must not count as a pull"
    );
    let heads = hub
        .log()
        .matching(Host::Registry, "/v2/library/alpine/manifests/latest");
    assert_eq!(heads.last().unwrap().method, "HEAD");

    // A blob HEAD follows the redirect as a HEAD too.
    let layer = &img.layers[0];
    let r = c
        .request(
            "HEAD",
            &format!("/v2/library/alpine/blobs/{}", layer.digest),
            &[("Authorization", &bearer(&token))],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), Some(layer.size));
    assert!(hub
        .log()
        .for_host(Host::Cdn)
        .iter()
        .all(|e| e.method == "HEAD"));
    // The connection is still usable after HEADs (no stray body bytes).
    let again = c.get("/v2/").unwrap();
    assert_eq!(again.status, 401);
}

#[test]
fn range_requests_resume_a_blob() {
    let hub = hub();
    let (_relay, mut c, token) = relay_with_alpine_token(&hub);
    let digest = hub.add_random_blob("library/alpine", 3 << 20, 7);
    let full = hub.content().blob(&digest).unwrap();
    let from = 1_234_567usize;
    let r = c
        .get_with(
            &format!("/v2/library/alpine/blobs/{digest}"),
            &[
                ("Authorization", &bearer(&token)),
                ("Range", &format!("bytes={from}-")),
            ],
        )
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("bytes {from}-{}/{}", full.len() - 1, full.len())
    );
    assert_eq!(&r.body[..], &full[from..]);
    let cdn = hub.log().for_host(Host::Cdn);
    assert_eq!(
        cdn.last().unwrap().header("range"),
        Some(format!("bytes={from}-").as_str())
    );
}

#[test]
fn docker_login_credentials_pass_through_to_the_token_host() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let secret = hub.seeded().secret.clone();
    let mut c = relay.client();
    let path = format!("/v2/{}/manifests/latest", secret.repo);
    let scope = format!("repository%3A{}%3Apull", secret.repo.replace('/', "%2F"));

    // Anonymous: the token does not grant the private repo.
    let anon = c
        .get(&format!("/token?service=registry.docker.io&scope={scope}"))
        .unwrap();
    let anon_token = anon.json().unwrap()["token"].as_str().unwrap().to_string();
    let denied = get_manifest(&mut c, &path, &anon_token);
    assert_eq!(denied.status, 401);

    // Wrong password: the token host's refusal comes back.
    let wrong = c
        .get_with(
            &format!("/token?service=registry.docker.io&scope={scope}"),
            &[("Authorization", &basic_auth("alice", "nope"))],
        )
        .unwrap();
    assert_eq!(wrong.status, 401);

    // docker login: Basic credentials reach the token host, the token works.
    let ok = c
        .get_with(
            &format!("/token?service=registry.docker.io&scope={scope}"),
            &[("Authorization", &basic_auth("alice", "wonderland"))],
        )
        .unwrap();
    assert_eq!(ok.status, 200);
    let token = ok.json().unwrap()["token"].as_str().unwrap().to_string();
    let m = get_manifest(&mut c, &path, &token);
    assert_eq!(m.status, 200);
    assert_eq!(m.body, secret.manifest_bytes);
    assert!(hub
        .log()
        .for_host(Host::Token)
        .iter()
        .any(|e| e.has_basic_auth()));
    // Basic credentials never went to the registry or the CDN.
    assert!(hub
        .log()
        .for_host(Host::Registry)
        .iter()
        .all(|e| !e.has_basic_auth()));
}

#[test]
fn token_post_oauth_form_is_forwarded_with_scopes_mapped() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let _ = c.get("/v2/").unwrap(); // learn the realm, as a client would
    let form = "grant_type=password&username=alice&password=wonderland&service=registry.docker.io&client_id=test&scope=repository%3Aalpine%3Apull";
    let r = c
        .request(
            "POST",
            "/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(form.as_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().unwrap()["access_token"].is_string());
    let posted = hub.log().for_host(Host::Token);
    let body = String::from_utf8(posted.last().unwrap().body.clone()).unwrap();
    assert_eq!(posted.last().unwrap().method, "POST");
    assert!(
        body.contains("scope=repository%3Alibrary%2Falpine%3Apull"),
        "{body}"
    );
    assert!(body.contains("username=alice"));
}

#[test]
fn token_endpoint_learns_the_realm_on_a_worker_that_never_saw_a_challenge() {
    let hub = hub();
    let relay = Relay::start(&hub);
    // Fresh connections, straight to /token: whichever worker gets them
    // must find the realm by asking the upstream itself.
    for _ in 0..4 {
        let mut c = relay.client();
        let r = c
            .get("/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[test]
fn token_answers_are_returned_unchanged_in_every_variant() {
    let hub = HubDouble::start(
        Options::default()
            .token_fields(hubdouble::TokenFields::AccessTokenOnly)
            .expires_in(false),
    )
    .unwrap();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let r = c
        .get("/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull")
        .unwrap();
    assert_eq!(r.status, 200);
    let j = r.json().unwrap();
    assert!(j["access_token"].is_string());
    assert!(j.get("token").is_none());
    assert!(j.get("expires_in").is_none());
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn redirect_chains_with_relative_locations_are_followed_without_credentials() {
    let hub = HubDouble::start(Options::default().extra_hops(3)).unwrap();
    let (_relay, mut c, token) = relay_with_alpine_token(&hub);
    let layer = hub.seeded().alpine.layers[1].clone();
    let b = get_auth(
        &mut c,
        &format!("/v2/library/alpine/blobs/{}", layer.digest),
        &token,
    );
    assert_eq!(b.status, 200);
    assert_eq!(sha256(&b.body), layer.digest);
    let cdn = hub.log().for_host(Host::Cdn);
    assert_eq!(cdn.len(), 4, "three extra hops and the final fetch");
    assert!(cdn.iter().all(|e| !e.has_header("authorization")));
    assert!(
        cdn.iter().all(|e| e.query().contains("verify=")),
        "query strings survive every hop"
    );
}

#[test]
fn too_many_redirects_end_in_a_502() {
    let hub = HubDouble::start(Options::default().extra_hops(12)).unwrap();
    let (_relay, mut c, token) = relay_with_alpine_token(&hub);
    let layer = hub.seeded().alpine.layers[0].clone();
    let b = get_auth(
        &mut c,
        &format!("/v2/library/alpine/blobs/{}", layer.digest),
        &token,
    );
    assert_eq!(b.status, 502);
    assert!(b.text().contains("redirects"), "{}", b.text());
}

#[test]
fn signed_redirects_are_never_reused() {
    let hub = HubDouble::start(Options::default().cdn_signature_ttl(1)).unwrap();
    let (_relay, mut c, token) = relay_with_alpine_token(&hub);
    let layer = hub.seeded().alpine.layers[0].clone();
    let path = format!("/v2/library/alpine/blobs/{}", layer.digest);
    let first = get_auth(&mut c, &path, &token);
    assert_eq!(first.status, 200);
    std::thread::sleep(Duration::from_millis(2100));
    let second = get_auth(&mut c, &path, &token);
    assert_eq!(second.status, 200, "a stored signed URL would have expired");
    assert_eq!(hub.log().matching(Host::Registry, &path).len(), 2);
}

#[test]
fn tags_list_is_relayed_including_chunked_bodies_and_pagination() {
    let hub = hub();
    let (_relay, mut c, token) = relay_with_alpine_token(&hub);
    let r = get_auth(&mut c, "/v2/alpine/tags/list", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json().unwrap();
    let tags: Vec<&str> = j["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tags.contains(&"latest") && tags.contains(&"3.20"),
        "{tags:?}"
    );
    let page = get_auth(&mut c, "/v2/alpine/tags/list?n=1", &token);
    assert_eq!(page.json().unwrap()["tags"].as_array().unwrap().len(), 1);
    assert!(
        page.header("link").is_some(),
        "pagination Link is forwarded"
    );
    assert!(hub
        .log()
        .for_host(Host::Registry)
        .iter()
        .any(|e| e.target == "/v2/library/alpine/tags/list?n=1"));
}

#[test]
fn multi_arch_index_and_its_children_are_served_by_digest() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let multi = hub.seeded().multi.clone();
    let mut c = relay.client();
    let token = anonymous_token(&relay, &mut c, "library/multi");
    let idx = get_manifest(&mut c, "/v2/multi/manifests/latest", &token);
    assert_eq!(idx.status, 200);
    assert_eq!(sha256(&idx.body), multi.manifest.digest);
    for child in &multi.images {
        let m = get_manifest(
            &mut c,
            &format!("/v2/multi/manifests/{}", child.manifest.digest),
            &token,
        );
        assert_eq!(m.status, 200);
        assert_eq!(sha256(&m.body), child.manifest.digest);
    }
}

#[test]
fn unknown_tags_are_reported_with_the_upstream_error() {
    let hub = hub();
    let (_relay, mut c, token) = relay_with_alpine_token(&hub);
    let r = get_manifest(&mut c, "/v2/alpine/manifests/badtag", &token);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("MANIFEST_UNKNOWN"));
}

#[test]
fn tls_listener_serves_the_same_api() {
    let hub = hub();
    let (relay, ca_pem) = start_with_tls(&hub, "");
    let https = relay.https.expect("a TLS listener");
    let mut c = relay.tls_client(&ca_pem);
    let r = c.get("/v2/").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        challenge_param(&r, "realm").unwrap(),
        format!("https://127.0.0.1:{}/token", https.port())
    );
    let t = c
        .get("/token?service=registry.docker.io&scope=repository%3Aalpine%3Apull")
        .unwrap();
    assert_eq!(t.status, 200);
}

/// TLS on both sides: blob bodies are sealed for the client straight from the
/// upstream's decrypted records (not through the relay buffer). Sizes around
/// a record and a write, several blobs and a manifest on one connection, and
/// the access log counts the bytes sent that way.
#[test]
fn blobs_from_a_tls_upstream_reach_a_tls_client_whole() {
    let hub = hub();
    let (mut relay, ca_pem) = start_with_tls(&hub, "access_log = true");
    let mut c = relay.tls_client(&ca_pem);
    let token = anonymous_token(&relay, &mut c, "library/alpine");
    let auth = bearer(&token);
    let sizes = [1, 16 * 1024, 16 * 1024 + 1, 300_000, (5 << 20) + 7];
    for (i, &size) in sizes.iter().enumerate() {
        let digest = hub.add_random_blob("library/alpine", size, 0x5eed_0100 + i as u64);
        let r = c
            .get_with(
                &format!("/v2/library/alpine/blobs/{digest}"),
                &[("Authorization", &auth)],
            )
            .unwrap();
        assert_eq!(r.status, 200, "{size}");
        assert_eq!(r.body.len(), size);
        assert_eq!(sha256(&r.body), digest, "{size}");
    }
    // The same connection still carries a manifest after the blobs.
    let m = get_manifest(&mut c, "/v2/library/alpine/manifests/latest", &token);
    assert_eq!(m.status, 200);
    assert!(m.json().is_ok());
    assert_eq!(c.connections_opened(), 1, "one keep-alive TLS connection");

    let big = *sizes.last().unwrap() as u64;
    // The most bytes a blob line of the access log gives.
    let logged_bytes = || {
        relay
            .stderr()
            .lines()
            .filter(|l| l.contains("/blobs/sha256:") && l.contains(" 200 "))
            .filter_map(|l| l.rsplit(' ').nth(1)?.parse::<u64>().ok())
            .max()
    };
    wait_until(Duration::from_secs(5), || {
        logged_bytes().is_some_and(|b| b >= big)
    });
    let logged = logged_bytes().expect("blob lines in the access log");
    assert!(
        (big..big + 4096).contains(&logged),
        "access log says {logged} bytes for a {big}-byte blob"
    );
    assert!(relay.alive());
}

#[test]
fn http10_clients_get_chunked_upstream_bodies_decoded_and_closed() {
    let hub = hub();
    let (relay, _c, token) = relay_with_alpine_token(&hub);
    let mut raw = relay.client();
    raw.write_raw(
        format!("GET /v2/alpine/tags/list HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    // read_raw returns when the relay closes: the body ends with the connection.
    let got = raw.read_raw(Duration::from_secs(10)).unwrap();
    assert!(!raw.is_connected(), "the relay closes to end the body");
    let text = String::from_utf8(got).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    let j: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(j["name"], "library/alpine");
}

#[test]
fn the_legacy_epoll_driver_serves_a_pull_too() {
    let hub = hub();
    let relay = Relay::start_with(&config_for(&hub, "driver = \"legacy\""));
    let layer = hub.seeded().alpine.layers[0].clone();
    let mut c = relay.client();
    let token = anonymous_token(&relay, &mut c, "library/alpine");
    let b = get_auth(
        &mut c,
        &format!("/v2/alpine/blobs/{}", layer.digest),
        &token,
    );
    assert_eq!(sha256(&b.body), layer.digest);
    assert!(
        relay.stderr().contains("legacy (epoll) driver"),
        "{}",
        relay.stderr()
    );
}

#[test]
fn workers_log_the_driver_they_run_on() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    assert_eq!(c.get("/healthz").unwrap().status, 200);
    // Each worker logs as it starts; the one that answered may be ahead of
    // the other (seen on a loaded machine): wait for both lines.
    for w in ["worker 0 on ", "worker 1 on "] {
        assert!(
            relay.wait_for_log(w, Duration::from_secs(10)),
            "{w}: {}",
            relay.stderr()
        );
    }
}

#[test]
fn upstream_names_are_resolved_and_verified_against_the_name() {
    let hub = hub();
    // `localhost` goes through the resolver (on the blocking pool) and TLS is
    // verified for the name, not the address.
    let by_name = config_for(&hub, "").replace(
        &format!("upstream = \"{}\"", hub.registry_url()),
        &format!(
            "upstream = \"https://localhost:{}\"",
            hub.registry_addr().port()
        ),
    );
    let relay = Relay::start_with(&by_name);
    let mut c = relay.client();
    let r = c.get("/v2/").unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let token = anonymous_token(&relay, &mut c, "library/alpine");
    let m = get_manifest(&mut c, "/v2/alpine/manifests/latest", &token);
    assert_eq!(m.status, 200);
}

#[test]
fn every_request_is_written_to_the_access_log() {
    let hub = hub();
    let mut relay = Relay::start(&hub);
    let mut c = relay.client();
    assert_eq!(c.get("/healthz").unwrap().status, 200);
    assert_eq!(c.get("/v2/Bad/manifests/x").unwrap().status, 400);
    assert_eq!(c.get("/v2/").unwrap().status, 401);
    // Lines are buffered per worker and flushed at least every second.
    wait_until(Duration::from_secs(5), || {
        relay.stderr().contains("GET /v2/ 401")
    });
    let log = relay.stderr();
    assert!(relay.alive());
    for expect in [
        "GET /healthz 200 ",
        "GET /v2/Bad/manifests/x 400 ",
        "GET /v2/ 401 ",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(expect))
            .unwrap_or_else(|| panic!("no {expect:?} in {log}"));
        assert!(
            line.starts_with("20") && line.contains("Z 127.0.0.1:"),
            "{line}"
        );
        assert!(line.ends_with("ms"), "{line}");
    }
}
