//! What may be pulled: allow and deny lists of repository globs (per
//! registry and in the global `[access]` table) and `max_blob_bytes`,
//! through the real binary against the Docker Hub double. A refusal is a
//! `403 DENIED` naming the rule and its config line, and nothing of a
//! refused repository is asked upstream.

mod common;

use common::*;
use hubdouble::Flavor;

/// The test config with `rules` added to the docker.io `[[registry]]`
/// (which may route by `hosts`), and `top` at the top of the file.
fn config(hub: &HubDouble, top: &str, rules: &str) -> String {
    config_with_timeouts(hub, top, Timeouts::default()) + rules + "\n"
}

/// The line (1-based) of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// [`line_of`] in the config file `relay` runs with (the harness adds
/// lines to what a test gives it).
fn line_in(relay: &Relay, needle: &str) -> usize {
    line_of(
        &std::fs::read_to_string(relay.config_path()).unwrap(),
        needle,
    )
}

/// Asks `target` with `headers` and checks the answer is a 403 DENIED
/// whose message names `rule`; the message.
fn refused(c: &mut Client, target: &str, headers: &[(&str, &str)], rule: &str) -> String {
    let r = c.get_with(target, headers).unwrap();
    let shown = String::from_utf8_lossy(&r.body[..r.body.len().min(300)]);
    assert_eq!(r.status, 403, "{target}: {shown}");
    assert_eq!(error_code(&r.body), "DENIED", "{target}");
    let m = error_message(&r.body);
    assert!(m.contains(rule), "{target}: {m:?} names no {rule:?}");
    m
}

/// Whether the double's registry was asked anything about `repo`.
fn asked_about(hub: &HubDouble, repo: &str) -> bool {
    let prefix = format!("/v2/{repo}/");
    hub.log()
        .for_host(Host::Registry)
        .iter()
        .any(|e| e.path().starts_with(&prefix))
        || hub
            .log()
            .for_host(Host::Token)
            .iter()
            .any(|e| e.query().contains(&enc(repo)))
}

#[test]
fn a_deny_pattern_refuses_every_route_kind_with_403_naming_the_rule() {
    let hub = hub();
    let text = config(&hub, "", "deny = [\"library/*\"]");
    let relay = Relay::start_with(&text);
    let mut c = relay.client();
    let line = line_in(&relay, "deny = ");
    let rule = format!("deny pattern \"library/*\" of [[registry]] docker.io (config line {line})");
    let digest = &hub.seeded().alpine.layers[0].digest;
    for target in [
        "/v2/library/alpine/manifests/latest".to_string(),
        format!("/v2/library/alpine/blobs/{digest}"),
        "/v2/library/alpine/tags/list".to_string(),
        format!("/v2/library/alpine/referrers/{digest}"),
        // the short name, normalized to library/alpine before matching
        "/v2/alpine/manifests/latest".to_string(),
    ] {
        let m = refused(&mut c, &target, &[], &rule);
        assert!(m.contains("docker.io/library/alpine"), "{m}");
    }
    // A HEAD gets the status (its error body is not sent).
    let r = c.head("/v2/library/alpine/manifests/latest").unwrap();
    assert_eq!(r.status, 403);
    assert!(!asked_about(&hub, "library/alpine"));
    // What the pattern does not match goes on as before.
    assert_eq!(
        c.get("/v2/private/secret/manifests/latest").unwrap().status,
        401
    );
}

#[test]
fn rules_match_the_upstream_name_whichever_way_the_registry_was_chosen() {
    let hub = hub();
    let text = config(
        &hub,
        "",
        "hosts = [\"hub.mirror.test\"]\ndeny = [\"library/alpine\"]",
    );
    let relay = Relay::start_with(&text);
    let mut c = relay.client();
    let rule = "deny pattern \"library/alpine\"";
    // default registry, path prefix, ?ns=, and Host
    refused(&mut c, "/v2/library/alpine/manifests/latest", &[], rule);
    refused(
        &mut c,
        "/v2/docker.io/library/alpine/manifests/latest",
        &[],
        rule,
    );
    refused(&mut c, "/v2/docker.io/alpine/manifests/latest", &[], rule);
    refused(
        &mut c,
        "/v2/library/alpine/manifests/latest?ns=docker.io",
        &[],
        rule,
    );
    refused(
        &mut c,
        "/v2/alpine/manifests/latest",
        &[("Host", "hub.mirror.test")],
        rule,
    );
    assert!(!asked_about(&hub, "library/alpine"));
}

