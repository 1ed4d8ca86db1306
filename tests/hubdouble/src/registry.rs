//! The registry host (like registry-1.docker.io): `/v2/` ping, manifests, blob redirects to
//! the CDN, tag lists, and Docker Hub's bearer challenge; plus the other registries' ways
//! (k8s redirects, redirect-all, relative blob locations, manifest redirects).

use crate::cdn;
use crate::content::{is_sha256_digest, Manifest};
use crate::http::{Body, Request, Response};
use crate::knobs::{BlobLocation, UrlSigning};
use crate::signing::Claims;
use crate::state::Shared;
use crate::time::unix_now;
use serde_json::json;

const API_VERSION: (&str, &str) = ("Docker-Distribution-Api-Version", "registry/2.0");

/// A distribution-spec error response, keys in Docker Hub's order (code, message, detail).
pub(crate) fn error(status: u16, code: &str, message: &str, detail: serde_json::Value) -> Response {
    let body = format!(
        "{{\"errors\":[{{\"code\":{},\"message\":{},\"detail\":{detail}}}]}}",
        json!(code),
        json!(message)
    );
    Response::new(status)
        .header("Content-Type", "application/json")
        .header(API_VERSION.0, API_VERSION.1)
        .body(Body::Bytes(body.into_bytes()))
}

/// The response of an injected fault with `status`.
pub(crate) fn injected(status: u16) -> Response {
    let (code, message) = match status {
        429 => (
            "TOOMANYREQUESTS",
            "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit",
        ),
        503 => ("UNAVAILABLE", "service unavailable"),
        _ => ("UNKNOWN", "injected failure"),
    };
    let r = error(status, code, message, serde_json::Value::Null);
    if status == 429 || status == 503 {
        r.header("Retry-After", "1")
    } else {
        r
    }
}

/// Which resource a `/v2/...` path names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Ping,
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Tags(&'a str),
    Other(Option<&'a str>),
}

fn route(path: &str) -> Option<Route<'_>> {
    if path == "/v2/" || path == "/v2" {
        return Some(Route::Ping);
    }
    let rest = path.strip_prefix("/v2/")?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(i) = rest.rfind("/manifests/") {
        return Some(Route::Manifest(&rest[..i], &rest[i + 11..]));
    }
    if let Some(i) = rest.find("/blobs/uploads") {
        return Some(Route::Other(Some(&rest[..i])));
    }
    if let Some(i) = rest.rfind("/blobs/") {
        return Some(Route::Blob(&rest[..i], &rest[i + 7..]));
    }
    Some(Route::Other(None))
}

/// Repository name per the distribution spec (lowercase components joined by `/`).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(&x))
        })
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.header("authorization")?;
    (v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ")).then(|| v[7..].trim())
}

/// Docker Hub's 401 with a `Www-Authenticate` challenge.
fn challenge(sh: &Shared, scope: Option<&str>, err: Option<&str>) -> Response {
    let mut value = format!("Bearer realm=\"{}\",service=\"{}\"", sh.realm, sh.service);
    if let Some(name) = scope {
        value.push_str(&format!(",scope=\"repository:{name}:pull\""));
    }
    if let Some(e) = err {
        value.push_str(&format!(",error=\"{e}\""));
    }
    let detail = match scope {
        Some(name) => json!([{"Type": "repository", "Class": "", "Name": name, "Action": "pull"}]),
        None => serde_json::Value::Null,
    };
    error(401, "UNAUTHORIZED", "authentication required", detail).header("Www-Authenticate", value)
}

