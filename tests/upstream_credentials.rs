//! Upstream credentials per registry (`username` + `password` |
//! `password_file` | `password_env`): anonymous clients' pulls of public
//! repositories go upstream under the operator's account (so they count
//! against it, not against the mirror's shared IP), a client that logged in
//! keeps its own, and the operator's account never opens a private
//! repository to a client the upstream would refuse, with the cache on or
//! off.
//!
//! Who asked is read from the double's own request log: its tokens carry
//! their subject (`hd1.<hex of "exp;subject;repos">.<mac>`; anonymous is an
//! empty subject).

mod common;

use common::*;

/// The operator's account at the double.
const OPS: (&str, &str) = ("ops", "s3cret");

fn hub_with_ops() -> HubDouble {
    HubDouble::start(Options::default().user(OPS.0, OPS.1)).expect("start hub double")
}

/// The registry block for `hub` with the operator's account, plus `extra`.
fn config_with_account(hub: &HubDouble, password: &str, extra: &str) -> String {
    let registry = format!(
        "{}username = \"{}\"\npassword = \"{password}\"\n",
        registry_block(hub, "docker.io"),
        OPS.0
    );
    config_text(!hub.is_tls(), extra, Timeouts::default(), &registry)
}

/// The subject of the double's token in an `Authorization: Bearer` value
/// (`""` for an anonymous token), or `None` for no bearer token at all.
fn subject(authorization: Option<&str>) -> Option<String> {
    let token = authorization?.strip_prefix("Bearer hd1.")?;
    let hex = token.split('.').next()?;
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let payload = String::from_utf8(bytes).unwrap();
    Some(payload.split(';').nth(1)?.to_string())
}

/// (method, subject) of each request the registry saw for `path_suffix`.
fn asked(hub: &HubDouble, path_suffix: &str) -> Vec<(String, Option<String>)> {
    hub.log()
        .for_host(Host::Registry)
        .iter()
        .filter(|e| e.path().ends_with(path_suffix))
        .map(|e| (e.method.clone(), subject(e.header("authorization"))))
        .collect()
}

fn gets_by(hub: &HubDouble, path_suffix: &str, who: &str) -> usize {
    asked(hub, path_suffix)
        .iter()
        .filter(|(m, s)| m == "GET" && s.as_deref() == Some(who))
        .count()
}

#[test]
fn an_anonymous_pull_of_a_public_image_goes_upstream_under_the_operators_account() {
    let hub = hub_with_ops();
    let relay = Relay::start_with(&config_with_account(&hub, OPS.1, ""));
    let alpine = hub.seeded().alpine.clone();
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let tag = "/v2/library/alpine/manifests/latest";

    let r = get_auth(&mut c, tag, &tok);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, alpine.manifest_bytes);
    // Learnt with one free HEAD under the client's anonymous token, then
    // the counted GET under the operator's account.
    let seen = asked(&hub, "/manifests/latest");
    assert!(
        seen.contains(&("HEAD".to_string(), Some(String::new()))),
        "{seen:?}"
    );
    assert_eq!(gets_by(&hub, "/manifests/latest", OPS.0), 1, "{seen:?}");
    assert_eq!(gets_by(&hub, "/manifests/latest", ""), 0, "{seen:?}");

    // Again, and a blob: the repository is known public, no more HEADs;
    // both under the operator's account.
    let heads = asked(&hub, "/manifests/latest").len();
    let r = get_auth(&mut c, tag, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(asked(&hub, "/manifests/latest").len(), heads + 1);
    assert_eq!(gets_by(&hub, "/manifests/latest", OPS.0), 2);
    let layer = &alpine.layers[0].digest;
    let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{layer}"), &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), *layer);
    assert_eq!(gets_by(&hub, layer, OPS.0), 1, "{:?}", asked(&hub, layer));
}

