//! A registry API request (`/v2/...`), as the phases it goes through:
//!
//! ```text
//! target   which registry, and the repository's upstream name   (route/)
//! admit    may this client have it                               (gate/)
//! plan     the upstream path, forwarded headers, digest to check
//! lookup   the cache: hit, follow, or lead a download            (cached.rs, cache/)
//!          a miss asks the shared tier first; upload after       (shared.rs, cache::s3)
//! fetch    upstream pool -> exchange, redirects followed         (fetch.rs)
//! head     the response head rewritten for the client            (head.rs)
//! body     relayed through bounded buffers and taps              (body.rs, relay/)
//! respond  keep-alive, close or reset                            (downstream::Outcome)
//! ```
//!
//! Each phase is a plain function; errors become a reply in one place
//! ([`registry_request`]), and what happened is written into the
//! request's [`RequestSummary`].

pub mod body;
pub mod cached;
pub mod fetch;
pub mod head;
pub mod shared;
pub mod upstream_auth;

use std::time::Instant;

use monoio::io::AsyncReadRent;

use crate::cache::access::Who;
use crate::cache::manifests::{TagRecord, Tags};
use crate::cache::Cache;
use crate::config::RegistryId;
use crate::downstream::{ClientCtx, Outcome, Reply};
use crate::error::Error;
use crate::gate;
use crate::ops::summary::{CacheStatus, RequestSummary};
use crate::relay::tap::Capture;
use crate::relay::BodyTap;
use crate::relay::{self, ClientSink, Collect};
use crate::route::classify::Route;
use crate::route::registry::{self, Hints, Target};
use crate::wire::digest::{sha256_digest, Verifier};
use crate::wire::http::{name_eq, ClientFraming, RequestHead, RespFraming};
use crate::wire::method::Method;
use crate::wire::names::{Digest, Reference};
use crate::wire::oci::{ErrorCode, ErrorReply};
use crate::wire::url::Url;
use crate::worker::Worker;
use cached::Looked;
use fetch::{fetch, Fetch, Fetched};

/// Most bytes of a manifest read to answer a HEAD (containerd's own limit).
const MAX_MANIFEST: u64 = 4 << 20;