/// Checks the bearer token for `scope` (None: any valid token, for `/v2/`).
fn authorize(sh: &Shared, req: &Request, scope: Option<&str>) -> Result<(), Response> {
    if !sh.knobs.require_auth() {
        return Ok(());
    }
    let Some(tok) = bearer(req) else {
        return Err(challenge(sh, scope, None));
    };
    let Some(claims): Option<Claims> = sh.signer.verify_token(tok, unix_now()) else {
        return Err(challenge(sh, scope, Some("invalid_token")));
    };
    match scope {
        Some(name) if !claims.pull.iter().any(|r| r == name) => {
            Err(challenge(sh, scope, Some("insufficient_scope")))
        }
        _ => Ok(()),
    }
}

/// Which host serves a `/v2/...` API request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api<'a> {
    /// The registry host itself: auth, rate limits, blob (and manifest) redirects.
    Registry,
    /// The k8s-mode regional host (on the CDN host) under `prefix` (`/regional/<region>`):
    /// no auth, no rate limits, everything served directly.
    Regional(&'a str),
}

/// A redirect to `location` with a short HTML body (HEAD requests get the head only).
pub(crate) fn redirect(status: u16, location: String) -> Response {
    let body = format!(
        "<a href=\"{}\">{}</a>.\n",
        location.replace('&', "&amp;").replace('"', "&quot;"),
        crate::http::reason(status)
    );
    Response::new(status)
        .header("Content-Type", "text/html; charset=utf-8")
        .header("Location", location)
        .body(Body::Bytes(body.into_bytes()))
}

