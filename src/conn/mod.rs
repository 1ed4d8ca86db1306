//! One client connection: read a request head, parse it, route it, hand it
//! to its handler, and go again (keep-alive, pipelining in order) until the
//! client or a handler closes.

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use crate::error::{ErrorCode, ErrorReply};
use crate::ops::access_log::Metered;
use crate::relay::ClientSink;
use crate::route::classify::{self, Route};
use crate::wire::http::{
    find_head_end, parse_request_uninit, write_header, write_status, BodyFraming, ChunkedDecoder,
    HeadError, RequestHead, MAX_HEADERS,
};
use crate::wire::names::NameError;
use crate::worker::Worker;
use crate::{landing, pull, token};

/// Where a client connection came in.
#[derive(Debug, Clone, Copy)]
pub struct ClientCtx {
    pub tls: bool,
    /// The client socket, for an abortive close (see [`Outcome::Abort`]).
    pub fd: std::os::fd::RawFd,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl ClientCtx {
    /// The base URL the client used to reach us (`public_url` wins), e.g.
    /// `https://mirror.example.com` — realms handed out are built on it.
    pub fn base_url(&self, w: &Worker, req: &RequestHead<'_>) -> String {
        if let Some(u) = &w.cfg.public_url {
            return u.origin.to_string();
        }
        let scheme = if self.tls { "https" } else { "http" };
        match req.host() {
            Some(h) => format!("{scheme}://{h}"),
            None => format!("{scheme}://{}", self.local),
        }
    }
}

/// What the connection does after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    KeepAlive,
    Close,
    /// Reset the connection: a body already under way failed, and for a
    /// close-delimited body an orderly close would make a truncated (or
    /// unverified) body look complete.
    Abort,
}

/// A request body not read yet: what is already buffered behind the head,
/// and how it is framed. Handlers that need the body read it through here;
/// the connection loop then knows how much of its buffer was consumed.
pub struct PendingBody<'a> {
    pub framing: BodyFraming,
    buffered: &'a [u8],
    consumed: usize,
    finished: bool,
    expect_continue: bool,
    /// Bytes read from the socket past the end of the body: the start of the
    /// next pipelined request, handed back to the connection loop.
    overflow: Vec<u8>,
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Malformed,
    Io,
}

impl<'a> PendingBody<'a> {
    fn new(framing: BodyFraming, buffered: &'a [u8], expect_continue: bool) -> Self {
        PendingBody {
            framing,
            buffered,
            consumed: 0,
            finished: framing == BodyFraming::None,
            expect_continue,
            overflow: Vec::new(),
        }
    }

