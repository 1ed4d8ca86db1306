//! TLS upstream to TLS client without a user-space copy (see
//! `docs/design.md`, "TLS to TLS").

use std::io;
use std::time::Duration;

use super::buffers::RELAY_BUF;
use super::io::{timed, timed_buf, Pace};
use super::tap::BodyTap;
use super::{RelayError, Relayed};
use crate::tls::stream::{ClientTls, ServerTls};
use crate::upstream::{Conn, UpstreamIo};

/// [`relay_length`] from a TLS upstream to a TLS client. Records are opened
/// in place in the upstream connection's read buffer and, when both
/// connections use the same record layout (TLS 1.3 on both sides, the usual
/// case), re-encrypted for the client right there and sent from there: no
/// user-space copy at all. Otherwise each record is sealed into the client's
/// write buffer while it is still in cache (one copy). Either way a batch is
/// sent while the next one is read, and the last one is held back until the
/// digest matches.
pub(super) async fn relay_length_tls<T: BodyTap>(
    conn: &mut Conn,
    total: u64,
    client: &mut ServerTls,
    pace: &Pace,
    tap: &mut T,
) -> Result<Relayed, RelayError> {
    let r = relay_length_tls_inner(conn, total, client, pace, tap).await;
    if r.is_err() {
        // Sealed bytes of a failed body (the held-back end of one whose
        // digest does not match) must never reach the client later.
        client.discard_pending();
    }
    r
}

async fn relay_length_tls_inner<T: BodyTap>(
    conn: &mut Conn,
    total: u64,
    client: &mut ServerTls,
    pace: &Pace,
    tap: &mut T,
) -> Result<Relayed, RelayError> {
    let read_timeout = conn.read_timeout;
    // Body bytes that came with the response head first.
    let take = (conn.buffered().len() as u64).min(total) as usize;
    let mut remaining = total - take as u64; // not yet taken from the upstream
    tap.data(&conn.buffered()[..take]);
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
                tap.data(plain);
            })
            .map_err(RelayError::Upstream)?;
        remaining -= done.taken;
        if !done.run.is_empty() {
            if remaining == 0 {
                // The last piece is held back until the digest is known good.
                tap.end()?;
                timed(pace, up.send_run(client, done.run))
                    .await
                    .map_err(RelayError::Client)?;
            } else if done.exhausted {
                let sent = up
                    .swap_read_buffer(std::mem::take(&mut spare))
                    .map_err(RelayError::Upstream)?;
                let (sent, read, ()) = monoio::join!(
                    timed_buf(pace, client.send_ciphertext(sent, done.run)),
                    read_records(up, read_timeout, remaining, total),
                    tap.flush()
                );
                spare = sent.map_err(RelayError::Client)?;
                read?;
            } else {
                timed(pace, up.send_run(client, done.run))
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
        if remaining > 0 && up.open_buffered().map_err(RelayError::Upstream)? {
            let plain = up.plain();
            let n = (plain.len() as u64).min(remaining) as usize;
            tap.data(&plain[..n]);
            client
                .seal_pending(&plain[..n])
                .map_err(RelayError::Client)?;
            up.consume_plain(n);
            remaining -= n as u64;
            if remaining > 0 && client.pending() >= MAX_PENDING {
                send_pending(client, pace).await?;
            }
            if remaining > 0 {
                continue;
            }
        }
        if remaining == 0 {
            // The last piece is held back until the digest is known good
            // (checked already if it went out in place).
            tap.end()?;
            send_pending(client, pace).await?;
            return Ok(Relayed {
                bytes: total,
                // Bytes after the end of the body mean the framing is off.
                reusable: up.plain().is_empty(),
            });
        }
        // Nothing buffered: send what is sealed while reading more.
        let (sent, read, ()) = monoio::join!(
            send_pending(client, pace),
            read_records(up, read_timeout, remaining, total),
            tap.flush()
        );
        sent?;
        read?;
    }
}

/// Sealed bytes a TLS client may have waiting before they are sent: one
/// large write per upstream read.
const MAX_PENDING: usize = RELAY_BUF;

async fn send_pending(client: &mut ServerTls, pace: &Pace) -> Result<(), RelayError> {
    timed(pace, client.send_pending())
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
