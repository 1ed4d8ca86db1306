//! Credentials (issue 12, hardening item 6): a client's `Authorization`
//! reaches the origin it was given for and nothing else (not the CDN a blob
//! redirects to, not another registry, not a later client's requests); the
//! operator's upstream account is not sent to another registry; and no
//! secret (passwords, tokens, `Authorization`, the CDN's signed query
//! strings) appears in the access log, the event log or the metrics.
//!
//! Loopback only; every wait is bounded.

mod common;

use std::time::Duration;

use common::*;

const OPS: (&str, &str) = ("ops", "s3cret-ops-pw");
const ALICE: (&str, &str) = ("alice", "wonderland");

/// docker.io from `a` under the operator's account, quay.io from `b`
/// anonymously; the access log in JSON on stderr.
fn two_registries(a: &HubDouble, b: &HubDouble) -> String {
    let registries = format!(
        "{}username = \"{}\"\npassword = \"{}\"\n\n{}",
        registry_block(a, "docker.io"),
        OPS.0,
        OPS.1,
        registry_block(b, "quay.io"),
    );
    config_text(
        !a.is_tls(),
        "access_log_format = \"json\"",
        Timeouts::default(),
        &registries,
    )
}

/// A token for alice through the relay's token endpoint (`docker login`).
fn alice_token(c: &mut Client) -> String {
    let r = c
        .get_with(
            "/token?service=registry.docker.io&scope=repository:library/alpine:pull",
            &[("Authorization", &basic_auth(ALICE.0, ALICE.1))],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["token"]
        .as_str()
        .or(v["access_token"].as_str())
        .expect("a token")
        .to_string()
}

#[test]
fn authorization_stays_with_its_origin_and_its_client() {
    let a = HubDouble::start(Options::default().user(OPS.0, OPS.1)).unwrap();
    let b = hub();
    let relay = Relay::start_with(&two_registries(&a, &b));
    let layer = a.seeded().alpine.layers[0].digest.clone();
    let blob = format!("/v2/library/alpine/blobs/{layer}");

    // Client 1: alice logs in and pulls a manifest and a blob (the blob
    // redirects to the CDN).
    let mut c1 = relay.client();
    let tok = alice_token(&mut c1);
    let basic = basic_auth(ALICE.0, ALICE.1);
    assert_eq!(
        get_auth(&mut c1, "/v2/library/alpine/manifests/latest", &tok).status,
        200
    );
    let r = get_auth(&mut c1, &blob, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), layer);
    let seen = a.log().len();
    let alice_sent = a.log().entries().iter().any(|e| {
        e.header_all("authorization")
            .iter()
            .any(|v| *v == basic || v.contains(tok.as_str()))
    });
    assert!(alice_sent, "alice's credentials did reach her registry");

    // Client 2, anonymous, on a new connection: the same blob, and a pull
    // from the other registry.
    let mut c2 = relay.client();
    let r = c2.get(&blob).unwrap();
    assert_ne!(r.status, 500);
    let r = c2
        .get("/v2/quay.io/library/alpine/manifests/latest")
        .unwrap();
    assert_eq!(r.status, 401, "quay.io asks for a token: {}", r.text());

    // The CDN never got an Authorization.
    for e in a.log().for_host(Host::Cdn) {
        assert!(!e.has_header("authorization"), "sent to the CDN: {e:?}");
    }
    // Nothing after client 1's requests carried alice's credentials.
    for e in &a.log().entries()[seen..] {
        for v in e.header_all("authorization") {
            assert!(
                v != basic && !v.contains(tok.as_str()),
                "alice's credentials on a later request: {e:?}"
            );
        }
    }
    // The other registry got no Authorization at all: not alice's, not the
    // operator's account, not a token of docker.io's token service.
    assert!(!b.log().is_empty(), "quay.io was asked");
    for e in b.log().entries() {
        assert!(!e.has_header("authorization"), "sent to quay.io: {e:?}");
    }
    // The operator's account went to docker.io's token service only.
    let ops = basic_auth(OPS.0, OPS.1);
    for e in a.log().entries() {
        if e.header("authorization") == Some(ops.as_str()) {
            assert_eq!(e.host, Host::Token, "the account went elsewhere: {e:?}");
        }
    }
}

#[test]
fn no_secret_in_the_access_log_the_event_log_or_the_metrics() {
    let a = HubDouble::start(Options::default().user(OPS.0, OPS.1)).unwrap();
    let b = hub();
    let relay = Relay::start_with(&two_registries(&a, &b));
    let layer = a.seeded().alpine.layers[0].digest.clone();
    let blob = format!("/v2/library/alpine/blobs/{layer}");
    let mut c = relay.client();
    let tok = alice_token(&mut c);
    assert_eq!(get_auth(&mut c, &blob, &tok).status, 200);
    // A failed login and a token POST with a password in the form, too.
    let r = c
        .get_with(
            "/token?service=registry.docker.io&scope=repository:library/alpine:pull",
            &[("Authorization", &basic_auth(ALICE.0, "not-wonderland"))],
        )
        .unwrap();
    assert_eq!(r.status, 401);
    let form = format!(
        "grant_type=password&service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull&username={}&password={}",
        ALICE.0, ALICE.1
    );
    let r = post_token_form(&mut c, &form);
    assert_eq!(r.status, 200, "{}", r.text());
    // The CDN's signed query string.
    let cdn = a.log().for_host(Host::Cdn);
    assert!(!cdn.is_empty(), "the blob came from the CDN");
    let signed: Vec<String> = cdn
        .iter()
        .map(|e| e.query().to_string())
        .filter(|q| !q.is_empty())
        .collect();

    assert!(
        wait_until(Duration::from_secs(5), || relay.stderr().contains("/token")),
        "the access log has the token requests"
    );
    let metrics = relay.metrics_client().get("/metrics").unwrap().text();
    let stderr = relay.stderr();
    let basic = basic_auth(ALICE.0, ALICE.1);
    let secrets = [
        ("alice's password", ALICE.1),
        ("the operator's password", OPS.1),
        ("alice's token", tok.as_str()),
        ("an Authorization value", basic.as_str()),
        ("a wrong password", "not-wonderland"),
    ];
    for (what, secret) in secrets.iter() {
        assert!(!stderr.contains(secret), "{what} in the logs:\n{stderr}");
        assert!(!metrics.contains(secret), "{what} in the metrics");
    }
    for q in &signed {
        assert!(
            !stderr.contains(q.as_str()),
            "a signed URL in the logs: {q}"
        );
        assert!(
            !metrics.contains(q.as_str()),
            "a signed URL in the metrics: {q}"
        );
    }
    assert!(!stderr.to_ascii_lowercase().contains("authorization: "));
    eprintln!(
        "credentials: {} secrets and {} signed query strings checked",
        secrets.len(),
        signed.len()
    );
}
