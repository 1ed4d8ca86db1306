//! Mirror authentication (`[auth]`): ocirelay as its clients' token
//! service. The login flow as `docker login` and `docker pull` drive it,
//! wrong passwords, static tokens, the anonymous allowlist, tokens that are
//! forged, expired or for another repository, and the upstream pulled only
//! with the mirror's own identity (its account, or anonymously), never with
//! what the client sent.

mod common;

use std::time::Duration;

use common::*;

const PASSWORD: &str = "correct horse";
const STATIC: &str = "ci-token-0123456789abcdef";

/// An htpasswd file with user `ci` (bcrypt, cost 4: fast to verify).
fn htpasswd(dir: &tempdir::Dir) -> String {
    let p = dir.path().join("htpasswd");
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(&p, format!("# users\nci:{hash}\n")).unwrap();
    p.display().to_string()
}

/// The test config with `[auth]` (users from `dir`, the static token and
/// `extra`) and `registry_extra` in docker.io's `[[registry]]`.
fn config(hub: &HubDouble, dir: &tempdir::Dir, extra: &str, registry_extra: &str) -> String {
    let auth = format!(
        "[auth]\nhtpasswd = \"{}\"\ntokens = [\"{STATIC}\"]\n{extra}\n",
        htpasswd(dir)
    );
    config_with_timeouts(hub, &auth, Timeouts::default()) + registry_extra
}

/// `GET /token` as a client does after `r`'s challenge, with `basic`.
fn login(c: &mut Client, r: &Response, basic: Option<&str>) -> Response {
    let mut path = realm_token_path(r);
    let mut sep = '?';
    for p in ["service", "scope"] {
        if let Some(v) = challenge_param(r, p) {
            path.push_str(&format!("{sep}{p}={}", enc(&v)));
            sep = '&';
        }
    }
    let mut headers = vec![];
    if let Some(b) = basic {
        headers.push(("Authorization", b));
    }
    c.get_with(&path, &headers).unwrap()
}

fn token_of(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["token"].as_str().unwrap().to_string()
}

/// No request the double got carried what the client sent: its Basic
/// credentials, the mirror's token or the static token.
fn assert_client_credentials_never_went_upstream(hub: &HubDouble, client_values: &[&str]) {
    for host in [Host::Registry, Host::Token, Host::Cdn] {
        for e in hub.log().for_host(host) {
            for v in e.header_all("authorization") {
                for sent in client_values {
                    assert!(!v.contains(sent), "{host:?} {} got {v}", e.target);
                }
                assert!(!v.contains("ocr1."), "{host:?} {} got {v}", e.target);
            }
        }
    }
}

#[test]
fn login_then_pull_as_docker_does_with_the_mirrors_own_tokens() {
    let hub = hub();
    let dir = tempdir::Dir::new("auth-flow");
    let relay = Relay::start_with(&config(&hub, &dir, "", ""));
    let mut c = relay.client();
    let basic = basic_auth("ci", PASSWORD);
    // docker login: ping -> 401 -> /token with Basic -> token -> ping.
    let r = c.get("/v2/").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r.body), "UNAUTHORIZED");
    assert_eq!(
        challenge_param(&r, "realm").unwrap(),
        format!("http://{}/token", relay.http)
    );
    assert_eq!(challenge_param(&r, "service").unwrap(), "docker.io");
    let tok = token_of(&login(&mut c, &r, Some(&basic)));
    assert_eq!(get_auth(&mut c, "/v2/", &tok).status, 200);
    // docker pull: the repository's challenge names its scope.
    let alpine = hub.seeded().alpine.clone();
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 401, "a login token without the scope");
    assert_eq!(
        challenge_param(&r, "scope").unwrap(),
        "repository:library/alpine:pull"
    );
    let tok = token_of(&login(&mut c, &r, Some(&basic)));
    let m = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.body, alpine.manifest_bytes);
    for l in &alpine.layers {
        let b = get_auth(
            &mut c,
            &format!("/v2/library/alpine/blobs/{}", l.digest),
            &tok,
        );
        assert_eq!(b.status, 200);
        assert_eq!(sha256(&b.body), l.digest);
    }
    assert_client_credentials_never_went_upstream(&hub, &[&basic, &tok]);
    // Upstream, the mirror asked for an anonymous token of its own.
    assert!(hub
        .log()
        .for_host(Host::Token)
        .iter()
        .all(|e| e.header("authorization").is_none()));
}

