//! Registry API requests (`/v2/...`): pick the upstream, forward the request
//! with the headers that matter, follow redirects ourselves, rewrite the
//! response head (challenges, hop-by-hop headers) into the client's buffer,
//! and stream the body back.

use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::conn::{respond_error, ClientCtx, Outcome};
use crate::error::{ErrorCode, ErrorReply, UpstreamError};
use crate::relay::{self, ClientFraming, ClientSink, Verifier};
use crate::route::classify::Route;
use crate::route::registry::{self, Hints, Target};
use crate::upstream::{Conn, Exchange, RespFraming, ResponseHead, TrustId};
use crate::wire::challenge;
use crate::wire::http::{name_eq, write_header, write_status, RequestHead};
use crate::wire::names::{Digest, Reference};
use crate::wire::url::{Origin, Scheme, Url};
use crate::worker::{Realm, Worker, RELAY_BUF};

/// Redirect hops followed before giving up (clients allow 10 as well).
pub const MAX_REDIRECTS: usize = 10;

/// Request headers passed on to the upstream registry.
fn forwarded_request_header(name: &str) -> bool {
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
fn forwarded_response_header(name: &str) -> bool {
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

/// A request ocirelay sends upstream, possibly across redirects.
#[derive(Clone)]
pub struct Fetch<'a> {
    pub method: &'a str,
    pub url: Url,
    pub trust: TrustId,
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// Sent only to `auth_origin`, never to a redirect target elsewhere.
    pub authorization: Option<&'a [u8]>,
    pub body: Option<&'a [u8]>,
}

/// Sends `f`, following up to [`MAX_REDIRECTS`] redirects with the method,
/// headers and query string kept, and credentials dropped whenever the
/// target is not the origin they were given for.
pub async fn fetch(
    w: &Worker,
    mut f: Fetch<'_>,
) -> Result<(Conn, ResponseHead, Url), UpstreamError> {
    // The origin the credentials were given for, kept once a redirect
    // leaves it (until then it is `f.url`'s).
    let mut auth_origin: Option<Origin> = None;
    let own_headers = f.headers.len();
    for hop in 0..=MAX_REDIRECTS {
        f.headers.truncate(own_headers);
        if let Some(a) = f.authorization {
            if auth_origin.as_ref().is_none_or(|o| f.url.origin == *o) {
                f.headers.push(("Authorization", a));
            }
        }
        let ex = Exchange {
            method: f.method,
            url: &f.url,
            trust: f.trust,
            headers: &f.headers,
            body: f.body,
        };
        let (mut conn, head) = w.upstreams.send(&ex).await?;
        let location = match head.status {
            301 | 302 | 303 | 307 | 308 => head.header(&conn, "location").map(<[u8]>::to_vec),
            _ => None,
        };
        let Some(location) = location else {
            return Ok((conn, head, f.url));
        };
        if hop == MAX_REDIRECTS {
            break;
        }
        let location = String::from_utf8(location).map_err(|_| UpstreamError::Redirect {
            reason: "redirect Location is not text".into(),
        })?;
        let next = f.url.join(&location).map_err(|e| UpstreamError::Redirect {
            reason: format!("bad redirect Location: {e}"),
        })?;
        if next.origin.scheme == Scheme::Http
            && f.url.origin.scheme == Scheme::Https
            && !w.cfg.debug
        {
            return Err(UpstreamError::Redirect {
                reason: "refusing a redirect from https to plain http".into(),
            });
        }
        discard_body(w, &mut conn, &head).await.map(|reusable| {
            if reusable {
                w.upstreams.release(conn);
            }
        })?;
        if head.status == 303 && f.method != "HEAD" {
            f.method = "GET";
            f.body = None;
        }
        if auth_origin.is_none() {
            auth_origin = Some(f.url.origin.clone());
        }
        f.url = next;
    }
    Err(UpstreamError::Redirect {
        reason: format!("more than {MAX_REDIRECTS} redirects"),
    })
}

/// Reads and drops a small redirect body so the connection can be reused.
/// Large or unframed bodies are not worth it: the connection is dropped.
async fn discard_body(
    w: &Worker,
    conn: &mut Conn,
    head: &ResponseHead,
) -> Result<bool, UpstreamError> {
    conn.consume(head.head_len);
    match head.framing {
        RespFraming::None => Ok(head.keep_alive),
        RespFraming::Length(n) if n <= 64 * 1024 && head.keep_alive => {
            let mut buf = w.take_buf();
            let r = relay::relay_body(
                conn,
                head.framing,
                &mut relay::Collect::discard(),
                w.cfg.timeouts.client_write,
                None,
                ClientFraming::Same,
                &mut buf,
            )
            .await;
            w.give_buf(buf);
            Ok(r.is_ok())
        }
        _ => Ok(false),
    }
}

/// Handles a `/v2/...` registry request end to end.
#[allow(clippy::too_many_arguments)]
pub async fn registry_request<S: AsyncReadRent + ClientSink>(
    w: &Worker,
    req: &RequestHead<'_>,
    route: &Route<'_>,
    query: Option<&str>,
    client: &mut S,
    out: &mut Vec<u8>,
    cx: &ClientCtx,
    will_close: bool,
) -> Outcome {
    let head_only = req.method == "HEAD";
    let cfg = &w.cfg;
    let hints = Hints::new(req.host(), query);
    let picked = match *route {
        Route::Ping => registry::for_request(cfg, hints).map(|i| (None, i)),
        Route::Manifest { repo, .. }
        | Route::Blob { repo, .. }
        | Route::Tags { repo }
        | Route::Referrers { repo, .. } => registry::select(cfg, hints, repo).map(|t| {
            let i = t.registry;
            (Some(t), i)
        }),
        _ => unreachable!("only registry routes come here"),
    };
    let (target, reg_index): (Option<Target<'_>>, usize) = match picked {
        Ok(p) => p,
        Err(e) => return respond_error(client, out, &e.reply(cfg), head_only, will_close).await,
    };
    let name = target.as_ref().map_or("", |t| t.upstream_repo.as_ref());
    let (path, verify_digest): (String, Option<Digest<'_>>) = match *route {
        Route::Manifest { reference, .. } => (
            ["/v2/", name, "/manifests/", reference.as_str()].concat(),
            match reference {
                Reference::Digest(d) => Some(d),
                Reference::Tag(_) => None,
            },
        ),
        Route::Blob { digest, .. } => (
            ["/v2/", name, "/blobs/", digest.as_str()].concat(),
            Some(digest),
        ),
        Route::Tags { .. } => (
            with_query(format!("/v2/{name}/tags/list"), query, &["n", "last"]),
            None,
        ),
        Route::Referrers { digest, .. } => (
            with_query(
                format!("/v2/{name}/referrers/{}", digest.as_str()),
                query,
                &["artifactType"],
            ),
            None,
        ),
        _ => ("/v2/".to_string(), None),
    };
    let reg = &cfg.registries[reg_index];
    let url = Url {
        origin: reg.upstream.clone(),
        path_and_query: path,
    };

    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(12);
    let mut authorization = None;
    let mut ranged = false;
    for h in req.headers {
        if name_eq(h.name, "authorization") {
            authorization = Some(h.value);
        } else if forwarded_request_header(h.name) {
            ranged |= name_eq(h.name, "range");
            headers.push((h.name, h.value));
        }
    }
    let fetch_req = Fetch {
        method: if head_only { "HEAD" } else { "GET" },
        url,
        trust: TrustId(reg_index),
        headers,
        authorization,
        body: None,
    };
    // Kept only for a manifest HEAD, which may have to be answered by a GET.
    let get_instead = (head_only && matches!(route, Route::Manifest { .. })).then(|| Fetch {
        method: "GET",
        ..fetch_req.clone()
    });
    let (mut conn, head, final_url) = match fetch(w, fetch_req).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ocirelay[{}]: {} {} -> {e}", w.id, req.method, req.target);
            return respond_error(client, out, &e.reply(&reg.name), head_only, will_close).await;
        }
    };
    // containerd needs Content-Length and Docker-Content-Digest on a manifest
    // HEAD (or it falls back to GET itself); some registries (gcr) leave them
    // out. Then the manifest is fetched and measured here instead.
    if let Some(get) = get_instead {
        let incomplete = head.header(&conn, "content-length").is_none()
            || head.header(&conn, "docker-content-digest").is_none();
        if head.status == 200 && incomplete {
            drop(conn);
            return manifest_head_via_get(w, get, &reg.name, client, out, will_close).await;
        }
    }
    // ---- response head, rewritten straight into the client's buffer ----
    let to_client = ClientFraming::for_client(head.framing, req.minor);
    let close = will_close || to_client.close_delimited(head.framing);
    out.clear();
    write_status(out, head.status);
    let from_registry = final_url.origin == reg.upstream;
    // A blob is named by its digest: say so the way a registry does, instead
    // of passing on whatever validator the CDN made up.
    let blob_digest = match *route {
        Route::Blob { digest, .. } if matches!(head.status, 200 | 206) => Some(digest.as_str()),
        _ => None,
    };
    if let Some(d) = blob_digest {
        write_header(out, "Docker-Content-Digest", d.as_bytes());
        out.extend_from_slice(b"Etag: \"");
        out.extend_from_slice(d.as_bytes());
        out.extend_from_slice(b"\"\r\n");
    }
    for (name, value) in head.headers(&conn) {
        if blob_digest.is_some()
            && (name_eq(name, "etag") || name_eq(name, "docker-content-digest"))
        {
            continue;
        }
        if name_eq(name, "www-authenticate") {
            if from_registry && head.status == 401 {
                rewrite_challenge(w, reg_index, value, target.as_ref(), req, cx, out);
            }
        } else if name_eq(name, "content-length") {
            // Framed below for bodies; HEAD keeps the upstream's length.
            if head.framing == RespFraming::None {
                write_header(out, name, value);
            }
        } else if name_eq(name, "link")
            && target
                .as_ref()
                .is_some_and(|t| t.client_repo != t.upstream_repo)
        {
            // Pagination links name the upstream's repository; the client
            // must come back with its own name (prefix, no library/).
            let t = target.as_ref().expect("checked above");
            let from = format!("/v2/{}/", t.upstream_repo);
            let to = format!("/v2/{}/", t.client_repo);
            let v = String::from_utf8_lossy(value).replace(&from, &to);
            write_header(out, name, v.as_bytes());
        } else if forwarded_response_header(name) {
            write_header(out, name, value);
        }
    }
    end_head(out, head.framing, to_client, close);
    conn.consume(head.head_len);

    let mut verifier = match verify_digest {
        Some(d) if cfg.limits.verify_digests && head.status == 200 && !ranged && !head_only => {
            Verifier::new(&d)
        }
        _ => None,
    };

    // A small body named by its digest (manifests, configs, empty blobs) is
    // read whole and checked before the head goes out, so a mismatch is a
    // clean 502 rather than a cut connection.
    if let (Some(v), RespFraming::Length(n)) = (verifier.as_mut(), head.framing) {
        if n <= RELAY_BUF as u64 {
            let mut buf = w.take_buf();
            let checked = match relay::read_small_body(&mut conn, n, &mut buf).await {
                Ok(()) => {
                    v.update(&buf);
                    verifier.take().is_some_and(Verifier::matches)
                }
                Err(_) => false,
            };
            if !checked {
                w.give_buf(buf);
                let e = ErrorReply::new(
                    502,
                    ErrorCode::Unavailable,
                    format!(
                        "upstream registry {} sent content that does not match the requested digest",
                        reg.name
                    ),
                );
                eprintln!(
                    "ocirelay[{}]: {} {} -> {}",
                    w.id, req.method, req.target, e.message
                );
                return respond_error(client, out, &e, head_only, will_close).await;
            }
            out.extend_from_slice(&buf);
            w.give_buf(buf);
            if head.keep_alive {
                w.upstreams.release(conn);
            }
            return match send_out(client, out, cfg.timeouts.client_write).await {
                true => after_response(close),
                false => Outcome::Close,
            };
        }
    }
    send_streamed(w, req, conn, &head, client, out, to_client, close, verifier).await
}

