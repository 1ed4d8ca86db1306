//! A request body: what is already buffered behind the head, how it is
//! framed, and reading it whole (bounded) for the one handler that takes a
//! body (`POST /token`).

use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use crate::wire::http::{BodyFraming, ChunkedDecoder};

/// A request body not read yet: what is already buffered behind the head,
/// and how it is framed. Handlers that need the body read it through here;
/// the connection loop then knows how much of its buffer was consumed.
pub struct PendingBody<'a> {
    pub framing: BodyFraming,
    buffered: &'a [u8],
    pub(crate) consumed: usize,
    pub(crate) finished: bool,
    expect_continue: bool,
    /// Bytes read from the socket past the end of the body: the start of the
    /// next pipelined request, handed back to the connection loop.
    pub(crate) overflow: Vec<u8>,
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Malformed,
    /// The body did not arrive in time: a read waited its whole limit, or
    /// the body as a whole took longer than its deadline.
    TimedOut,
    Io,
}

/// How long a request body may take: each read, and the body as a whole.
/// A per-read limit alone lets a client hold the connection for ever with
/// a byte every few seconds (slowloris through the body).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    pub per_read: Duration,
    pub whole: Duration,
}

impl<'a> PendingBody<'a> {
    pub fn new(framing: BodyFraming, buffered: &'a [u8], expect_continue: bool) -> Self {
        PendingBody {
            framing,
            buffered,
            consumed: 0,
            finished: framing == BodyFraming::None,
            expect_continue,
            overflow: Vec::new(),
        }
    }

    /// Reads the whole body (at most `max` bytes), decoding chunked framing.
    pub async fn read_all<S: AsyncReadRent + AsyncWriteRent>(
        &mut self,
        io: &mut S,
        max: usize,
        limits: BodyDeadline,
    ) -> Result<Vec<u8>, BodyError> {
        let until = Instant::now() + limits.whole;
        let timeout = Until {
            until,
            per_read: limits.per_read,
        };
        let mut body = Vec::new();
        match self.framing {
            BodyFraming::None => {}
            BodyFraming::Length(n) => {
                if n > max as u64 {
                    return Err(BodyError::TooLarge);
                }
                let n = n as usize;
                let take = n.min(self.buffered.len());
                body.extend_from_slice(&self.buffered[..take]);
                self.consumed = take;
                if body.len() < n {
                    self.send_continue(io).await?;
                }
                while body.len() < n {
                    let more = read_some(io, n - body.len(), timeout).await?;
                    body.extend_from_slice(&more);
                }
            }
            BodyFraming::Chunked => {
                let mut dec = ChunkedDecoder::new();
                // Each feed adds at most one read's worth, so checking the
                // size after each keeps the body bounded.
                let used = dec
                    .feed(self.buffered, |d| body.extend_from_slice(d))
                    .map_err(|_| BodyError::Malformed)?;
                self.consumed = used;
                if !dec.is_done() {
                    self.send_continue(io).await?;
                }
                while !dec.is_done() {
                    if body.len() > max {
                        return Err(BodyError::TooLarge);
                    }
                    let more = read_some(io, 16 * 1024, timeout).await?;
                    let used = dec
                        .feed(&more, |d| body.extend_from_slice(d))
                        .map_err(|_| BodyError::Malformed)?;
                    // Bytes after the body belong to the next request.
                    self.overflow.extend_from_slice(&more[used..]);
                }
                if body.len() > max {
                    return Err(BodyError::TooLarge);
                }
            }
        }
        self.finished = true;
        Ok(body)
    }

    async fn send_continue<S: AsyncWriteRent>(&mut self, io: &mut S) -> Result<(), BodyError> {
        if std::mem::take(&mut self.expect_continue) {
            let (r, _) = io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
                .await;
            r.map_err(|_| BodyError::Io)?;
        }
        Ok(())
    }
}

/// The deadline of a body being read: the next read waits `per_read`, or
/// until the whole body's deadline if that comes first.
#[derive(Clone, Copy)]
struct Until {
    until: Instant,
    per_read: Duration,
}

async fn read_some<S: AsyncReadRent>(
    io: &mut S,
    max: usize,
    t: Until,
) -> Result<Vec<u8>, BodyError> {
    let wait = t
        .per_read
        .min(t.until.saturating_duration_since(Instant::now()));
    if wait.is_zero() {
        return Err(BodyError::TimedOut);
    }
    let buf = Vec::with_capacity(max.min(64 * 1024));
    match monoio::time::timeout(wait, io.read(buf)).await {
        Ok((Ok(0), _)) | Ok((Err(_), _)) => Err(BodyError::Io),
        Err(_) => Err(BodyError::TimedOut),
        Ok((Ok(_), b)) => Ok(b),
    }
}