#[test]
fn deny_wins_over_allow_and_a_non_empty_allow_list_refuses_the_rest() {
    let hub = hub();
    hub.add_random_image("library/nginx", "1", Flavor::Docker, &[500], 3);
    hub.add_random_image("bitnami/redis", "1", Flavor::Docker, &[500], 4);
    let text = config(
        &hub,
        "",
        "allow = [\"library/**\"]\ndeny = [\"library/nginx\"]",
    );
    let relay = Relay::start_with(&text);
    let mut c = relay.client();
    refused(
        &mut c,
        "/v2/library/nginx/manifests/1",
        &[],
        "deny pattern \"library/nginx\"",
    );
    let allow_line = line_in(&relay, "allow = ");
    let m = refused(
        &mut c,
        "/v2/bitnami/redis/manifests/1",
        &[],
        &format!("allow list of [[registry]] docker.io (config line {allow_line})"),
    );
    assert!(m.contains("docker.io/bitnami/redis"), "{m}");
    assert!(!asked_about(&hub, "library/nginx"));
    assert!(!asked_about(&hub, "bitnami/redis"));
    // Allowed and not denied: pulled as before.
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, hub.seeded().alpine.manifest_bytes);
}

#[test]
fn global_rules_name_the_registry_and_add_to_the_registrys_own() {
    let hub = hub();
    hub.add_random_image("myorg/app", "1", Flavor::Docker, &[500], 5);
    let text = config(
        &hub,
        "[access]\ndeny = [\"docker.io/private/**\"]\nallow = [\"docker.io/library/*\", \"*/myorg/app\"]",
        "deny = [\"myorg/app\"]",
    );
    let relay = Relay::start_with(&text);
    let mut c = relay.client();
    let deny_line = line_in(&relay, "deny = [\"docker.io");
    refused(
        &mut c,
        "/v2/private/secret/manifests/latest",
        &[],
        &format!("deny pattern \"docker.io/private/**\" of [access] (config line {deny_line})"),
    );
    // allowed globally, denied by the registry: the deny wins
    refused(
        &mut c,
        "/v2/myorg/app/manifests/1",
        &[],
        "deny pattern \"myorg/app\" of [[registry]] docker.io",
    );
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_blob_over_max_blob_bytes_is_refused_before_its_body() {
    let hub = hub();
    let img = hub.add_random_image("library/sized", "1", Flavor::Docker, &[3000, 70_000], 6);
    let text = config(&hub, "", "max_blob_bytes = \"10KiB\"");
    let relay = Relay::start_with(&text);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/sized");
    let (small, big) = (&img.layers[0].digest, &img.layers[1].digest);
    let r = get_auth(&mut c, &format!("/v2/library/sized/blobs/{small}"), &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), *small);
    let line = line_in(&relay, "max_blob_bytes");
    let auth = bearer(&tok);
    let m = refused(
        &mut c,
        &format!("/v2/library/sized/blobs/{big}"),
        &[("Authorization", &auth)],
        &format!(
            "is 70000 bytes, over max_blob_bytes = 10240 of [[registry]] docker.io (config line {line})"
        ),
    );
    assert!(m.contains(big.as_str()), "{m}");
    // a range of it too (the whole size counts), and a HEAD
    refused(
        &mut c,
        &format!("/v2/library/sized/blobs/{big}"),
        &[("Authorization", &auth), ("Range", "bytes=0-99")],
        "over max_blob_bytes",
    );
    let target = format!("/v2/library/sized/blobs/{big}");
    let r = c
        .request("HEAD", &target, &[("Authorization", &auth)], None)
        .unwrap();
    assert_eq!(r.status, 403);
    // The relay is still there for the next request on the same client.
    let r = get_auth(&mut c, &format!("/v2/library/sized/blobs/{small}"), &tok);
    assert_eq!(r.status, 200);
}

