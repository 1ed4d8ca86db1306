//! Many registries through one mirror: host routes, path prefixes,
//! containerd's `?ns=`, the default registry, and the token flow in each
//! mode. Two doubles stand in for Docker Hub and a ghcr-like registry, each
//! with its own token service and CDN.

mod common;

use common::*;
use hubdouble::{Flavor, Image};

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Docker Hub double, ghcr-like double, and an image on the latter.
fn doubles() -> (HubDouble, HubDouble, Image) {
    let hub = HubDouble::start(Options::default()).unwrap();
    let gh = HubDouble::start(Options {
        service: "ghcr.io".into(),
        ..Options::default()
    })
    .unwrap();
    let tool = gh.add_random_image("owner/tool", "1.0", Flavor::Oci, &[3000, 70_000], 11);
    (hub, gh, tool)
}

/// A realistic config: the built-in registries, with docker.io and ghcr.io
/// pointed at the doubles.
fn config(hub: &HubDouble, gh: &HubDouble, top: &str, gh_extra: &str) -> String {
    format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\n{top}\n[timeouts]\nconnect_secs = 2\nupstream_read_secs = 3\n\n{}\n{}{gh_extra}\n",
        registry_block(hub, "docker.io"),
        registry_block(gh, "ghcr.io"),
    )
}

#[test]
fn path_prefix_routes_to_the_named_registry_with_its_own_token_flow() {
    let (hub, gh, tool) = doubles();
    let relay = Relay::start_with(&config(&hub, &gh, "", ""));
    let mut c = relay.client();
    let r = c.get("/v2/ghcr.io/owner/tool/manifests/1.0").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        challenge_param(&r, "realm").unwrap(),
        format!("http://{}/token/ghcr.io", relay.http)
    );
    assert_eq!(challenge_param(&r, "service").unwrap(), "ghcr.io");
    assert_eq!(
        challenge_param(&r, "scope").unwrap(),
        "repository:ghcr.io/owner/tool:pull"
    );

    let token = token_from_challenge(&mut c, &r, None);
    let asked = gh.log().for_host(Host::Token);
    assert!(
        asked[0]
            .query()
            .contains("scope=repository%3Aowner%2Ftool%3Apull"),
        "{}",
        asked[0].target
    );
    let m = c
        .get_with(
            "/v2/ghcr.io/owner/tool/manifests/1.0",
            &[("Authorization", &bearer(&token)), ("Accept", ACCEPT)],
        )
        .unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.body, tool.manifest_bytes);
    for layer in &tool.layers {
        let b = get_auth(
            &mut c,
            &format!("/v2/ghcr.io/owner/tool/blobs/{}", layer.digest),
            &token,
        );
        assert_eq!(sha256(&b.body), layer.digest);
    }
    assert!(!gh
        .log()
        .matching(Host::Registry, "/v2/owner/tool/manifests/1.0")
        .is_empty());
    assert!(
        hub.log().is_empty(),
        "nothing went to Docker Hub: {:?}",
        hub.log().entries()
    );
}

#[test]
fn host_routes_pick_the_registry_and_their_realm_keeps_the_host() {
    let (hub, gh, tool) = doubles();
    let relay = Relay::start_with(&config(&hub, &gh, "", "hosts = [\"ghcr.mirror.test\"]"));
    let mut c = relay.client();
    let host = "ghcr.mirror.test:8080";
    let r = c
        .get_with("/v2/owner/tool/manifests/1.0", &[("Host", host)])
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        challenge_param(&r, "realm").unwrap(),
        "http://ghcr.mirror.test:8080/token/ghcr.io"
    );
    assert_eq!(
        challenge_param(&r, "scope").unwrap(),
        "repository:owner/tool:pull"
    );
    let token = token_from_challenge(&mut c, &r, Some(host));
    let m = c
        .get_with(
            "/v2/owner/tool/manifests/1.0",
            &[
                ("Host", host),
                ("Authorization", &bearer(&token)),
                ("Accept", ACCEPT),
            ],
        )
        .unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.body, tool.manifest_bytes);
    // The bare /token on that host also reaches ghcr's token service.
    let t = c
        .get_with(
            "/token?service=ghcr.io&scope=repository%3Aowner%2Ftool%3Apull",
            &[("Host", host)],
        )
        .unwrap();
    assert_eq!(t.status, 200);
    assert!(hub.log().is_empty());
}