/// Handles a `/v2/...` registry request end to end.
#[allow(clippy::too_many_arguments)]
pub async fn registry_request<'a, S: AsyncReadRent + ClientSink>(
    w: &'a Worker,
    req: &RequestHead<'a>,
    route: &Route<'a>,
    query: Option<&'a str>,
    client: &mut S,
    reply: &mut Reply<'_>,
    cx: &ClientCtx,
    summary: &mut RequestSummary<'a>,
) -> Outcome {
    // ---- target ----
    let (target, reg) = match pick_target(w, req, route, query) {
        Ok(t) => t,
        Err(e) => return reply.error(client, &e).await,
    };
    let registry_name = w.cfg.registry(reg).name.as_str();
    summary.registry = Some(reg);
    summary.repository = target.as_ref().map(|t| t.client_repo);
    // ---- admit: mirror authentication (gate/auth) ----
    let principal = match &w.cfg.auth {
        Some(auth) => {
            let ask = gate::auth::Ask {
                registry: registry_name,
                repo: target
                    .as_ref()
                    .map(|t| (t.client_repo, t.upstream_repo.as_ref())),
            };
            match gate::auth::admit(auth, req.header("authorization"), &ask) {
                Ok(p) => {
                    summary.user = p.name();
                    Some(p)
                }
                Err(why) => {
                    let scope = target.as_ref().map(|t| t.client_repo);
                    let challenge = challenge_for(w, reg, scope, req, cx);
                    return send_challenge(client, reply, &challenge, &why.reply()).await;
                }
            }
        }
        None => None,
    };
    if let (Some(_), Route::Ping) = (&principal, route) {
        // Logged in (or anonymous access on): the mirror answers for
        // itself; the upstream is asked only with its own identity.
        return ping_ok(client, reply).await;
    }
    // ---- admit: the allow and deny lists (gate/) ----
    if let Some(t) = &target {
        if let Err(refusal) = gate::rules::admit(&w.cfg, reg, &t.upstream_repo) {
            let what = format!("repository {registry_name}/{}", t.upstream_repo);
            return reply.error(client, &refusal.reply(&what)).await;
        }
    }
    // ---- plan ----
    let mut plan = plan(w, req, route, query, target.as_ref(), reg);
    // With mirror authentication the client's credentials are the
    // mirror's, never the upstream's: the mirror's own identity goes.
    let mirror_identity = match (&principal, &target) {
        (Some(_), Some(t)) => upstream_auth::mirror_authorization(w, reg, &t.upstream_repo).await,
        _ => None,
    };
    if principal.is_some() {
        plan.fetch.authorization = mirror_identity.as_deref();
    }
    // ---- lookup ----
    let who = target.as_ref().map(|t| {
        Who::new(
            registry_name,
            t.upstream_repo.as_ref(),
            plan.fetch.authorization,
        )
    });
    let cache = w.cache.as_ref().filter(|_| cached::is_cacheable(req));
    let looked = match (cache, *route, who) {
        (Some(cache), Route::Blob { digest, .. }, Some(who)) => {
            cached::lookup(
                w,
                cache,
                &digest,
                who,
                &plan.fetch,
                req,
                client,
                reply,
                summary,
            )
            .await
        }
        (Some(cache), Route::Manifest { reference, .. }, Some(who)) => {
            cached::lookup_manifest(
                w,
                cache,
                reference,
                who,
                &plan.fetch,
                req,
                client,
                reply,
                summary,
            )
            .await
        }
        _ => Looked::Relay,
    };
    // A manifest claim is held until this request ends: those waiting for
    // it then find what it stored.
    let (leading, _manifest_claim) = match looked {
        Looked::Answered(o) => return o,
        Looked::Lead(l) => (Some(l), None),
        Looked::LeadManifest(claim) => (None, Some(claim)),
        Looked::Relay => (None, None),
    };
    // ---- credentials: the client's own, or the operator's account for an
    // anonymous client's pull of public content (upstream_auth.rs) ----
    let operator = upstream_auth::operator_for(w, reg, route, req.method, who, &plan.fetch).await;
    let mut upstream = plan.fetch;
    if let Some(op) = operator.as_deref() {
        upstream.authorization = Some(op);
    }
    // What the upstream's answer teaches is about the repository only, not
    // the client, when the operator asked (see `Who::via_operator`).
    let who = who.map(|x| Who {
        via_operator: operator.is_some(),
        ..x
    });
    // ---- fetch ----
    // Kept only for a manifest HEAD, which may have to be answered by a GET.
    let get_instead = plan.head_may_need_get.then(|| Fetch {
        method: Method::Get,
        ..upstream.clone()
    });
    // Kept by a request that leads a download, to finish it if its own
    // client goes away (see `finish_download`).
    let resume = leading.as_ref().map(|_| upstream.clone());
    let started = Instant::now();
    let fetched = fetch(w, upstream).await;
    summary.upstream_time = Some(started.elapsed());
    let granted = fetched.as_ref().is_ok_and(Fetched::granted);
    let Fetched {
        mut conn,
        head,
        url: final_url,
        ..
    } = match fetched {
        Ok(f) => f,
        Err(e) => {
            if let (Some(l), Some(cache)) = (leading, cache) {
                l.abandon(cache);
            }
            let scope = target.as_ref().map(|t| t.client_repo);
            if let Some(o) = offline_challenge(w, reg, scope, route, req, cx, client, reply).await {
                return o;
            }
            let e = Error::from(e);
            let r = e.reply(registry_name);
            summary.error = Some(e);
            return reply.error(client, &r).await;
        }
    };
    summary.upstream_status = Some(head.status);
    if let (Some(_), 401) = (&principal, head.status) {
        // The upstream refuses the mirror's own identity: a challenge would
        // send the client to log in to the mirror again, to no end.
        if let Some(t) = &target {
            w.forget_operator_token(reg, &t.upstream_repo);
        }
        let e = ErrorReply::new(
            403,
            ErrorCode::Denied,
            format!(
                "upstream registry {registry_name} refuses this mirror's own upstream identity"
            ),
        );
        return reply.error(client, &e).await;
    }
    // ---- admit: a blob over `max_blob_bytes` goes no further than its
    // head (gate/); nothing of it is sent or stored ----
    let limited = gate::rules::limits_blobs(&w.cfg, reg);
    if let (Route::Blob { digest, .. }, 200 | 206, true) = (route, head.status, limited) {
        let size = gate::rules::blob_size(
            head.header(&conn, "content-range"),
            head.header(&conn, "content-length"),
        );
        if let Some(Err(refusal)) = size.map(|n| gate::rules::admit_blob(&w.cfg, reg, n)) {
            drop(conn); // its body is not read: the connection cannot be reused
            if let (Some(l), Some(cache)) = (leading, cache) {
                l.abandon(cache);
            }
            let r = refusal.reply(&format!("blob {}", digest.as_str()));
            return reply.error(client, &r).await;
        }
    }
    if let (Route::Ping, 429 | 500..=599) = (route, head.status) {
        if let Some(o) = offline_challenge(w, reg, None, route, req, cx, client, reply).await {
            return o;
        }
    }
    // What the answer teaches the cache about access: a 200 means this
    // client may read this repository (and the repository holds the digest).
    // Only what the registry itself granted counts (see `Fetched::granted`);
    // a refusal to an anonymous request withdraws anonymous pullability.
    // Manifests and blobs only: a registry may list tags or referrers more
    // openly than it serves content.
    let content = matches!(route, Route::Manifest { .. } | Route::Blob { .. });
    let access = w.access.as_ref().filter(|_| cached::is_cacheable(req));
    if let (Some(access), Some(who), true) = (access, who, content) {
        if granted {
            access.learn_ok(who, plan.verify.as_ref().map(|d| d.as_str()));
        } else if matches!(head.status, 401 | 403 | 404) {
            access.learn_refused(who);
        }
    }
    if let (Some(_), Some(who), 401) = (&operator, who, head.status) {
        w.forget_operator_token(reg, who.repo);
    }
    // containerd needs Content-Length and Docker-Content-Digest on a manifest
    // HEAD (or it falls back to GET itself); some registries (gcr) leave them
    // out. Then the manifest is fetched and measured here instead.
    if let Some(get) = get_instead {
        let incomplete = head.header(&conn, "content-length").is_none()
            || head.header(&conn, "docker-content-digest").is_none();
        if head.status == 200 && incomplete {
            drop(conn);
            return manifest_head_via_get(w, get, registry_name, client, reply, summary).await;
        }
    }
    // ---- head ----
    let blob_digest = match *route {
        Route::Blob { digest, .. } if matches!(head.status, 200 | 206) => Some(digest.as_str()),
        _ => None,
    };
    let from_registry = final_url.origin == w.cfg.registry(reg).upstream;
    let rewrites = head::Rewrites {
        reg,
        target: target.as_ref(),
        blob_digest,
        from_registry,
    };
    head::write_head(w, &rewrites, (&conn, &head), req, cx, reply);
    let to_client = reply.end_relayed(head.framing);
    // A manifest answered whole is stored (by digest, and its tag recorded):
    // its type and digest are copied before the head's bytes go.
    let manifest = match (cache, *route) {
        (Some(_), Route::Manifest { reference, .. })
            if head.status == 200 && !reply.head_only() =>
        {
            let text = |n| {
                head.header(&conn, n)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_string)
            };
            text("content-type").map(|ct| (reference, ct, text("docker-content-digest")))
        }
        _ => None,
    };
    conn.consume(head.head_len);
    // ---- body ----
    // A body is stored only when it is a plain 200 with a length, and only
    // once its digest matched (checked whatever `verify_digests` says).
    let mut store = match (leading, cache) {
        (Some(l), Some(cache)) => match head.framing {
            RespFraming::Length(n) if head.status == 200 => match l.start(n) {
                Ok(tee) => Some((l, tee, cache)),
                Err(_) => {
                    l.abandon(cache);
                    None
                }
            },
            _ => {
                l.abandon(cache);
                None
            }
        },
        _ => None,
    };
    let check = (w.cfg.limits.verify_digests || store.is_some())
        && head.status == 200
        && !plan.ranged
        && !reply.head_only();
    let mut tap = plan
        .verify
        .filter(|_| check)
        .and_then(|d| Verifier::new(&d));
    if tap.is_none() {
        // An algorithm ocirelay cannot check: relay it, never store it.
        if let Some((l, tee, cache)) = store.take() {
            tee.finish(false, &l.dest, &cache.inflight, &l.key).await;
        }
    }
    if store.is_some() {
        summary.cache = CacheStatus::Miss;
    }
    // A manifest by tag that fits the relay buffer is read whole, stored
    // and recorded when it matches the digest the upstream named, and only
    // then sent: the next request for the tag, on any worker, finds it.
    if let (Some(cache), Some((Reference::Tag(tag), ct, Some(dcd))), Some(who)) =
        (cache, &manifest, who)
    {
        if let RespFraming::Length(n) = head.framing {
            if n <= relay::RELAY_BUF as u64 {
                let mut buf = w.bufs.take();
                if let Err(e) = relay::read_small_body(&mut conn, n, &mut buf).await {
                    w.bufs.give(buf);
                    let e = Error::from(e);
                    let r = e.reply(registry_name);
                    summary.error = Some(e);
                    return reply.error(client, &r).await;
                }
                summary.pulled += n;
                if let Ok(d) = Digest::parse(dcd) {
                    if cache.store_manifest(&d, ct, &buf, true) {
                        if cached::accepts_lists(req.headers_named("accept")) {
                            record_tag(cache, who, tag.as_str(), dcd, ct, buf.len());
                        }
                        summary.cache = CacheStatus::Miss;
                        summary.stored = n;
                    }
                }
                reply.append_relayed(&buf);
                w.bufs.give(buf);
                if head.keep_alive {
                    w.upstreams.release(conn);
                }
                return match reply.send(client, w.cfg.timeouts.client_write).await {
                    true => reply.outcome(),
                    false => Outcome::Close,
                };
            }
        }
    }
    // A small body named by its digest is read whole and checked before
    // the head goes out, so a mismatch is a clean error, not a cut.
    if let (Some(_), RespFraming::Length(n)) = (&tap, head.framing) {
        if n <= relay::RELAY_BUF as u64 {
            let body = match body::read_verified(w, &mut conn, n, &mut tap).await {
                Ok(b) => {
                    summary.pulled += n;
                    b
                }
                Err(e) => {
                    if let Some((l, tee, cache)) = store {
                        tee.finish(false, &l.dest, &cache.inflight, &l.key).await;
                        share_blob(cache, &l, who, false);
                    }
                    let r = e.reply(registry_name);
                    summary.error = Some(e);
                    return reply.error(client, &r).await;
                }
            };
            if let Some((l, mut tee, cache)) = store {
                tee.data(&body);
                let stored = tee.finish(true, &l.dest, &cache.inflight, &l.key).await;
                learn_verified(cache, who, stored, plan.verify.as_ref());
                share_blob(cache, &l, who, stored);
                if stored {
                    summary.stored = n;
                }
            }
            if let (Some(cache), Some((Reference::Digest(d), ct, _))) = (cache, &manifest) {
                if cache.store_manifest(d, ct, &body, true) {
                    summary.cache = CacheStatus::Miss;
                    summary.stored = n;
                    if let Some(who) = who {
                        share_note(cache, who, d);
                    }
                }
            }
            reply.append_relayed(&body);
            w.bufs.give(body);
            if head.keep_alive {
                w.upstreams.release(conn);
            }
            return match reply.send(client, w.cfg.timeouts.client_write).await {
                true => reply.outcome(),
                false => Outcome::Close,
            };
        }
    }
    if let Some((l, tee, cache)) = store {
        let mut pair = (tap, tee);
        let outcome =
            body::stream(w, conn, &head, client, reply, to_client, &mut pair, summary).await;
        let mut complete = outcome != Outcome::Abort && summary.error.is_none();
        let client_gone = summary
            .error
            .as_ref()
            .is_some_and(|e| e.side == crate::error::Side::Downstream);
        if let (true, Some(resume)) = (client_gone, resume) {
            complete = finish_download(w, resume, &mut pair, l.fill.total()).await;
        }
        let stored = pair
            .1
            .finish(complete, &l.dest, &cache.inflight, &l.key)
            .await;
        learn_verified(cache, who, stored, plan.verify.as_ref());
        share_blob(cache, &l, who, stored);
        if stored {
            summary.stored = l.fill.total();
        }
        return outcome;
    }
    if let (Some(cache), Some((Reference::Tag(tag), ct, Some(dcd))), Some(who)) =
        (cache, &manifest, who)
    {
        // A manifest by tag: kept as it passes, stored if it matches the
        // digest the upstream named, and the tag recorded.
        let mut seen = (tap, Capture::new(MAX_MANIFEST as usize));
        let outcome =
            body::stream(w, conn, &head, client, reply, to_client, &mut seen, summary).await;
        let complete = outcome != Outcome::Abort && summary.error.is_none();
        if let (true, Some(bytes), Ok(d)) = (complete, seen.1.whole(), Digest::parse(dcd)) {
            if cache.store_manifest(&d, ct, bytes, true) {
                if cached::accepts_lists(req.headers_named("accept")) {
                    record_tag(cache, who, tag.as_str(), dcd, ct, bytes.len());
                }
                summary.cache = CacheStatus::Miss;
                summary.stored = bytes.len() as u64;
            }
        }
        return outcome;
    }
    body::stream(w, conn, &head, client, reply, to_client, &mut tap, summary).await
}