fn is_v2(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// Handles one request to the registry host.
pub(crate) fn handle(sh: &Shared, req: &Request) -> Response {
    let path = req.path();
    let resp = if is_v2(path) {
        if let Some(base) = sh.knobs.redirect_all_to() {
            // k8s.gcr.io: the same path and query on another registry.
            redirect(
                sh.knobs.redirect_all_status(),
                format!("{base}{}", req.target),
            )
        } else if sh.knobs.k8s_redirects() {
            k8s(sh, req)
        } else {
            match route(path) {
                Some(r) => handle_v2(sh, req, r, Api::Registry),
                None => not_found(),
            }
        }
    } else if cdn::is_signed_path(path) {
        // Relative blob redirects (gcr.io-like) land here: storage on the registry host.
        cdn::signed_object(sh, req)
    } else {
        not_found()
    };
    resp.header("Strict-Transport-Security", "max-age=31536000")
}

fn not_found() -> Response {
    Response::new(404)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(Body::Bytes(b"404 page not found\n".to_vec()))
}

/// registry.k8s.io: the ping answers itself, everything else goes to a regional host.
fn k8s(sh: &Shared, req: &Request) -> Response {
    let path = req.path();
    if (path == "/v2/" || path == "/v2") && (req.method == "GET" || req.is_head()) {
        return Response::new(200)
            .header("Content-Type", "application/json")
            .header(API_VERSION.0, API_VERSION.1)
            .body(Body::Bytes(b"{}".to_vec()));
    }
    let region = sh.knobs.next_region();
    redirect(
        307,
        format!("{}/regional/{region}{}", sh.cdn_url, req.target),
    )
}

/// Serves a `/v2/...` request on a regional host (k8s mode): `path` is the part from `/v2/`.
pub(crate) fn handle_regional(sh: &Shared, req: &Request, prefix: &str, path: &str) -> Response {
    match route(path) {
        Some(r) => handle_v2(sh, req, r, Api::Regional(prefix)),
        None => not_found(),
    }
}

fn handle_v2(sh: &Shared, req: &Request, r: Route<'_>, api: Api<'_>) -> Response {
    let name = match &r {
        Route::Ping => None,
        Route::Manifest(n, _) | Route::Blob(n, _) | Route::Tags(n) => Some(*n),
        Route::Other(n) => *n,
    };
    if let Some(n) = name {
        if !valid_name(n) {
            return error(400, "NAME_INVALID", "invalid repository name", json!(n));
        }
    }
    if api == Api::Registry {
        if let Err(resp) = authorize(sh, req, name) {
            return resp;
        }
    }
    let get_or_head = req.method == "GET" || req.is_head();
    if !get_or_head {
        return error(
            405,
            "UNSUPPORTED",
            "The operation is unsupported.",
            serde_json::Value::Null,
        )
        .header("Allow", "GET, HEAD");
    }
    if let Some(n) = name {
        if !sh.content.has_repo(n) {
            return error(
                404,
                "NAME_UNKNOWN",
                "repository name not known to registry",
                json!({"name": n}),
            );
        }
    }
    match r {
        Route::Ping => Response::new(200)
            .header("Content-Type", "application/json")
            .header(API_VERSION.0, API_VERSION.1)
            .body(Body::Bytes(b"{}".to_vec())),
        Route::Manifest(n, reference) => manifest(sh, req, n, reference, api),
        Route::Blob(n, digest) => blob(sh, req, n, digest, api),
        Route::Tags(n) => tags(sh, req, n, api),
        Route::Other(_) => error(404, "NOT_FOUND", "not found", serde_json::Value::Null),
    }
}

/// A 200 for manifest `m` (`digest`), honouring the HEAD knobs (no `Content-Length` /
/// no `Docker-Content-Digest`). Used by the registry, the regional host and the CDN.
pub(crate) fn manifest_response(sh: &Shared, req: &Request, digest: &str, m: Manifest) -> Response {
    let head = req.is_head();
    let len = m.bytes.len();
    let mut resp = Response::new(200)
        .header("Content-Type", m.media_type)
        .header(API_VERSION.0, API_VERSION.1);
    if !head || sh.knobs.manifest_head_digest() {
        resp = resp.header("Docker-Content-Digest", digest.to_string());
    }
    resp.omit_length = head && !sh.knobs.manifest_head_content_length();
    resp.header("Etag", format!("\"{digest}\""))
        .body(Body::Blob {
            data: m.bytes,
            start: 0,
            end: len,
        })
}

fn manifest(sh: &Shared, req: &Request, name: &str, reference: &str, api: Api<'_>) -> Response {
    let found = sh
        .content
        .resolve(name, reference)
        .and_then(|d| sh.content.manifest(&d).map(|m| (d, m)));
    let Some((digest, m)) = found else {
        let detail = if is_sha256_digest(reference) {
            json!(format!("unknown manifest digest={reference}"))
        } else {
            json!({"Tag": reference})
        };
        return error(404, "MANIFEST_UNKNOWN", "manifest unknown", detail);
    };
    if let Api::Regional(_) = api {
        return manifest_response(sh, req, &digest, m);
    }
    let (limit, remaining) = if req.is_head() {
        sh.knobs.rate_limit_now()
    } else {
        let (limit, remaining, allowed) = sh.knobs.count_manifest_get();
        if !allowed {
            return injected(429);
        }
        (limit, remaining)
    };
    let resp = if sh.knobs.manifest_redirect() {
        let path = cdn_manifest_path(&digest);
        let location = format!("{}{path}?{}", sh.cdn_url, signed_query(sh, &path));
        redirect(307, location).header(API_VERSION.0, API_VERSION.1)
    } else {
        manifest_response(sh, req, &digest, m)
    };
    resp.header("ratelimit-limit", format!("{limit};w=21600"))
        .header("ratelimit-remaining", format!("{remaining};w=21600"))
        .header("docker-ratelimit-source", req.peer.to_string())
}

/// The CDN data path of a blob.
pub(crate) fn cdn_data_path(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!(
        "/registry-v2/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    )
}

/// The CDN path of a manifest (manifest redirects).
pub(crate) fn cdn_manifest_path(digest: &str) -> String {
    format!("/manifests/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// The query string (no `?`) signing `path` for the CDN, in the current signing style.
pub(crate) fn signed_query(sh: &Shared, path: &str) -> String {
    let exp = unix_now() + sh.knobs.cdn_ttl();
    match sh.knobs.url_signing() {
        UrlSigning::Verify => format!("verify={}", sh.signer.sign_url(path, exp)),
        UrlSigning::CloudFront => format!(
            "Expires={exp}&Signature={}&Key-Pair-Id={}",
            sh.signer
                .sign_cloudfront(path, exp, crate::CLOUDFRONT_KEY_PAIR_ID),
            crate::CLOUDFRONT_KEY_PAIR_ID
        ),
    }
}

fn blob(sh: &Shared, req: &Request, name: &str, digest: &str, api: Api<'_>) -> Response {
    let data = is_sha256_digest(digest)
        .then(|| sh.content.repo_blob(name, digest))
        .flatten();
    let Some(data) = data else {
        return error(
            404,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
            json!(digest),
        );
    };
    if api != Api::Registry || !sh.knobs.blob_redirect() {
        return cdn::blob_response(req, data)
            .header(API_VERSION.0, API_VERSION.1)
            .header("Docker-Content-Digest", digest.to_string())
            .header("Etag", format!("\"{digest}\""));
    }
    let path = cdn_data_path(digest);
    let query = signed_query(sh, &path);
    let hops = sh.knobs.extra_hops();
    let target = if hops > 0 {
        format!("/hop/{hops}{path}?{query}")
    } else {
        format!("{path}?{query}")
    };
    let location = match sh.knobs.blob_location() {
        BlobLocation::Cdn => format!("{}{target}", sh.cdn_url),
        BlobLocation::RegistryPath => target,
        BlobLocation::RegistryDotSegments => {
            // Climb from the request's directory back to the root.
            let up = req.path().matches('/').count().saturating_sub(1);
            format!("{}{}", "../".repeat(up), &target[1..])
        }
    };
    Response::new(sh.knobs.blob_redirect_status())
        .header("Content-Type", "application/octet-stream")
        .header(API_VERSION.0, API_VERSION.1)
        .header("Location", location)
}

fn tags(sh: &Shared, req: &Request, name: &str, api: Api<'_>) -> Response {
    let prefix = match api {
        Api::Registry => "",
        Api::Regional(p) => p,
    };
    let all = sh.content.tags(name).unwrap_or_default();
    let params = req.query_params();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let after: Vec<&String> = match param("last") {
        Some(last) => all.iter().filter(|t| t.as_str() > last).collect(),
        None => all.iter().collect(),
    };
    let n = param("n").and_then(|v| v.parse::<usize>().ok());
    let page: Vec<&String> = after
        .iter()
        .take(n.unwrap_or(usize::MAX))
        .copied()
        .collect();
    let mut resp = Response::new(200)
        .header("Content-Type", "application/json")
        .header(API_VERSION.0, API_VERSION.1);
    if let (Some(n), Some(last)) = (n, page.last()) {
        if page.len() < after.len() {
            resp = resp.header(
                "Link",
                format!("<{prefix}/v2/{name}/tags/list?last={last}&n={n}>; rel=\"next\""),
            );
        }
    }
    let body = serde_json::to_vec(&json!({"name": name, "tags": page})).expect("json");
    resp.body(Body::Chunked(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v2/"), Some(Route::Ping));
        assert_eq!(
            route("/v2/library/alpine/manifests/latest"),
            Some(Route::Manifest("library/alpine", "latest"))
        );
        assert_eq!(
            route("/v2/a/b/c/blobs/sha256:00"),
            Some(Route::Blob("a/b/c", "sha256:00"))
        );
        assert_eq!(route("/v2/x/tags/list"), Some(Route::Tags("x")));
        assert_eq!(route("/v2/x/blobs/uploads/"), Some(Route::Other(Some("x"))));
        assert_eq!(route("/v1/x"), None);
        assert!(valid_name("library/alpine"));
        assert!(valid_name("a.b-c_d/e"));
        assert!(!valid_name("Library/alpine"));
        assert!(!valid_name("a//b"));
        assert!(!valid_name("-a"));
    }
}
