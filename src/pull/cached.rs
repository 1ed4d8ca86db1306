//! The lookup phase: a blob the cache has (or is downloading) is answered
//! from disk, after the access check; a blob nobody has is led: fetched
//! once, stored while it streams. See `cache/` for the store itself.

use std::sync::Arc;

use crate::cache::access::Who;
use crate::cache::inflight::Fill;
use crate::cache::manifests::{self, TagRecord, Tags};
use crate::cache::{self, serve, Cache, Leading, Lookup};
use crate::downstream::{Outcome, Reply};
use crate::error::Error;
use crate::ops::log::Level;
use crate::ops::summary::{CacheStatus, RequestSummary};
use crate::relay::{ClientSink, Pace};
use crate::wire::digest::Verifier;
use crate::wire::http::name_eq;
use crate::wire::http::RequestHead;
use crate::wire::method::Method;
use crate::wire::names::{Digest, Reference};
use crate::wire::oci::{ErrorCode, ErrorReply, FULL_ACCEPT};
use crate::worker::Worker;

use super::fetch::{fetch, release_after, Fetch, Fetched};
use super::shared;

/// What the lookup phase decided.
pub enum Looked {
    /// Answered from the cache.
    Answered(Outcome),
    /// Fetch upstream, and store what comes (this request leads).
    Lead(Leading),
    /// Fetch this manifest upstream: concurrent requests for it wait for
    /// this one while the claim is held (see [`coalesce`]).
    LeadManifest(ManifestFetch),
    /// Fetch upstream as a plain relay.
    Relay,
}

/// The lookup phase for a blob request on `digest` by `who`.
#[allow(clippy::too_many_arguments)]
pub async fn lookup<S: ClientSink>(
    w: &Worker,
    cache: &Arc<Cache>,
    digest: &Digest<'_>,
    who: Who<'_>,
    probe: &Fetch<'_>,
    req: &RequestHead<'_>,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
) -> Looked {
    let range = req.header("range");
    let head_only = req.method == Method::Head;
    // A follower moves at the leader's pace, and the leader's writes to its
    // own client may take `client_write` each: a stall is only longer.
    let stall = w.cfg.timeouts.upstream_read + w.cfg.timeouts.client_write;
    match cache.lookup(digest).await {
        Lookup::Hit {
            path,
            len,
            stale_use,
        } => {
            let want = match range {
                None => None,
                Some(r) => match cache::parse_range(r, len) {
                    Some(r) => Some(r),
                    None => return Looked::Relay, // several ranges, or odd ones
                },
            };
            let Some(how) = allowed(w, cache, who, digest, probe).await else {
                return Looked::Relay;
            };
            if let Some(o) = too_large(w, probe, digest, len, client, reply).await {
                return Looked::Answered(o);
            }
            if let Some(tier) = &cache.tier {
                // Redirect mode: the store sends what it is known to hold.
                if tier.config().redirect && !head_only && tier.holds(digest.as_str()) {
                    return Looked::Answered(
                        shared::redirect_hit(w, tier, digest, how, client, reply, summary).await,
                    );
                }
                // The bucket learns of the use (daily), or gets the object
                // if it lacks it.
                tier.local_hit(digest, path.clone(), len);
            }
            let Ok(file) = monoio::fs::File::open(&path).await else {
                return Looked::Relay; // evicted since the lookup
            };
            summary.cache = status_of(how, CacheStatus::Hit);
            if stale_use {
                // Once an hour per object: the eviction order (cache::evict).
                let _ = crate::sys::touch(&path);
            }
            Looked::Answered(
                send_stored(
                    w, &file, digest, len, want, head_only, client, reply, summary,
                )
                .await,
            )
        }
        Lookup::Follow(fill) => {
            if head_only {
                return Looked::Relay;
            }
            follow(
                w, cache, fill, digest, who, probe, range, client, reply, summary, stall,
            )
            .await
        }
        // Only what can be verified is stored (and so only that is led).
        Lookup::Lead if range.is_none() && !head_only && Verifier::new(digest).is_some() => {
            match cache.lead(digest) {
                // The shared tier before the upstream.
                Ok(l) => match cache.tier.as_ref().filter(|t| t.usable()) {
                    Some(tier) => {
                        shared::blob_miss(
                            w, cache, tier, l, digest, who, probe, client, reply, summary,
                        )
                        .await
                    }
                    None => Looked::Lead(l),
                },
                Err(Some(fill)) => {
                    follow(
                        w, cache, fill, digest, who, probe, None, client, reply, summary, stall,
                    )
                    .await
                }
                Err(None) => Looked::Relay,
            }
        }
        // A range of a blob the disk lacks: from the bucket if it has it.
        Lookup::Lead => {
            let tier = cache.tier.as_ref().filter(|t| t.usable());
            match (tier, range, head_only) {
                (Some(tier), Some(r), false) => shared::blob_range(
                    w, cache, tier, digest, r, who, probe, client, reply, summary,
                )
                .await
                .map_or(Looked::Relay, Looked::Answered),
                _ => Looked::Relay,
            }
        }
    }
}