/// The target phase: the registry, and for repository routes the client's
/// and the upstream's names of the repository.
fn pick_target<'a>(
    w: &Worker,
    req: &RequestHead<'a>,
    route: &Route<'a>,
    query: Option<&'a str>,
) -> Result<(Option<Target<'a>>, RegistryId), ErrorReply> {
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
    picked.map_err(|e| e.reply(cfg))
}

/// What the plan phase decided.
struct Plan<'a> {
    fetch: Fetch<'a>,
    /// The digest the body must match, if it is named by one.
    verify: Option<Digest<'a>>,
    /// The client asked for a range: the body is a part, not checkable.
    ranged: bool,
    /// A manifest HEAD: answered by a GET if the upstream's HEAD lacks the
    /// length or digest.
    head_may_need_get: bool,
}

/// The plan phase: the upstream path, the headers forwarded, the digest to
/// check.
fn plan<'a>(
    w: &Worker,
    req: &RequestHead<'a>,
    route: &Route<'a>,
    query: Option<&str>,
    target: Option<&Target<'a>>,
    reg: RegistryId,
) -> Plan<'a> {
    let name = target.map_or("", |t| t.upstream_repo.as_ref());
    let (path, verify): (String, Option<Digest<'a>>) = match *route {
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
            head::with_query(format!("/v2/{name}/tags/list"), query, &["n", "last"]),
            None,
        ),
        Route::Referrers { digest, .. } => (
            head::with_query(
                format!("/v2/{name}/referrers/{}", digest.as_str()),
                query,
                &["artifactType"],
            ),
            None,
        ),
        _ => ("/v2/".to_string(), None),
    };
    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(12);
    let mut authorization = None;
    let mut ranged = false;
    for h in req.headers {
        if name_eq(h.name, "authorization") {
            authorization = Some(h.value);
        } else if head::forwarded_request_header(h.name) {
            ranged |= name_eq(h.name, "range");
            headers.push((h.name, h.value));
        }
    }
    let head_only = req.method == Method::Head;
    Plan {
        fetch: Fetch {
            method: if head_only { Method::Head } else { Method::Get },
            url: Url {
                origin: w.cfg.registry(reg).upstream.clone(),
                path_and_query: path,
            },
            registry: reg,
            headers,
            authorization,
            body: None,
        },
        verify,
        ranged,
        head_may_need_get: head_only && matches!(route, Route::Manifest { .. }),
    }
}