    /// Reads the whole body (at most `max` bytes), decoding chunked framing.
    pub async fn read_all<S: AsyncReadRent + AsyncWriteRent>(
        &mut self,
        io: &mut S,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, BodyError> {
        let mut body = Vec::new();
        match self.framing {
            BodyFraming::None => {}
            BodyFraming::Length(n) => {
                if n > max as u64 {
                    return Err(BodyError::TooLarge);
                }
                let n = n as usize;
                let take = n.min(self.buffered.len());
                body.extend_from_slice(&self.buffered[..take]);
                self.consumed = take;
                if body.len() < n {
                    self.send_continue(io).await?;
                }
                while body.len() < n {
                    let more = read_some(io, n - body.len(), timeout).await?;
                    body.extend_from_slice(&more);
                }
            }
            BodyFraming::Chunked => {
                let mut dec = ChunkedDecoder::new();
                // Each feed adds at most one read's worth, so checking the
                // size after each keeps the body bounded.
                let used = dec
                    .feed(self.buffered, |d| body.extend_from_slice(d))
                    .map_err(|_| BodyError::Malformed)?;
                self.consumed = used;
                if !dec.is_done() {
                    self.send_continue(io).await?;
                }
                while !dec.is_done() {
                    if body.len() > max {
                        return Err(BodyError::TooLarge);
                    }
                    let more = read_some(io, 16 * 1024, timeout).await?;
                    let used = dec
                        .feed(&more, |d| body.extend_from_slice(d))
                        .map_err(|_| BodyError::Malformed)?;
                    // Bytes after the body belong to the next request.
                    self.overflow.extend_from_slice(&more[used..]);
                }
                if body.len() > max {
                    return Err(BodyError::TooLarge);
                }
            }
        }
        self.finished = true;
        Ok(body)
    }

    async fn send_continue<S: AsyncWriteRent>(&mut self, io: &mut S) -> Result<(), BodyError> {
        if std::mem::take(&mut self.expect_continue) {
            let (r, _) = io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
                .await;
            r.map_err(|_| BodyError::Io)?;
        }
        Ok(())
    }
}

async fn read_some<S: AsyncReadRent>(
    io: &mut S,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    let buf = Vec::with_capacity(max.min(64 * 1024));
    match monoio::time::timeout(timeout, io.read(buf)).await {
        Ok((Ok(0), _)) | Ok((Err(_), _)) | Err(_) => Err(BodyError::Io),
        Ok((Ok(_), b)) => Ok(b),
    }
}

/// Serves one client connection to the end.
pub async fn serve<S: AsyncReadRent + ClientSink>(w: Rc<Worker>, io: S, cx: ClientCtx) {
    let mut io = Metered::new(io);
    let limits = w.cfg.limits;
    let timeouts = w.cfg.timeouts;
    // Room for a maximal head plus some pipelined bytes behind it.
    let mut inbuf: Vec<u8> = Vec::with_capacity(limits.max_header_bytes + 4096);
    let mut out: Vec<u8> = Vec::with_capacity(2048);
    loop {
        // ---- read a request head ----
        let mut scanned = 0;
        let mut header_deadline: Option<Instant> = None;
        let head_end = loop {
            if let Some(end) = find_head_end(&inbuf, scanned) {
                if end > limits.max_header_bytes {
                    too_large(&mut io, &mut out).await;
                    return;
                }
                break end;
            }
            if inbuf.len() >= limits.max_header_bytes {
                too_large(&mut io, &mut out).await;
                return;
            }
            if !starts_like_http(&inbuf) {
                // Most often a TLS ClientHello on the plain port: clients that
                // try https first (skopeo, podman) fall back to http at once
                // instead of waiting out a header timeout.
                let e = HeadError::Malformed("not an HTTP request (TLS on the plain-HTTP port?)");
                bad_head(&mut io, &mut out, e).await;
                return;
            }
            scanned = inbuf.len();
            let wait = if inbuf.is_empty() {
                timeouts.client_idle
            } else {
                let d =
                    *header_deadline.get_or_insert_with(|| Instant::now() + timeouts.client_header);
                d.saturating_duration_since(Instant::now())
            };
            let len = inbuf.len();
            let cap = inbuf.capacity();
            let buf = std::mem::take(&mut inbuf);
            match monoio::time::timeout(wait, io.read(buf.slice_mut(len..cap))).await {
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
                        let _ = respond_error(&mut io, &mut out, &e, false, true).await;
                    }
                    return;
                }
            }
        };

        // ---- parse, route, handle ----
        let (outcome, consumed, overflow) = {
            let mut storage = [MaybeUninit::uninit(); MAX_HEADERS];
            let head = match parse_request_uninit(&inbuf[..head_end], &mut storage) {
                Ok(h) => h,
                Err(e) => {
                    bad_head(&mut io, &mut out, e).await;
                    return;
                }
            };
            let mut body = PendingBody::new(head.body, &inbuf[head_end..], head.expect_continue);
            // The clock is read only for a log line.
            let started = w.access_log.as_ref().map(|_| Instant::now());
            io.begin();
            let outcome = dispatch(&w, &head, &mut body, &mut io, &mut out, &cx).await;
            if let (Some(log), Some(started)) = (&w.access_log, started) {
                let (status, bytes) = io.served();
                log.record(
                    cx.peer,
                    head.method,
                    head.target,
                    status,
                    bytes,
                    started.elapsed(),
                );
            }
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
            Outcome::Close => {
                let _ = io.shutdown().await;
                return;
            }
            Outcome::Abort => {
                abort(cx.fd);
                return; // dropping `io` closes the socket with a reset
            }
        }
        inbuf.drain(..consumed);
        inbuf.extend_from_slice(&overflow);
    }
}

