//! The body phase: the upstream's body after the head, through the relay
//! and its taps. Shared by registry requests and the token endpoint.

use crate::downstream::{Outcome, Reply};
use crate::error::{Error, ErrorKind, Side};
use crate::ops::summary::RequestSummary;
use crate::relay::{self, BodyTap, ClientSink, Pace, RelayError, RELAY_BUF};
use crate::upstream::{Conn, ResponseHead};
use crate::wire::http::{ClientFraming, RespFraming};
use crate::worker::Worker;

/// Bodies up to this size that arrived with their head are sent with it.
const SMALL_BODY: u64 = 64 * 1024;

/// Sends the finished head in `reply`, then streams the upstream body after
/// it. The upstream connection goes back to the pool only if its body ended
/// cleanly; a failure once the head is out resets the client connection,
/// the only honest signal left.
#[allow(clippy::too_many_arguments)]
pub async fn stream<S: ClientSink, T: BodyTap>(
    w: &Worker,
    mut conn: Conn,
    head: &ResponseHead,
    client: &mut S,
    reply: &mut Reply<'_>,
    to_client: ClientFraming,
    tap: &mut T,
    summary: &mut RequestSummary<'_>,
) -> Outcome {
    let limit = w.cfg.timeouts.client_write;
    // A small body (a manifest by tag, a token) goes out in the same write
    // as its head: one TLS record, one syscall. Upstreams often send the
    // body apart from the head (a record and a segment of its own): then
    // it is gathered behind the head as it comes.
    if let RespFraming::Length(n) = head.framing {
        if n <= SMALL_BODY && !tap.active() {
            let n = n as usize;
            let mut got = 0;
            loop {
                let take = conn.buffered().len().min(n - got);
                // Taps that do not judge the body still see it.
                tap.data(&conn.buffered()[..take]);
                reply.append_relayed(&conn.buffered()[..take]);
                conn.consume(take);
                got += take;
                if got == n {
                    break;
                }
                let e = match conn.fill().await {
                    Ok(0) => Error::new(
                        ErrorKind::Cut,
                        Side::Upstream,
                        "upstream body: upstream closed before the end of the body",
                    ),
                    Ok(_) => continue,
                    Err(e) => RelayError::Upstream(e).into(),
                };
                // What a streamed relay does: the head and the bytes that
                // came, then a reset.
                let _ = reply.send(client, limit).await;
                summary.error = Some(e);
                return Outcome::Abort;
            }
            summary.pulled += n as u64;
            if head.keep_alive {
                w.upstreams.release(conn);
            }
            return match reply.send(client, limit).await {
                true => reply.outcome(),
                false => Outcome::Close,
            };
        }
    }
    if !reply.send(client, limit).await {
        return Outcome::Close;
    }
    let mut buf = w.bufs.take();
    let result = relay::relay_body(
        &mut conn,
        head.framing,
        client,
        &Pace::for_client(client, &w.cfg),
        tap,
        to_client,
        &mut buf,
    )
    .await;
    w.bufs.give(buf);
    match result {
        Ok(done) => {
            summary.pulled += done.bytes;
            if done.reusable && head.keep_alive {
                w.upstreams.release(conn);
            }
            reply.outcome()
        }
        Err(e) => {
            summary.error = Some(e.into());
            Outcome::Abort
        }
    }
}

/// A small body named by its digest (a manifest, a config, an empty blob),
/// read whole and checked before anything is sent, so that a mismatch is a
/// clean 502 instead of a cut connection: the checked bytes, or why not.
/// A cut upstream is reported as a cut, a stall as a timeout (504), and
/// only bytes that arrived whole and differ as a digest mismatch.
pub async fn read_verified<T: BodyTap>(
    w: &Worker,
    conn: &mut Conn,
    len: u64,
    tap: &mut T,
) -> Result<Vec<u8>, Error> {
    debug_assert!(len <= RELAY_BUF as u64);
    let mut buf = w.bufs.take();
    let r = relay::read_small_body(conn, len, &mut buf).await;
    let checked = match r {
        Ok(()) => {
            tap.data(&buf);
            tap.end()
                .map_err(|refusal| Error::from(RelayError::from(refusal)))
        }
        Err(e) => Err(e.into()),
    };
    match checked {
        Ok(()) => Ok(buf),
        Err(e) => {
            w.bufs.give(buf);
            Err(e)
        }
    }
}