/// Answers a manifest HEAD from a GET: the upstream's status and headers,
/// the length and digest measured here, no body.
async fn manifest_head_via_get<S: ClientSink>(
    w: &Worker,
    get: Fetch<'_>,
    registry: &str,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
) -> Outcome {
    let Fetched { mut conn, head, .. } = match fetch(w, get).await {
        Ok(r) => r,
        Err(e) => {
            let e = Error::from(e);
            let r = e.reply(registry);
            summary.error = Some(e);
            return reply.error(client, &r).await;
        }
    };
    summary.upstream_status = Some(head.status);
    // The header ranges point into the connection's buffer: copy what is
    // forwarded before the head is consumed.
    reply.status(head.status);
    for (name, value) in head.headers(&conn) {
        let measured = name_eq(name, "content-length") || name_eq(name, "docker-content-digest");
        if !measured && head::forwarded_response_header(name) {
            reply.header(name, value);
        }
    }
    conn.consume(head.head_len);
    let mut body = Collect::new(MAX_MANIFEST as usize);
    let mut buf = w.bufs.take();
    // Decoded as for an HTTP/1.0 client: the bytes, without chunk framing.
    let decoded = ClientFraming::for_client(head.framing, 0);
    let r = relay::relay_body(
        &mut conn,
        head.framing,
        &mut body,
        &relay::Pace::fixed(w.cfg.timeouts.client_write),
        &mut relay::tap::NoTap,
        decoded,
        &mut buf,
    )
    .await;
    w.bufs.give(buf);
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
            return reply.error(client, &e).await;
        }
    }
    let body = body.into_inner();
    summary.pulled += body.len() as u64;
    reply.header("Docker-Content-Digest", sha256_digest(&body).as_bytes());
    reply.end_length(body.len() as u64);
    match reply.send(client, w.cfg.timeouts.client_write).await {
        true => reply.outcome(),
        false => Outcome::Close,
    }
}

