//! The lookup phase: a blob the cache has (or is downloading) is answered
//! from disk, after the access check; a blob nobody has is led: fetched
//! once, stored while it streams. See `cache/` for the store itself.

use std::sync::Arc;

use crate::cache::access::Who;
use crate::cache::inflight::Fill;
use crate::cache::{self, serve, Cache, Leading, Lookup};
use crate::downstream::{Outcome, Reply};
use crate::error::Error;
use crate::ops::summary::{CacheStatus, RequestSummary};
use crate::relay::ClientSink;
use crate::wire::http::name_eq;
use crate::wire::http::RequestHead;
use crate::wire::method::Method;
use crate::wire::names::Digest;
use crate::worker::Worker;

use super::fetch::{fetch, release_after, Fetch, Fetched};

/// What the lookup phase decided.
pub enum Looked {
    /// Answered from the cache.
    Answered(Outcome),
    /// Fetch upstream, and store what comes (this request leads).
    Lead(Leading),
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
    let stall = w.cfg.timeouts.upstream_read;
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
            if !allowed(w, cache, who, digest, probe).await {
                return Looked::Relay;
            }
            let Ok(file) = monoio::fs::File::open(&path).await else {
                return Looked::Relay; // evicted since the lookup
            };
            summary.cache = CacheStatus::Hit;
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
            if range.is_some() || head_only {
                return Looked::Relay;
            }
            follow(
                w, cache, fill, digest, who, probe, client, reply, summary, stall,
            )
            .await
        }
        Lookup::Lead if range.is_none() && !head_only => match cache.lead(digest) {
            Ok(l) => Looked::Lead(l),
            Err(Some(fill)) => {
                follow(
                    w, cache, fill, digest, who, probe, client, reply, summary, stall,
                )
                .await
            }
            Err(None) => Looked::Relay,
        },
        Lookup::Lead => Looked::Relay,
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
    client: &mut S,
    reply: &mut Reply<'_>,
    summary: &mut RequestSummary<'_>,
    stall: std::time::Duration,
) -> Looked {
    let Some(len) = serve::await_head(&fill, stall).await else {
        return Looked::Relay; // the leader got no body: ask for ourselves
    };
    if !allowed(w, cache, who, digest, probe).await {
        return Looked::Relay;
    }
    let Ok(file) = fill.file.try_clone().and_then(monoio::fs::File::from_std) else {
        return Looked::Relay;
    };
    summary.cache = CacheStatus::Coalesced;
    write_head(reply, digest, len, None);
    let limit = w.cfg.timeouts.client_write;
    if !reply.send(client, limit).await {
        return Looked::Answered(Outcome::Close);
    }
    let mut buf = w.bufs.take();
    let r = serve::follow(&fill, &file, 0, client, &mut buf, limit, stall).await;
    w.bufs.give(buf);
    Looked::Answered(match r {
        Ok(()) => reply.outcome(),
        Err(e) => {
            summary.error = Some(e.into());
            Outcome::Abort
        }
    })
}

/// May `who` have `digest` from the cache? Known from earlier upstream
/// answers, or asked now with a HEAD carrying the client's own credentials
/// (free on Docker Hub; the answer is remembered).
async fn allowed(
    w: &Worker,
    cache: &Cache,
    who: Who<'_>,
    digest: &Digest<'_>,
    probe: &Fetch<'_>,
) -> bool {
    if cache.access.allowed(who, digest.as_str()) {
        return true;
    }
    let head = Fetch {
        method: Method::Head,
        ..probe.clone()
    };
    let Ok(Fetched { conn, head, .. }) = fetch(w, head).await else {
        return false;
    };
    let ok = head.status == 200;
    release_after(w, conn, &head, 0).await;
    if ok {
        cache.access.learn_ok(who, Some(digest.as_str()));
    }
    ok
}

/// The head of a blob answered from the cache.
fn write_head(reply: &mut Reply<'_>, digest: &Digest<'_>, len: u64, range: Option<(u64, u64)>) {
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
    let r = serve::send_range(file, offset, n, client, &mut buf, limit).await;
    w.bufs.give(buf);
    match r {
        Ok(()) => reply.outcome(),
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
