//! The lookup phase's second tier: a blob this node's disk lacks is looked
//! for in the shared bucket before the upstream (`cache::s3::tier`).
//!
//! ```text
//! tier-1 miss (this request leads the node's download)
//!   bucket GET  -> found:  access check (as any hit) -> stream it to the
//!                          client through the digest check and the tee
//!                          (so tier 1 has it next time); redirect mode:
//!                          a HEAD, then a 307 to a presigned URL
//!               -> absent: lease -> mine:   fetch upstream, upload after
//!                                 theirs: wait for it to appear, then as
//!                                         found; else fetch upstream
//!               -> down:   fetch upstream (the tier is skipped a while)
//! ```

use std::sync::Arc;

use crate::cache::access::Who;
use crate::cache::s3::tier::{Found, Lease, Tier};
use crate::cache::{Cache, Leading};
use crate::downstream::{Outcome, Reply};
use crate::error::{ErrorKind, Side};
use crate::ops::summary::{CacheStatus, RequestSummary};
use crate::ops::tier::TierCount;
use crate::relay::{self, BodyTap, ClientSink};
use crate::upstream::{Conn, ResponseHead};
use crate::wire::digest::Verifier;
use crate::wire::http::ClientFraming;
use crate::wire::names::Digest;
use crate::worker::Worker;

use super::body;
use super::cached::{allowed, status_of, too_large, write_head, Admitted, Looked};
use super::fetch::Fetch;

/// A tier-1 miss of a blob this request leads (`l`): answered from the
/// bucket, or handed back to lead the upstream download (with the lease,
/// when this node took it).
#[allow(clippy::too_many_arguments)]
pub async fn blob_miss<S: ClientSink>(
    w: &Worker,
    cache: &Arc<Cache>,
    tier: &Tier,
    mut l: Leading,
    digest: &Digest<'_>,
    who: Who<'_>,
    probe: &Fetch<'_>,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
) -> Looked {
    let redirect = tier.config().redirect;
    let mut waited = false;
    loop {
        match tier.blob(&w.upstreams, digest, redirect).await {
            Found::Present(len) => {
                // Redirect mode: the same access check as any hit, then
                // the store sends the bytes.
                let Some(how) = allowed(w, cache, who, digest, probe).await else {
                    return Looked::Lead(l);
                };
                l.abandon(cache);
                if let Some(o) = too_large(w, probe, digest, len, client, reply).await {
                    return Looked::Answered(o);
                }
                summary.cache = status_of(how, CacheStatus::Shared);
                return Looked::Answered(redirect_to(w, tier, digest, client, reply).await);
            }
            Found::Body(conn, head, len) => {
                let Some(how) = allowed(w, cache, who, digest, probe).await else {
                    // Not for this client (or not known to be): the
                    // upstream's own answer decides.
                    drop(conn);
                    return Looked::Lead(l);
                };
                if let Some(o) = too_large(w, probe, digest, len, client, reply).await {
                    drop(conn);
                    l.abandon(cache);
                    return Looked::Answered(o);
                }
                return match serve(
                    w, cache, tier, l, conn, head, len, digest, who, client, reply, summary,
                )
                .await
                {
                    Ok(o) => {
                        if summary.cache == CacheStatus::Shared {
                            summary.cache = status_of(how, CacheStatus::Shared);
                        }
                        Looked::Answered(o)
                    }
                    // A wrong small object, caught before anything was
                    // sent: the upstream is asked instead (and stored if
                    // this request could lead again).
                    Err(Some(l)) => Looked::Lead(l),
                    Err(None) => Looked::Relay,
                };
            }
            Found::Absent if !waited => match tier.lease(&w.upstreams, digest).await {
                Lease::Mine => {
                    l.lease = true;
                    return Looked::Lead(l);
                }
                Lease::Theirs if tier.await_other(&w.upstreams, digest).await => waited = true,
                Lease::Theirs | Lease::Unavailable => return Looked::Lead(l),
            },
            Found::Absent | Found::Unavailable => return Looked::Lead(l),
        }
    }
}