/// Follows another request's download of the same blob, once the access
/// check passed and the leader has the upstream's answer.
#[allow(clippy::too_many_arguments)]
async fn follow<S: ClientSink>(
    w: &Worker,
    cache: &Arc<Cache>,
    fill: Arc<Fill>,
    digest: &Digest<'_>,
    who: Who<'_>,
    probe: &Fetch<'_>,
    range: Option<&[u8]>,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
    stall: std::time::Duration,
) -> Looked {
    let Some(len) = serve::await_head(&fill, stall).await else {
        return Looked::Relay; // the leader got no body: ask for ourselves
    };
    // A range (containerd resuming) is served from the bytes as they
    // arrive; several ranges, or odd ones, are the upstream's to answer.
    let want = match range {
        None => None,
        Some(r) => match cache::parse_range(r, len) {
            Some(r) => Some(r),
            None => return Looked::Relay,
        },
    };
    if allowed(w, cache, who, digest, probe).await.is_none() {
        return Looked::Relay;
    }
    if let Some(o) = too_large(w, probe, digest, len, client, reply).await {
        return Looked::Answered(o);
    }
    let Ok(file) = fill.file.try_clone().and_then(monoio::fs::File::from_std) else {
        return Looked::Relay;
    };
    summary.cache = CacheStatus::Coalesced;
    write_head(reply, digest, len, want);
    let limit = w.cfg.timeouts.client_write;
    if !reply.send(client, limit).await {
        return Looked::Answered(Outcome::Close);
    }
    let mut buf = w.bufs.take();
    let (from, n) = want.unwrap_or((0, len));
    let r = serve::follow(
        &fill,
        &file,
        (from, from + n),
        client,
        &mut buf,
        &Pace::for_client(client, &w.cfg),
        stall,
    )
    .await;
    w.bufs.give(buf);
    Looked::Answered(match r {
        Ok(()) => {
            summary.from_cache = n;
            reply.outcome()
        }
        Err(e) => {
            summary.error = Some(e.into());
            Outcome::Abort
        }
    })
}

/// The admit step for a blob the cache knows the size of (`max_blob_bytes`,
/// gate/): asked once the client may read it, so that a refusal tells
/// nothing about a blob it could not have had anyway.
pub(super) async fn too_large<S: ClientSink>(
    w: &Worker,
    probe: &Fetch<'_>,
    digest: &Digest<'_>,
    len: u64,
    client: &mut S,
    reply: &mut Reply<'_>,
) -> Option<Outcome> {
    let refusal = crate::gate::rules::admit_blob(&w.cfg, probe.registry, len).err()?;
    let r = refusal.reply(&format!("blob {}", digest.as_str()));
    Some(reply.error(client, &r).await)
}