#[test]
fn the_domain_gives_every_registry_its_customary_host() {
    let (hub, gh, tool) = doubles();
    let relay = Relay::start_with(&config(&hub, &gh, "domain = \"mirror.test\"", ""));
    let mut c = relay.client();
    // ghcr.io keeps its built-in `ghcr` label although the file redefines it.
    let r = c
        .get_with(
            "/v2/owner/tool/manifests/1.0",
            &[("Host", "ghcr.mirror.test")],
        )
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(challenge_param(&r, "service").unwrap(), "ghcr.io");
    let token = token_from_challenge(&mut c, &r, Some("ghcr.mirror.test"));
    let m = c
        .get_with(
            "/v2/owner/tool/manifests/1.0",
            &[
                ("Host", "ghcr.mirror.test"),
                ("Authorization", &bearer(&token)),
                ("Accept", ACCEPT),
            ],
        )
        .unwrap();
    assert_eq!(m.body, tool.manifest_bytes);
    let d = c
        .get_with(
            "/v2/alpine/manifests/latest",
            &[("Host", "docker.mirror.test")],
        )
        .unwrap();
    assert_eq!(
        challenge_param(&d, "service").unwrap(),
        "registry.docker.io"
    );
    // The bare domain is the mirror itself: default registry.
    let bare = c.get_with("/v2/", &[("Host", "mirror.test")]).unwrap();
    assert_eq!(
        challenge_param(&bare, "service").unwrap(),
        "registry.docker.io"
    );
    // An unknown host under the domain is a clear 404 listing the routes.
    let nope = c
        .get_with(
            "/v2/alpine/manifests/latest",
            &[("Host", "nope.mirror.test")],
        )
        .unwrap();
    assert_eq!(nope.status, 404);
    let text = nope.text();
    assert!(
        text.contains("NAME_UNKNOWN") && text.contains("nope.mirror.test"),
        "{text}"
    );
    assert!(
        text.contains("host ghcr.mirror.test") && text.contains("host quay.mirror.test"),
        "{text}"
    );
}

#[test]
fn containerd_ns_parameter_selects_the_registry() {
    let (hub, gh, tool) = doubles();
    let relay = Relay::start_with(&config(&hub, &gh, "", ""));
    let mut c = relay.client();
    let r = c
        .request(
            "HEAD",
            "/v2/owner/tool/manifests/1.0?ns=ghcr.io",
            &[("Accept", ACCEPT)],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        challenge_param(&r, "realm").unwrap(),
        format!("http://{}/token/ghcr.io", relay.http)
    );
    let token = token_from_challenge(&mut c, &r, None);
    let h = c
        .request(
            "HEAD",
            "/v2/owner/tool/manifests/1.0?ns=ghcr.io",
            &[("Accept", ACCEPT), ("Authorization", &bearer(&token))],
            None,
        )
        .unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("docker-content-digest"),
        Some(tool.manifest.digest.as_str())
    );
    // `ns` is ocirelay's: it is not passed upstream.
    assert!(gh
        .log()
        .for_host(Host::Registry)
        .iter()
        .all(|e| !e.target.contains("ns=")));
    // ns=docker.io goes to Docker Hub, with library/ added.
    let d = c.get("/v2/alpine/manifests/latest?ns=docker.io").unwrap();
    assert_eq!(d.status, 401);
    assert!(!hub
        .log()
        .matching(Host::Registry, "/v2/library/alpine/manifests/latest")
        .is_empty());
    let bad = c
        .get("/v2/alpine/manifests/latest?ns=unknown.example")
        .unwrap();
    assert_eq!(bad.status, 404);
}

/// The requests dockerd makes for `registry-mirrors`, byte for byte in shape:
/// ping, token with the Docker Hub credentials it holds, manifest with one
/// Accept line per media type, blobs.
#[test]
fn dockerd_registry_mirror_requests_work_against_the_default_registry() {
    let (hub, gh, _) = doubles();
    let relay = Relay::start_with(&config(&hub, &gh, "", ""));
    let img = hub.seeded().alpine.clone();
    let ua = "docker/24.0.7 go/go1.20.10 git-commit/311b9ff kernel/6.1.0 os/linux arch/amd64 UpstreamClient(Docker-Client/24.0.7 \\(linux\\))";
    let mut c = relay.client();
    let ping = c.get_with("/v2/", &[("User-Agent", ua)]).unwrap();
    assert_eq!(ping.status, 401);
    let realm = challenge_param(&ping, "realm").unwrap();
    assert_eq!(realm, format!("http://{}/token", relay.http));
    let basic = basic_auth("alice", "wonderland");
    let t = c
        .get_with(
            "/token?scope=repository%3Alibrary%2Falpine%3Apull&service=registry.docker.io",
            &[("User-Agent", ua), ("Authorization", &basic)],
        )
        .unwrap();
    assert_eq!(t.status, 200);
    let token = t.json().unwrap()["token"].as_str().unwrap().to_string();
    let auth = bearer(&token);
    let m = c
        .get_with(
            "/v2/library/alpine/manifests/latest",
            &[
                ("User-Agent", ua),
                (
                    "Accept",
                    "application/vnd.docker.distribution.manifest.v2+json",
                ),
                (
                    "Accept",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                ),
                ("Accept", "application/vnd.oci.image.index.v1+json"),
                ("Accept", "application/vnd.oci.image.manifest.v1+json"),
                (
                    "Accept",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                ),
                ("Authorization", &auth),
            ],
        )
        .unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.body, img.manifest_bytes);
    let sent = hub
        .log()
        .matching(Host::Registry, "/v2/library/alpine/manifests/latest");
    assert_eq!(
        sent.last().unwrap().header_all("accept").len(),
        5,
        "every Accept line is forwarded"
    );
    for blob in std::iter::once(&img.config).chain(&img.layers) {
        let b = c
            .get_with(
                &format!("/v2/library/alpine/blobs/{}", blob.digest),
                &[("User-Agent", ua), ("Authorization", &auth)],
            )
            .unwrap();
        assert_eq!(sha256(&b.body), blob.digest);
    }
    assert!(hub
        .log()
        .for_host(Host::Token)
        .iter()
        .all(|e| e.has_basic_auth()));
    assert!(gh.log().is_empty());
}

