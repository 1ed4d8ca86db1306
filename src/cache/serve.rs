//! Sending stored bytes to a client: a complete object (a hit), or one still
//! being downloaded by another request (a follower tails the growing file
//! and holds its last byte back until the download is verified).
//! Disk reads go through monoio's file API (io_uring), never a blocking
//! read on a worker.

use std::io;
use std::time::{Duration, Instant};

use super::inflight::{Fill, FillState, UNKNOWN};
use crate::relay::io::write_client;
use crate::relay::{ClientSink, RelayError, RELAY_BUF};

/// How often a follower looks at the leader's progress when it has caught
/// up (an atomic load; the file is read only when there is more).
const FOLLOW_POLL: Duration = Duration::from_millis(2);

/// Sends `len` bytes of `file` from `offset` to the client, through `buf`.
pub async fn send_range<S: ClientSink>(
    file: &monoio::fs::File,
    mut offset: u64,
    len: u64,
    client: &mut S,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<(), RelayError> {
    let end = offset + len;
    while offset < end {
        let want = ((end - offset) as usize).min(RELAY_BUF);
        let mut b = std::mem::take(buf);
        b.clear();
        b.reserve(want);
        let slice = monoio::buf::IoBufMut::slice_mut(b, 0..want);
        let (res, back) = file.read_at(slice, offset).await;
        let b = back.into_inner();
        let n = match res {
            Ok(0) => {
                *buf = b;
                return Err(RelayError::Upstream(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached object shorter than its length",
                )));
            }
            Ok(n) => n,
            Err(e) => {
                *buf = b;
                return Err(RelayError::Upstream(e));
            }
        };
        offset += n as u64;
        *buf = write_client(client, b, limit).await?;
    }
    Ok(())
}

/// Follows a download in progress, bytes `from..to`: sends what the leader
/// has written as it comes, and the last byte of the range only once the
/// whole object is verified (a range is no less a promise than a whole
/// body: a client must never see a complete one of unverified bytes). A leader that fails mid-way fails this too (the client is cut
/// before the declared length); a leader that stalls for `stall` does too.
pub async fn follow<S: ClientSink>(
    fill: &Fill,
    file: &monoio::fs::File,
    (from, to): (u64, u64),
    client: &mut S,
    buf: &mut Vec<u8>,
    limit: Duration,
    stall: Duration,
) -> Result<(), RelayError> {
    debug_assert_ne!(fill.total(), UNKNOWN);
    debug_assert!(from < to && to <= fill.total());
    let total = to;
    let mut sent = from;
    let mut progress = Instant::now();
    loop {
        let state = fill.state();
        let ready = match state {
            FillState::Done => total,
            FillState::Running => fill.written().min(total.saturating_sub(1)),
            FillState::Failed | FillState::Abandoned => {
                return Err(RelayError::Upstream(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the download this request followed failed",
                )))
            }
        };
        if sent < ready {
            send_range(file, sent, ready - sent, client, buf, limit).await?;
            sent = ready;
            progress = Instant::now();
            continue;
        }
        if state == FillState::Done {
            return Ok(());
        }
        if progress.elapsed() > stall {
            return Err(RelayError::Upstream(io::Error::new(
                io::ErrorKind::TimedOut,
                "the download this request followed stalled",
            )));
        }
        monoio::time::sleep(FOLLOW_POLL).await;
    }
}

/// Waits until the leader of `fill` has the upstream's answer: `Some(len)`
/// when a body is coming, `None` when the leader abandoned the download
/// (then the caller makes its own request).
pub async fn await_head(fill: &Fill, stall: Duration) -> Option<u64> {
    let started = Instant::now();
    loop {
        match fill.state() {
            FillState::Abandoned | FillState::Failed => return None,
            _ => {}
        }
        let total = fill.total();
        if total != UNKNOWN {
            return Some(total);
        }
        if started.elapsed() > stall {
            return None;
        }
        monoio::time::sleep(FOLLOW_POLL).await;
    }
}