/// A HEAD for the same resource with the client's credentials and `Accept`,
/// without what would make the upstream's answer partial or conditional
/// (`Range`, `If-*`): the answer is about access, not about a cached copy.
fn head_probe<'a>(probe: &Fetch<'a>) -> Fetch<'a> {
    let mut f = Fetch {
        method: Method::Head,
        ..probe.clone()
    };
    f.headers
        .retain(|(n, _)| name_eq(n, "accept") || name_eq(n, "user-agent"));
    f
}

/// Whether a client's `Accept` takes multi-platform lists: only such a
/// request's answer may become (or replace) a tag's record, or a client
/// that accepts only single manifests would pin every other client to its
/// platform.
pub fn accepts_lists<'a>(mut accept: impl Iterator<Item = &'a [u8]>) -> bool {
    accept.any(|v| {
        let v = String::from_utf8_lossy(v);
        v.contains("application/vnd.oci.image.index.v1+json")
            || v.contains("application/vnd.docker.distribution.manifest.list.v2+json")
    })
}

/// How a request was let in to the cache.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Admitted {
    /// Known from fresh upstream answers, or asked now.
    Fresh,
    /// The upstream could not be asked (down, timing out, rate limiting):
    /// let in on what it last said (anonymously pullable only).
    Stale,
}

/// May `who` have `digest` from the cache? Known from earlier upstream
/// answers, or asked now with a HEAD carrying the client's own credentials
/// (free on Docker Hub; the answer is remembered). `None`: no.
pub(super) async fn allowed(
    w: &Worker,
    cache: &Cache,
    who: Who<'_>,
    digest: &Digest<'_>,
    probe: &Fetch<'_>,
) -> Option<Admitted> {
    if cache.access.allowed(who, digest.as_str()) {
        return Some(Admitted::Fresh);
    }
    let (status, granted) = match fetch(w, head_probe(probe)).await {
        Ok(f) => {
            let granted = f.granted();
            let Fetched { conn, head, .. } = f;
            let status = head.status;
            release_after(w, conn, &head, 0).await;
            (Some(status), granted)
        }
        Err(_) => (None, false),
    };
    match status {
        Some(200) if granted => {
            cache.access.learn_ok(who, Some(digest.as_str()));
            Some(Admitted::Fresh)
        }
        Some(401 | 403 | 404) => {
            cache.access.learn_refused(who);
            None
        }
        None | Some(429 | 500..=599) => (cache.serve_stale()
            && allowed_stale(w, cache, who, digest).await)
            .then_some(Admitted::Stale),
        Some(_) => None,
    }
}

/// [`Access::allowed_stale`](crate::cache::access::Access::allowed_stale),
/// or, when this node never learnt it, what another node told the shared
/// tier (see `Access::shared_note`).
async fn allowed_stale(w: &Worker, cache: &Cache, who: Who<'_>, digest: &Digest<'_>) -> bool {
    if cache.access.allowed_stale(who, digest.as_str()) {
        return true;
    }
    let Some(tier) = cache.tier.as_ref().filter(|t| t.usable()) else {
        return false;
    };
    let Some((open, secs)) = tier
        .link(&w.upstreams, who.registry, who.repo, digest)
        .await
    else {
        return false;
    };
    cache
        .access
        .learn_shared(who.registry, who.repo, digest.as_str(), open, secs);
    cache.access.allowed_stale(who, digest.as_str())
}

/// The cache status of an answer let in as `how`.
pub(super) fn status_of(how: Admitted, fresh: CacheStatus) -> CacheStatus {
    match how {
        Admitted::Fresh => fresh,
        Admitted::Stale => CacheStatus::Stale,
    }
}

/// The head of a blob answered from the cache.
pub(super) fn write_head(
    reply: &mut Reply<'_>,
    digest: &Digest<'_>,
    len: u64,
    range: Option<(u64, u64)>,
) {
    reply.status(if range.is_some() { 206 } else { 200 });
    reply.header("Content-Type", b"application/octet-stream");
    reply.header("Docker-Content-Digest", digest.as_str().as_bytes());
    let out = reply.head_mut();
    out.extend_from_slice(b"Etag: \"");
    out.extend_from_slice(digest.as_str().as_bytes());
    out.extend_from_slice(b"\"\r\n");
    reply.header("Accept-Ranges", b"bytes");
    reply.header("Docker-Distribution-Api-Version", b"registry/2.0");
    match range {
        Some((start, n)) => {
            let v = format!("bytes {start}-{}/{len}", start + n - 1);
            reply.header("Content-Range", v.as_bytes());
            reply.end_length(n);
        }
        None => reply.end_length(len),
    }
}