/// Streams the bucket's object to the client through the digest check and
/// the tee into this node's disk. `Err`: a small object that did not match,
/// found before anything was sent: the caller asks the upstream, leading
/// the download again if it could.
#[allow(clippy::too_many_arguments)]
async fn serve<S: ClientSink>(
    w: &Worker,
    cache: &Arc<Cache>,
    tier: &Tier,
    l: Leading,
    mut conn: Conn,
    head: ResponseHead,
    len: u64,
    digest: &Digest<'_>,
    who: Who<'_>,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
) -> Result<Outcome, Option<Leading>> {
    conn.consume(head.head_len);
    let Some(verifier) = Verifier::new(digest) else {
        return Err(Some(l)); // `lead` is only called for digests it can check
    };
    let tee = match l.start(len) {
        Ok(t) => t,
        Err(_) => return Err(Some(l)),
    };
    let mut pair = (Some(verifier), tee);
    // A small object is read whole and checked before its head goes out:
    // a wrong one costs nothing but the detour.
    if len <= relay::RELAY_BUF as u64 {
        let body = match body::read_verified(w, &mut conn, len, &mut pair.0).await {
            Ok(b) => b,
            Err(e) => {
                pair.1.finish(false, &l.dest, &cache.inflight, &l.key).await;
                if e.kind == ErrorKind::DigestMismatch {
                    tier.corrupt_blob(digest);
                }
                // The fill is finished (its followers fetch on their own);
                // this request leads anew, from the upstream.
                return Err(cache.lead(digest).ok().map(|mut again| {
                    again.lease = l.lease;
                    again
                }));
            }
        };
        if head.keep_alive {
            w.upstreams.release(conn);
        }
        pair.1.data(&body);
        let stored = pair.1.finish(true, &l.dest, &cache.inflight, &l.key).await;
        after_shared_read(cache, who, digest, stored, len, summary);
        write_head(reply, digest, len, None);
        reply.append_relayed(&body);
        w.bufs.give(body);
        return Ok(
            match reply.send(client, w.cfg.timeouts.client_write).await {
                true => reply.outcome(),
                false => Outcome::Close,
            },
        );
    }
    write_head(reply, digest, len, None);
    let outcome = body::stream(
        w,
        conn,
        &head,
        client,
        reply,
        ClientFraming::Same,
        &mut pair,
        summary,
    )
    .await;
    let complete = outcome != Outcome::Abort && summary.error.is_none();
    let wrong = summary
        .error
        .as_ref()
        .is_some_and(|e| e.kind == ErrorKind::DigestMismatch && e.side == Side::Upstream);
    if wrong {
        tier.corrupt_blob(digest);
    }
    let stored = pair
        .1
        .finish(complete, &l.dest, &cache.inflight, &l.key)
        .await;
    after_shared_read(cache, who, digest, stored, len, summary);
    Ok(outcome)
}

/// Bookkeeping once a blob came from the bucket.
fn after_shared_read(
    cache: &Cache,
    who: Who<'_>,
    digest: &Digest<'_>,
    stored: bool,
    len: u64,
    summary: &mut RequestSummary<'_>,
) {
    if let Some(tier) = &cache.tier {
        tier.health().add(TierCount::ServedBytes, len);
    }
    summary.cache = CacheStatus::Shared;
    if stored {
        summary.stored = len;
        // A verified body shows the repository holds it only through the
        // access check above (made with this client's credentials).
        cache.access.learn_ok(who, Some(digest.as_str()));
    }
}

