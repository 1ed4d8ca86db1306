//! Streaming a response body from an upstream connection to the client
//! through one bounded, reused buffer, optionally checking its digest.
//!
//! A body whose digest does not match is never completed: the final bytes are
//! withheld and the connection is closed, so the client sees a failed
//! transfer instead of a corrupt blob.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use crate::tls::stream::{ClientTls, ServerTls};
use crate::upstream::{Conn, RespFraming, UpstreamIo};
use crate::wire::http::{ChunkedDecoder, ChunkedError};
use crate::wire::names::{Algorithm, Digest};

/// The client end of a relay. A TLS client takes a body from a TLS upstream
/// sealed straight from the upstream's decrypted records (see
/// [`relay_length_tls`]) instead of through the relay buffer.
pub trait ClientSink: AsyncWriteRent {
    /// The TLS stream underneath, when the client speaks TLS.
    fn tls(&mut self) -> Option<&mut ServerTls> {
        None
    }

    /// Notes body bytes sent through [`ClientSink::tls`] rather than `write`.
    fn sent_directly(&mut self, _bytes: u64) {}
}

impl ClientSink for monoio::net::TcpStream {}

impl ClientSink for ServerTls {
    fn tls(&mut self) -> Option<&mut ServerTls> {
        Some(self)
    }
}

/// Why a relay stopped before the body was complete.
#[derive(Debug)]
pub enum RelayError {
    /// The upstream failed, stalled or closed early.
    Upstream(io::Error),
    /// The client went away or stopped reading.
    Client(io::Error),
    /// The body's digest did not match the one requested.
    DigestMismatch,
    /// The upstream's chunked framing was broken.
    Framing(ChunkedError),
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Upstream(e) => write!(f, "upstream body: {e}"),
            RelayError::Client(e) => write!(f, "client: {e}"),
            RelayError::DigestMismatch => f.write_str("digest mismatch"),
            RelayError::Framing(e) => write!(f, "upstream chunked framing: {e}"),
        }
    }
}

/// Incremental digest check of a body against the digest that named it.
pub struct Verifier {
    ctx: ring::digest::Context,
    expected: Vec<u8>,
}

