//! The head phase: which request headers go upstream, which response
//! headers come back, and the rewrites on the way (challenge realms pointed
//! at the mirror, pagination links named as the client named the
//! repository, a blob's validators named by its digest).

use crate::config::RegistryId;
use crate::downstream::{ClientCtx, Reply};
use crate::route::registry::Target;
use crate::upstream::{Conn, ResponseHead};
use crate::wire::challenge;
use crate::wire::http::{name_eq, RequestHead};
use crate::wire::url::Scheme;
use crate::worker::{Realm, Worker};

/// Request headers passed on to the upstream registry.
pub fn forwarded_request_header(name: &str) -> bool {
    [
        "accept",
        "range",
        "if-none-match",
        "if-modified-since",
        "if-range",
        "user-agent",
    ]
    .iter()
    .any(|h| name_eq(name, h))
}

/// Response headers passed back to the client. An allowlist: whatever a CDN
/// adds (cookies, `alt-svc`, `strict-transport-security`, its own hosts)
/// has no business on the mirror's responses.
pub fn forwarded_response_header(name: &str) -> bool {
    const EXACT: [&str; 10] = [
        "content-type",
        "docker-content-digest",
        "etag",
        "last-modified",
        "accept-ranges",
        "content-range",
        "cache-control",
        "content-encoding",
        "retry-after",
        "link",
    ];
    const PREFIX: [&str; 4] = ["docker-", "ratelimit-", "x-ratelimit-", "oci-"];
    EXACT.iter().any(|h| name_eq(name, h))
        || PREFIX
            .iter()
            .any(|p| name.len() > p.len() && name[..p.len()].eq_ignore_ascii_case(p))
}

/// What the head rewrites need to know about the request.
pub struct Rewrites<'r> {
    pub reg: RegistryId,
    pub target: Option<&'r Target<'r>>,
    /// A blob answered with its bytes: named by this digest.
    pub blob_digest: Option<&'r str>,
    /// The answer came from the registry itself, not a redirect target.
    pub from_registry: bool,
}

/// Writes the upstream's response head for the client: its status, the
/// forwarded headers, the rewrites. The framing comes after (the caller
/// knows the body's fate).
pub fn write_head(
    w: &Worker,
    rw: &Rewrites<'_>,
    (conn, head): (&Conn, &ResponseHead),
    req: &RequestHead<'_>,
    cx: &ClientCtx,
    reply: &mut Reply<'_>,
) {
    let Rewrites {
        reg,
        target,
        blob_digest,
        from_registry,
    } = *rw;
    reply.status(head.status);
    // A blob is named by its digest: say so the way a registry does, instead
    // of passing on whatever validator the CDN made up.
    if let Some(d) = blob_digest {
        reply.header("Docker-Content-Digest", d.as_bytes());
        let out = reply.head_mut();
        out.extend_from_slice(b"Etag: \"");
        out.extend_from_slice(d.as_bytes());
        out.extend_from_slice(b"\"\r\n");
    }
    let renamed = target.filter(|t| t.client_repo != t.upstream_repo);
    for (name, value) in head.headers(conn) {
        if blob_digest.is_some()
            && (name_eq(name, "etag") || name_eq(name, "docker-content-digest"))
        {
            continue;
        }
        if name_eq(name, "www-authenticate") {
            if from_registry && head.status == 401 {
                rewrite_challenge(w, reg, value, target, req, cx, reply);
            }
        } else if name_eq(name, "content-length") {
            // Framed by the caller for bodies; HEAD keeps the upstream's length.
            if head.framing == crate::wire::http::RespFraming::None {
                reply.header(name, value);
            }
        } else if let (true, Some(t)) = (name_eq(name, "link"), renamed) {
            // Pagination links name the upstream's repository; the client
            // must come back with its own name (prefix, no library/).
            let from = format!("/v2/{}/", t.upstream_repo);
            let to = format!("/v2/{}/", t.client_repo);
            let v = String::from_utf8_lossy(value).replace(&from, &to);
            reply.header(name, v.as_bytes());
        } else if forwarded_response_header(name) {
            reply.header(name, value);
        }
    }
}

/// Rewrites an upstream challenge for the client and learns its realm.
fn rewrite_challenge(
    w: &Worker,
    reg: RegistryId,
    value: &[u8],
    target: Option<&Target<'_>>,
    req: &RequestHead<'_>,
    cx: &ClientCtx,
    reply: &mut Reply<'_>,
) {
    let Some(ch) = challenge::parse_challenge(value) else {
        return; // unparseable: dropping it beats leaking an upstream host
    };
    if !ch.is_bearer() {
        // Basic and others carry no URL; the client answers us and we
        // forward its credentials.
        reply.header("WWW-Authenticate", value);
        return;
    }
    if let Some((url, service)) = challenge::bearer_realm(&ch) {
        if url.origin.scheme == Scheme::Https || w.cfg.debug {
            w.learn_realm(reg, Realm { url, service });
        }
    }
    let mut realm = cx.base_url(&w.cfg, req.host());
    realm.push_str(&token_path(w, reg));
    let out = reply.head_mut();
    out.extend_from_slice(b"WWW-Authenticate: ");
    challenge::write_rewritten(out, &ch, &realm, |scopes| {
        challenge::map_scopes(scopes, |name| match target {
            Some(t) if name == t.upstream_repo => Some(t.client_repo.to_string()),
            _ => None,
        })
    });
    out.extend_from_slice(b"\r\n");
}

/// The path of ocirelay's token endpoint for a registry.
pub fn token_path(w: &Worker, reg: RegistryId) -> String {
    if reg == w.cfg.default_registry() {
        "/token".to_string()
    } else {
        format!("/token/{}", w.cfg.registry(reg).name)
    }
}

/// Appends the allowed parameters of the client's query to `path`, verbatim.
pub fn with_query(mut path: String, query: Option<&str>, allowed: &[&str]) -> String {
    let Some(q) = query else { return path };
    let mut first = true;
    for pair in q.split('&') {
        let key = pair.split('=').next().unwrap_or("");
        if allowed.contains(&key) {
            path.push(if first { '?' } else { '&' });
            path.push_str(pair);
            first = false;
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pagination_and_filter_params_are_forwarded() {
        assert_eq!(
            with_query(
                "/v2/a/tags/list".into(),
                Some("n=10&last=x&ns=docker.io"),
                &["n", "last"]
            ),
            "/v2/a/tags/list?n=10&last=x"
        );
        assert_eq!(with_query("/p".into(), None, &["n"]), "/p");
    }

    #[test]
    fn hop_by_hop_and_cdn_headers_are_not_forwarded() {
        for keep in [
            "Content-Type",
            "Docker-Content-Digest",
            "ETag",
            "RateLimit-Remaining",
            "docker-ratelimit-source",
            "Content-Range",
        ] {
            assert!(forwarded_response_header(keep), "{keep}");
        }
        for drop in [
            "Connection",
            "Transfer-Encoding",
            "Set-Cookie",
            "Alt-Svc",
            "Strict-Transport-Security",
            "Location",
            "Keep-Alive",
            "Server",
        ] {
            assert!(!forwarded_response_header(drop), "{drop}");
        }
    }
}
