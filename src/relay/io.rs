//! Timed reads and writes of the relay: every client write and upstream read
//! is bounded by a deadline, and a buffer taken by a cancelled operation is
//! replaced, so a relay never hangs and never loses its buffer.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use super::buffers::RELAY_BUF;
use super::RelayError;
use crate::upstream::Conn;

/// `io` within `limit` (a timeout is an error like any other).
pub(super) async fn timed<T>(
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
pub(super) async fn timed_buf(
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

/// Reads up to the buffer's capacity into `buf` (which must be empty).
pub(super) async fn read_upstream(conn: &mut Conn, buf: &mut Vec<u8>) -> Result<usize, RelayError> {
    let cap = buf.capacity();
    read_upstream_max(conn, buf, cap).await
}

pub(super) async fn read_upstream_max(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<usize, RelayError> {
    let owned = std::mem::take(buf);
    let (res, back) = conn.read_body(owned.slice_mut(0..max)).await;
    match back {
        Some(slice) => *buf = slice.into_inner(),
        None => *buf = Vec::with_capacity(RELAY_BUF),
    }
    res.map_err(RelayError::Upstream)
}

/// Writes all of `buf` to the client within `limit`, keeping the buffer.
pub(super) async fn write_buf<S: AsyncWriteRent>(
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
            *buf = Vec::with_capacity(RELAY_BUF);
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
