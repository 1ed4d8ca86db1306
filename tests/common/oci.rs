//! The registry API as a client sees it through the relay: bearer tokens got
//! by following a challenge, authorised GETs, and OCI JSON error bodies.

use hubdouble::client::{Client, Response};
use hubdouble::HubDouble;

use super::raw::{HashedBody, Raw};
use super::relay::Relay;

/// The `Authorization` value for bearer `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET target` with `Authorization: Bearer tok` through `c`.
pub fn get_auth(c: &mut Client, target: &str, tok: &str) -> Response {
    c.get_with(target, &[("Authorization", &bearer(tok))])
        .unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

/// A relay for `hub` with the test config, a client to it, and an anonymous
/// pull token for `library/alpine` that client got through the relay.
pub fn relay_with_alpine_token(hub: &HubDouble) -> (Relay, Client, String) {
    let relay = Relay::start(hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    (relay, c, tok)
}

/// Pulls `hub`'s first `library/alpine` layer through `relay` `times` times
/// with an anonymous token, each a 200 with the layer's bytes; its digest.
pub fn pull_alpine_layer(hub: &HubDouble, relay: &Relay, times: usize) -> String {
    let mut c = relay.client();
    let tok = anonymous_token(relay, &mut c, "library/alpine");
    let layer = hub.seeded().alpine.layers[0].digest.clone();
    let path = format!("/v2/library/alpine/blobs/{layer}");
    for _ in 0..times {
        let r = get_auth(&mut c, &path, &tok);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(hubdouble::sha256_digest(&r.body), layer);
    }
    layer
}

/// Starts `GET` of blob `digest` of library/alpine through `relay` with
/// token `tok`, checks that the answer is 200 with `len` bytes, and returns
/// the body, to be read.
pub fn start_blob_download(relay: &Relay, digest: &str, tok: &str, len: u64) -> HashedBody {
    let mut raw = Raw::get_with_token(
        relay.http,
        &format!("/v2/library/alpine/blobs/{digest}"),
        tok,
    );
    let head = raw.read_head().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(len));
    HashedBody::after_head(raw)
}

/// Gets an anonymous pull token for `repo` the way a client does: ping,
/// follow the challenge's realm (which must point at the relay), get the token.
pub fn anonymous_token(relay: &Relay, c: &mut Client, scope_repo: &str) -> String {
    let r = c
        .get(&format!("/v2/{scope_repo}/manifests/latest"))
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let realm = challenge_param(&r, "realm").expect("realm");
    // The realm names the listener the client came in on.
    let base = match relay.https {
        Some(a) if c.addr() == a => format!("https://{a}"),
        _ => format!("http://{}", relay.http),
    };
    let path = realm
        .strip_prefix(&base)
        .unwrap_or_else(|| panic!("realm {realm} must point at the relay {base}"));
    token_answer(c, path, &r, &[])["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Follows the challenge of `r` (as a client would, to the realm's path on
/// the relay, with `Host: host` if given) and returns the token.
pub fn token_from_challenge(c: &mut Client, r: &Response, host: Option<&str>) -> String {
    let mut headers = vec![];
    if let Some(h) = host {
        headers.push(("Host", h));
    }
    token_answer(c, &realm_token_path(r), r, &headers)["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The path of the relay's token endpoint named by the realm of the
/// challenge of `r` (the realm from `/token` on).
pub fn realm_token_path(r: &Response) -> String {
    let realm = challenge_param(r, "realm").expect("a realm");
    realm[realm.find("/token").expect("the relay's token endpoint")..].to_string()
}

/// Asks the token endpoint at `path` for the service and scope of the
/// challenge of `r` (with `headers`), asserts a 200 and returns the answer's
/// JSON.
pub fn token_answer(
    c: &mut Client,
    path: &str,
    r: &Response,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let service = challenge_param(r, "service").unwrap();
    let scope = challenge_param(r, "scope").unwrap();
    let t = c
        .get_with(
            &format!("{path}?service={}&scope={}", enc(&service), enc(&scope)),
            headers,
        )
        .unwrap();
    assert_eq!(t.status, 200, "{}", t.text());
    t.json().unwrap()
}

/// A param of the response's `WWW-Authenticate` challenge (simple parser for
/// the well-formed challenges under test).
pub fn challenge_param(r: &Response, name: &str) -> Option<String> {
    let h = r.header("www-authenticate")?;
    let key = format!("{name}=\"");
    let i = h.find(&key)? + key.len();
    let j = h[i..].find('"')? + i;
    Some(h[i..j].to_string())
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The `errors[0].code` of an OCI JSON error body.
pub fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not a JSON error body ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no errors[0].code in {v}"))
        .to_string()
}

/// The `errors[0].message` of an OCI JSON error body.
pub fn error_message(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
    v["errors"][0]["message"]
        .as_str()
        .expect("errors[0].message")
        .to_string()
}

/// POSTs `form` to the relay's `/token` as a form body (docker login's
/// OAuth2 password grant).
pub fn post_token_form(c: &mut Client, form: &str) -> Response {
    c.request(
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(form.as_bytes()),
    )
    .expect("token POST")
}
