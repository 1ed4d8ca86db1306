//! Length-delimited bodies through the relay buffer: two buffers, one being
//! written to the client while the next is read from the upstream.

use std::io;

use monoio::io::AsyncWriteRent;

use super::io::{read_upstream, read_upstream_max, write_buf, Pace};
use super::tap::BodyTap;
use super::{RelayError, Relayed};
use crate::upstream::Conn;

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

pub(super) async fn relay_length<S: AsyncWriteRent, T: BodyTap>(
    conn: &mut Conn,
    total: u64,
    client: &mut S,
    pace: &Pace,
    tap: &mut T,
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
        tap.data(buf);
        // The last piece is held back until the digest is known good.
        if remaining == 0 {
            tap.end()?;
        }
        if remaining == 0 {
            write_buf(client, buf, pace).await?;
            return Ok(Relayed {
                bytes: total,
                reusable: true,
            });
        }
        let (written, read, ()) = monoio::join!(
            write_buf(client, buf, pace),
            read_piece(conn, &mut next, remaining, total),
            tap.flush()
        );
        written?;
        read?;
        std::mem::swap(buf, &mut next);
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
