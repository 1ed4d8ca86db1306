//! Where a relayed body goes: the client ([`ClientSink`]: a plain or TLS
//! stream), or memory ([`Collect`], for a manifest measured to answer a HEAD
//! and for draining).

use std::io;

use monoio::buf::IoBuf;
use monoio::io::AsyncWriteRent;

use crate::tls::stream::ServerTls;

/// The client end of a relay. A TLS client takes a body from a TLS upstream
/// sealed straight from the upstream's decrypted records (see
/// [`super::tls::relay_length_tls`]) instead of through the relay buffer.
pub trait ClientSink: AsyncWriteRent {
    /// The TLS stream underneath, when the client speaks TLS.
    fn tls(&mut self) -> Option<&mut ServerTls> {
        None
    }

    /// The TCP stream, when the client speaks plain HTTP: a cache hit
    /// sends file bytes to it with `sendfile` (see `cache::serve`).
    fn plain_tcp(&mut self) -> Option<&monoio::net::TcpStream> {
        None
    }

    /// The client's socket, whose progress paces writes (see
    /// [`super::io::Pace`]); None for sinks in memory.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Whether a byte rate ([client_limits]) holds this response's writes
    /// back: its slowness is then ours, not the client's, and the minimum
    /// read rate is not judged (see [`super::io::Pace::for_client`]).
    fn shaped(&self) -> bool {
        false
    }

    /// Notes body bytes sent through [`ClientSink::tls`] or
    /// [`ClientSink::plain_tcp`] rather than `write`.
    fn sent_directly(&mut self, _bytes: u64) {}

    /// The connection waits for its next request: buffers a burst grew
    /// are not pinned for the idle timeout.
    fn go_idle(&mut self) {}
}

impl ClientSink for monoio::net::TcpStream {
    fn plain_tcp(&mut self) -> Option<&monoio::net::TcpStream> {
        Some(self)
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

impl ClientSink for ServerTls {
    fn tls(&mut self) -> Option<&mut ServerTls> {
        Some(self)
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }

    fn go_idle(&mut self) {
        self.shrink_idle();
    }
}

/// An [`AsyncWriteRent`] that keeps what it is given, up to a limit (past
/// it the write fails, which ends the relay), or forgets everything.
pub struct Collect {
    data: Vec<u8>,
    max: usize,
    keep: bool,
}

impl Collect {
    /// Keeps up to `max` bytes.
    pub fn new(max: usize) -> Collect {
        Collect {
            data: Vec::new(),
            max,
            keep: true,
        }
    }

    /// Accepts and forgets any number of bytes (draining a body to reuse
    /// its connection).
    pub fn discard() -> Collect {
        Collect {
            data: Vec::new(),
            max: usize::MAX,
            keep: false,
        }
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.data
    }
}

impl ClientSink for Collect {}

impl AsyncWriteRent for Collect {
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        let n = buf.bytes_init();
        if !self.keep {
            return (Ok(n), buf);
        }
        if self.data.len() + n > self.max {
            return (Err(io::Error::other("body over the limit")), buf);
        }
        let bytes = crate::sys::io_buf_bytes(&buf, n);
        self.data.extend_from_slice(bytes);
        (Ok(n), buf)
    }
    async fn writev<T: monoio::buf::IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (Ok(0), buf)
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    async fn shutdown(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