/// Answers from a complete stored object: the whole, or one range.
#[allow(clippy::too_many_arguments)]
async fn send_stored<S: ClientSink>(
    w: &Worker,
    file: &monoio::fs::File,
    digest: &Digest<'_>,
    len: u64,
    range: Option<(u64, u64)>,
    head_only: bool,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
) -> Outcome {
    write_head(reply, digest, len, range);
    let limit = w.cfg.timeouts.client_write;
    if !reply.send(client, limit).await {
        return Outcome::Close;
    }
    if head_only {
        return reply.outcome();
    }
    let (offset, n) = range.unwrap_or((0, len));
    let mut buf = w.bufs.take();
    let r = serve::send_range(
        file,
        offset,
        n,
        client,
        &mut buf,
        &Pace::for_client(client, &w.cfg),
    )
    .await;
    w.bufs.give(buf);
    match r {
        Ok(()) => {
            summary.from_cache = n;
            reply.outcome()
        }
        Err(e) => {
            summary.error = Some(Error::from(e));
            Outcome::Abort
        }
    }
}

/// Whether a request names a blob the cache can answer or store: GET or
/// HEAD of `/v2/<name>/blobs/<digest>`.
pub fn is_cacheable(req: &RequestHead<'_>) -> bool {
    req.method.is_read() && !req.headers.iter().any(|h| name_eq(h.name, "if-none-match"))
}

