//! One client connection: read a request head under its deadlines, parse it
//! (borrowed from the read buffer), route it, hand it to its handler
//! (`pull`, `token`, `local`), finish it (one summary -> the access log,
//! the metrics and the event log), and go again (keep-alive, pipelining in
//! order) until the client or a handler closes.
//!
//! Each request runs with the config generation current when its head
//! arrived (a reload in between applies to the next one). While the
//! process drains, the response under way ends the connection (with
//! `Connection: close` if its head is still to be written), and an idle
//! keep-alive connection is closed at once: a client retries a request on
//! a kept-alive connection that closes without answering (RFC 9112,
//! 9.3.1). A connection that has not sent its first request yet is not
//! closed: its client would not retry.

use std::mem::MaybeUninit;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::config::MetricsListen;
use crate::downstream::{ClientCtx, Metered, Outcome, PendingBody, Reply};
use crate::gate::limits::{ConnectionSlot, Limit, OverLimit, Pacer, Who};
use crate::ops::access_log::Asked;
use crate::ops::log::Level;
use crate::ops::metrics::{Limited, ListenerKind};
use crate::ops::summary::RequestSummary;
use crate::relay::ClientSink;
use crate::route::classify::{self, Route};
use crate::wire::http::{
    parse_request_uninit, BodyFraming, HeadError, HeadScanner, RequestHead, MAX_HEADERS,
};
use crate::wire::method::Method;
use crate::wire::names::NameError;
use crate::wire::oci::{ErrorCode, ErrorReply};
use crate::worker::{Core, Worker};
use crate::{local, pull, token};

/// What a connection's head buffer starts at, and shrinks back to when
/// idle: a registry client's request head fits (docker's are ~1.5 KiB);
/// a larger one grows it by doubling, up to `max_header_bytes`.
const HEAD_START: usize = 4096;

