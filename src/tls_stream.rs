//! TLS over a monoio TCP stream with large buffers, for both directions
//! (client connections we accept, upstream connections we open).
//!
//! Why not monoio-rustls' stream: it moves ciphertext through fixed 16 KiB
//! buffers, so every TLS record costs its own socket read or write, and a
//! 1 GiB blob turns into 130 000 syscall round trips. Here one socket read
//! takes up to [`MAX_READ`] bytes of records, which rustls then decrypts
//! one after another without touching the socket, and everything rustls has
//! encrypted goes out in one write. Handshakes use the same loop.

use std::io::{self, Read};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData,
};

/// First size of the ciphertext read buffer; it doubles while reads fill it
/// and halves again while they use less than a quarter of it.
const MIN_READ: usize = 16 * 1024 + 512;
/// Largest ciphertext read buffer (per connection, only while busy).
const MAX_READ: usize = 256 * 1024;
/// Write buffers larger than this are not kept between writes.
const KEEP_WRITE: usize = 64 * 1024;
/// How much plaintext rustls may hold encrypted-but-unsent: large enough
/// that one `write` of a relay buffer is taken whole.
const SEND_LIMIT: usize = 512 * 1024;

/// A TLS stream; `C` is a rustls client or server connection.
pub struct TlsStream<C> {
    tcp: TcpStream,
    conn: C,
    /// Ciphertext read from the socket; `rbuf[rpos..]` not yet given to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Ciphertext to send (reused).
    wbuf: Vec<u8>,
    /// The peer closed the TCP stream.
    eof: bool,
}

pub type ClientTls = TlsStream<ClientConnection>;
pub type ServerTls = TlsStream<ServerConnection>;

/// Opens TLS to `name` over `tcp`.
pub async fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
) -> io::Result<ClientTls> {
    let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut s = TlsStream::new(tcp, conn);
    s.handshake().await?;
    Ok(s)
}

/// Accepts TLS from a client over `tcp`.
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<ServerTls> {
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut s = TlsStream::new(tcp, conn);
    s.handshake().await?;
    Ok(s)
}

impl<C, SD> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    fn new(tcp: TcpStream, mut conn: C) -> Self {
        conn.set_buffer_limit(Some(SEND_LIMIT));
        TlsStream {
            tcp,
            conn,
            rbuf: Vec::with_capacity(MIN_READ),
            rpos: 0,
            wbuf: Vec::new(),
            eof: false,
        }
    }

    /// The raw socket (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.flush_tls().await?;
            } else if self.conn.wants_read() {
                if self.rpos == self.rbuf.len() && self.fill().await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS handshake cut short",
                    ));
                }
                self.feed().await?;
            } else {
                break;
            }
        }
        self.flush_tls().await
    }

    /// Sends everything rustls has encrypted, in one write where possible.
    async fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = std::mem::take(&mut self.wbuf);
            out.clear();
            while self.conn.wants_write() {
                self.conn.write_tls(&mut out)?;
            }
            let (res, mut back) = self.tcp.write_all(out).await;
            // Keep a small buffer between writes; a bulk transfer gets a
            // large one per write (reused by the allocator), an idle
            // connection does not sit on it.
            if back.capacity() > KEEP_WRITE {
                back = Vec::new();
            }
            self.wbuf = back;
            res?;
        }
        Ok(())
    }

    /// Reads more ciphertext from the socket (0 at end of stream).
    async fn fill(&mut self) -> io::Result<usize> {
        if self.rbuf.capacity() == 0 {
            // A cancelled read took the buffer: the stream is unusable.
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS stream used after a cancelled read",
            ));
        }
        // Grow while reads fill the buffer: a bulk transfer gets large reads,
        // an idle keep-alive connection keeps a small buffer.
        let cap = self.rbuf.capacity();
        let grow = self.rbuf.len() == cap && cap < MAX_READ;
        let shrink = self.rbuf.len() < cap / 4 && cap > MIN_READ;
        let mut buf = std::mem::take(&mut self.rbuf);
        buf.clear();
        if grow {
            buf.reserve((cap * 2).min(MAX_READ));
        } else if shrink {
            buf = Vec::with_capacity((cap / 2).max(MIN_READ));
        }
        self.rpos = 0;
        let (res, buf) = self.tcp.read(buf).await;
        self.rbuf = buf;
        let n = res?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Gives buffered ciphertext (or the end of stream) to rustls and
    /// processes it. A protocol error is reported to the peer, then returned.
    async fn feed(&mut self) -> io::Result<()> {
        let mut rest = &self.rbuf[self.rpos..];
        let before = rest.len();
        let read = if self.eof && before == 0 {
            self.conn.read_tls(&mut io::empty())
        } else {
            self.conn.read_tls(&mut rest)
        };
        self.rpos += before - rest.len();
        read?;
        if let Err(e) = self.conn.process_new_packets() {
            let _ = self.flush_tls().await; // the alert
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }
}