/// Records that `tag` points at the stored manifest `digest`, and that
/// `who`'s repository holds it.
fn record_tag(cache: &Cache, who: Who<'_>, tag: &str, digest: &str, media_type: &str, size: usize) {
    let rec = TagRecord {
        digest: digest.to_string(),
        media_type: media_type.to_string(),
        size: size as u64,
        checked: std::time::SystemTime::now(),
    };
    let name = Tags::name(who.registry, who.repo, tag);
    if let Some(tier) = &cache.tier {
        tier.tag_confirmed(&name, &rec);
    }
    cache.tags.put(&name, rec);
    cache.access.learn_ok(who, Some(digest));
    if let Ok(d) = Digest::parse(digest) {
        share_note(cache, who, &d);
    }
}

/// Tells the shared tier what this node learnt anonymously: `who`'s
/// repository holds `digest` and was anonymously pullable (so that another
/// node can serve it while the upstream is down). Nothing learnt with
/// credentials leaves the node (see `Access::shared_note`).
fn share_note(cache: &Cache, who: Who<'_>, digest: &Digest<'_>) {
    if let (Some(tier), Some((open, secs))) =
        (&cache.tier, cache.access.shared_note(who, digest.as_str()))
    {
        tier.note_link(who.registry, who.repo, digest, open, secs);
    }
}

