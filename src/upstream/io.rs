//! One stream type for plain and TLS upstream connections.

use crate::tls::stream::ClientTls;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use std::os::fd::AsRawFd;

/// A connection to an upstream: plain TCP (debug mode) or TLS.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<ClientTls>),
}

impl UpstreamIo {
    /// Readies the connection to wait in the pool: lets go of buffers grown
    /// for bulk transfers (memory of idle connections stays small). False
    /// when it must not be reused (for TLS: it failed, the upstream sent
    /// close_notify, or records are left unread; see `TlsStream::park`).
    pub fn park(&mut self) -> bool {
        match self {
            UpstreamIo::Plain(_) => true,
            UpstreamIo::Tls(s) => s.park(),
        }
    }
}

impl UpstreamIo {
    /// Whether the upstream sent anything while the connection sat idle in
    /// the pool. After a response read to its end an upstream says nothing
    /// until asked: bytes now are past the last response's framing (they
    /// would be read as the next answer) or its close.
    pub fn peer_spoke(&self) -> bool {
        let fd = match self {
            UpstreamIo::Plain(s) => s.as_raw_fd(),
            UpstreamIo::Tls(s) => s.as_raw_fd(),
        };
        crate::sys::peer_spoke(fd)
    }
}

impl AsyncReadRent for UpstreamIo {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamIo::Plain(s) => s.read(buf).await,
            UpstreamIo::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamIo::Plain(s) => s.readv(buf).await,
            UpstreamIo::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpstreamIo {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamIo::Plain(s) => s.write(buf).await,
            UpstreamIo::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamIo::Plain(s) => s.writev(buf).await,
            UpstreamIo::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpstreamIo::Plain(s) => s.flush().await,
            UpstreamIo::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            UpstreamIo::Plain(s) => s.shutdown().await,
            UpstreamIo::Tls(s) => s.shutdown().await,
        }
    }
}