/// Bodies up to this size that arrived with their head are sent with it.
const SMALL_BODY: u64 = 64 * 1024;

/// Most bytes of a manifest read to answer a HEAD (containerd's own limit).
const MAX_MANIFEST: u64 = 4 << 20;

/// Answers a manifest HEAD from a GET: the upstream's status and headers,
/// the length and digest measured here, no body.
async fn manifest_head_via_get<S: ClientSink>(
    w: &Worker,
    get: Fetch<'_>,
    registry: &str,
    client: &mut S,
    out: &mut Vec<u8>,
    will_close: bool,
) -> Outcome {
    let (mut conn, head, _) = match fetch(w, get).await {
        Ok(r) => r,
        Err(e) => return respond_error(client, out, &e.reply(registry), true, will_close).await,
    };
    // The header ranges point into the connection's buffer: copy what is
    // forwarded before the head is consumed.
    out.clear();
    write_status(out, head.status);
    for (name, value) in head.headers(&conn) {
        let measured = name_eq(name, "content-length") || name_eq(name, "docker-content-digest");
        if !measured && forwarded_response_header(name) {
            write_header(out, name, value);
        }
    }
    conn.consume(head.head_len);
    let mut body = relay::Collect::new(MAX_MANIFEST as usize);
    let mut buf = w.take_buf();
    let decoded = ClientFraming::for_client(head.framing, 0);
    let timeout = w.cfg.timeouts.client_write;
    let r = relay::relay_body(
        &mut conn,
        head.framing,
        &mut body,
        timeout,
        None,
        decoded,
        &mut buf,
    )
    .await;
    w.give_buf(buf);
    match r {
        Ok(done) => {
            if done.reusable && head.keep_alive {
                w.upstreams.release(conn);
            }
        }
        Err(_) => {
            let e = ErrorReply::new(
                502,
                ErrorCode::Unavailable,
                format!("upstream registry {registry} sent no complete manifest of at most 4 MiB"),
            );
            return respond_error(client, out, &e, true, will_close).await;
        }
    }
    let body = body.into_inner();
    finish_measured(
        out,
        body.len() as u64,
        &relay::sha256_digest(&body),
        will_close,
    );
    match send_out(client, out, w.cfg.timeouts.client_write).await {
        true => after_response(will_close),
        false => Outcome::Close,
    }
}