impl Verifier {
    /// A verifier for `digest`, or `None` for algorithms ocirelay cannot check.
    pub fn new(digest: &Digest<'_>) -> Option<Verifier> {
        let alg = match digest.algorithm() {
            Algorithm::Sha256 => &ring::digest::SHA256,
            Algorithm::Sha512 => &ring::digest::SHA512,
            Algorithm::Other => return None,
        };
        Some(Verifier {
            ctx: ring::digest::Context::new(alg),
            expected: hex_decode(digest.encoded())?,
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    pub fn matches(self) -> bool {
        self.ctx.finish().as_ref() == self.expected.as_slice()
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What the relay did.
pub struct Relayed {
    pub bytes: u64,
    /// The upstream connection ended exactly at the end of this body and
    /// may serve another request.
    pub reusable: bool,
}

/// How the client receives a body, relative to how the upstream sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// Byte for byte (Content-Length, or chunked passed through).
    Same,
    /// Close-delimited upstream body, chunked to an HTTP/1.1 client.
    Rechunk,
    /// Chunked upstream body, decoded for an HTTP/1.0 client (which then
    /// sees a close-delimited body).
    Dechunk,
}

impl ClientFraming {
    /// The framing an HTTP/1.`minor` client needs for an upstream `framing`.
    pub fn for_client(framing: RespFraming, minor: u8) -> ClientFraming {
        match (framing, minor) {
            (RespFraming::Close, 1) => ClientFraming::Rechunk,
            (RespFraming::Chunked, 0) => ClientFraming::Dechunk,
            _ => ClientFraming::Same,
        }
    }

    /// Whether the client connection must close to end the body.
    pub fn close_delimited(self, framing: RespFraming) -> bool {
        self == ClientFraming::Dechunk
            || (framing == RespFraming::Close && self != ClientFraming::Rechunk)
    }

    /// Writes the framing header lines for the client's response head.
    pub fn write_headers(self, framing: RespFraming, out: &mut Vec<u8>) {
        match (framing, self) {
            (RespFraming::Length(n), _) => {
                crate::wire::http::response::write_content_length(out, n)
            }
            (RespFraming::Chunked, ClientFraming::Same)
            | (RespFraming::Close, ClientFraming::Rechunk) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
            }
            _ => {}
        }
    }
}

/// Relays the body of a response whose head was already sent to the client.
/// `buf` is the relay buffer (kept, or replaced if a cancelled I/O took it).
pub async fn relay_body<S: ClientSink>(
    conn: &mut Conn,
    framing: RespFraming,
    client: &mut S,
    client_timeout: Duration,
    mut verify: Option<Verifier>,
    to_client: ClientFraming,
    buf: &mut Vec<u8>,
) -> Result<Relayed, RelayError> {
    let rechunk = to_client == ClientFraming::Rechunk;
    match framing {
        RespFraming::None => Ok(Relayed {
            bytes: 0,
            reusable: true,
        }),
        RespFraming::Length(n) => {
            if let (UpstreamIo::Tls(_), Some(tls)) = (&conn.io, client.tls()) {
                let r = relay_length_tls(conn, n, tls, client_timeout, verify).await;
                if r.is_ok() {
                    client.sent_directly(n);
                }
                return r;
            }
            relay_length(conn, n, client, client_timeout, verify, buf).await
        }
        RespFraming::Chunked => {
            let decode = to_client == ClientFraming::Dechunk;
            relay_chunked(conn, client, client_timeout, verify, decode, buf).await
        }
        RespFraming::Close => {
            let mut bytes = 0;
            // Leftover first.
            buf.clear();
            buf.extend_from_slice(conn.buffered());
            let n = buf.len();
            conn.consume(n);
            loop {
                if !buf.is_empty() {
                    if let Some(v) = verify.as_mut() {
                        v.update(buf);
                    }
                    bytes += buf.len() as u64;
                    if rechunk {
                        let mut framed = format!("{:x}\r\n", buf.len()).into_bytes();
                        framed.extend_from_slice(buf);
                        framed.extend_from_slice(b"\r\n");
                        write_client(client, framed, client_timeout).await?;
                    } else {
                        write_buf(client, buf, client_timeout).await?;
                    }
                }
                buf.clear();
                let n = read_upstream(conn, buf).await?;
                if n == 0 {
                    break;
                }
            }
            if verify.is_some_and(|v| !v.matches()) {
                return Err(RelayError::DigestMismatch);
            }
            if rechunk {
                write_client(client, b"0\r\n\r\n".to_vec(), client_timeout).await?;
            }
            Ok(Relayed {
                bytes,
                reusable: false,
            })
        }
    }
}

/// Reads a whole Content-Length body of `n` bytes (at most the capacity of
/// `buf`) into `buf`, so it can be checked before anything is sent.
pub async fn read_small_body(conn: &mut Conn, n: u64, buf: &mut Vec<u8>) -> Result<(), RelayError> {
    let n = n as usize;
    debug_assert!(n <= buf.capacity());
    let take = conn.buffered().len().min(n);
    buf.clear();
    buf.extend_from_slice(&conn.buffered()[..take]);
    conn.consume(take);
    while buf.len() < n {
        let mut chunk = Vec::with_capacity(n - buf.len());
        if read_upstream(conn, &mut chunk).await? == 0 {
            return Err(RelayError::Upstream(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed before the end of the body",
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(())
}

async fn relay_length<S: AsyncWriteRent>(
    conn: &mut Conn,
    total: u64,
    client: &mut S,
    client_timeout: Duration,
    mut verify: Option<Verifier>,
    buf: &mut Vec<u8>,
) -> Result<Relayed, RelayError> {
    let mut remaining = total; // not yet read from the upstream
    let take = (conn.buffered().len() as u64).min(remaining) as usize;
    buf.clear();
    buf.extend_from_slice(&conn.buffered()[..take]);
    conn.consume(take);
    if buf.is_empty() && remaining > 0 {
        read_piece(conn, buf, remaining, total).await?;
    }
    // Two buffers: the next piece is read from the upstream while the
    // previous one is written to the client, so neither side waits for the
    // other's round trip.
    let mut next = if remaining > buf.len() as u64 {
        Vec::with_capacity(buf.capacity())
    } else {
        Vec::new()
    };
    loop {
        remaining -= buf.len() as u64;
        if let Some(v) = verify.as_mut() {
            v.update(buf);
        }
        // The last piece is held back until the digest is known good.
        if remaining == 0 && verify.take().is_some_and(|v| !v.matches()) {
            return Err(RelayError::DigestMismatch);
        }
        if remaining == 0 {
            write_buf(client, buf, client_timeout).await?;
            return Ok(Relayed {
                bytes: total,
                reusable: true,
            });
        }
        let (written, read) = monoio::join!(
            write_buf(client, buf, client_timeout),
            read_piece(conn, &mut next, remaining, total)
        );
        written?;
        read?;
        std::mem::swap(buf, &mut next);
    }
}

/// [`relay_length`] from a TLS upstream to a TLS client. Records are opened
/// in place in the upstream connection's read buffer and, when both
/// connections use the same record layout (TLS 1.3 on both sides, the usual
/// case), re-encrypted for the client right there and sent from there: no
/// user-space copy at all. Otherwise each record is sealed into the client's
/// write buffer while it is still in cache (one copy). Either way a batch is
/// sent while the next one is read, and the last one is held back until the
/// digest matches.
async fn relay_length_tls(
    conn: &mut Conn,
    total: u64,
    client: &mut ServerTls,
    client_timeout: Duration,
    verify: Option<Verifier>,
) -> Result<Relayed, RelayError> {
    let r = relay_length_tls_inner(conn, total, client, client_timeout, verify).await;
    if r.is_err() {
        // Sealed bytes of a failed body (the held-back end of one whose
        // digest does not match) must never reach the client later.
        client.discard_pending();
    }
    r
}

async fn relay_length_tls_inner(
    conn: &mut Conn,
    total: u64,
    client: &mut ServerTls,
    client_timeout: Duration,
    mut verify: Option<Verifier>,
) -> Result<Relayed, RelayError> {
    let read_timeout = conn.read_timeout;
    // Body bytes that came with the response head first.
    let take = (conn.buffered().len() as u64).min(total) as usize;
    let mut remaining = total - take as u64; // not yet taken from the upstream
    if let Some(v) = verify.as_mut() {
        v.update(&conn.buffered()[..take]);
    }
    client
        .seal_pending(&conn.buffered()[..take])
        .map_err(RelayError::Client)?;
    conn.consume(take);
    let UpstreamIo::Tls(up) = &mut conn.io else {
        unreachable!("relay_length_tls is only called for TLS upstreams")
    };
    // The read buffer goes out with a run of resealed records while the
    // next bytes arrive in this one.
    let mut spare = Vec::new();
    loop {
        // In place, as far as the records allow.
        let done = up
            .reseal_buffered(client, remaining, |plain| {
                if let Some(v) = verify.as_mut() {
                    v.update(plain);
                }
            })
            .map_err(RelayError::Upstream)?;
        up.settle().await.map_err(RelayError::Upstream)?;
        remaining -= done.taken;
        if !done.run.is_empty() {
            if remaining == 0 {
                // The last piece is held back until the digest is known good.
                check_digest(&mut verify)?;
                timed(client_timeout, up.send_run(client, done.run))
                    .await
                    .map_err(RelayError::Client)?;
            } else if done.exhausted {
                let sent = up
                    .swap_read_buffer(std::mem::take(&mut spare))
                    .map_err(RelayError::Upstream)?;
                let (sent, read) = monoio::join!(
                    timed_buf(client_timeout, client.send_ciphertext(sent, done.run)),
                    read_records(up, read_timeout, remaining, total)
                );
                spare = sent.map_err(RelayError::Client)?;
                read?;
            } else {
                timed(client_timeout, up.send_run(client, done.run))
                    .await
                    .map_err(RelayError::Client)?;
            }
            if remaining > 0 {
                continue;
            }
        }
        // A record that cannot be re-encrypted in place (another layout, a
        // key update due towards the client, more than the body): one copy,
        // sealed into the client's write buffer.
        if remaining > 0 && up.open_buffered().await.map_err(RelayError::Upstream)? {
            let plain = up.plain();
            let n = (plain.len() as u64).min(remaining) as usize;
            if let Some(v) = verify.as_mut() {
                v.update(&plain[..n]);
            }
            client
                .seal_pending(&plain[..n])
                .map_err(RelayError::Client)?;
            up.consume_plain(n);
            remaining -= n as u64;
            if remaining > 0 && client.pending() >= MAX_PENDING {
                send_pending(client, client_timeout).await?;
            }
            if remaining > 0 {
                continue;
            }
        }
        if remaining == 0 {
            // The last piece is held back until the digest is known good
            // (checked already if it went out in place).
            check_digest(&mut verify)?;
            send_pending(client, client_timeout).await?;
            return Ok(Relayed {
                bytes: total,
                // Bytes after the end of the body mean the framing is off.
                reusable: up.plain().is_empty(),
            });
        }
        // Nothing buffered: send what is sealed while reading more.
        let (sent, read) = monoio::join!(
            send_pending(client, client_timeout),
            read_records(up, read_timeout, remaining, total)
        );
        sent?;
        read?;
    }
}

/// Finishes the digest check of a body (once; later calls pass).
fn check_digest(verify: &mut Option<Verifier>) -> Result<(), RelayError> {
    if verify.take().is_some_and(|v| !v.matches()) {
        return Err(RelayError::DigestMismatch);
    }
    Ok(())
}

/// `io` within `limit` (a timeout is an error like any other).
async fn timed<T>(
    limit: Duration,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    monoio::time::timeout(limit, io).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client write timed out",
        ))
    })
}

/// [`timed`] for an operation that gives its buffer back.
async fn timed_buf(
    limit: Duration,
    io: impl std::future::Future<Output = (io::Result<()>, Vec<u8>)>,
) -> io::Result<Vec<u8>> {
    match monoio::time::timeout(limit, io).await {
        Ok((Ok(()), buf)) => Ok(buf),
        Ok((Err(e), _)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client write timed out",
        )),
    }
}

/// Sealed bytes a TLS client may have waiting before they are sent: one
/// large write per upstream read.
const MAX_PENDING: usize = crate::worker::RELAY_BUF;

async fn send_pending(client: &mut ServerTls, limit: Duration) -> Result<(), RelayError> {
    timed(limit, client.send_pending())
        .await
        .map_err(RelayError::Client)
}

/// Reads until at least one more complete record is buffered.
async fn read_records(
    up: &mut ClientTls,
    limit: Duration,
    remaining: u64,
    total: u64,
) -> Result<(), RelayError> {
    match monoio::time::timeout(limit, up.fill_records()).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(RelayError::Upstream(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("upstream closed with {remaining} of {total} body bytes missing"),
        ))),
        Ok(Err(e)) => Err(RelayError::Upstream(e)),
        Err(_) => Err(RelayError::Upstream(io::Error::new(
            io::ErrorKind::TimedOut,
            "upstream read timed out",
        ))),
    }
}

