//! ocirelay's token endpoint. Clients are sent here by the rewritten
//! challenge; the request is forwarded to the realm the upstream named in its
//! own challenge (never to one a client supplies), with scopes mapped to the
//! upstream's names and `Authorization` (docker login) passed through. The
//! upstream's answer is returned unchanged. Fetch and body phases are the
//! registry request's (`pull::fetch`, `pull::body`).

pub mod mirror;

use std::time::Duration;

use monoio::io::AsyncReadRent;

use crate::downstream::{BodyDeadline, BodyError, Outcome, PendingBody, Reply};
use crate::error::Error;
use crate::ops::summary::RequestSummary;
use crate::pull::body;
use crate::pull::fetch::{fetch, Fetch, Fetched};
use crate::pull::upstream_auth::learn_realm;
use crate::relay::tap::{Capture, NoTap};
use crate::relay::ClientSink;
use crate::route::registry::{self, Hints};
use crate::wire::challenge;
use crate::wire::http::{name_eq, RequestHead};
use crate::wire::method::Method;
use crate::wire::oci::{ErrorCode, ErrorReply};
use crate::worker::{Realm, Worker};

/// Handles `GET|POST /token[/<registry>]`.
#[allow(clippy::too_many_arguments)]
pub async fn token_request<'a, S: AsyncReadRent + ClientSink>(
    w: &'a Worker,
    req: &RequestHead<'a>,
    named: Option<&str>,
    query: Option<&str>,
    pending: &mut PendingBody<'_>,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'a>,
) -> Outcome {
    let cfg = &w.cfg;
    // Errors here close the connection: a request body may be unread.
    let hints = Hints::new(req.host(), query);
    let reg = match registry::for_token(cfg, named, hints, query) {
        Ok(i) => i,
        Err(e) => return refuse(client, reply, &e.reply(cfg)).await,
    };
    let registry = cfg.registry(reg);
    summary.registry = Some(reg);
    if let Some(auth) = &cfg.auth {
        return mirror::mirror_token(w, auth, reg, req, query, client, reply).await;
    }
    let map_name = |name: &str| Some(registry::scope_name(registry, name));

    // The body is read (and a malformed one refused) before anything goes
    // upstream: a request refused for its framing causes no upstream traffic,
    // not even the realm's discovery.
    let raw_form = if req.method == Method::Post {
        match pending
            .read_all(
                client,
                cfg.limits.max_token_body_bytes,
                BodyDeadline {
                    per_read: cfg.timeouts.client_header,
                    whole: cfg.timeouts.client_body,
                },
            )
            .await
        {
            Ok(b) => Some(b),
            Err(BodyError::TooLarge) => {
                let e = ErrorReply::new(413, ErrorCode::Unknown, "token request body too large");
                return refuse(client, reply, &e).await;
            }
            Err(BodyError::Malformed) => {
                let e = ErrorReply::new(400, ErrorCode::Unknown, "malformed chunked request body");
                return refuse(client, reply, &e).await;
            }
            Err(BodyError::TimedOut) => {
                let e =
                    ErrorReply::new(408, ErrorCode::Unknown, "request body not received in time");
                return refuse(client, reply, &e).await;
            }
            Err(BodyError::Io) => return Outcome::Close,
        }
    } else {
        None
    };

    let realm = match w.realm(reg) {
        Some(r) => r,
        None => match learn_realm(w, reg).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                let e = ErrorReply::new(
                    404,
                    ErrorCode::Unsupported,
                    format!(
                        "registry {} does not use token authentication",
                        registry.name
                    ),
                );
                return refuse(client, reply, &e).await;
            }
            Err(e) => {
                let anonymous = req.method == Method::Get && req.header("authorization").is_none();
                if let Some(o) = offline_token(w, anonymous, client, reply).await {
                    return o;
                }
                let e = Error::from(e);
                let r = e.reply(&registry.name);
                summary.error = Some(e);
                return refuse(client, reply, &r).await;
            }
        },
    };

    // The query: the realm's own parameters, then the client's, scopes mapped.
    let Realm { mut url, service } = realm;
    let service = service.as_deref();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        let Some(mapped) = challenge::rewrite_token_params(q, map_name, service) else {
            let e = ErrorReply::new(400, ErrorCode::Unknown, "malformed query string");
            return refuse(client, reply, &e).await;
        };
        let sep = if url.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        url.path_and_query.reserve(1 + mapped.len());
        url.path_and_query.push(sep);
        url.path_and_query.push_str(&mapped);
    }

    // The form, its scopes mapped like the query's.
    let form = match raw_form {
        Some(raw) => {
            let text = String::from_utf8(raw).unwrap_or_default();
            match challenge::rewrite_token_params(text.trim(), map_name, service) {
                Some(f) => f.into_bytes(),
                None => {
                    let e = ErrorReply::new(400, ErrorCode::Unknown, "malformed form body");
                    return refuse(client, reply, &e).await;
                }
            }
        }
        None => Vec::new(),
    };
    let post = req.method == Method::Post;

    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(6);
    let mut authorization = None;
    for h in req.headers {
        if name_eq(h.name, "authorization") {
            authorization = Some(h.value);
        } else if name_eq(h.name, "user-agent") || name_eq(h.name, "accept") {
            headers.push((h.name, h.value));
        }
    }
    if post {
        headers.push(("Content-Type", b"application/x-www-form-urlencoded"));
    }
    let f = Fetch {
        method: if post { Method::Post } else { Method::Get },
        url,
        registry: reg,
        headers,
        authorization,
        body: post.then_some(form.as_slice()),
    };
    let anonymous = !post && authorization.is_none();
    let Fetched { mut conn, head, .. } = match fetch(w, f).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(o) = offline_token(w, anonymous, client, reply).await {
                return o;
            }
            let e = Error::from(e);
            let r = e.reply(&registry.name);
            summary.error = Some(e);
            return refuse(client, reply, &r).await;
        }
    };
    summary.upstream_status = Some(head.status);
    if matches!(head.status, 429 | 500..=599) {
        if let Some(o) = offline_token(w, anonymous, client, reply).await {
            return o;
        }
    }

    reply.status(head.status);
    for (name, value) in head.headers(&conn) {
        let keep = [
            "content-type",
            "cache-control",
            "pragma",
            "www-authenticate",
            "retry-after",
        ]
        .iter()
        .any(|h| name_eq(name, h));
        // A Bearer challenge from the token server would name an upstream
        // host; Basic ones (bad credentials) are passed on.
        let bearer_challenge = name_eq(name, "www-authenticate") && !value.starts_with(b"Basic");
        if keep && !bearer_challenge {
            reply.header(name, value);
        }
    }
    let to_client = reply.end_relayed(head.framing);
    conn.consume(head.head_len);
    let Some(access) = w.access.as_ref().filter(|_| head.status == 200) else {
        return body::stream(
            w, conn, &head, client, reply, to_client, &mut NoTap, summary,
        )
        .await;
    };
    // Which tokens were issued without credentials (and for how long), to
    // tell anonymously pullable repositories from private ones (see
    // `cache::access`) and anonymous clients from logged-in ones (see
    // `pull::upstream_auth`).
    let mut seen = Capture::new(MAX_TOKEN_BODY);
    let outcome = body::stream(w, conn, &head, client, reply, to_client, &mut seen, summary).await;
    if let Some((token, expires_in)) = seen.whole().and_then(challenge::issued_token) {
        let ttl = Duration::from_secs(expires_in.unwrap_or(60).min(86_400));
        // Anonymous only for a GET without credentials: a POST carries them
        // in its form (OAuth2 password or refresh-token grants), so its
        // tokens are never taken for anonymous ones.
        access.learn_token(token, ttl, anonymous);
    }
    outcome
}