/// Serves one client connection to the end. `inbuf` holds what was read
/// from it already (the bytes behind a PROXY header), usually nothing.
pub async fn serve<S: AsyncReadRent + ClientSink>(
    core: Rc<Core>,
    io: S,
    cx: ClientCtx,
    mut inbuf: Vec<u8>,
) {
    let mut io = Metered::new(io);
    let mut out: Vec<u8> = Vec::with_capacity(2048);
    let mut served = 0u64;
    // ---- admit the connection: its client's connection cap ----
    // Over it, the first request is answered 429 and the connection closed.
    let (_slot, mut over_cap) = admit_connection(&core.worker(), &cx);
    loop {
        let w = core.worker();
        let limits = w.cfg.limits;
        let timeouts = w.cfg.timeouts;
        // Room for a maximal head plus some pipelined bytes behind it (the
        // limit is this generation's), taken only as a head needs it.
        let head_room = limits.max_header_bytes + 4096;
        // ---- read a request head ----
        let mut scanner = HeadScanner::new();
        let mut header_deadline: Option<Instant> = None;
        let head_end = loop {
            match scanner.scan(&inbuf) {
                Ok(Some(end)) if end > limits.max_header_bytes => {
                    too_large(&mut io, &mut out).await;
                    return close_unread(io, inbuf).await;
                }
                Ok(Some(end)) => break end,
                Ok(None) => {}
                Err(_) => {
                    // Refused rather than read a second way (see HeadScanner):
                    // nothing after it on this connection is read.
                    let e = HeadError::Malformed("bare LF in the request head: lines end in CRLF");
                    bad_head(&mut io, &mut out, e).await;
                    return;
                }
            }
            if inbuf.len() >= limits.max_header_bytes {
                too_large(&mut io, &mut out).await;
                return close_unread(io, inbuf).await;
            }
            if !starts_like_http(&inbuf) {
                // Most often a TLS ClientHello on the plain port: clients that
                // try https first (skopeo, podman) fall back to http at once
                // instead of waiting out a header timeout.
                let e = HeadError::Malformed("not an HTTP request (TLS on the plain-HTTP port?)");
                bad_head(&mut io, &mut out, e).await;
                return close_unread(io, inbuf).await;
            }
            let idle = inbuf.is_empty();
            if idle {
                io.go_idle();
                // An idle connection keeps a small head buffer: with the
                // whole head room kept, 10,000 idle keep-alive connections
                // held 267 MiB (26 KiB each, 20 KiB of it this buffer).
                inbuf.shrink_to(HEAD_START);
            }
            if idle && served > 0 && core.draining() {
                let _ = io.shutdown().await;
                return;
            }
            let wait = if idle && !core.draining() {
                timeouts.client_idle
            } else if idle {
                // Draining, and the first request is still to come.
                timeouts.client_header
            } else {
                let d =
                    *header_deadline.get_or_insert_with(|| Instant::now() + timeouts.client_header);
                d.saturating_duration_since(Instant::now())
            };
            if inbuf.len() == inbuf.capacity() {
                // Full without a head end: double, up to the head room (the
                // length was checked against the limit above, so some room
                // is always left). A docker or containerd head (~1.5 KiB)
                // never gets here after the first read.
                let grow = inbuf.capacity().max(HEAD_START);
                inbuf.reserve_exact(grow.min(head_room - inbuf.len()));
            }
            let len = inbuf.len();
            let cap = inbuf.capacity();
            let buf = std::mem::take(&mut inbuf);
            let read = monoio::time::timeout(wait, io.read(buf.slice_mut(len..cap)));
            let read = if idle && served > 0 {
                monoio::select! {
                    r = read => r,
                    _ = core.idle_closed() => {
                        // Draining, or the idlest at the connection cap.
                        // The read went with its future (and its buffer):
                        // the connection ends here.
                        let _ = io.shutdown().await;
                        return;
                    }
                }
            } else {
                read.await
            };
            match read {
                Ok((Ok(n), b)) => {
                    inbuf = b.into_inner();
                    if n == 0 {
                        return; // client closed
                    }
                }
                Ok((Err(_), _)) => return,
                Err(_) => {
                    if len > 0 {
                        // A head that trickles in too slowly: say so, then close.
                        let e = ErrorReply::new(
                            408,
                            ErrorCode::Unknown,
                            "request head not received in time",
                        );
                        let _ = Reply::new(&mut out, false, true, 1)
                            .error(&mut io, &e)
                            .await;
                        return close_unread(io, Vec::new()).await;
                    }
                    return;
                }
            }
        };

        // ---- parse, route, handle, finish ----
        let (outcome, consumed, overflow) = {
            let mut storage = [MaybeUninit::uninit(); MAX_HEADERS];
            let head = match parse_request_uninit(&inbuf[..head_end], &mut storage) {
                Ok(h) => h,
                Err(e) => {
                    bad_head(&mut io, &mut out, e).await;
                    return close_unread(io, inbuf).await;
                }
            };
            let cx = cx.for_request(&w.cfg, &head);
            let user = limited_user(&w, &head);
            io.pace(pacer(&w, &cx, user.as_deref()));
            let mut body = PendingBody::new(head.body, &inbuf[head_end..], head.expect_continue);
            let started = Instant::now();
            io.begin();
            let mut summary = RequestSummary::default();
            let draining = core.draining();
            let outcome = Box::pin(dispatch(
                &w,
                &head,
                &mut body,
                &mut io,
                &mut out,
                &cx,
                &mut summary,
                draining,
                over_cap.take(),
                user.as_deref(),
            ))
            .await;
            if io.was_shaped() {
                w.metrics.limited(Limited::Bytes);
            }
            (summary.status, summary.bytes) = io.served();
            finish(&w, &cx, &head, &summary, started);
            let close = outcome == Outcome::Close || !head.keep_alive || !body.finished;
            let outcome = match outcome {
                Outcome::Abort => Outcome::Abort,
                _ if close => Outcome::Close,
                _ => Outcome::KeepAlive,
            };
            (
                outcome,
                head_end + body.consumed,
                std::mem::take(&mut body.overflow),
            )
        };
        match outcome {
            Outcome::KeepAlive => {}
            Outcome::Close => return close_unread(io, inbuf).await,
            Outcome::Abort => {
                crate::sys::reset_on_close(cx.fd);
                return; // dropping `io` closes the socket with a reset
            }
        }
        inbuf.drain(..consumed);
        inbuf.extend_from_slice(&overflow);
        served += 1;
        if core.draining() && inbuf.is_empty() {
            // A request already received (pipelined) is still answered.
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// The finish phase: the request's summary goes to the access log and the
/// metrics, and what ended it early (if anything) to the event log.
fn finish(
    w: &Worker,
    cx: &ClientCtx,
    head: &RequestHead<'_>,
    summary: &RequestSummary<'_>,
    started: Instant,
) {
    let took = started.elapsed();
    if let Some(log) = &w.access_log {
        let asked = Asked {
            client: cx.client,
            method: head.method_text,
            target: head.target,
            user_agent: head.header("user-agent"),
        };
        let registry = summary.registry.map(|r| w.cfg.registry(r).name.as_str());
        log.record(&asked, registry, summary, took);
    }
    let reg = summary.registry.map(|r| w.reg_label(r));
    w.metrics.request(summary, head.method, reg, took);
    if let Some(e) = &summary.error {
        crate::event!(
            Level::Warn,
            Some(w.id),
            "{} {} -> {e}",
            head.method_text,
            head.target
        );
    }
}

/// Who a request is counted against by the per-client limits: its
/// address, or the user its mirror credentials name when that user has
/// limits of their own (`[client_limits.user.<name>]`).
fn who<'u>(cx: &ClientCtx, user: Option<&'u str>) -> Who<'u> {
    Who {
        user,
        ..Who::address(cx.client)
    }
}

/// The user a request's mirror credentials name (`gate::auth::identify`),
/// looked for only when mirror auth is on and some user has limits of
/// their own: otherwise no request pays the HMAC.
fn limited_user(w: &Worker, head: &RequestHead<'_>) -> Option<String> {
    let limits = w.cfg.client_limits.as_ref()?;
    let auth = w.cfg.auth.as_ref()?;
    if limits.users.is_empty() {
        return None;
    }
    crate::gate::auth::identify(auth, head.header("authorization"))
}

/// The connection's slot under its client's connection cap, or why it has
/// none. The address is the one known at accept: the TCP peer or a trusted
/// PROXY header's source (`X-Forwarded-For` comes per request, later). A
/// trusted proxy's own connections carry many clients, and the operator's
/// listener none: neither is capped.
fn admit_connection(w: &Worker, cx: &ClientCtx) -> (Option<ConnectionSlot>, Option<OverLimit>) {
    let Some(limits) = &w.cfg.client_limits else {
        return (None, None);
    };
    if cx.listener == ListenerKind::Ops || w.cfg.trusts(cx.client.ip) {
        return (None, None);
    }
    match w.limiter.open_connection(limits, cx.client) {
        Ok(slot) => (slot, None),
        Err(over) => (None, Some(over)),
    }
}

/// The byte rate one response of this client is written at, if any.
fn pacer(w: &Worker, cx: &ClientCtx, user: Option<&str>) -> Option<Pacer> {
    let limits = w.cfg.client_limits.as_ref()?;
    if cx.listener == ListenerKind::Ops {
        return None;
    }
    w.limiter.pacer(limits, who(cx, user))
}

/// The admit phase: a request over its client's limits is refused. The
/// health checks are not counted (a balancer's probes must not be refused
/// for the traffic it brings).
fn admit(
    w: &Worker,
    cx: &ClientCtx,
    route: &Route<'_>,
    over_cap: Option<OverLimit>,
    user: Option<&str>,
) -> Option<OverLimit> {
    if over_cap.is_some() {
        return over_cap;
    }
    let limits = w.cfg.client_limits.as_ref()?;
    if matches!(route, Route::Health | Route::Ready) {
        return None;
    }
    w.limiter.admit_request(limits, who(cx, user)).err()
}

/// Routes a request to its handler. `draining`: the connection ends after
/// this response (the process is draining), and the head says so.
/// `over_cap`: the connection is over its client's cap (answered 429, then
/// closed). `user`: who the limits count the request against, if a user.
#[allow(clippy::too_many_arguments)]
async fn dispatch<'a, S: AsyncReadRent + ClientSink>(
    w: &'a Worker,
    head: &RequestHead<'a>,
    body: &mut PendingBody<'_>,
    io: &mut S,
    out: &mut Vec<u8>,
    cx: &ClientCtx,
    summary: &mut RequestSummary<'a>,
    draining: bool,
    over_cap: Option<OverLimit>,
    user: Option<&str>,
) -> Outcome {
    let (path, query) = classify::split_target(head.target);
    let route = classify::classify(head.method, path);
    summary.route = route.kind();
    let head_only = head.method == Method::Head;
    // A request body other handlers do not read cannot be skipped safely:
    // the connection ends after the response.
    let will_close = draining || !head.keep_alive || body.framing != BodyFraming::None;
    let mut reply =
        Reply::new(out, head_only, will_close, head.minor).write_limit(w.cfg.timeouts.client_write);
    // The operator's listener answers what is the operator's, and nothing
    // else: no pulls through it.
    if cx.listener == ListenerKind::Ops {
        let refusal = match route {
            Route::Health => return local::health(io, &mut reply).await,
            Route::Ready => return local::ready(w, query, io, &mut reply).await,
            Route::Metrics => return local::metrics(w, io, &mut reply).await,
            _ => ErrorReply::new(
                404,
                ErrorCode::NameUnknown,
                "this listener serves /metrics, /healthz and /readyz only",
            ),
        };
        return reply.error(io, &refusal).await;
    }
    // ---- admit: per-client limits ----
    if let Some(over) = admit(w, cx, &route, over_cap, user) {
        let what = match over.limit {
            Limit::Requests => Limited::Requests,
            Limit::Connections => {
                reply.must_close();
                Limited::Connections
            }
        };
        w.metrics.limited(what);
        let e = ErrorReply::new(429, ErrorCode::TooManyRequests, over.message());
        return reply
            .error_retry_after(io, &e, over.retry_after_secs())
            .await;
    }
    let refusal = match route {
        Route::Manifest { .. }
        | Route::Blob { .. }
        | Route::Tags { .. }
        | Route::Referrers { .. }
        | Route::Ping => {
            return pull::registry_request(w, head, &route, query, io, &mut reply, cx, summary)
                .await;
        }
        Route::Token { registry } => {
            // The token handler reads its body: keep-alive is the client's.
            let close = draining || !head.keep_alive;
            let mut reply = Reply::new(reply.into_out(), false, close, head.minor)
                .write_limit(w.cfg.timeouts.client_write);
            return token::token_request(w, head, registry, query, body, io, &mut reply, summary)
                .await;
        }
        Route::Landing => return local::landing(w, head, cx, io, &mut reply).await,
        Route::Health => return local::health(io, &mut reply).await,
        Route::AcmeChallenge { token } => {
            return local::acme_challenge(w, token, io, &mut reply).await
        }
        Route::Ready => return local::ready(w, query, io, &mut reply).await,
        Route::Metrics if w.cfg.metrics == MetricsListen::Public => {
            return local::metrics(w, io, &mut reply).await
        }
        Route::Push => ErrorReply::new(
            405,
            ErrorCode::Unsupported,
            "this is a read-only mirror: pushes, uploads and deletes are not supported",
        ),
        Route::Catalog => ErrorReply::new(
            404,
            ErrorCode::Unsupported,
            "the catalog is not available through this mirror",
        ),
        Route::Invalid(NameError::Name) => {
            ErrorReply::new(400, ErrorCode::NameInvalid, "invalid repository name")
        }
        Route::Invalid(NameError::Tag) => {
            ErrorReply::new(400, ErrorCode::TagInvalid, "invalid tag")
        }
        Route::Invalid(NameError::Digest) => {
            ErrorReply::new(400, ErrorCode::DigestInvalid, "invalid digest")
        }
        // `/metrics` is not served here (see `metrics_listen`): as unknown
        // as any other path.
        Route::NotFound | Route::Metrics => {
            ErrorReply::new(404, ErrorCode::NameUnknown, format!("no route for {path}"))
        }
    };
    reply.error(io, &refusal).await
}