impl<C, SD> AsyncReadRent for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData + 'static,
{
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let cap = buf.bytes_total();
        // SAFETY: `write_ptr` is valid for `bytes_total` bytes (IoBufMut
        // contract); rustls only writes into the slice, and we report the
        // initialised length with `set_init` below.
        let out = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), cap) };
        let mut filled = 0;
        loop {
            // Plaintext rustls already holds.
            while filled < cap {
                match self.conn.reader().read(&mut out[filled..]) {
                    // The peer sent close_notify: a clean end of stream.
                    Ok(0) if filled == 0 => return (Ok(0), buf),
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if filled == 0 => return (Err(e), buf),
                    Err(_) => break,
                }
                // Decrypt what is already buffered before returning, so one
                // call hands back as much as one socket read brought.
                if filled < cap && self.rpos < self.rbuf.len() {
                    if let Err(e) = self.feed().await {
                        if filled == 0 {
                            return (Err(e), buf);
                        }
                        break;
                    }
                }
            }
            if filled > 0 {
                unsafe { buf.set_init(filled) };
                return (Ok(filled), buf);
            }
            if self.eof && self.rpos == self.rbuf.len() {
                // Let rustls see the end: clean (close_notify) -> Ok(0),
                // truncated -> UnexpectedEof from the reader.
                if let Err(e) = self.feed().await {
                    return (Err(e), buf);
                }
                return match self.conn.reader().read(out) {
                    Ok(n) => {
                        unsafe { buf.set_init(n) };
                        (Ok(n), buf)
                    }
                    Err(e) => (Err(e), buf),
                };
            }
            if self.rpos == self.rbuf.len() {
                if self.conn.wants_write() {
                    // e.g. a key update answer
                    if let Err(e) = self.flush_tls().await {
                        return (Err(e), buf);
                    }
                }
                if let Err(e) = self.fill().await {
                    return (Err(e), buf);
                }
            }
            if let Err(e) = self.feed().await {
                return (Err(e), buf);
            }
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: as in monoio's own adapters, the first iovec is used as a
        // plain buffer.
        let n = match unsafe { monoio::buf::RawBuf::new_from_iovec_mut(&mut buf) } {
            Some(raw) => self.read(raw).await.0,
            None => Ok(0),
        };
        if let Ok(n) = n {
            unsafe { buf.set_init(n) };
        }
        (n, buf)
    }
}

impl<C, SD> AsyncWriteRent for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData + 'static,
{
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `read_ptr` is valid for `bytes_init` bytes (IoBuf contract).
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let n = match io::Write::write(&mut self.conn.writer(), data) {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        match self.flush_tls().await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the first iovec is used as a plain buffer.
        let n = match unsafe { monoio::buf::RawBuf::new_from_iovec(&buf) } {
            Some(raw) => self.write(raw).await.0,
            None => Ok(0),
        };
        (n, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_tls().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush_tls().await?;
        self.tcp.shutdown().await
    }
}

impl<C> AsRawFd for TlsStream<C> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp.as_raw_fd()
    }
}