/// Token answers are a few KiB of JSON; a larger one is not looked at.
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// How long a token ocirelay issues itself (upstream down) is good for.
const OFFLINE_TOKEN_TTL: u64 = 300;

/// The upstream's token service cannot answer: with the cache on and
/// `serve_stale`, an anonymous client still gets a token, issued by ocirelay
/// itself, good only for what the cache may serve anonymously while the
/// upstream is away (content the upstream last served to anyone; never a
/// private repository). A client with credentials gets the upstream's
/// error: they cannot be checked.
async fn offline_token<S: ClientSink>(
    w: &Worker,
    anonymous: bool,
    client: &mut S,
    reply: &mut Reply<'_>,
) -> Option<Outcome> {
    let cache = w.cache.as_ref().filter(|c| c.serve_stale() && anonymous)?;
    let mut raw = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).ok()?;
    let token = format!("ocirelay-offline.{}", crate::wire::digest::sha256_hex(&raw));
    cache
        .access
        .learn_token(&token, Duration::from_secs(OFFLINE_TOKEN_TTL), true);
    crate::event!(
        crate::ops::log::Level::Warn,
        Some(w.id),
        "token service unreachable: issued an offline token for cached anonymous content"
    );
    reply.must_close();
    Some(issued(client, reply, &token, OFFLINE_TOKEN_TTL).await)
}

/// A token ocirelay issued itself, as a token service answers it (both
/// names clients read: `token`, and OAuth2's `access_token`).
async fn issued<S: ClientSink>(
    client: &mut S,
    reply: &mut Reply<'_>,
    token: &str,
    expires_in: u64,
) -> Outcome {
    let body = format!(
        "{{\"token\":\"{token}\",\"access_token\":\"{token}\",\"expires_in\":{expires_in}}}"
    );
    reply
        .small(
            client,
            200,
            &[("Content-Type", b"application/json")],
            body.as_bytes(),
        )
        .await
}

/// An error answer after which the connection closes.
async fn refuse<S: ClientSink>(client: &mut S, reply: &mut Reply<'_>, e: &ErrorReply) -> Outcome {
    reply.must_close();
    reply.error(client, e).await
}
