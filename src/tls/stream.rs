//! TLS over a monoio TCP stream, for both directions (client connections we
//! accept, upstream connections we open).
//!
//! rustls does the handshake (its unbuffered API, driven through our own
//! buffers); once keys are established it hands the traffic secrets over
//! (`dangerous_into_kernel_connection`, the kernel-TLS interface) and
//! [`crate::tls::record`] protects application data in place in this stream's
//! buffers. rustls stays in charge of what follows the handshake: key
//! updates and session tickets.
//!
//! Why not monoio-rustls' stream, then rustls' buffered connection (both used
//! before): the first moved ciphertext through fixed 16 KiB buffers, one
//! syscall per record; the second copies every byte five times between
//! socket buffer, deframer, plaintext queue, record `Vec`s and socket buffer
//! again (a quarter of the CPU a TLS-to-TLS blob relay used). Here one socket
//! read brings up to [`MAX_READ`] bytes of records, decrypted where they lie,
//! and one write sends everything encrypted for it.
//!
//! - `handshake`: rustls driven through our buffers, then the switch;
//! - `control`: alerts, session tickets, key updates after the handshake;
//! - `reseal`: re-encrypting another stream's records in place (relays);
//! - here: the stream, reading and opening records, sealing and writing.

use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::{ClientConfig, ServerConfig};

use super::control::CLOSE_NOTIFY;
use super::error::{rustls_err, TlsError};
use super::handshake::handshake;
pub use super::handshake::Side;
use super::inbound::{Inbound, Opened, RxKeys};
use super::record::{RecordCipher, Version, ALERT, APPLICATION_DATA, MAX_PLAIN};

/// Smallest ciphertext read buffer: one whole record of the largest size.
pub(super) const MIN_READ: usize = 20 * 1024;
/// Largest ciphertext read buffer (per connection, only while busy).
pub(super) const MAX_READ: usize = 256 * 1024;
/// Plaintext taken per `write` call: the relay's buffers are this large.
pub(super) const MAX_WRITE: usize = 256 * 1024;
/// Write buffers are kept between writes while writes use a good part of
/// them; an idle connection shrinks back to this.
pub(super) const KEEP_WRITE: usize = 32 * 1024;

/// How long the stream waits to send its close_notify or fatal alert: the
/// end of a connection is not held up by a peer that reads nothing.
pub(super) const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a stream refuses any further use. Once set it stays: every entry
/// point checks it first, so no caller can read through indices into a
/// buffer a cancelled I/O took, or send after a record went out half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Broken {
    /// A read or write was under way when its future was dropped (a
    /// timeout): a buffer went with it, or a record is half sent. Set
    /// before each socket operation, cleared when it completes.
    Cancelled,
    /// A protocol or I/O error; the fatal alert owed to the peer (if any)
    /// goes out at shutdown, instead of close_notify.
    Failed(Option<u8>),
}

/// A TLS stream in the data phase.
pub struct TlsStream<S: Side> {
    pub(super) tcp: TcpStream,
    pub(super) kernel: KernelConnection<S>,
    pub(super) version: Version,
    pub(super) tx: RecordCipher,
    /// The receiving state machine (the peer's records, alerts, key
    /// updates and tickets).
    pub(super) inbound: Inbound,
    pub(super) broken: Option<Broken>,
    /// Records sealed with one key before it is replaced (the suite's
    /// confidentiality limit, with margin).
    pub(super) rekey_after: u64,
    /// Bytes from the socket: `rbuf[rpos..]` not yet opened.
    pub(super) rbuf: Vec<u8>,
    pub(super) rpos: usize,
    /// Decrypted application data not yet handed out, in place in `rbuf`.
    pub(super) plain: Range<usize>,
    /// Size of the last socket read and the room it had, to size the next.
    pub(super) last_read: (usize, usize),
    /// Application data rustls decrypted during the handshake (a client's
    /// first request sent along with its Finished).
    pub(super) early: Vec<u8>,
    /// Ciphertext to send (reused while writes are large).
    pub(super) wbuf: Vec<u8>,
    /// The peer closed the TCP stream.
    pub(super) eof: bool,
}