#[test]
fn a_wrong_password_or_unknown_user_gets_401_in_the_registry_format() {
    let hub = hub();
    let dir = tempdir::Dir::new("auth-wrong");
    let relay = Relay::start_with(&config(&hub, &dir, "", ""));
    let mut c = relay.client();
    let r = c.get("/v2/").unwrap();
    for basic in [basic_auth("ci", "wrong"), basic_auth("nobody", PASSWORD)] {
        let t = login(&mut c, &r, Some(&basic));
        assert_eq!(t.status, 401);
        assert_eq!(error_code(&t.body), "UNAUTHORIZED");
        assert!(t.json().unwrap().get("token").is_none());
    }
    assert!(hub.log().for_host(Host::Token).is_empty());
}

#[test]
fn a_static_token_pulls_and_goes_upstream_as_the_mirror() {
    let hub = hub();
    let dir = tempdir::Dir::new("auth-static");
    let text = config(&hub, &dir, "", "");
    let relay = Relay::start_with(&format!("access_log_format = \"json\"\n{text}"));
    let mut c = relay.client();
    assert_eq!(get_auth(&mut c, "/v2/", STATIC).status, 200);
    let m = get_auth(&mut c, "/v2/library/alpine/manifests/latest", STATIC);
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.body, hub.seeded().alpine.manifest_bytes);
    let r = get_auth(
        &mut c,
        "/v2/library/alpine/manifests/latest",
        "ci-token-0123456789abcdeX",
    );
    assert_eq!(r.status, 401);
    // docker cannot send a bearer token of its own: it logs in with the
    // token as the password, and pulls with the token it is issued.
    let tok = token_of(&login(&mut c, &r, Some(&basic_auth("ci", STATIC))));
    let m = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(m.status, 200, "{}", m.text());
    assert_client_credentials_never_went_upstream(&hub, &[STATIC, &basic_auth("ci", STATIC)]);
    // The access log names who pulled (the token by its place, not itself).
    assert!(
        relay.wait_for_log("\"user\":\"token#1\"", Duration::from_secs(5)),
        "{}",
        relay.stderr()
    );
    assert!(!relay.stderr().contains(STATIC));
}

#[test]
fn anonymous_clients_get_the_allowlist_and_nothing_else() {
    let hub = hub();
    let dir = tempdir::Dir::new("auth-anon");
    let relay = Relay::start_with(&config(
        &hub,
        &dir,
        "anonymous = [\"docker.io/library/*\"]",
        "",
    ));
    let mut c = relay.client();
    let m = c.get("/v2/library/alpine/manifests/latest").unwrap();
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.body, hub.seeded().alpine.manifest_bytes);
    // Elsewhere: a login is needed, with or without an anonymous token.
    let r = c.get("/v2/private/secret/manifests/latest").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        challenge_param(&r, "scope").unwrap(),
        "repository:private/secret:pull"
    );
    let anon = token_of(&login(&mut c, &r, None));
    let r = get_auth(&mut c, "/v2/private/secret/manifests/latest", &anon);
    assert_eq!(r.status, 401);
    // docker pull without a login: ping, anonymous token, pull.
    let p = c.get("/v2/").unwrap();
    assert_eq!(p.status, 401);
    let r = c.get("/v2/library/alpine/manifests/latest").unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn forged_expired_and_other_scope_tokens_are_refused() {
    let hub = hub();
    let dir = tempdir::Dir::new("auth-forged");
    let relay = Relay::start_with(&config(&hub, &dir, "token_ttl = \"1s\"", ""));
    let mut c = relay.client();
    let basic = basic_auth("ci", PASSWORD);
    let r = c.get("/v2/library/alpine/manifests/latest").unwrap();
    let tok = token_of(&login(&mut c, &r, Some(&basic)));
    // another repository
    let other = get_auth(&mut c, "/v2/library/multi/manifests/latest", &tok);
    assert_eq!(other.status, 401);
    // one changed character in its payload, or in its signature
    for i in [7, tok.len() - 3] {
        let mut forged = tok.clone().into_bytes();
        forged[i] = if forged[i] == b'a' { b'b' } else { b'a' };
        let forged = String::from_utf8(forged).unwrap();
        let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &forged);
        assert_eq!(r.status, 401, "forged at {i}");
    }
    // a token whose user claims no login cannot be turned into one: the
    // anonymous token for the same scope does not pull without `anonymous`
    let anon = token_of(&login(&mut c, &r, None));
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &anon);
    assert_eq!(r.status, 401);
    // expired (token_ttl = 1s)
    std::thread::sleep(Duration::from_millis(2100));
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 401, "expired token accepted");
    assert!(hub
        .log()
        .matching(Host::Registry, "/v2/library/alpine/manifests/latest")
        .is_empty());
}

