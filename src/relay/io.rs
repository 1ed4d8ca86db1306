//! Timed reads and writes of the relay: every client write is paced (see
//! [`Pace`]: no progress, or too slow, is a cut) and every upstream read
//! bounded by a deadline, and a buffer taken by a cancelled operation is
//! replaced, so a relay never hangs and never loses its buffer.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use super::buffers::RELAY_BUF;
use super::{ClientSink, RelayError};
use crate::config::Config;
use crate::upstream::Conn;

/// How long a write to a client may wait, and how slowly the client may
/// read: the limits of one response's body, and what was measured of it.
///
/// A write waits in ticks; at each tick the socket says how many bytes the
/// client has acknowledged so far (`TCP_INFO`, see
/// [`crate::sys::tcp_bytes_acked`]). A client is cut when it acknowledged
/// nothing for `stall` (`client_write_secs`: any byte taken starts the wait
/// again, however long the whole write takes), or when, over
/// [`RATE_WINDOW`] of waiting, it took fewer than `min_rate` bytes a second
/// (`client_min_bytes_per_sec`). Only waits are measured: a write that
/// completes within a tick costs no system call, and time spent on the
/// upstream never counts against the client. Samples from one write carry
/// over to the next when they follow each other closely (a slow reader's
/// writes each wait), so small writes are measured too.
pub struct Pace {
    /// The client's TCP socket; None: no measurement, `stall` bounds the
    /// whole write (memory sinks, tests).
    fd: Option<RawFd>,
    stall: Duration,
    min_rate: u64,
    tick: Duration,
    seen: Cell<Option<Seen>>,
    window: Cell<Window>,
}

/// The last sample: bytes acknowledged, when, and when the count last grew.
#[derive(Clone, Copy)]
struct Seen {
    acked: u64,
    at: Instant,
    progress_at: Instant,
}

/// Waiting time and bytes acknowledged during it, since the rate was last
/// judged.
#[derive(Clone, Copy, Default)]
struct Window {
    waited: Duration,
    acked: u64,
}

/// Waiting measured before the rate is judged: long enough to average over
/// TCP's bursts (a window update lets a whole window through at once).
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

impl Pace {
    /// The pace for writes to `client` under `cfg`'s limits.
    /// A shaped response (`[client_limits]` byte rates, which may hold a
    /// write back for as long as a budget shared by many clients takes to
    /// refill) is not held to the minimum rate: shaping slows, never cuts.
    pub fn for_client<S: ClientSink>(client: &S, cfg: &Config) -> Pace {
        let min_rate = if client.shaped() {
            0
        } else {
            cfg.limits.client_min_rate
        };
        Pace::new(client.raw_fd(), cfg.timeouts.client_write, min_rate)
    }

    pub fn new(fd: Option<RawFd>, stall: Duration, min_rate: u64) -> Pace {
        Pace {
            fd,
            stall,
            min_rate,
            tick: (stall.min(RATE_WINDOW) / 4).max(Duration::from_millis(10)),
            seen: Cell::new(None),
            window: Cell::new(Window::default()),
        }
    }

    /// No measurement: the whole write within `limit`.
    pub fn fixed(limit: Duration) -> Pace {
        Pace::new(None, limit, 0)
    }

    /// Runs `io` (a write to the client) under this pace.
    pub async fn run<F: std::future::Future>(&self, io: F) -> io::Result<F::Output> {
        let Some(fd) = self.fd else {
            return monoio::time::timeout(self.stall, io)
                .await
                .map_err(|_| cut("client write timed out".into()));
        };
        let mut io = std::pin::pin!(io);
        loop {
            match monoio::time::timeout(self.tick, io.as_mut()).await {
                Ok(out) => return Ok(out),
                Err(_) => self.judge(fd, Instant::now())?,
            }
        }
    }

    /// A tick of a waiting write: one sample, and the verdict.
    fn judge(&self, fd: RawFd, now: Instant) -> io::Result<()> {
        // Without TCP_INFO nothing counts as progress: `stall` bounds the wait.
        let acked = crate::sys::tcp_bytes_acked(fd);
        let prev = self
            .seen
            .get()
            .filter(|p| now.saturating_duration_since(p.at) <= self.tick * 2);
        let Some(prev) = prev else {
            // The first sample of this wait (an earlier one is too old to
            // measure from): a baseline.
            let acked = acked.unwrap_or(0);
            self.seen.set(Some(Seen {
                acked,
                at: now,
                progress_at: now,
            }));
            return Ok(());
        };
        let acked = acked.unwrap_or(prev.acked);
        let moved = acked.saturating_sub(prev.acked);
        let progress_at = if moved > 0 { now } else { prev.progress_at };
        self.seen.set(Some(Seen {
            acked,
            at: now,
            progress_at,
        }));
        if now.saturating_duration_since(progress_at) >= self.stall {
            return Err(cut(format!(
                "client accepted no bytes for {} s",
                self.stall.as_secs_f64()
            )));
        }
        let mut w = self.window.get();
        w.waited += now.saturating_duration_since(prev.at);
        w.acked += moved;
        if self.min_rate > 0 && w.waited >= RATE_WINDOW {
            let rate = w.acked as f64 / w.waited.as_secs_f64();
            if rate < self.min_rate as f64 {
                return Err(cut(format!(
                    "client read {rate:.0} bytes/s, under the minimum of {}",
                    self.min_rate
                )));
            }
            w = Window::default();
        }
        self.window.set(w);
        Ok(())
    }
}

/// A client cut off by its pace.
fn cut(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, why)
}

/// `io` under `pace` (a cut is an error like any other).
pub(super) async fn timed<T>(
    pace: &Pace,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    pace.run(io).await?
}

/// [`timed`] for an operation that gives its buffer back.
pub(super) async fn timed_buf(
    pace: &Pace,
    io: impl std::future::Future<Output = (io::Result<()>, Vec<u8>)>,
) -> io::Result<Vec<u8>> {
    match pace.run(io).await? {
        (Ok(()), buf) => Ok(buf),
        (Err(e), _) => Err(e),
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

/// Writes all of `buf` to the client under `pace`, keeping the buffer.
pub(super) async fn write_buf<S: AsyncWriteRent>(
    client: &mut S,
    buf: &mut Vec<u8>,
    pace: &Pace,
) -> Result<(), RelayError> {
    let owned = std::mem::take(buf);
    match pace.run(client.write_all(owned)).await {
        Ok((res, back)) => {
            *buf = back;
            res.map(|_| ()).map_err(RelayError::Client)
        }
        Err(e) => {
            *buf = Vec::with_capacity(RELAY_BUF);
            Err(RelayError::Client(e))
        }
    }
}

/// Writes an owned buffer to the client under `pace`.
pub async fn write_client<S: AsyncWriteRent, B: IoBuf>(
    client: &mut S,
    data: B,
    pace: &Pace,
) -> Result<B, RelayError> {
    match pace.run(client.write_all(data)).await {
        Ok((Ok(_), b)) => Ok(b),
        Ok((Err(e), _)) => Err(RelayError::Client(e)),
        Err(e) => Err(RelayError::Client(e)),
    }
}
