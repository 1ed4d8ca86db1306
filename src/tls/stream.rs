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

use std::io;
use std::ops::{DerefMut, Range};
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
use rustls::unbuffered::{
    ConnectionState, EncodeError, UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, ExtractedSecrets, ProtocolVersion, ServerConfig, SupportedCipherSuite};

use crate::tls::record::{
    complete_record, RecordCipher, RecordError, Version, ALERT, APPLICATION_DATA, HANDSHAKE,
    MAX_PLAIN, MAX_RECORD,
};

/// Smallest ciphertext read buffer: one whole record of the largest size.
const MIN_READ: usize = 20 * 1024;
/// Largest ciphertext read buffer (per connection, only while busy).
const MAX_READ: usize = 256 * 1024;
/// Plaintext taken per `write` call: the relay's buffers are this large.
const MAX_WRITE: usize = 256 * 1024;
/// Write buffers are kept between writes while writes use a good part of
/// them; an idle connection shrinks back to this.
const KEEP_WRITE: usize = 32 * 1024;
/// Post-handshake handshake messages (session tickets, key updates) larger
/// than this are refused.
const MAX_HS_MESSAGE: usize = 64 * 1024;

/// Handshake message types that may follow the handshake.
const HELLO_REQUEST: u8 = 0;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// Alert descriptions we act on.
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// The two ends of a connection, as rustls types them.
pub trait Side: Sized + 'static {
    type Conn: DerefMut<Target = UnbufferedConnectionCommon<Self>>;

    fn process<'c, 'i>(
        conn: &'c mut Self::Conn,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self>;

    fn into_kernel(
        conn: Self::Conn,
    ) -> Result<(ExtractedSecrets, KernelConnection<Self>), rustls::Error>;

    /// A NewSessionTicket after the handshake (only servers send them).
    fn session_ticket(k: &mut KernelConnection<Self>, payload: &[u8]) -> io::Result<()>;
}

impl Side for ClientConnectionData {
    type Conn = UnbufferedClientConnection;

    fn process<'c, 'i>(
        conn: &'c mut Self::Conn,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self> {
        conn.process_tls_records(incoming)
    }

    fn into_kernel(
        conn: Self::Conn,
    ) -> Result<(ExtractedSecrets, KernelConnection<Self>), rustls::Error> {
        conn.dangerous_into_kernel_connection()
    }

    fn session_ticket(k: &mut KernelConnection<Self>, payload: &[u8]) -> io::Result<()> {
        // Kept in the config's resumption store: the next connection to this
        // upstream resumes instead of a full handshake.
        k.handle_new_session_ticket(payload).map_err(invalid)
    }
}

impl Side for ServerConnectionData {
    type Conn = UnbufferedServerConnection;

    fn process<'c, 'i>(
        conn: &'c mut Self::Conn,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self> {
        conn.process_tls_records(incoming)
    }

    fn into_kernel(
        conn: Self::Conn,
    ) -> Result<(ExtractedSecrets, KernelConnection<Self>), rustls::Error> {
        conn.dangerous_into_kernel_connection()
    }

    fn session_ticket(_: &mut KernelConnection<Self>, _: &[u8]) -> io::Result<()> {
        Err(invalid("TLS client sent a session ticket"))
    }
}

/// A TLS stream in the data phase.
pub struct TlsStream<S: Side> {
    tcp: TcpStream,
    kernel: KernelConnection<S>,
    version: Version,
    tx: RecordCipher,
    rx: RecordCipher,
    /// Records sealed with one key before it is replaced (the suite's
    /// confidentiality limit, with margin).
    rekey_after: u64,
    /// Bytes from the socket: `rbuf[rpos..]` not yet opened.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Decrypted application data not yet handed out, in place in `rbuf`.
    plain: Range<usize>,
    /// Size of the last socket read and the room it had, to size the next.
    last_read: (usize, usize),
    /// Application data rustls decrypted during the handshake (a client's
    /// first request sent along with its Finished).
    early: Vec<u8>,
    /// A post-handshake handshake message split across records.
    hs_partial: Vec<u8>,
    /// Ciphertext to send (reused while writes are large).
    wbuf: Vec<u8>,
    /// The peer asked for our key update.
    owe_key_update: bool,
    /// The peer closed the TCP stream.
    eof: bool,
    /// The peer sent close_notify.
    peer_closed: bool,
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
    let conn = UnbufferedClientConnection::new(config, name).map_err(invalid)?;
    handshake::<ClientConnectionData>(tcp, conn).await
}