/// docker keeps the realm of its first `/v2/` challenge (the default
/// registry's `/token`) for every repository, so `docker pull
/// mirror/ghcr.io/owner/tool` asks `/token` with service=registry.docker.io
/// and a ghcr.io-prefixed scope.
#[test]
fn docker_path_prefix_pulls_get_their_token_from_the_right_registry() {
    let (hub, gh, tool) = doubles();
    let relay = Relay::start_with(&config(&hub, &gh, "", ""));
    let mut c = relay.client();
    let t = c
        .get("/token?scope=repository%3Aghcr.io%2Fowner%2Ftool%3Apull&service=registry.docker.io")
        .unwrap();
    assert_eq!(t.status, 200, "{}", t.text());
    let asked = gh.log().for_host(Host::Token);
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0].query().contains("service=ghcr.io"),
        "{}",
        asked[0].target
    );
    assert!(hub.log().for_host(Host::Token).is_empty());
    let token = t.json().unwrap()["token"].as_str().unwrap().to_string();
    let m = c
        .get_with(
            "/v2/ghcr.io/owner/tool/manifests/1.0",
            &[("Authorization", &bearer(&token)), ("Accept", ACCEPT)],
        )
        .unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(m.body, tool.manifest_bytes);
}

#[test]
fn credentials_for_one_registry_never_reach_another() {
    let (hub, gh, _) = doubles();
    let relay = Relay::start_with(&config(&hub, &gh, "", ""));
    let mut c = relay.client();
    let basic = basic_auth("alice", "wonderland");
    let t = c
        .get_with(
            "/token/ghcr.io?service=ghcr.io&scope=repository%3Aowner%2Ftool%3Apull",
            &[("Authorization", &basic)],
        )
        .unwrap();
    assert_eq!(t.status, 200);
    let token = t.json().unwrap()["token"].as_str().unwrap().to_string();
    let _ = get_auth(&mut c, "/v2/ghcr.io/owner/tool/manifests/1.0", &token);
    // Docker Hub's hosts saw nothing at all; ghcr's CDN saw no credentials.
    assert!(hub.log().is_empty(), "{:?}", hub.log().entries());
    assert!(gh
        .log()
        .for_host(Host::Cdn)
        .iter()
        .all(|e| !e.has_header("authorization")));
    assert!(gh
        .log()
        .for_host(Host::Token)
        .iter()
        .any(|e| e.has_basic_auth()));
}

#[test]
fn unknown_registry_prefixes_get_a_404_listing_the_routes() {
    let (hub, gh, _) = doubles();
    let relay = Relay::start_with(&config(&hub, &gh, "", ""));
    let mut c = relay.client();
    let r = c
        .get("/v2/registry.evil.example/x/manifests/latest")
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(error_code(&r.body), "NAME_UNKNOWN");
    let msg = error_message(&r.body);
    for served in ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"] {
        assert!(msg.contains(served), "{msg}");
    }
    let t = c.get("/token/registry.evil.example?scope=x").unwrap();
    assert_eq!(t.status, 404);
    assert!(hub.log().is_empty() && gh.log().is_empty());
}

#[test]
fn tag_pagination_links_keep_the_clients_name() {
    let (hub, gh, _) = doubles();
    gh.add_random_image("owner/tool", "2.0", Flavor::Oci, &[100], 12);
    let relay = Relay::start_with(&config(&hub, &gh, "", ""));
    let mut c = relay.client();
    let r = c.get("/v2/ghcr.io/owner/tool/tags/list?n=1").unwrap();
    let token = token_from_challenge(&mut c, &r, None);
    let page = get_auth(&mut c, "/v2/ghcr.io/owner/tool/tags/list?n=1", &token);
    assert_eq!(page.status, 200);
    let link = page.header("link").expect("a next link");
    assert!(
        link.contains("</v2/ghcr.io/owner/tool/tags/list?"),
        "{link}"
    );
}

#[test]
fn plain_http_upstreams_need_debug_mode() {
    let hub = HubDouble::start(Options::default().plain_http()).unwrap();
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\n\n[[registry]]\nname = \"docker.io\"\nupstream = \"{}\"\n",
        hub.registry_url()
    );
    let (ok, err) = config_check(&text);
    assert!(!ok);
    assert!(err.contains("line 5") && err.contains("debug"), "{err}");
    // With debug = true the same upstream is served, and realms are http://.
    let relay = Relay::start_with(&text.replace("listen", "debug = true\nlisten"));
    let mut c = relay.client();
    let r = c.get("/v2/").unwrap();
    assert_eq!(
        challenge_param(&r, "realm").unwrap(),
        format!("http://{}/token", relay.http)
    );
    let token = anonymous_token(&relay, &mut c, "library/alpine");
    assert!(!token.is_empty());
}