/// Reads the next piece of a length-delimited body (at most `remaining`).
async fn read_piece(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    remaining: u64,
    total: u64,
) -> Result<(), RelayError> {
    let want = (buf.capacity().max(1) as u64).min(remaining) as usize;
    buf.clear();
    if read_upstream_max(conn, buf, want).await? == 0 {
        return Err(RelayError::Upstream(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("upstream closed with {remaining} of {total} body bytes missing"),
        )));
    }
    Ok(())
}

async fn relay_chunked<S: AsyncWriteRent>(
    conn: &mut Conn,
    client: &mut S,
    client_timeout: Duration,
    mut verify: Option<Verifier>,
    decode: bool,
    buf: &mut Vec<u8>,
) -> Result<Relayed, RelayError> {
    let mut dec = ChunkedDecoder::new();
    let mut bytes = 0u64;
    // Decoded payload for HTTP/1.0 clients (rare: a separate buffer is fine).
    let mut decoded = Vec::new();
    buf.clear();
    buf.extend_from_slice(conn.buffered());
    let n = buf.len();
    conn.consume(n);
    loop {
        if !buf.is_empty() {
            let consumed = dec
                .feed(buf, |data| {
                    bytes += data.len() as u64;
                    if let Some(v) = verify.as_mut() {
                        v.update(data);
                    }
                    if decode {
                        decoded.extend_from_slice(data);
                    }
                })
                .map_err(RelayError::Framing)?;
            let extra = buf.len() - consumed;
            buf.truncate(consumed);
            if dec.is_done() && verify.take().is_some_and(|v| !v.matches()) {
                return Err(RelayError::DigestMismatch);
            }
            if decode {
                decoded = write_client(client, decoded, client_timeout).await?;
                decoded.clear();
            } else {
                write_buf(client, buf, client_timeout).await?;
            }
            if dec.is_done() {
                // Bytes after the end of the body mean the framing is off:
                // do not reuse this connection.
                return Ok(Relayed {
                    bytes,
                    reusable: extra == 0,
                });
            }
        }
        buf.clear();
        if read_upstream(conn, buf).await? == 0 {
            return Err(RelayError::Upstream(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed inside a chunked body",
            )));
        }
    }
}