/// Accepts TLS from a client over `tcp`.
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<ServerTls> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    handshake::<ServerConnectionData>(tcp, conn).await
}

fn invalid<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// TCP ended without close_notify: the data may have been cut short.
fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "TLS peer closed the connection without close_notify",
    )
}

fn record_err(e: RecordError) -> io::Error {
    invalid(e)
}

/// What to do after one step of the handshake state machine.
enum Step {
    Again,
    Send,
    Read,
    Done,
}

/// Drives rustls through the handshake with our buffers, then switches the
/// connection to our record layer.
async fn handshake<S: Side>(tcp: TcpStream, mut conn: S::Conn) -> io::Result<TlsStream<S>> {
    let mut rbuf: Vec<u8> = Vec::with_capacity(MIN_READ);
    let mut rpos = 0;
    let mut wbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut early = Vec::new();
    let mut tcp = tcp;
    loop {
        let UnbufferedStatus { mut discard, state } = S::process(&mut conn, &mut rbuf[rpos..]);
        let step = match state {
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                loop {
                    let at = wbuf.len();
                    wbuf.resize(wbuf.capacity().max(at + 1024), 0);
                    match enc.encode(&mut wbuf[at..]) {
                        Ok(n) => {
                            wbuf.truncate(at + n);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(s)) => {
                            wbuf.truncate(at);
                            wbuf.reserve(s.required_size);
                        }
                        Err(e) => return Err(invalid(e.to_string())),
                    }
                }
                Step::Again
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Step::Send
            }
            Ok(ConnectionState::BlockedHandshake) => Step::Read,
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(rec) = r.next_record() {
                    let rec = rec.map_err(invalid)?;
                    discard += rec.discard;
                    early.extend_from_slice(rec.payload);
                }
                Step::Again
            }
            // A server may send (0.5-RTT) before the client's Finished: the
            // handshake is only over once rustls says so.
            Ok(ConnectionState::WriteTraffic(_)) => Step::Done,
            Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during the TLS handshake",
                ))
            }
            Ok(_) => return Err(invalid("unexpected TLS state during the handshake")),
            Err(e) => {
                rpos += discard;
                send_alert::<S>(&mut tcp, &mut conn, &mut rbuf[rpos..], &mut wbuf).await;
                return Err(invalid(e));
            }
        };
        rpos += discard;
        let step = match step {
            Step::Done if conn.is_handshaking() => Step::Read,
            s => s,
        };
        match step {
            Step::Again => {}
            Step::Send => send_handshake(&mut tcp, &mut wbuf).await?,
            Step::Read => {
                send_handshake(&mut tcp, &mut wbuf).await?;
                rbuf.drain(..rpos);
                rpos = 0;
                // rustls keeps a handshake message split over records in
                // our buffer until it is whole (at most 64 KiB); more than
                // this is a peer misbehaving.
                if rbuf.len() >= MAX_READ {
                    return Err(invalid("TLS handshake message too large"));
                }
                if rbuf.len() == rbuf.capacity() {
                    rbuf.reserve(rbuf.len().max(4096));
                }
                let len = rbuf.len();
                let cap = rbuf.capacity();
                let (res, back) = tcp
                    .read(std::mem::take(&mut rbuf).slice_mut(len..cap))
                    .await;
                rbuf = back.into_inner();
                if res? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS handshake cut short",
                    ));
                }
            }
            Step::Done => break,
        }
    }
    send_handshake(&mut tcp, &mut wbuf).await?;
    rbuf.drain(..rpos);

    let (secrets, kernel) = S::into_kernel(conn).map_err(invalid)?;
    let version = match kernel.protocol_version() {
        ProtocolVersion::TLSv1_3 => Version::Tls13,
        ProtocolVersion::TLSv1_2 => Version::Tls12,
        v => return Err(invalid(format!("unsupported TLS version {v:?}"))),
    };
    let limit = match kernel.negotiated_cipher_suite() {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    };
    wbuf.clear();
    if rbuf.capacity() < MIN_READ {
        rbuf.reserve(MIN_READ - rbuf.len());
    }
    Ok(TlsStream {
        tcp,
        version,
        tx: RecordCipher::new(version, secrets.tx).map_err(invalid)?,
        rx: RecordCipher::new(version, secrets.rx).map_err(invalid)?,
        kernel,
        // Rekey well before the limit (rustls does the same).
        rekey_after: limit - limit / 16,
        rbuf,
        rpos: 0,
        plain: 0..0,
        last_read: (0, 0),
        early,
        hs_partial: Vec::new(),
        wbuf,
        owe_key_update: false,
        eof: false,
        peer_closed: false,
    })
}