/// Whether buffered bytes can be the start of a request line: an uppercase
/// method token (after the empty lines a client may send between requests).
fn starts_like_http(buf: &[u8]) -> bool {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n');
    start.is_none_or(|i| buf[i].is_ascii_uppercase())
}

/// How long, and how many bytes, a connection closed before its input was
/// read waits for the client to stop sending.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Closes a connection whose client may still be sending (a refused head
/// or body, a body left unread): the answer is out, the write side is shut
/// (FIN), and input is read and discarded until the client closes, for at
/// most [`LINGER`] and [`LINGER_BYTES`]. Closing with unread input would
/// send a reset, which can make the client's kernel discard the answer
/// before it is read (RFC 9112, 9.6). `buf` is reused for the discarding.
async fn close_unread<S: AsyncReadRent + AsyncWriteRent>(mut io: S, mut buf: Vec<u8>) {
    let until = Instant::now() + LINGER;
    // A TLS shutdown writes close_notify, which a client that reads
    // nothing would hold up: within the same bound.
    match monoio::time::timeout(LINGER, io.shutdown()).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    let mut discarded = 0;
    buf.clear();
    buf.reserve(16 * 1024);
    while discarded < LINGER_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let cap = buf.capacity();
        match monoio::time::timeout(left, io.read(buf.slice_mut(0..cap))).await {
            Ok((Ok(n), b)) if n > 0 => {
                discarded += n;
                buf = b.into_inner();
            }
            _ => return, // closed, failed or out of time
        }
    }
}

async fn too_large<S: AsyncWriteRent>(io: &mut S, out: &mut Vec<u8>) {
    let e = ErrorReply::new(431, ErrorCode::Unknown, "request head too large");
    Reply::new(out, false, true, 1).error(io, &e).await;
}

async fn bad_head<S: AsyncWriteRent>(io: &mut S, out: &mut Vec<u8>, err: HeadError) {
    let e = ErrorReply::new(err.status(), ErrorCode::Unknown, err.message());
    Reply::new(out, false, true, 1).error(io, &e).await;
}