/// The kernel connection derives the peer's next keys and takes tickets.
struct KernelKeys<'a, S: Side>(&'a mut KernelConnection<S>);

impl<S: Side> RxKeys for KernelKeys<'_, S> {
    fn next_rx(&mut self) -> Result<(u64, rustls::ConnectionTrafficSecrets), TlsError> {
        self.0.update_rx_secret().map_err(TlsError::Rustls)
    }

    fn session_ticket(&mut self, body: &[u8]) -> Result<(), TlsError> {
        S::session_ticket(self.0, body)
    }
}

#[cfg(test)]
thread_local! {
    /// Records [`TlsStream::reseal_buffered`] re-encrypted in place (tests).
    pub(crate) static RESEALED_IN_PLACE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// What [`TlsStream::reseal_buffered`] did.
#[derive(Debug)]
pub struct Resealed {
    /// Plaintext bytes taken (and handed to `each`).
    pub taken: u64,
    /// Where the re-encrypted records lie in the read buffer, in order.
    pub run: Range<usize>,
    /// No complete record is left in the read buffer.
    pub exhausted: bool,
}

pub type ClientTls = TlsStream<ClientConnectionData>;
pub type ServerTls = TlsStream<ServerConnectionData>;

/// Opens TLS to `name` over `tcp`.
pub async fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
) -> io::Result<ClientTls> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(rustls_err)?;
    handshake::<ClientConnectionData>(tcp, conn, Vec::new()).await
}

/// Accepts TLS from a client over `tcp`.
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<ServerTls> {
    accept_after(config, tcp, Vec::new()).await
}

/// Accepts TLS from a client over `tcp` of which `read` was read already
/// (what followed a PROXY header in the same segment: the ClientHello's
/// first bytes). The buffer becomes the handshake's read buffer.
pub async fn accept_after(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    read: Vec<u8>,
) -> io::Result<ServerTls> {
    let conn = UnbufferedServerConnection::new(config).map_err(rustls_err)?;
    handshake::<ServerConnectionData>(tcp, conn, read).await
}

impl<S: Side> TlsStream<S> {
    /// The raw socket (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Lets go of buffers grown for bulk traffic: for connections that go
    /// idle (pooled upstream connections, keep-alive clients).
    pub fn shrink_idle(&mut self) {
        if self.broken.is_some() {
            return;
        }
        if self.wbuf.capacity() > KEEP_WRITE && self.wbuf.is_empty() {
            self.wbuf = Vec::new();
        }
        let pending = self.rbuf.len() - self.rpos;
        if self.rbuf.capacity() > MIN_READ && self.plain.is_empty() && pending < MIN_READ {
            let mut small = Vec::with_capacity(MIN_READ);
            small.extend_from_slice(&self.rbuf[self.rpos..]);
            self.rbuf = small;
            self.rpos = 0;
            self.plain = 0..0;
            self.last_read = (0, 0);
        }
    }

    #[cfg(test)]
    pub(crate) fn set_rekey_after(&mut self, records: u64) {
        self.rekey_after = records;
    }

    #[cfg(test)]
    pub(crate) fn tx_seq(&self) -> u64 {
        self.tx.seq()
    }

    /// Parks an idle connection: opens the records already read (a session
    /// ticket that came after the response) and lets go of bulk buffers.
    /// False when it must not be used again: it failed, the peer closed
    /// (TCP or close_notify), or more data or part of a record is waiting
    /// (the framing is off).
    pub fn park(&mut self) -> bool {
        let quiet = self.open_buffered().is_ok_and(|data| !data)
            && self.broken.is_none()
            && !self.eof
            && !self.inbound.peer_closed()
            && !self.inbound.mid_message()
            && self.rbuf.len() == self.rpos
            && self.early.is_empty()
            && self.wbuf.is_empty();
        if quiet {
            self.shrink_idle();
        }
        quiet
    }

