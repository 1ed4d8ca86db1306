//! The token host (like auth.docker.io): `GET /token` and the OAuth2 `POST /token` form
//! (the path is [`crate::Options::token_path`], e.g. `/v2/auth` for quay.io).
//! Anonymous callers get pull on public repos; private repos need a configured user.

use crate::http::{parse_form, Body, Request, Response};
use crate::knobs::TokenFields;
use crate::signing::Claims;
use crate::state::Shared;
use crate::time::{rfc3339_now, unix_now};
use base64::Engine;
use serde_json::json;

fn json_response(status: u16, body: serde_json::Value) -> Response {
    Response::new(status)
        .header("Content-Type", "application/json")
        .body(Body::Bytes(serde_json::to_vec(&body).expect("json")))
}

fn unauthorized() -> Response {
    json_response(401, json!({"details": "incorrect username or password"}))
        .header("Www-Authenticate", "Basic realm=\"hubdouble\"")
}

/// The (user, password) of an `Authorization: Basic` header.
fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let v = req.header("authorization")?;
    if v.len() <= 6 || !v[..6].eq_ignore_ascii_case("basic ") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v[6..].trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn check_user(sh: &Shared, user: &str, pass: &str) -> bool {
    sh.users.iter().any(|(u, p)| u == user && p == pass)
}

/// Repositories among `scopes` that `user` (empty: anonymous) may pull.
fn grant(sh: &Shared, scopes: &[String], user: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for scope in scopes.iter().flat_map(|s| s.split(' ')) {
        let Some(rest) = scope.strip_prefix("repository:") else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let wants_pull = actions.split(',').any(|a| a == "pull" || a == "*");
        let allowed = !sh.content.is_private(name) || !user.is_empty();
        if wants_pull && allowed && !name.is_empty() && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

/// Handles one request to the token host.
pub(crate) fn handle(sh: &Shared, req: &Request) -> Response {
    let path = req.path();
    if path != sh.token_path && path.strip_suffix('/') != Some(sh.token_path.as_str()) {
        return json_response(404, json!({"details": "not found"}));
    }
    let (params, oauth) = match req.method.as_str() {
        "GET" => (req.query_params(), false),
        "POST" => (parse_form(&String::from_utf8_lossy(&req.body)), true),
        _ => return json_response(405, json!({"details": "method not allowed"})),
    };
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();

    // Who is asking: Basic auth on either form, or the OAuth2 grant.
    let mut user = String::new();
    if let Some((u, p)) = basic_credentials(req) {
        if !check_user(sh, &u, &p) {
            return unauthorized();
        }
        user = u;
    }
    if oauth {
        match param("grant_type") {
            Some("password") => {
                let (u, p) = (
                    param("username").unwrap_or(""),
                    param("password").unwrap_or(""),
                );
                if !check_user(sh, u, p) {
                    return unauthorized();
                }
                user = u.to_string();
            }
            Some("refresh_token") => {
                match param("refresh_token").and_then(|t| sh.signer.verify_refresh(t)) {
                    Some(u) => user = u,
                    None => return unauthorized(),
                }
            }
            Some("client_credentials") | None if !user.is_empty() => {}
            _ => {
                return json_response(400, json!({"error": "unsupported_grant_type"}));
            }
        }
    }

    let ttl = sh.knobs.token_ttl();
    let claims = Claims {
        exp: unix_now() + ttl,
        sub: user.clone(),
        pull: grant(sh, &scopes, &user),
    };
    let token = sh.signer.mint_token(&claims);
    let mut body = serde_json::Map::new();
    match sh.knobs.token_fields() {
        TokenFields::Both => {
            body.insert("token".into(), json!(token));
            body.insert("access_token".into(), json!(token));
        }
        TokenFields::TokenOnly => {
            body.insert("token".into(), json!(token));
        }
        TokenFields::AccessTokenOnly => {
            body.insert("access_token".into(), json!(token));
        }
    }
    if sh.knobs.expires_in() {
        body.insert("expires_in".into(), json!(ttl));
    }
    body.insert("issued_at".into(), json!(rfc3339_now()));
    let offline = param("offline_token") == Some("true") || param("access_type") == Some("offline");
    if offline && !user.is_empty() {
        body.insert("refresh_token".into(), json!(sh.signer.mint_refresh(&user)));
    }
    if oauth {
        body.insert("scope".into(), json!(scopes.join(" ")));
    }
    json_response(200, serde_json::Value::Object(body))
}
