//! Sending stored bytes to a client: a complete object (a hit), or one still
//! being downloaded by another request (a follower tails the growing file
//! and holds its last byte back until the download is verified).
//! Nothing waits for the disk on a worker: disk reads go through monoio's
//! file API (io_uring); what the page cache holds is read with a `preadv2`
//! that never waits (TLS clients) or sent with `sendfile` once the page
//! cache is known to hold it (plain-HTTP clients).

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::inflight::{Fill, FillState, UNKNOWN};
use crate::relay::io::{write_client, Pace};
use crate::relay::{ClientSink, RelayError, RELAY_BUF};
use crate::tls::stream::ServerTls;

/// Bytes checked for residency and handed to sendfile at a time (no buffer
/// of ours to bound; a smaller batch costs more residency checks).
const SENDFILE_BATCH: u64 = 4 << 20;

/// How often a follower looks at the leader's progress when it has caught
/// up (an atomic load; the file is read only when there is more).
const FOLLOW_POLL: Duration = Duration::from_millis(2);

/// Sends `len` bytes of `file` from `offset` to the client, through `buf`.
/// A TLS client's bytes are read straight into whole-record slots and
/// sealed there (see [`send_sealed`]).
pub async fn send_range<S: ClientSink>(
    file: &monoio::fs::File,
    mut offset: u64,
    len: u64,
    client: &mut S,
    buf: &mut Vec<u8>,
    pace: &Pace,
) -> Result<(), RelayError> {
    let end = offset + len;
    let mut slots = Vec::new();
    let fd = file.as_raw_fd();
    while offset < end {
        // A plain-HTTP client: what the page cache holds goes to the socket
        // with sendfile (page cache to socket in the kernel, no copy of
        // ours). Only what is resident: a sendfile that had to read the
        // disk would block the worker; the rest is read through io_uring
        // below.
        if let Some(tcp) = client.plain_tcp() {
            let n = (end - offset).min(SENDFILE_BATCH);
            if crate::sys::resident(fd, offset, n) {
                let sent = send_file(tcp, fd, offset, n, pace).await?;
                client.sent_directly(sent);
                offset += sent;
                continue;
            }
        }
        let want = ((end - offset) as usize).min(RELAY_BUF);
        if let Some(tls) = client.tls() {
            if let Some(run) = tls.lay_out_records(want, buf, &mut slots) {
                send_sealed(file, offset, tls, buf, &slots, run, pace).await?;
                client.sent_directly(want as u64);
                offset += want as u64;
                continue;
            }
        }
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
        *buf = write_client(client, b, pace).await?;
    }
    Ok(())
}

/// Sends `len` bytes of `fd` from `offset` to a plain-HTTP client with
/// non-blocking `sendfile`, waiting for the socket to take more (io_uring
/// poll) when its buffer is full; paced per wait (see [`Pace`]).
async fn send_file(
    tcp: &monoio::net::TcpStream,
    fd: std::os::fd::RawFd,
    mut offset: u64,
    len: u64,
    pace: &Pace,
) -> Result<u64, RelayError> {
    let end = offset + len;
    while offset < end {
        let count = (end - offset) as usize;
        match crate::sys::sendfile_nonblocking(tcp.as_raw_fd(), fd, &mut offset, count) {
            Ok(0) => {
                return Err(RelayError::Upstream(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached object shorter than its length",
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match pace.run(tcp.writable(false)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) | Err(e) => return Err(RelayError::Client(e)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RelayError::Client(e)),
        }
    }
    Ok(len)
}

/// One batch of a TLS client's bytes: `file` from `offset` read into the
/// record slots `slots` laid out in `buf` (what the page cache holds with
/// one `preadv2` that never waits; the rest, if any, through io_uring),
/// sealed in place, and sent. One kernel copy and one AES pass per byte;
/// no SHA-256 (the object was verified when stored).
async fn send_sealed(
    file: &monoio::fs::File,
    offset: u64,
    tls: &mut ServerTls,
    buf: &mut Vec<u8>,
    slots: &[std::ops::Range<usize>],
    run: std::ops::Range<usize>,
    pace: &Pace,
) -> Result<(), RelayError> {
    let want: usize = slots.iter().map(|r| r.len()).sum();
    let got = crate::sys::read_cached(file.as_raw_fd(), buf, slots, offset)
        .map_err(RelayError::Upstream)?;
    if got < want {
        // Not (all) in the page cache: the rest from the disk through
        // io_uring, then into its slots (the cold path pays one copy).
        let rest = vec![0u8; want - got];
        let (res, rest) = file.read_exact_at(rest, offset + got as u64).await;
        if let Err(e) = res {
            return Err(RelayError::Upstream(match e.kind() {
                io::ErrorKind::UnexpectedEof => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached object shorter than its length",
                ),
                _ => e,
            }));
        }
        let mut skip = got;
        let mut from = 0;
        for r in slots {
            if skip >= r.len() {
                skip -= r.len();
                continue;
            }
            let part = r.start + skip..r.end;
            buf[part.clone()].copy_from_slice(&rest[from..from + part.len()]);
            from += part.len();
            skip = 0;
        }
    }
    tls.seal_laid_out(buf, slots).map_err(RelayError::Client)?;
    let out = std::mem::take(buf);
    match pace.run(tls.send_ciphertext(out, run)).await {
        Ok((res, back)) => {
            *buf = back;
            res.map_err(RelayError::Client)
        }
        Err(e) => Err(RelayError::Client(e)),
    }
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
    pace: &Pace,
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
            send_range(file, sent, ready - sent, client, buf, pace).await?;
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