/// The lookup phase for a manifest: by digest (stored for good), or by tag
/// (trusted for `tag_ttl`, then revalidated with one HEAD; served stale
/// when the upstream cannot answer and `serve_stale` is on).
#[allow(clippy::too_many_arguments)]
pub async fn lookup_manifest<S: ClientSink>(
    w: &Worker,
    cache: &Arc<Cache>,
    reference: Reference<'_>,
    who: Who<'_>,
    probe: &Fetch<'_>,
    req: &RequestHead<'_>,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
) -> Looked {
    let accept = || req.headers_named("accept");
    let get = req.method == Method::Get;
    let tag = match reference {
        Reference::Digest(d) => {
            let mut waited = false;
            let stored = match cache.load_manifest(&d).await {
                Some(s) => s,
                None if !get => return Looked::Relay,
                None if cache.tier.is_some() && shared::manifest(w, cache, &d).await.is_some() => {
                    match cache.load_manifest(&d).await {
                        Some(s) => s,
                        None => return Looked::Relay,
                    }
                }
                None => {
                    if let Some(lead) = coalesce(w, cache, d.as_str()).await {
                        return Looked::LeadManifest(lead);
                    }
                    waited = true;
                    match cache.load_manifest(&d).await {
                        Some(s) => s,
                        None => return Looked::Relay,
                    }
                }
            };
            if !manifests::accepts(accept(), &stored.media_type) {
                return Looked::Relay;
            }
            let Some(how) = allowed(w, cache, who, &d, probe).await else {
                return Looked::Relay;
            };
            let status = match waited {
                true => CacheStatus::Coalesced,
                false => CacheStatus::Hit,
            };
            summary.cache = status_of(how, status);
            let stale = how == Admitted::Stale;
            return Looked::Answered(
                send_manifest(
                    w,
                    d.as_str(),
                    &stored.media_type,
                    &stored.bytes,
                    stale,
                    client,
                    reply,
                    summary,
                )
                .await,
            );
        }
        Reference::Tag(t) => t,
    };
    let name = Tags::name(who.registry, who.repo, tag.as_str());
    let mut status = CacheStatus::Hit;
    let mut local = cache.tags.get(&name);
    if cache.tier.is_some() {
        if let Some(newer) = shared::tag_record(w, cache, &name, local.as_ref()).await {
            local = Some(newer);
        }
    }
    let rec = match local {
        Some(r) => r,
        None if !get => return Looked::Relay,
        None => {
            if let Some(lead) = coalesce(w, cache, &name).await {
                return Looked::LeadManifest(lead);
            }
            // Recorded by the request waited for only if its client took
            // every variant (see `accepts_lists`); otherwise this one asks.
            status = CacheStatus::Coalesced;
            match cache.tags.get(&name) {
                Some(r) => r,
                None => return Looked::Relay,
            }
        }
    };
    let Ok(digest) = Digest::parse(&rec.digest) else {
        return Looked::Relay;
    };
    let stored = match cache.load_manifest(&digest).await {
        Some(s) => s,
        None => match shared::manifest(w, cache, &digest).await {
            Some(s) => s,
            None => return Looked::Relay, // the record outlived its manifest (evicted)
        },
    };
    if !manifests::accepts(accept(), &stored.media_type) {
        return Looked::Relay; // this client wants another variant
    }
    // Another request revalidating this tag right now: serve what is known
    // rather than send a second HEAD (concurrent revalidations coalesce).
    if rec.age() >= cache.tag_ttl() && cache.tags.begin_revalidation(&name) {
        let answer = revalidate(w, probe, &rec.digest).await;
        cache.tags.end_revalidation(&name);
        match answer {
            Revalidation::Same => {
                let fresh = TagRecord {
                    checked: std::time::SystemTime::now(),
                    ..rec.clone()
                };
                if let Some(tier) = &cache.tier {
                    tier.tag_confirmed(&name, &fresh);
                }
                cache.tags.put(&name, fresh);
                cache.access.learn_ok(who, Some(digest.as_str()));
                status = CacheStatus::Revalidated;
            }
            Revalidation::Changed | Revalidation::Refused => return Looked::Relay,
            Revalidation::Unavailable(why) => {
                // The upstream cannot be asked: anonymous knowledge only
                // (credentials are never taken on trust), and a failed HEAD
                // never turns into a GET (which would count as a pull).
                if !cache.serve_stale() || !allowed_stale(w, cache, who, &digest).await {
                    let e = ErrorReply::new(
                        503,
                        ErrorCode::Unavailable,
                        format!("upstream registry {} unavailable ({why})", who.registry),
                    );
                    return Looked::Answered(reply.error(client, &e).await);
                }
                crate::event!(
                    Level::Warn,
                    Some(w.id),
                    "serving {name} stale ({}s old): upstream {why}",
                    rec.age().as_secs()
                );
                summary.cache = CacheStatus::Stale;
                return Looked::Answered(
                    send_manifest(
                        w,
                        digest.as_str(),
                        &stored.media_type,
                        &stored.bytes,
                        true,
                        client,
                        reply,
                        summary,
                    )
                    .await,
                );
            }
        }
    }
    let Some(how) = allowed(w, cache, who, &digest, probe).await else {
        return Looked::Relay;
    };
    summary.cache = status_of(how, status);
    let stale = how == Admitted::Stale;
    Looked::Answered(
        send_manifest(
            w,
            digest.as_str(),
            &stored.media_type,
            &stored.bytes,
            stale,
            client,
            reply,
            summary,
        )
        .await,
    )
}

/// How often a request waiting for another's manifest fetch looks again.
const COALESCE_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// A claim on fetching one manifest upstream (a tag's record name or a
/// digest), released when the request that holds it ends, however it ends.
pub struct ManifestFetch {
    cache: Arc<Cache>,
    name: String,
}

impl Drop for ManifestFetch {
    fn drop(&mut self) {
        self.cache.tags.end_fetch(&self.name);
    }
}