/// Reads up to the buffer's capacity into `buf` (which must be empty).
async fn read_upstream(conn: &mut Conn, buf: &mut Vec<u8>) -> Result<usize, RelayError> {
    let cap = buf.capacity();
    read_upstream_max(conn, buf, cap).await
}

async fn read_upstream_max(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<usize, RelayError> {
    let owned = std::mem::take(buf);
    let (res, back) = conn.read_body(owned.slice_mut(0..max)).await;
    match back {
        Some(slice) => *buf = slice.into_inner(),
        None => *buf = Vec::with_capacity(crate::worker::RELAY_BUF),
    }
    res.map_err(RelayError::Upstream)
}

/// Writes all of `buf` to the client within `limit`, keeping the buffer.
async fn write_buf<S: AsyncWriteRent>(
    client: &mut S,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<(), RelayError> {
    let owned = std::mem::take(buf);
    match monoio::time::timeout(limit, client.write_all(owned)).await {
        Ok((res, back)) => {
            *buf = back;
            res.map(|_| ()).map_err(RelayError::Client)
        }
        Err(_) => {
            *buf = Vec::with_capacity(crate::worker::RELAY_BUF);
            Err(RelayError::Client(io::Error::new(
                io::ErrorKind::TimedOut,
                "client write timed out",
            )))
        }
    }
}

/// Writes an owned buffer to the client within `limit`.
pub async fn write_client<S: AsyncWriteRent, B: IoBuf>(
    client: &mut S,
    data: B,
    limit: Duration,
) -> Result<B, RelayError> {
    match monoio::time::timeout(limit, client.write_all(data)).await {
        Ok((Ok(_), b)) => Ok(b),
        Ok((Err(e), _)) => Err(RelayError::Client(e)),
        Err(_) => Err(RelayError::Client(io::Error::new(
            io::ErrorKind::TimedOut,
            "client write timed out",
        ))),
    }
}

/// An [`AsyncWriteRent`] that keeps what it is given, up to a limit (past
/// it the write fails, which ends the relay), or forgets everything.
pub struct Collect {
    data: Vec<u8>,
    max: usize,
    keep: bool,
}

impl Collect {
    /// Keeps up to `max` bytes.
    pub fn new(max: usize) -> Collect {
        Collect {
            data: Vec::new(),
            max,
            keep: true,
        }
    }

    /// Accepts and forgets any number of bytes (draining a body to reuse
    /// its connection).
    pub fn discard() -> Collect {
        Collect {
            data: Vec::new(),
            max: usize::MAX,
            keep: false,
        }
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.data
    }
}

impl ClientSink for Collect {}

impl AsyncWriteRent for Collect {
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        let n = buf.bytes_init();
        if !self.keep {
            return (Ok(n), buf);
        }
        if self.data.len() + n > self.max {
            return (Err(io::Error::other("body over the limit")), buf);
        }
        // SAFETY: `read_ptr` is valid for `bytes_init` bytes (IoBuf contract).
        let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), n) };
        self.data.extend_from_slice(bytes);
        (Ok(n), buf)
    }
    async fn writev<T: monoio::buf::IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (Ok(0), buf)
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    async fn shutdown(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_accepts_the_right_bytes_only() {
        // sha256("hello")
        let d = Digest::parse(
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        )
        .unwrap();
        let mut v = Verifier::new(&d).unwrap();
        v.update(b"hel");
        v.update(b"lo");
        assert!(v.matches());
        let mut v = Verifier::new(&d).unwrap();
        v.update(b"hellO");
        assert!(!v.matches());
        let other = Digest::parse("blake3:abc").unwrap();
        assert!(Verifier::new(&other).is_none());
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tls_tests;
