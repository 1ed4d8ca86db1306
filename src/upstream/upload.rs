//! A request whose body is streamed from a local file: an upload to the
//! shared tier's object store (one PUT, or one part of a multipart upload).
//! The body goes out in bounded chunks, each read from the file as it is
//! sent, so that a multi-GB blob never sits in memory.

use std::fmt;
use std::io;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;

use super::exchange::{build_request, read_head, Exchange, ResponseHead};
use super::pool::{Conn, PoolKey, Upstreams};
use crate::error::UpstreamError;
use crate::wire::http::response::write_decimal;

/// One chunk of a streamed request body: large enough that a part of
/// 64 MiB is a few hundred writes, small enough to be a buffer per upload.
const CHUNK: usize = 256 * 1024;

/// Why a request with a file body failed.
#[derive(Debug)]
pub enum SendFileError {
    /// The connection or the upstream failed.
    Upstream(UpstreamError),
    /// The local file could not be read, or ended before `len` bytes.
    File(io::Error),
}

impl fmt::Display for SendFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendFileError::Upstream(e) => write!(f, "{e}"),
            SendFileError::File(e) => write!(f, "reading the local file: {e}"),
        }
    }
}

impl Upstreams {
    /// Sends `ex` (its `body` is not used) with `len` bytes of `file` from
    /// `offset` as the body, then reads the response head (left unconsumed,
    /// as [`Upstreams::send`] does). `stall` bounds each step (one chunk
    /// read and written; the response head), not the whole request: an
    /// upload over a slow link goes on as long as it makes progress.
    ///
    /// A pooled connection that fails before any response byte is replaced
    /// by a fresh one, once: the body is read again from the file, and an
    /// upload of the same bytes to the same key may be repeated.
    pub async fn send_file(
        &self,
        ex: &Exchange<'_>,
        file: &monoio::fs::File,
        offset: u64,
        len: u64,
        stall: Duration,
    ) -> Result<(Conn, ResponseHead), SendFileError> {
        let mut length = Vec::with_capacity(20);
        write_decimal(&mut length, len);
        let mut headers = ex.headers.to_vec();
        headers.push(("Content-Length", &length));
        let head = build_request(&Exchange {
            method: ex.method,
            url: ex.url,
            trust: ex.trust,
            headers: &headers,
            body: None,
            read_timeout: None,
        });
        let mut buf = Vec::with_capacity(CHUNK);
        // The connection's own reads (the response head, then its body)
        // are bounded by `stall` too, not by the registries' `upstream_read`.
        let timed = |mut conn: Conn| {
            conn.read_timeout = stall;
            conn
        };
        if let Some(conn) = self.checkout(&ex.url.origin, ex.trust).map(timed) {
            match stream_file(conn, &head, file, offset, len, stall, buf).await {
                Ok(r) => return Ok(r),
                Err((SendFileError::Upstream(e), back)) if e.retryable() => buf = back,
                Err((e, _)) => return Err(e),
            }
        }
        let key = PoolKey {
            origin: ex.url.origin.clone(),
            trust: ex.trust,
        };
        let conn = timed(self.connect(&key).await.map_err(SendFileError::Upstream)?);
        stream_file(conn, &head, file, offset, len, stall, buf)
            .await
            .map_err(|(e, _)| e)
    }
}

/// Writes `head`, then the file's bytes `offset..offset + len` chunk by
/// chunk, then reads the response head. On failure the chunk buffer comes
/// back for a retry (empty if a timeout took it).
async fn stream_file(
    mut conn: Conn,
    head: &[u8],
    file: &monoio::fs::File,
    offset: u64,
    len: u64,
    stall: Duration,
    mut buf: Vec<u8>,
) -> Result<(Conn, ResponseHead), (SendFileError, Vec<u8>)> {
    let host = conn.key.origin.host.clone();
    let timed_out = |phase| {
        SendFileError::Upstream(UpstreamError::Timeout {
            host: host.clone(),
            phase,
        })
    };
    let io_failed = |source, conn: &Conn| {
        SendFileError::Upstream(UpstreamError::Io {
            host: host.clone(),
            source,
            before_response: conn.reused,
        })
    };

    buf.clear();
    buf.extend_from_slice(head);
    let mut sent = 0u64;
    loop {
        // Phase 1: fill the buffer from the file (after the head, the
        // first time), up to a chunk or what is left of the body.
        let want = (CHUNK - buf.len()).min((len - sent) as usize);
        if want > 0 {
            let at = buf.len();
            let slice = monoio::buf::IoBufMut::slice_mut(buf, at..at + want);
            let (res, slice) =
                match monoio::time::timeout(stall, file.read_at(slice, offset + sent)).await {
                    Ok(r) => r,
                    Err(_) => return Err((timed_out("reading the local file"), Vec::new())),
                };
            buf = slice.into_inner();
            match res {
                Ok(0) => {
                    return Err((
                        SendFileError::File(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the file ended after {sent} of {len} bytes"),
                        )),
                        buf,
                    ))
                }
                Ok(n) => sent += n as u64,
                Err(e) => return Err((SendFileError::File(e), buf)),
            }
        }
        // Phase 2: send what the buffer holds.
        let (res, back) = match monoio::time::timeout(stall, conn.io.write_all(buf)).await {
            Ok(r) => r,
            Err(_) => return Err((timed_out("sending the request body"), Vec::new())),
        };
        buf = back;
        if let Err(e) = res {
            return Err((io_failed(e, &conn), buf));
        }
        buf.clear();
        if sent == len {
            break;
        }
    }
    // Phase 3: the answer.
    match monoio::time::timeout(stall, read_head(&mut conn, false)).await {
        Ok(Ok(head)) => Ok((conn, head)),
        Ok(Err(e)) => Err((SendFileError::Upstream(e), buf)),
        Err(_) => Err((timed_out("waiting for response"), buf)),
    }
}