/// A manifest the cache lacks: the first request for `name` fetches it
/// (returned claim); the others wait while that fetch runs (at most the
/// upstream read timeout), then look in the cache again. N concurrent cold
/// pulls of a tag then cost one counted GET upstream, not N.
async fn coalesce(w: &Worker, cache: &Arc<Cache>, name: &str) -> Option<ManifestFetch> {
    if cache.tags.begin_fetch(name) {
        return Some(ManifestFetch {
            cache: cache.clone(),
            name: name.to_string(),
        });
    }
    let deadline = std::time::Instant::now() + w.cfg.timeouts.upstream_read;
    while cache.tags.fetching(name) && std::time::Instant::now() < deadline {
        monoio::time::sleep(COALESCE_POLL).await;
    }
    None
}

/// What a revalidating HEAD said about a tag.
enum Revalidation {
    /// 200 with the recorded digest.
    Same,
    /// 200 with another digest: the tag moved.
    Changed,
    /// The upstream refused or does not know it (401, 403, 404...): its
    /// answer goes to the client.
    Refused,
    /// No answer worth the name (unreachable, timed out, 429, 5xx): the
    /// recorded manifest may be served stale.
    Unavailable(String),
}

/// One upstream HEAD of the tag, with the client's credentials. Never falls
/// back to a GET (a GET counts against Docker Hub's pull limit).
async fn revalidate(w: &Worker, probe: &Fetch<'_>, recorded: &str) -> Revalidation {
    // Whatever this client accepts, the record is the answer to a client
    // that accepts everything (an index for a multi-platform tag).
    let mut head = head_probe(probe);
    head.headers.retain(|(n, _)| !name_eq(n, "accept"));
    head.headers.push(("Accept", FULL_ACCEPT.as_bytes()));
    let fetched = match fetch(w, head).await {
        Ok(f) => f,
        Err(e) => return Revalidation::Unavailable(e.to_string()),
    };
    let granted = fetched.granted();
    let Fetched { conn, head, .. } = fetched;
    let digest = head
        .header(&conn, "docker-content-digest")
        .map(|d| String::from_utf8_lossy(d).into_owned());
    let status = head.status;
    release_after(w, conn, &head, 0).await;
    match status {
        200 if granted && digest.as_deref() == Some(recorded) => Revalidation::Same,
        200 => Revalidation::Changed,
        429 | 500..=599 => Revalidation::Unavailable(format!("answered {status}")),
        _ => Revalidation::Refused,
    }
}

/// Answers a manifest from the cache.
#[allow(clippy::too_many_arguments)]
async fn send_manifest<S: ClientSink>(
    w: &Worker,
    digest: &str,
    media_type: &str,
    bytes: &[u8],
    stale: bool,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
) -> Outcome {
    reply.status(200);
    reply.header("Content-Type", media_type.as_bytes());
    reply.header("Docker-Content-Digest", digest.as_bytes());
    let out = reply.head_mut();
    out.extend_from_slice(b"Etag: \"");
    out.extend_from_slice(digest.as_bytes());
    out.extend_from_slice(b"\"\r\n");
    reply.header("Docker-Distribution-Api-Version", b"registry/2.0");
    if stale {
        reply.header("X-Ocirelay-Cache", b"stale");
    }
    reply.end_length(bytes.len() as u64);
    reply.body(bytes);
    match reply.send(client, w.cfg.timeouts.client_write).await {
        true => {
            if !reply.head_only() {
                summary.from_cache = bytes.len() as u64;
            }
            reply.outcome()
        }
        false => Outcome::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_to_clients_that_take_lists_become_tag_records() {
        let one = [&b"application/vnd.docker.distribution.manifest.v2+json"[..]];
        assert!(!accepts_lists(one.into_iter()));
        let both = [
            &b"application/vnd.docker.distribution.manifest.v2+json"[..],
            &b"application/vnd.docker.distribution.manifest.list.v2+json"[..],
        ];
        assert!(accepts_lists(both.into_iter()));
        assert!(accepts_lists([FULL_ACCEPT.as_bytes()].into_iter()));
        assert!(!accepts_lists(std::iter::empty()));
    }
}