    /// Refuses use of a broken stream (see [`Broken`]).
    pub(super) fn usable(&self) -> io::Result<()> {
        match self.broken {
            None => Ok(()),
            Some(Broken::Cancelled) => Err(TlsError::UsedAfterCancel.into()),
            Some(Broken::Failed(_)) => Err(TlsError::Failed.into()),
        }
    }

    /// Ends the stream for good on `e` (the alert it owes goes out at
    /// shutdown) and returns it for the caller.
    pub(super) fn fail(&mut self, e: TlsError) -> io::Error {
        if self.broken.is_none() {
            self.broken = Some(Broken::Failed(e.alert()));
        }
        e.into()
    }

    /// Reads more bytes from the socket after what is buffered (0 at end of
    /// stream). Only called when no decrypted plaintext is waiting.
    pub(super) async fn fill(&mut self) -> io::Result<usize> {
        self.usable()?;
        // Keep the unopened tail (part of a record) at the front.
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
            self.plain = 0..0;
        }
        // Grow while reads fill the buffer: a bulk transfer gets large reads,
        // a keep-alive connection keeps a small buffer.
        let cap = self.rbuf.capacity();
        let (last, room) = self.last_read;
        if last == room && last > 0 && cap < MAX_READ {
            // Exactly: `reserve` may round up past the cap.
            self.rbuf
                .reserve_exact((cap * 2).min(MAX_READ) - self.rbuf.len());
        } else if last < cap / 4 && cap > MIN_READ && self.rbuf.len() < MIN_READ / 2 {
            let mut small = Vec::with_capacity((cap / 2).max(MIN_READ));
            small.extend_from_slice(&self.rbuf);
            self.rbuf = small;
        }
        let len = self.rbuf.len();
        let cap = self.rbuf.capacity();
        let buf = std::mem::take(&mut self.rbuf).slice_mut(len..cap);
        self.broken = Some(Broken::Cancelled);
        let (res, buf) = self.tcp.read(buf).await;
        // A failed read may have cut a record: nothing more is read.
        self.broken = res.as_ref().err().map(|_| Broken::Failed(None));
        self.rbuf = buf.into_inner();
        let n = res?;
        self.last_read = (n, cap - len);
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Opens the next complete record in the read buffer, if there is one.
    /// Application data lands in `self.plain`; alerts and post-handshake
    /// messages are handled by [`Inbound`].
    pub(super) fn open_next(&mut self) -> io::Result<bool> {
        self.usable()?;
        match self.open_next_inner() {
            Ok(opened) => Ok(opened),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn open_next_inner(&mut self) -> Result<bool, TlsError> {
        let Some(len) = self.inbound.complete(&self.rbuf[self.rpos..])? else {
            return Ok(false);
        };
        let at = self.rpos;
        let record = &mut self.rbuf[at..at + len];
        let opened = self
            .inbound
            .open(record, &mut KernelKeys(&mut self.kernel))?;
        self.rpos += len;
        if let Opened::Data(range) = opened {
            self.plain = at + range.start..at + range.end;
        }
        Ok(true)
    }

    /// Seals `data` as application data records into `out`, after the key
    /// update the peer asked for or our key's limit calls for. On an error
    /// `out` is as it was and the stream is failed: the records sealed
    /// before it took sequence numbers, so nothing more may follow them.
    pub(super) fn seal_data(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.usable()?;
        let before = out.len();
        let records = data.len().div_ceil(MAX_PLAIN);
        out.reserve(data.len() + records * self.tx.overhead());
        for chunk in data.chunks(MAX_PLAIN) {
            let sealed = if self.inbound.key_update_owed || self.tx.seq() >= self.rekey_after {
                self.key_update(out)
            } else {
                Ok(())
            };
            let sealed = sealed.and_then(|()| Ok(self.tx.seal(APPLICATION_DATA, chunk, out)?));
            if let Err(e) = sealed {
                out.truncate(before);
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    /// Sends `out` (then keeps it as the write buffer if it is worth it).
    pub(super) async fn send(&mut self, out: Vec<u8>) -> io::Result<()> {
        self.usable()?;
        let used = out.len();
        // Marked until the write completes: a dropped future leaves a
        // record half sent (see `Broken`).
        self.broken = Some(Broken::Cancelled);
        let (res, mut back) = self.tcp.write_all(out).await;
        self.broken = res.as_ref().err().map(|_| Broken::Failed(None));
        // Keep a large buffer only while writes fill a good part of it.
        if back.capacity() > KEEP_WRITE && used < back.capacity() / 4 {
            back = Vec::new();
        }
        back.clear();
        self.wbuf = back;
        res.map(|_| ())
    }

    /// Decrypted application data waiting to be taken, in place (see
    /// [`TlsStream::fill_plain`]).
    pub fn plain(&self) -> &[u8] {
        if self.broken.is_some() {
            // The indices may point into a buffer a cancelled I/O took.
            return &[];
        }
        if !self.early.is_empty() {
            return &self.early;
        }
        &self.rbuf[self.plain.clone()]
    }

    /// Marks the first `n` bytes of [`TlsStream::plain`] as taken.
    pub fn consume_plain(&mut self, n: usize) {
        if !self.early.is_empty() {
            self.early.drain(..n);
            if self.early.is_empty() && self.early.capacity() > MIN_READ {
                self.early = Vec::new();
            }
            return;
        }
        assert!(n <= self.plain.len(), "consumed more than was decrypted");
        self.plain.start += n;
    }

    /// Opens records already in the read buffer until decrypted data is
    /// waiting; never reads the socket (nor writes it: a key update the peer
    /// asked for goes out with our next data). Returns whether data is
    /// waiting.
    pub fn open_buffered(&mut self) -> io::Result<bool> {
        self.usable()?;
        while self.plain().is_empty() {
            if self.inbound.peer_closed() || !self.open_next()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Makes decrypted data available in place (read it with
    /// [`TlsStream::plain`]), reading the socket if no complete record is
    /// buffered. Returns false at the peer's close_notify; a TCP end without
    /// it is an error (the data may be cut short).
    pub async fn fill_plain(&mut self) -> io::Result<bool> {
        loop {
            if self.open_buffered()? {
                return Ok(true);
            }
            if self.inbound.peer_closed() {
                return Ok(false);
            }
            if self.eof {
                // Our send side is intact: close_notify can still go out.
                return Err(TlsError::Truncated.into());
            }
            self.fill().await?;
        }
    }

    /// Reads the socket until a complete record is buffered, without opening
    /// it (so that [`TlsStream::reseal_buffered`] can). Returns false after
    /// the peer's close_notify. Only when no opened data is waiting.
    pub async fn fill_records(&mut self) -> io::Result<bool> {
        self.usable()?;
        if !self.plain().is_empty() {
            return Ok(true);
        }
        loop {
            if self.inbound.peer_closed() {
                return Ok(false);
            }
            match self.inbound.complete(&self.rbuf[self.rpos..]) {
                Ok(Some(_)) => return Ok(true),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
            if self.eof {
                // Our send side is intact: close_notify can still go out.
                return Err(TlsError::Truncated.into());
            }
            self.fill().await?;
        }
    }

    /// Reads decrypted application data into `out`: everything one socket
    /// read brought, as far as it fits.
    async fn read_plain(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut filled = 0;
        loop {
            let plain = self.plain();
            let n = plain.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&plain[..n]);
            self.consume_plain(n);
            filled += n;
            if filled == out.len() {
                return Ok(filled);
            }
            if self.open_buffered()? {
                continue;
            }
            if filled > 0 || !self.fill_plain().await? {
                return Ok(filled);
            }
        }
    }

    /// Seals `data` as application data after whatever is already pending;
    /// [`TlsStream::send_pending`] sends it. A relay seals records straight
    /// from another stream's decrypted ones this way: one copy, while the
    /// bytes are still in cache.
    pub fn seal_pending(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.wbuf);
        let res = self.seal_data(data, &mut out);
        self.wbuf = out;
        res
    }

    /// Bytes sealed and not sent yet.
    pub fn pending(&self) -> usize {
        self.wbuf.len()
    }

    /// Sends what [`TlsStream::seal_pending`] sealed.
    pub async fn send_pending(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.wbuf);
        self.send(out).await
    }

    /// Forgets sealed data that must not be sent (a body that failed its
    /// digest check); the connection is not usable for more data after it.
    pub fn discard_pending(&mut self) {
        self.wbuf.clear();
        if self.broken.is_none() {
            // Its records took sequence numbers: what follows would not open.
            self.broken = Some(Broken::Failed(None));
        }
    }

    async fn write_plain(&mut self, data: &[u8]) -> io::Result<usize> {
        let data = &data[..data.len().min(MAX_WRITE)];
        // After anything sealed and not sent yet (see `seal_pending`).
        let mut out = std::mem::take(&mut self.wbuf);
        if let Err(e) = self.seal_data(data, &mut out) {
            self.wbuf = out;
            return Err(e);
        }
        self.send(out).await?;
        Ok(data.len())
    }
}

impl<S: Side> AsyncReadRent for TlsStream<S> {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let cap = buf.bytes_total();
        // SAFETY: `write_ptr` is valid for `bytes_total` bytes (IoBufMut
        // contract); we only write into the slice, and report the
        // initialised length with `set_init` below.
        let out = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), cap) };
        let res = self.read_plain(out).await;
        if let Ok(n) = res {
            unsafe { buf.set_init(n) };
        }
        (res, buf)
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

impl<S: Side> AsyncWriteRent for TlsStream<S> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `read_ptr` is valid for `bytes_init` bytes (IoBuf contract).
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let res = self.write_plain(data).await;
        (res, buf)
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
        // Every write is sent before it returns.
        Ok(())
    }

    /// Sends close_notify (or the fatal alert an error owes the peer; or
    /// nothing after a cancelled write), under [`CLOSE_TIMEOUT`], then ends
    /// TCP.
    async fn shutdown(&mut self) -> io::Result<()> {
        let alert = match self.broken {
            None => Some([1, CLOSE_NOTIFY]),
            Some(Broken::Failed(Some(desc))) => {
                // Nothing sealed before the failure goes out after it.
                self.wbuf.clear();
                Some([2, desc])
            }
            Some(Broken::Failed(None) | Broken::Cancelled) => None,
        };
        if let Some(alert) = alert {
            let mut out = std::mem::take(&mut self.wbuf);
            let sealed = self.tx.seal(ALERT, &alert, &mut out);
            // Whatever happens, nothing is sent on this stream after it.
            self.broken = None;
            if sealed.is_ok() {
                let sent = monoio::time::timeout(CLOSE_TIMEOUT, self.send(out)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    self.broken.get_or_insert(Broken::Cancelled);
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS close_notify or alert not sent",
                    ));
                }
            }
            self.broken = Some(Broken::Failed(None));
        }
        self.tcp.shutdown().await
    }
}

/// A stream dropped while it owes the peer a fatal alert (an error on a
/// path that ends without `shutdown`, such as a failed read of a request
/// head) sends it here: one small record, written without waiting
/// (`MSG_DONTWAIT`); if the socket cannot take it at once, the peer sees
/// the TCP end alone.
impl<S: Side> Drop for TlsStream<S> {
    fn drop(&mut self) {
        let Some(Broken::Failed(Some(desc))) = self.broken else {
            return;
        };
        let mut out = Vec::with_capacity(64);
        if self.tx.seal(ALERT, &[2, desc], &mut out).is_err() {
            return;
        }
        // SAFETY: the fd is this stream's socket, open until `tcp` drops
        // after this; send only reads `out`, which outlives the call.
        unsafe {
            libc::send(
                self.tcp.as_raw_fd(),
                out.as_ptr().cast(),
                out.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
    }
}

impl<S: Side> AsRawFd for TlsStream<S> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp.as_raw_fd()
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "peer_tests.rs"]
mod peer_tests;