#[test]
fn the_upstream_is_pulled_with_the_operator_account_or_anonymously() {
    let hub = hub();
    let dir = tempdir::Dir::new("auth-operator");
    let secret = hub.seeded().secret.clone();
    let path = format!("/v2/{}/manifests/latest", secret.repo);
    // With the operator's account: the private repository opens to a
    // logged-in mirror user (the operator's choice), under that account.
    let relay = Relay::start_with(&config(
        &hub,
        &dir,
        "",
        "username = \"alice\"\npassword = \"wonderland\"\n",
    ));
    let mut c = relay.client();
    let r = get_auth(&mut c, &path, STATIC);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, secret.manifest_bytes);
    let alice = basic_auth("alice", "wonderland");
    assert!(hub
        .log()
        .for_host(Host::Token)
        .iter()
        .any(|e| e.header("authorization") == Some(alice.as_str())));
    drop(relay);
    // Without one: the mirror's anonymous identity, which the upstream
    // refuses for the private repository: a 403, not a login loop.
    let relay = Relay::start_with(&config(&hub, &dir, "", ""));
    let mut c = relay.client();
    let r = get_auth(&mut c, &path, STATIC);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(error_code(&r.body), "DENIED");
    assert_client_credentials_never_went_upstream(&hub, &[STATIC]);
}

#[test]
fn an_htpasswd_hash_other_than_bcrypt_is_a_config_error_naming_its_line() {
    let dir = tempdir::Dir::new("auth-md5");
    let p = dir.path().join("htpasswd");
    std::fs::write(
        &p,
        "a:$2y$04$abcdefghijklmnopqrstuuVLjM4i8PD0N5XUQxm3v6bvkyJ0k1z3u\nb:$apr1$x$y\n",
    )
    .unwrap();
    let hub = hub();
    let text = config_with_timeouts(
        &hub,
        &format!("[auth]\nhtpasswd = \"{}\"\n", p.display()),
        Timeouts::default(),
    );
    let (ok, err) = config_check(&text);
    assert!(!ok);
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("line 2: user b: not a bcrypt hash"), "{err}");
}

#[test]
fn the_cache_serves_no_mirror_user_what_the_mirrors_identity_may_not_pull() {
    let hub = hub();
    let dir = tempdir::Dir::new("auth-cache");
    let cache = format!(
        "[cache]\nenabled = true\ndir = \"{}\"\n",
        dir.path().display()
    );
    // Without [auth]: alice pulls a private layer with her own login, and
    // the cache stores it.
    let relay = Relay::start_with(&config_with_timeouts(&hub, &cache, Timeouts::default()));
    let mut c = relay.client();
    let secret = hub.seeded().secret.clone();
    let layer = &secret.layers[0].digest;
    let path = format!("/v2/{}/blobs/{layer}", secret.repo);
    let r = c.get(&path).unwrap();
    assert_eq!(r.status, 401);
    let alice = token_of(&login(&mut c, &r, Some(&basic_auth("alice", "wonderland"))));
    let r = get_auth(&mut c, &path, &alice);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), *layer);
    // With [auth] and no operator account: a mirror user gets nothing of it.
    let users = tempdir::Dir::new("auth-cache-users");
    relay.rewrite_config(&(config(&hub, &users, "", "") + "\n" + &cache));
    relay.reload(2);
    let mut c = relay.client();
    let r = get_auth(&mut c, &path, STATIC);
    assert_ne!(r.status, 200, "a private blob served from the cache");
    assert_ne!(sha256(&r.body), *layer);
    assert_eq!(error_code(&r.body), "DENIED");
}

#[test]
fn a_logged_in_user_with_limits_of_their_own_is_counted_by_name_not_address() {
    let hub = hub();
    let dir = tempdir::Dir::new("auth-user-limits");
    // The address may make 2 requests; user `ci` has a budget of its own.
    let limits = "[client_limits]\nrequests_per_sec = 0.01\nburst = 2\n\
                  [client_limits.user.ci]\nrequests_per_sec = 100\nburst = 100\n";
    let relay = Relay::start_with(&config(&hub, &dir, limits, ""));
    let mut c = relay.client();
    // The login costs the address its 2 requests (a Basic login is not a
    // user for the limits: verifying it would mean a bcrypt per request).
    let r = c.get("/v2/").unwrap();
    assert_eq!(r.status, 401);
    let tok = token_of(&login(&mut c, &r, Some(&basic_auth("ci", PASSWORD))));
    for i in 0..10 {
        let m = get_auth(&mut c, "/v2/", &tok);
        assert_eq!(m.status, 200, "request {i} as ci: {}", m.text());
    }
    // The address's own budget is spent: without the token, 429.
    let anon = c.get("/v2/").unwrap();
    assert_eq!(anon.status, 429, "{}", anon.text());
    // A forged token names no user: the address's budget applies.
    let forged = get_auth(&mut c, "/v2/", &format!("{tok}x"));
    assert_eq!(forged.status, 429, "{}", forged.text());
}