async fn dispatch<S: AsyncReadRent + ClientSink>(
    w: &Worker,
    head: &RequestHead<'_>,
    body: &mut PendingBody<'_>,
    io: &mut S,
    out: &mut Vec<u8>,
    cx: &ClientCtx,
) -> Outcome {
    let (path, query) = classify::split_target(head.target);
    let route = classify::classify(head.method, path);
    let head_only = head.method == "HEAD";
    let will_close = !head.keep_alive || body.framing != BodyFraming::None;
    let reply = match route {
        Route::Manifest { .. }
        | Route::Blob { .. }
        | Route::Tags { .. }
        | Route::Referrers { .. }
        | Route::Ping => {
            return pull::registry_request(w, head, &route, query, io, out, cx, will_close).await;
        }
        Route::Token { registry } => {
            return token::token_request(w, head, registry, query, body, io, out, cx).await;
        }
        Route::Landing => {
            let page = landing::render(w, head, cx);
            return respond(
                io,
                out,
                200,
                &[
                    ("Content-Type", b"text/html; charset=utf-8"),
                    ("Cache-Control", b"no-cache"),
                    ("Vary", b"Accept-Language"),
                ],
                page.as_bytes(),
                head_only,
                will_close,
            )
            .await;
        }
        Route::Health => {
            return respond(
                io,
                out,
                200,
                &[("Content-Type", b"text/plain")],
                b"ok\n",
                head_only,
                will_close,
            )
            .await;
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
        Route::NotFound => {
            ErrorReply::new(404, ErrorCode::NameUnknown, format!("no route for {path}"))
        }
    };
    respond_error(io, out, &reply, head_only, will_close).await
}

/// Whether buffered bytes can be the start of a request line: an uppercase
/// method token (after the empty lines a client may send between requests).
fn starts_like_http(buf: &[u8]) -> bool {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n');
    start.is_none_or(|i| buf[i].is_ascii_uppercase())
}

/// Makes the next close of `fd` a reset (SO_LINGER with a zero timeout).
fn abort(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the client socket, still open and owned by the
    // connection being ended; setsockopt only reads `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Writes a complete response with a small body from memory.
pub async fn respond<S: AsyncWriteRent>(
    io: &mut S,
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &[u8])],
    body: &[u8],
    head_only: bool,
    close: bool,
) -> Outcome {
    out.clear();
    write_status(out, status);
    for (n, v) in headers {
        write_header(out, n, v);
    }
    crate::wire::http::response::write_content_length(out, body.len() as u64);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    let buf = std::mem::take(out);
    let (res, buf) = io.write_all(buf).await;
    *out = buf;
    match res {
        Ok(_) if !close => Outcome::KeepAlive,
        _ => Outcome::Close,
    }
}

/// Writes an OCI JSON error response.
pub async fn respond_error<S: AsyncWriteRent>(
    io: &mut S,
    out: &mut Vec<u8>,
    e: &ErrorReply,
    head_only: bool,
    close: bool,
) -> Outcome {
    let body = e.body();
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("Content-Type", b"application/json"),
        ("Docker-Distribution-Api-Version", b"registry/2.0"),
    ];
    if e.status == 405 {
        headers.push(("Allow", b"GET, HEAD"));
    }
    respond(io, out, e.status, &headers, &body, head_only, close).await
}

async fn too_large<S: AsyncWriteRent>(io: &mut S, out: &mut Vec<u8>) {
    let e = ErrorReply::new(431, ErrorCode::Unknown, "request head too large");
    respond_error(io, out, &e, false, true).await;
}

async fn bad_head<S: AsyncWriteRent>(io: &mut S, out: &mut Vec<u8>, err: HeadError) {
    let e = ErrorReply::new(err.status(), ErrorCode::Unknown, err.message());
    respond_error(io, out, &e, false, true).await;
}