/// Ends a measured HEAD answer: length, digest, blank line.
fn finish_measured(out: &mut Vec<u8>, len: u64, digest: &str, close: bool) {
    crate::wire::http::response::write_content_length(out, len);
    write_header(out, "Docker-Content-Digest", digest.as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Ends a response head in `out`: body framing, `Connection: close` when the
/// connection ends after this response, and the blank line.
pub fn end_head(out: &mut Vec<u8>, framing: RespFraming, to_client: ClientFraming, close: bool) {
    to_client.write_headers(framing, out);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends what `out` holds (a head, maybe a small body); false if the client
/// is gone.
async fn send_out<S: AsyncWriteRent>(client: &mut S, out: &mut Vec<u8>, limit: Duration) -> bool {
    match relay::write_client(client, std::mem::take(out), limit).await {
        Ok(b) => {
            *out = b;
            true
        }
        Err(_) => false,
    }
}

fn after_response(close: bool) -> Outcome {
    if close {
        Outcome::Close
    } else {
        Outcome::KeepAlive
    }
}

/// Sends the finished head in `out`, then streams the upstream body after
/// it. The upstream connection goes back to the pool only if its body ended
/// cleanly; a failure once the head is out resets the client connection,
/// the only honest signal left.
#[allow(clippy::too_many_arguments)]
pub async fn send_streamed<S: ClientSink>(
    w: &Worker,
    req: &RequestHead<'_>,
    mut conn: Conn,
    head: &ResponseHead,
    client: &mut S,
    out: &mut Vec<u8>,
    to_client: ClientFraming,
    close: bool,
    verifier: Option<Verifier>,
) -> Outcome {
    let limit = w.cfg.timeouts.client_write;
    // A small body (a manifest by tag, a token) goes out in the same write
    // as its head: one TLS record, one syscall. Upstreams often send the
    // body apart from the head (a record and a segment of its own): then
    // it is gathered behind the head in `out` as it comes.
    if let RespFraming::Length(n) = head.framing {
        if n <= SMALL_BODY && verifier.is_none() {
            let n = n as usize;
            let mut got = 0;
            loop {
                let take = conn.buffered().len().min(n - got);
                out.extend_from_slice(&conn.buffered()[..take]);
                conn.consume(take);
                got += take;
                if got == n {
                    break;
                }
                let e = match conn.fill().await {
                    Ok(0) => "upstream closed before the end of the body".to_string(),
                    Ok(_) => continue,
                    Err(e) => e.to_string(),
                };
                // What a streamed relay does: the head and the bytes that
                // came, then a reset.
                let _ = send_out(client, out, limit).await;
                eprintln!(
                    "ocirelay[{}]: {} {} body aborted: upstream body: {e}",
                    w.id, req.method, req.target
                );
                return Outcome::Abort;
            }
            if head.keep_alive {
                w.upstreams.release(conn);
            }
            return match send_out(client, out, limit).await {
                true => after_response(close),
                false => Outcome::Close,
            };
        }
    }
    if !send_out(client, out, limit).await {
        return Outcome::Close;
    }
    let mut buf = w.take_buf();
    let result = relay::relay_body(
        &mut conn,
        head.framing,
        client,
        limit,
        verifier,
        to_client,
        &mut buf,
    )
    .await;
    w.give_buf(buf);
    match result {
        Ok(done) => {
            if done.reusable && head.keep_alive {
                w.upstreams.release(conn);
            }
            after_response(close)
        }
        Err(e) => {
            eprintln!(
                "ocirelay[{}]: {} {} body aborted: {e}",
                w.id, req.method, req.target
            );
            Outcome::Abort
        }
    }
}

/// Rewrites an upstream challenge for the client and learns its realm.
fn rewrite_challenge(
    w: &Worker,
    reg_index: usize,
    value: &[u8],
    target: Option<&Target<'_>>,
    req: &RequestHead<'_>,
    cx: &ClientCtx,
    out: &mut Vec<u8>,
) {
    let Some(ch) = challenge::parse_challenge(value) else {
        return; // unparseable: dropping it beats leaking an upstream host
    };
    if !ch.is_bearer() {
        // Basic and others carry no URL; the client answers us and we
        // forward its credentials.
        write_header(out, "WWW-Authenticate", value);
        return;
    }
    if let Some((url, service)) = challenge::bearer_realm(&ch) {
        if url.origin.scheme == Scheme::Https || w.cfg.debug {
            w.learn_realm(reg_index, Realm { url, service });
        }
    }
    let mut realm = cx.base_url(w, req);
    realm.push_str(&token_path(w, reg_index));
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
pub fn token_path(w: &Worker, reg_index: usize) -> String {
    if reg_index == w.cfg.default_registry() {
        "/token".to_string()
    } else {
        format!("/token/{}", w.cfg.registries[reg_index].name)
    }
}

/// Appends the allowed parameters of the client's query to `path`, verbatim.
fn with_query(mut path: String, query: Option<&str>, allowed: &[&str]) -> String {
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