#[test]
fn a_cached_blob_over_max_blob_bytes_is_refused_from_the_cache_index() {
    let hub = hub();
    let img = hub.add_random_image("library/sized", "1", Flavor::Docker, &[70_000], 7);
    let dir = tempdir::Dir::new("gate-cache");
    let cache = format!(
        "[cache]\nenabled = true\ndir = \"{}\"\n",
        dir.path().display()
    );
    let relay = Relay::start_with(&config(&hub, &cache, ""));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/sized");
    let big = &img.layers[0].digest;
    let path = format!("/v2/library/sized/blobs/{big}");
    let gets = |hub: &HubDouble| {
        hub.log()
            .matching(Host::Registry, &format!("/v2/library/sized/blobs/{big}"))
            .iter()
            .filter(|e| e.method == "GET")
            .count()
    };
    let r = get_auth(&mut c, &path, &tok);
    assert_eq!(r.status, 200);
    let before = gets(&hub);
    // Stored: the next pull is a hit, with no upstream GET.
    let r = get_auth(&mut c, &path, &tok);
    assert_eq!(sha256(&r.body), *big);
    assert_eq!(gets(&hub), before, "not served from the cache");
    relay.rewrite_config(&config(&hub, &cache, "max_blob_bytes = 60000"));
    relay.reload(2);
    let mut c = relay.client();
    let auth = bearer(&tok);
    refused(
        &mut c,
        &path,
        &[("Authorization", &auth)],
        "is 70000 bytes, over max_blob_bytes = 60000",
    );
    // Refused from what the cache knows: the upstream was not asked for it.
    assert_eq!(gets(&hub), before);
}

#[test]
fn a_bad_pattern_or_size_is_a_config_error_naming_its_line() {
    let hub = hub();
    for (rules, says) in [
        (
            "deny = [\"library//x\"]",
            "deny pattern \"library//x\" has an empty component",
        ),
        (
            "allow = [\"Library/*\"]",
            "allow pattern \"Library/*\" has 'L'",
        ),
        ("allow = [\"a/b**\"]", "inside a component"),
        (
            "max_blob_bytes = \"lots\"",
            "max_blob_bytes must be a positive size",
        ),
    ] {
        let text = config(&hub, "", rules);
        let (ok, err) = config_check(&text);
        assert!(!ok, "{rules} passed");
        let line = line_of(&text, rules);
        assert!(err.contains(&format!("line {line}")), "{rules}: {err}");
        assert!(err.contains(says), "{rules}: {err}");
    }
    let (ok, err) = config_check(&config(&hub, "[access]\ndeny = [\"x?\"]", ""));
    assert!(!ok && err.contains("line 5"), "{err}");
}

#[test]
fn a_request_following_a_download_over_max_blob_bytes_is_refused() {
    let hub = hub();
    let dir = tempdir::Dir::new("gate-follow");
    let cache = format!(
        "[cache]\nenabled = true\ndir = \"{}\"\n",
        dir.path().display()
    );
    let relay = Relay::start_with(&config(&hub, &cache, ""));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    // Larger than loopback's socket buffers: a leader whose client does not
    // read stays in flight.
    let len = 32 << 20;
    let digest = hub.add_random_blob("library/alpine", len, 0x9a7e);
    let leader = start_blob_download(&relay, &digest, &tok, len as u64);
    relay.rewrite_config(&config(&hub, &cache, "max_blob_bytes = \"1MiB\""));
    relay.reload(2);
    // This one finds the download in flight and learns its length from it.
    let mut c = relay.client();
    let auth = bearer(&tok);
    refused(
        &mut c,
        &format!("/v2/library/alpine/blobs/{digest}"),
        &[("Authorization", &auth)],
        &format!("is {len} bytes, over max_blob_bytes = 1048576"),
    );
    let fetched = hub
        .log()
        .matching(
            Host::Registry,
            &format!("/v2/library/alpine/blobs/{digest}"),
        )
        .iter()
        .filter(|e| e.method == "GET")
        .count();
    assert_eq!(fetched, 1, "the follower went upstream itself");
    drop(leader);
}

#[test]
fn config_check_names_a_global_pattern_that_names_no_registry() {
    let hub = hub();
    let text = config(
        &hub,
        "[access]\ndeny = [\"dockerio/library/*\", \"*/evil/**\"]",
        "",
    );
    let (ok, err) = config_check(&text);
    assert!(!ok, "{err}");
    assert!(
        err.contains("line 5")
            && err.contains("\"dockerio/library/*\" names no configured registry"),
        "{err}"
    );
    assert!(!err.contains("*/evil/**"), "{err}");
}