#[test]
fn the_operators_account_never_opens_a_private_repository_to_anonymous_clients() {
    for cache in [false, true] {
        let hub = hub_with_ops();
        let dir = tempdir::Dir::new("upstream-creds");
        let extra = format!(
            "[cache]\nenabled = {cache}\ndir = \"{}\"\n",
            dir.path().display()
        );
        let relay = Relay::start_with(&config_with_account(&hub, OPS.1, &extra));
        let secret = hub.seeded().secret.clone();
        let digest = secret.manifest.digest.clone();
        let layer = secret.layers[0].digest.clone();
        let base = format!("/v2/{}", secret.repo);
        let mut c = relay.client();

        // Someone with an account of their own pulls it (with the cache
        // on, it is stored).
        let scope = format!("repository%3A{}%3Apull", secret.repo.replace('/', "%2F"));
        let r = c
            .get_with(
                &format!("/token?service=registry.docker.io&scope={scope}"),
                &[("Authorization", &basic_auth("alice", "wonderland"))],
            )
            .unwrap();
        let alice = r.json().unwrap()["token"].as_str().unwrap().to_string();
        for path in [
            format!("{base}/manifests/latest"),
            format!("{base}/blobs/{layer}"),
        ] {
            assert_eq!(get_auth(&mut c, &path, &alice).status, 200, "{path}");
        }

        // Anonymous clients, by tag, by digest, the blob, with an anonymous
        // token and with nothing: refused, as the upstream refuses them.
        let anon = anonymous_token(&relay, &mut c, &secret.repo);
        for path in [
            format!("{base}/manifests/latest"),
            format!("{base}/manifests/{digest}"),
            format!("{base}/blobs/{layer}"),
        ] {
            for _ in 0..2 {
                let r = get_auth(&mut c, &path, &anon);
                assert_ne!(r.status, 200, "cache {cache}: {path} served anonymously");
                assert_ne!(sha256(&r.body), layer);
                let r = c.get(&path).unwrap();
                assert_ne!(r.status, 200, "cache {cache}: {path} served with nothing");
            }
        }
        // Under another name the client may read: not on the digest alone.
        let pub_tok = anonymous_token(&relay, &mut c, "library/alpine");
        let r = get_auth(
            &mut c,
            &format!("/v2/library/alpine/blobs/{layer}"),
            &pub_tok,
        );
        assert_ne!(
            r.status, 200,
            "cache {cache}: private blob under another name"
        );

        // And the operator's account was never sent for it.
        let log = hub.log().for_host(Host::Registry);
        let by_ops = log
            .iter()
            .filter(|e| e.path().starts_with(&base))
            .filter(|e| subject(e.header("authorization")).as_deref() == Some(OPS.0))
            .count();
        assert_eq!(
            by_ops, 0,
            "cache {cache}: the operator's account asked for a private repo"
        );
    }
}

#[test]
fn a_client_that_logged_in_keeps_its_own_credentials() {
    let hub = hub_with_ops();
    let relay = Relay::start_with(&config_with_account(&hub, OPS.1, ""));
    let mut c = relay.client();
    let r = c
        .get_with(
            "/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull",
            &[("Authorization", &basic_auth("alice", "wonderland"))],
        )
        .unwrap();
    let alice = r.json().unwrap()["token"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &alice);
        assert_eq!(r.status, 200);
    }
    assert_eq!(gets_by(&hub, "/manifests/latest", "alice"), 2);
    assert_eq!(gets_by(&hub, "/manifests/latest", OPS.0), 0);
}

#[test]
fn wrong_operator_credentials_leave_pulls_working_with_the_clients_own() {
    let hub = hub_with_ops();
    let relay = Relay::start_with(&config_with_account(&hub, "not-the-password", ""));
    let alpine = hub.seeded().alpine.clone();
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, alpine.manifest_bytes);
    assert_eq!(gets_by(&hub, "/manifests/latest", ""), 1);
    assert!(
        wait_until(std::time::Duration::from_secs(5), || relay
            .stderr()
            .contains("no token for the configured account")),
        "{}",
        relay.stderr()
    );
}

#[test]
fn with_the_cache_on_a_public_image_pulled_under_the_account_is_then_a_hit() {
    let hub = hub_with_ops();
    let dir = tempdir::Dir::new("upstream-creds-hit");
    let extra = format!(
        "[cache]\nenabled = true\ndir = \"{}\"\n",
        dir.path().display()
    );
    let relay = Relay::start_with(&config_with_account(&hub, OPS.1, &extra));
    let alpine = hub.seeded().alpine.clone();
    let layer = alpine.layers[0].digest.clone();
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let digest_path = format!("/v2/library/alpine/manifests/{}", alpine.manifest.digest);
    let blob_path = format!("/v2/library/alpine/blobs/{layer}");
    for path in [&digest_path, &blob_path] {
        assert_eq!(get_auth(&mut c, path, &tok).status, 200, "{path}");
    }
    let before = hub.log().for_host(Host::Registry).len();
    // Another anonymous client: from disk.
    let mut c2 = relay.client();
    let tok2 = anonymous_token(&relay, &mut c2, "library/alpine");
    let after_token = hub.log().for_host(Host::Registry).len();
    let r = get_auth(&mut c2, &digest_path, &tok2);
    assert_eq!(r.body, alpine.manifest_bytes);
    let r = get_auth(&mut c2, &blob_path, &tok2);
    assert_eq!(sha256(&r.body), layer);
    assert_eq!(
        hub.log().for_host(Host::Registry).len(),
        after_token,
        "hits went upstream"
    );
    assert!(after_token >= before);
}