/// Redirect mode: a `307` to a presigned URL of the object.
async fn redirect_to<S: ClientSink>(
    w: &Worker,
    tier: &Tier,
    digest: &Digest<'_>,
    client: &mut S,
    reply: &mut Reply<'_>,
) -> Outcome {
    let Some(url) = tier.presigned(digest) else {
        let e = crate::wire::oci::ErrorReply::new(
            404,
            crate::wire::oci::ErrorCode::BlobUnknown,
            "blob unknown to the shared tier",
        );
        return reply.error(client, &e).await;
    };
    reply.status(307);
    reply.header("Location", url.as_bytes());
    reply.header("Docker-Content-Digest", digest.as_str().as_bytes());
    reply.header("Cache-Control", b"no-store");
    reply.end_length(0);
    match reply.send(client, w.cfg.timeouts.client_write).await {
        true => reply.outcome(),
        false => Outcome::Close,
    }
}

/// A tier-1 hit in redirect mode, when this worker knows the bucket holds
/// the object: answered with a 307 (after the caller's access check).
pub(super) async fn redirect_hit<S: ClientSink>(
    w: &Worker,
    tier: &Tier,
    digest: &Digest<'_>,
    how: Admitted,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
) -> Outcome {
    summary.cache = status_of(how, CacheStatus::Hit);
    redirect_to(w, tier, digest, client, reply).await
}

/// A manifest this node's disk lacks, from the bucket (checked against its
/// digest there), stored on this node's disk.
pub async fn manifest(
    w: &Worker,
    cache: &Cache,
    digest: &Digest<'_>,
) -> Option<std::rc::Rc<crate::cache::StoredManifest>> {
    let tier = cache.tier.as_ref().filter(|t| t.usable())?;
    let (media_type, bytes) = tier.manifest(&w.upstreams, digest).await?;
    // Not queued back to the bucket: it came from there.
    cache.store_manifest(digest, &media_type, &bytes, false);
    cache.load_manifest(digest).await
}

/// Tag `name`'s record from the bucket when it is newer than this node's
/// (`local`): another node fetched or revalidated it. Adopted locally, so
/// that N nodes revalidate a tag about once per `tag_ttl` in all.
pub async fn tag_record(
    w: &Worker,
    cache: &Cache,
    name: &str,
    local: Option<&crate::cache::manifests::TagRecord>,
) -> Option<crate::cache::manifests::TagRecord> {
    if local.is_some_and(|r| r.age() < cache.tag_ttl()) {
        return None; // fresh here: nothing to ask
    }
    let tier = cache.tier.as_ref().filter(|t| t.usable())?;
    let rec = tier.tag(&w.upstreams, name).await?;
    if local.is_some_and(|l| l.checked >= rec.checked) {
        return None;
    }
    if rec.age() < cache.tag_ttl() {
        tier.health().add(TierCount::TagHits, 1);
    }
    cache.tags.put(name, rec.clone());
    Some(rec)
}

/// A range of a blob this node's disk lacks, from the bucket (a client
/// resuming a pull): after the same access check as any hit. `None`: the
/// bucket cannot answer it (the caller relays the request upstream).
#[allow(clippy::too_many_arguments)]
pub async fn blob_range<S: ClientSink>(
    w: &Worker,
    cache: &Arc<Cache>,
    tier: &Tier,
    digest: &Digest<'_>,
    range: &[u8],
    who: Who<'_>,
    probe: &Fetch<'_>,
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
) -> Option<Outcome> {
    let Found::Present(len) = tier.blob(&w.upstreams, digest, true).await else {
        return None;
    };
    let want = crate::cache::parse_range(range, len)?;
    let how = allowed(w, cache, who, digest, probe).await?;
    if let Some(o) = too_large(w, probe, digest, len, client, reply).await {
        return Some(o);
    }
    let (mut conn, head) = tier.blob_part(&w.upstreams, digest, want).await?;
    conn.consume(head.head_len);
    write_head(reply, digest, len, Some(want));
    summary.cache = status_of(how, CacheStatus::Shared);
    let mut no_tap: Option<Verifier> = None;
    Some(
        body::stream(
            w,
            conn,
            &head,
            client,
            reply,
            ClientFraming::Same,
            &mut no_tap,
            summary,
        )
        .await,
    )
}