/// A download this request led has ended: a verified blob goes to the
/// shared tier (with the lease given back after), a failed one gives the
/// lease back now.
fn share_blob(cache: &Cache, l: &crate::cache::Leading, who: Option<Who<'_>>, stored: bool) {
    let (Some(tier), Ok(d)) = (&cache.tier, Digest::parse(&l.key)) else {
        return;
    };
    if stored {
        tier.stored_blob(&d, l.dest.clone(), l.fill.total(), l.lease);
        if let Some(who) = who {
            share_note(cache, who, &d);
        }
    } else if l.lease {
        tier.unlease(&d);
    }
}

/// The upstream cannot answer: with the cache on and `serve_stale`, a
/// request without credentials gets the challenge the upstream would have
/// sent, pointing at ocirelay's own token endpoint, so that clients go on to
/// a token (see `token::offline_token`) and to what the cache holds; a
/// `/v2/` ping with credentials is answered 200.
#[allow(clippy::too_many_arguments)]
async fn offline_challenge<S: ClientSink>(
    w: &Worker,
    reg: RegistryId,
    scope: Option<&str>,
    route: &Route<'_>,
    req: &RequestHead<'_>,
    cx: &ClientCtx,
    client: &mut S,
    reply: &mut Reply<'_>,
) -> Option<Outcome> {
    w.cache.as_ref().filter(|c| c.serve_stale())?;
    if req.header("authorization").is_some() {
        if !matches!(route, Route::Ping) {
            return None;
        }
        return Some(ping_ok(client, reply).await);
    }
    let challenge = challenge_for(w, reg, scope, req, cx);
    let e = ErrorReply::new(401, ErrorCode::Unauthorized, "authentication required");
    crate::event!(
        crate::ops::log::Level::Warn,
        Some(w.id),
        "upstream {} unreachable: answering the challenge from the cache",
        w.cfg.registry(reg).name
    );
    Some(send_challenge(client, reply, &challenge, &e).await)
}

