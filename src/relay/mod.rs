//! Streaming a response body from an upstream connection to the client
//! through bounded, reused buffers, with taps on the bytes as they pass
//! (the digest check today; the cache's tee next).
//!
//! A body whose digest does not match is never completed: the final bytes are
//! withheld and the connection is closed, so the client sees a failed
//! transfer instead of a corrupt blob.
//!
//! - `length`: Content-Length bodies through the relay buffer;
//! - `tls`: TLS upstream to TLS client, re-encrypted in place;
//! - `chunked`: chunked and close-delimited bodies;
//! - `sink`: where bodies go ([`ClientSink`], [`Collect`]);
//! - `tap`: what watches them ([`tap::BodyTap`]);
//! - `buffers`: the per-worker relay buffer pool;
//! - `io`: timed reads and writes.

pub mod buffers;
mod chunked;
pub mod io;
mod length;
pub mod sink;
pub mod tap;
mod tls;

pub use buffers::{BufPool, RELAY_BUF};
pub use io::Pace;
pub use length::read_small_body;
pub use sink::{ClientSink, Collect};
pub use tap::BodyTap;

use std::io as stdio;

use crate::error::{Error, ErrorKind, Side};

use crate::upstream::{Conn, UpstreamIo};
use crate::wire::http::{ChunkedError, ClientFraming, RespFraming};
use chunked::relay_chunked;
use io::{read_upstream, write_buf, write_client};
use length::relay_length;
use tls::relay_length_tls;

/// Why a relay stopped before the body was complete.
#[derive(Debug)]
pub enum RelayError {
    /// The upstream failed, stalled or closed early.
    Upstream(stdio::Error),
    /// The client went away or stopped reading.
    Client(stdio::Error),
    /// The body's digest did not match the one requested.
    DigestMismatch,
    /// The upstream's chunked framing was broken.
    Framing(ChunkedError),
}

impl From<RelayError> for Error {
    fn from(e: RelayError) -> Error {
        let timed_out = |e: &stdio::Error| e.kind() == stdio::ErrorKind::TimedOut;
        match e {
            RelayError::Upstream(e) => Error::new(
                if timed_out(&e) {
                    ErrorKind::TimedOut
                } else {
                    ErrorKind::Cut
                },
                Side::Upstream,
                format!("upstream body: {e}"),
            ),
            RelayError::Client(e) => Error::new(
                if timed_out(&e) {
                    ErrorKind::TimedOut
                } else {
                    ErrorKind::Cut
                },
                Side::Downstream,
                format!("client: {e}"),
            ),
            RelayError::DigestMismatch => {
                Error::new(ErrorKind::DigestMismatch, Side::Upstream, "digest mismatch")
            }
            RelayError::Framing(e) => Error::new(
                ErrorKind::BadResponse,
                Side::Upstream,
                format!("upstream chunked framing: {e}"),
            ),
        }
    }
}

impl From<tap::TapRefusal> for RelayError {
    fn from(r: tap::TapRefusal) -> RelayError {
        match r {
            tap::TapRefusal::DigestMismatch => RelayError::DigestMismatch,
        }
    }
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

/// What the relay did.
pub struct Relayed {
    pub bytes: u64,
    /// The upstream connection ended exactly at the end of this body and
    /// may serve another request.
    pub reusable: bool,
}

/// Relays the body of a response whose head was already sent to the client.
/// `buf` is the relay buffer (kept, or replaced if a cancelled I/O took it).
pub async fn relay_body<S: ClientSink, T: BodyTap>(
    conn: &mut Conn,
    framing: RespFraming,
    client: &mut S,
    pace: &Pace,
    tap: &mut T,
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
                let r = relay_length_tls(conn, n, tls, pace, tap).await;
                if r.is_ok() {
                    client.sent_directly(n);
                }
                return r;
            }
            relay_length(conn, n, client, pace, tap, buf).await
        }
        RespFraming::Chunked => {
            let decode = to_client == ClientFraming::Dechunk;
            relay_chunked(conn, client, pace, tap, decode, buf).await
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
                    tap.data(buf);
                    bytes += buf.len() as u64;
                    if rechunk {
                        let mut framed = format!("{:x}\r\n", buf.len()).into_bytes();
                        framed.extend_from_slice(buf);
                        framed.extend_from_slice(b"\r\n");
                        write_client(client, framed, pace).await?;
                    } else {
                        write_buf(client, buf, pace).await?;
                    }
                }
                buf.clear();
                tap.flush().await;
                let n = read_upstream(conn, buf).await?;
                if n == 0 {
                    break;
                }
            }
            tap.end()?;
            if rechunk {
                write_client(client, b"0\r\n\r\n".to_vec(), pace).await?;
            }
            Ok(Relayed {
                bytes,
                reusable: false,
            })
        }
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tls_tests;