/// Sends the handshake records encoded so far (if any).
async fn send_handshake(tcp: &mut TcpStream, wbuf: &mut Vec<u8>) -> io::Result<()> {
    if wbuf.is_empty() {
        return Ok(());
    }
    let (res, mut back) = tcp.write_all(std::mem::take(wbuf)).await;
    back.clear();
    *wbuf = back;
    res.map(|_| ())
}

/// After a handshake error rustls has queued an alert: try to send it, so
/// that the peer learns why (e.g. an unknown certificate authority).
async fn send_alert<S: Side>(
    tcp: &mut TcpStream,
    conn: &mut S::Conn,
    rest: &mut [u8],
    wbuf: &mut Vec<u8>,
) {
    wbuf.clear();
    if let Ok(ConnectionState::EncodeTlsData(mut enc)) = S::process(conn, rest).state {
        wbuf.resize(1024, 0);
        if let Ok(n) = enc.encode(wbuf) {
            wbuf.truncate(n);
            let _ = tcp.write_all(std::mem::take(wbuf)).await;
        }
    }
}

impl<S: Side> TlsStream<S> {
    /// The raw socket (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Lets go of buffers grown for bulk traffic: for connections that go
    /// idle (pooled upstream connections, keep-alive clients).
    pub fn shrink_idle(&mut self) {
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

    /// Reads more bytes from the socket after what is buffered (0 at end of
    /// stream). Only called when no decrypted plaintext is waiting.
    async fn fill(&mut self) -> io::Result<usize> {
        debug_assert!(self.plain.is_empty());
        if self.rbuf.capacity() == 0 {
            // A cancelled read took the buffer: the stream is unusable.
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS stream used after a cancelled read",
            ));
        }
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
            self.rbuf.reserve((cap * 2).min(MAX_READ) - self.rbuf.len());
        } else if last < cap / 4 && cap > MIN_READ && self.rbuf.len() < MIN_READ / 2 {
            let mut small = Vec::with_capacity((cap / 2).max(MIN_READ));
            small.extend_from_slice(&self.rbuf);
            self.rbuf = small;
        }
        let len = self.rbuf.len();
        let cap = self.rbuf.capacity();
        let buf = std::mem::take(&mut self.rbuf).slice_mut(len..cap);
        let (res, buf) = self.tcp.read(buf).await;
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
    /// messages are handled here.
    fn open_next(&mut self) -> io::Result<bool> {
        let Some(len) = complete_record(&self.rbuf[self.rpos..]).map_err(record_err)? else {
            return Ok(false);
        };
        let at = self.rpos;
        let record = &mut self.rbuf[at..at + len];
        let (typ, range) = self.rx.open(record).map_err(record_err)?;
        self.rpos += len;
        let range = at + range.start..at + range.end;
        match typ {
            APPLICATION_DATA => {
                if !self.hs_partial.is_empty() {
                    return Err(invalid("TLS data interleaved with a handshake message"));
                }
                self.plain = range;
            }
            ALERT => self.alert(range)?,
            HANDSHAKE => {
                self.hs_partial.extend_from_slice(&self.rbuf[range]);
                self.handshake_messages()?;
            }
            t => {
                return Err(invalid(format!(
                    "unexpected TLS record type {t} after the handshake"
                )))
            }
        }
        Ok(true)
    }

    fn alert(&mut self, range: Range<usize>) -> io::Result<()> {
        let &[level, desc] = &self.rbuf[range] else {
            return Err(invalid("malformed TLS alert"));
        };
        match desc {
            CLOSE_NOTIFY => {
                self.peer_closed = true;
                Ok(())
            }
            USER_CANCELED => Ok(()),
            // TLS 1.2 warnings (e.g. no_renegotiation) are not fatal.
            _ if level == 1 && self.version == Version::Tls12 => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("TLS peer sent alert {desc}"),
            )),
        }
    }

    /// Handles the complete handshake messages in `hs_partial`.
    fn handshake_messages(&mut self) -> io::Result<()> {
        let mut at = 0;
        while let [typ, a, b, c, ..] = self.hs_partial[at..] {
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if len > MAX_HS_MESSAGE {
                return Err(invalid("TLS handshake message too large"));
            }
            let Some(body) = self.hs_partial.get(at + 4..at + 4 + len) else {
                break;
            };
            match (typ, self.version) {
                (NEW_SESSION_TICKET, Version::Tls13) => S::session_ticket(&mut self.kernel, body)?,
                (KEY_UPDATE, Version::Tls13) => {
                    // A key change must end its record (RFC 8446 §5.1).
                    if at + 4 + len != self.hs_partial.len() {
                        return Err(invalid("TLS key update not at a record boundary"));
                    }
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(invalid("malformed TLS key update")),
                    };
                    let next = self.kernel.update_rx_secret().map_err(invalid)?;
                    self.rx = RecordCipher::new(self.version, next).map_err(invalid)?;
                    self.owe_key_update |= requested;
                }
                // A TLS 1.2 server asking to renegotiate: not supported, and
                // ignoring it is allowed (RFC 5246 §7.4.1.1).
                (HELLO_REQUEST, Version::Tls12) if len == 0 => {}
                (t, _) => {
                    return Err(invalid(format!(
                        "unexpected TLS handshake message {t} after the handshake"
                    )))
                }
            }
            at += 4 + len;
        }
        self.hs_partial.drain(..at);
        Ok(())
    }

    /// Seals our KeyUpdate with the current key into `out`, then switches
    /// to the next key.
    fn key_update(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if self.version != Version::Tls13 {
            // TLS 1.2 has no key update: end the connection instead of
            // exceeding the key's safe use (rustls does the same).
            return Err(invalid("TLS 1.2 connection reached its key usage limit"));
        }
        self.tx
            .seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)
            .map_err(record_err)?;
        let next = self.kernel.update_tx_secret().map_err(invalid)?;
        self.tx = RecordCipher::new(self.version, next).map_err(invalid)?;
        self.owe_key_update = false;
        Ok(())
    }

    /// Seals `data` as application data records into `out`.
    fn seal_data(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let records = data.len().div_ceil(MAX_PLAIN);
        out.reserve(data.len() + records * self.tx.overhead());
        for chunk in data.chunks(MAX_PLAIN) {
            if self.owe_key_update || self.tx.seq() >= self.rekey_after {
                self.key_update(out)?;
            }
            self.tx
                .seal(APPLICATION_DATA, chunk, out)
                .map_err(record_err)?;
        }
        Ok(())
    }

    /// Sends `out` (then keeps it as the write buffer if it is worth it).
    async fn send(&mut self, out: Vec<u8>) -> io::Result<()> {
        let used = out.len();
        let (res, mut back) = self.tcp.write_all(out).await;
        // Keep a large buffer only while writes fill a good part of it.
        if back.capacity() > KEEP_WRITE && used < back.capacity() / 4 {
            back = Vec::new();
        }
        back.clear();
        self.wbuf = back;
        res.map(|_| ())
    }

    /// Answers a key update the peer asked for.
    async fn answer_key_update(&mut self) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.wbuf);
        self.key_update(&mut out)?;
        self.send(out).await
    }

    /// Decrypted application data waiting to be taken, in place (see
    /// [`TlsStream::fill_plain`]).
    pub fn plain(&self) -> &[u8] {
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
    /// waiting; never reads the socket. Returns whether data is waiting.
    pub async fn open_buffered(&mut self) -> io::Result<bool> {
        while self.plain().is_empty() {
            if self.peer_closed || !self.open_next()? {
                return Ok(false);
            }
            if self.owe_key_update {
                self.answer_key_update().await?;
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
            if self.open_buffered().await? {
                return Ok(true);
            }
            if self.peer_closed {
                return Ok(false);
            }
            if self.eof {
                return Err(truncated());
            }
            if self.rbuf.len() - self.rpos >= MAX_RECORD {
                return Err(record_err(RecordError::RecordOverflow(
                    self.rbuf.len() - self.rpos,
                )));
            }
            self.fill().await?;
        }
    }

    /// Reads the socket until a complete record is buffered, without opening
    /// it (so that [`TlsStream::reseal_buffered`] can). Returns false after
    /// the peer's close_notify. Only when no opened data is waiting.
    pub async fn fill_records(&mut self) -> io::Result<bool> {
        if !self.plain().is_empty() {
            return Ok(true);
        }
        loop {
            if self.peer_closed {
                return Ok(false);
            }
            if complete_record(&self.rbuf[self.rpos..])
                .map_err(record_err)?
                .is_some()
            {
                return Ok(true);
            }
            if self.eof {
                return Err(truncated());
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
            if self.open_buffered().await? {
                continue;
            }
            if filled > 0 || !self.fill_plain().await? {
                return Ok(filled);
            }
        }
    }

    /// Re-encrypts for `to`, in place in this stream's read buffer, the
    /// application data records already read, each handed to `each` (the
    /// digest check) before it is sealed: with the same record layout on
    /// both connections (TLS 1.3 to TLS 1.3 without padding, the usual case)
    /// a relay copies no byte at all. Takes at most `limit` bytes.
    ///
    /// Stops at the first record that cannot be re-encrypted this way (it
    /// stays opened, in [`TlsStream::plain`]), at a record not adjacent to the
    /// run (after a ticket or key update), when `to` owes a key update, or
    /// when no complete record is left (then `exhausted`). The run goes out
    /// after what `to` has pending (sealed before it), with
    /// [`TlsStream::send_run`], or with [`TlsStream::send_ciphertext`] after
    /// [`TlsStream::swap_read_buffer`].
    pub fn reseal_buffered<T: Side>(
        &mut self,
        to: &mut TlsStream<T>,
        limit: u64,
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<Resealed> {
        let mut out = Resealed {
            taken: 0,
            run: self.rpos..self.rpos,
            exhausted: false,
        };
        while out.taken < limit
            && self.plain().is_empty()
            && self.hs_partial.is_empty()
            && !self.owe_key_update
            && !self.peer_closed
            && !to.owe_key_update
            && to.tx.seq() < to.rekey_after
        {
            let at = self.rpos;
            if !self.open_next()? {
                out.exhausted = true;
                break;
            }
            let plain = self.plain.clone();
            if plain.is_empty() {
                continue; // an alert or handshake record: the run ends here
            }
            if at != out.run.end || plain.len() as u64 > limit - out.taken {
                break;
            }
            let slot = at..self.rpos;
            let inner = plain.start - at..plain.end - at;
            if !to.tx.fits_slot(slot.len(), &inner) {
                break;
            }
            each(&self.rbuf[plain.clone()]);
            let sealed = to
                .tx
                .seal_in_slot(&mut self.rbuf[slot.clone()], inner)
                .map_err(record_err)?;
            debug_assert!(sealed);
            #[cfg(test)]
            RESEALED_IN_PLACE.with(|n| n.set(n.get() + 1));
            self.plain = plain.end..plain.end;
            out.taken += plain.len() as u64;
            out.run.end = slot.end;
        }
        Ok(out)
    }

    /// Answers a key update the peer asked for, if one is owed.
    pub async fn settle(&mut self) -> io::Result<()> {
        if self.owe_key_update {
            self.answer_key_update().await?;
        }
        Ok(())
    }

    /// Sends `run` of this stream's read buffer (ciphertext for `to`, see
    /// [`TlsStream::reseal_buffered`]) on `to`.
    pub async fn send_run<T: Side>(
        &mut self,
        to: &mut TlsStream<T>,
        run: Range<usize>,
    ) -> io::Result<()> {
        let buf = std::mem::take(&mut self.rbuf);
        let (res, buf) = to.send_ciphertext(buf, run).await;
        self.rbuf = buf;
        res
    }

    /// Hands the read buffer out (to send a resealed run from it while the
    /// next bytes are read) and continues with `spare`, which receives the
    /// unopened rest. Only when no opened data is waiting.
    pub fn swap_read_buffer(&mut self, mut spare: Vec<u8>) -> io::Result<Vec<u8>> {
        if !self.plain().is_empty() {
            return Err(invalid("read buffer swapped with opened data in it"));
        }
        spare.clear();
        spare.reserve(self.rbuf.capacity());
        spare.extend_from_slice(&self.rbuf[self.rpos..]);
        self.rpos = 0;
        self.plain = 0..0;
        Ok(std::mem::replace(&mut self.rbuf, spare))
    }

    /// Sends what is pending, then ciphertext already sealed for this
    /// stream (`buf[run]`, sealed after it); gives the buffer back.
    pub async fn send_ciphertext(
        &mut self,
        buf: Vec<u8>,
        run: Range<usize>,
    ) -> (io::Result<()>, Vec<u8>) {
        if let Err(e) = self.send_pending().await {
            return (Err(e), buf);
        }
        let (res, slice) = self.tcp.write_all(buf.slice(run)).await;
        (res.map(|_| ()), slice.into_inner())
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

    async fn shutdown(&mut self) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.wbuf);
        self.tx
            .seal(ALERT, &[1, CLOSE_NOTIFY], &mut out)
            .map_err(record_err)?;
        self.send(out).await?;
        self.tcp.shutdown().await
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