/// The `WWW-Authenticate` value that sends a client to ocirelay's own
/// token endpoint for `reg` (the realm built as for a rewritten upstream
/// challenge), for `scope`'s repository if any.
fn challenge_for(
    w: &Worker,
    reg: RegistryId,
    scope: Option<&str>,
    req: &RequestHead<'_>,
    cx: &ClientCtx,
) -> Vec<u8> {
    let service = match w.cfg.auth {
        // The mirror's tokens are the mirror's: named by the registry.
        Some(_) => w.cfg.registry(reg).name.clone(),
        None => w
            .realm(reg)
            .and_then(|r| r.service)
            .unwrap_or_else(|| w.cfg.registry(reg).name.clone()),
    };
    let realm = format!(
        "{}{}",
        cx.base_url(&w.cfg, req.host()),
        head::token_path(w, reg)
    );
    let mut challenge = Vec::with_capacity(64 + realm.len() + service.len());
    challenge.extend_from_slice(b"Bearer realm=");
    crate::wire::challenge::push_quoted(&mut challenge, &realm);
    challenge.extend_from_slice(b",service=");
    crate::wire::challenge::push_quoted(&mut challenge, &service);
    if let Some(repo) = scope {
        challenge.extend_from_slice(b",scope=");
        crate::wire::challenge::push_quoted(&mut challenge, &format!("repository:{repo}:pull"));
    }
    challenge
}

/// `/v2/` answered by ocirelay itself: the API is there, the client may
/// use it.
async fn ping_ok<S: ClientSink>(client: &mut S, reply: &mut Reply<'_>) -> Outcome {
    let headers: &[(&str, &[u8])] = &[
        ("Content-Type", b"application/json"),
        ("Docker-Distribution-Api-Version", b"registry/2.0"),
    ];
    reply.small(client, 200, headers, b"{}").await
}

/// A 401 with `challenge` and the JSON error `e`.
async fn send_challenge<S: ClientSink>(
    client: &mut S,
    reply: &mut Reply<'_>,
    challenge: &[u8],
    e: &ErrorReply,
) -> Outcome {
    reply
        .small(
            client,
            401,
            &[
                ("Content-Type", b"application/json"),
                ("Docker-Distribution-Api-Version", b"registry/2.0"),
                ("WWW-Authenticate", challenge),
            ],
            &e.body(),
        )
        .await
}

/// A body that matched the digest it was asked for under `who`'s
/// repository shows that the repository holds it and that `who` may read it,
/// whatever redirects led there (quay.io sends blobs with a 302, which
/// `Fetched::granted` does not take on its own).
fn learn_verified(cache: &Cache, who: Option<Who<'_>>, stored: bool, digest: Option<&Digest<'_>>) {
    if let (true, Some(who), Some(d)) = (stored, who, digest) {
        cache.access.learn_ok(who, Some(d.as_str()));
    }
}

/// The client leading a download went away: the download goes on without
/// it, so that the requests following it (and the next ones) are not cut.
/// The rest is asked for with a `Range` from the first byte not yet seen by
/// the taps, whose digest state already covers everything before it; the
/// whole body is still checked at the end. False if it cannot be finished.
async fn finish_download(
    w: &Worker,
    mut resume: Fetch<'_>,
    pair: &mut (Option<Verifier>, crate::cache::tee::Tee),
    total: u64,
) -> bool {
    pair.1.flush().await;
    let Some(from) = pair.1.position() else {
        return false; // the tee failed (disk full): nothing to finish
    };
    if from >= total {
        return true; // everything came; only the client's last write failed
    }
    let range = format!("bytes={from}-");
    resume.headers.retain(|(n, _)| !name_eq(n, "range"));
    resume.headers.push(("Range", range.as_bytes()));
    let Ok(Fetched { mut conn, head, .. }) = fetch(w, resume).await else {
        return false;
    };
    let expected = format!("bytes {from}-{}/{total}", total - 1);
    let right_part = head.status == 206
        && head
            .header(&conn, "content-range")
            .map(|v| v == expected.as_bytes())
            == Some(true)
        && head.framing == RespFraming::Length(total - from);
    if !right_part {
        return false;
    }
    conn.consume(head.head_len);
    let mut sink = Collect::discard();
    let mut buf = w.bufs.take();
    let r = relay::relay_body(
        &mut conn,
        head.framing,
        &mut sink,
        &relay::Pace::fixed(w.cfg.timeouts.upstream_read),
        pair,
        ClientFraming::Same,
        &mut buf,
    )
    .await;
    w.bufs.give(buf);
    r.is_ok()
}
