//! The handshake: rustls' unbuffered API driven through our own buffers over
//! monoio's TCP stream, then the traffic secrets handed to our record layer
//! (rustls' kernel-TLS interface).

use std::io;
use std::ops::DerefMut;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};

use super::error::{rustls_err, TlsError};
use super::inbound::Inbound;
use super::record::{RecordCipher, Version};
use super::stream::{TlsStream, CLOSE_TIMEOUT, MAX_READ, MIN_READ};

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
    fn session_ticket(k: &mut KernelConnection<Self>, payload: &[u8]) -> Result<(), TlsError>;
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

    fn session_ticket(k: &mut KernelConnection<Self>, payload: &[u8]) -> Result<(), TlsError> {
        // Kept in the config's resumption store: the next connection to this
        // upstream resumes instead of a full handshake.
        k.handle_new_session_ticket(payload)
            .map_err(TlsError::Rustls)
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

    fn session_ticket(_: &mut KernelConnection<Self>, _: &[u8]) -> Result<(), TlsError> {
        Err(TlsError::Protocol("TLS client sent a session ticket"))
    }
}

/// What to do after one step of the handshake state machine.
enum Step {
    Again,
    Send,
    Read,
    Done,
    /// The peer closed (maybe right after its Finished).
    Closed,
}

/// Drives rustls through the handshake with our buffers, then switches the
/// connection to our record layer.
pub(super) async fn handshake<S: Side>(
    tcp: TcpStream,
    mut conn: S::Conn,
    read: Vec<u8>,
) -> io::Result<TlsStream<S>> {
    // `read`: bytes of the peer's first flight already read (after a PROXY
    // header), usually none.
    let mut rbuf = read;
    rbuf.reserve(MIN_READ.saturating_sub(rbuf.len()));
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
                        Err(e) => return Err(TlsError::Encode(e.to_string()).into()),
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
                    let rec = rec.map_err(rustls_err)?;
                    discard += rec.discard;
                    early.extend_from_slice(rec.payload);
                }
                Step::Again
            }
            // A server may send (0.5-RTT) before the client's Finished: the
            // handshake is only over once rustls says so.
            Ok(ConnectionState::WriteTraffic(_)) => Step::Done,
            Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => Step::Closed,
            Ok(_) => {
                return Err(TlsError::Protocol("unexpected TLS state during the handshake").into())
            }
            Err(e) => {
                rpos += discard;
                send_alert::<S>(&mut tcp, &mut conn, &mut rbuf[rpos..], &mut wbuf).await;
                return Err(rustls_err(e));
            }
        };
        rpos += discard;
        let step = match step {
            Step::Done if conn.is_handshaking() => Step::Read,
            s => s,
        };
        match step {
            // A CA that validated by TLS-ALPN-01 closes right after its
            // Finished; rustls may read both in one go.
            Step::Closed if acme_validation::<S>(&conn) && !conn.is_handshaking() => {
                return Err(TlsError::AcmeValidation.into())
            }
            Step::Closed => {
                return Err(TlsError::HandshakeCut("peer closed during the TLS handshake").into())
            }
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
                    return Err(TlsError::MessageTooLarge.into());
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
                    return Err(TlsError::HandshakeCut("TLS handshake cut short").into());
                }
            }
            Step::Done => break,
        }
    }
    send_handshake(&mut tcp, &mut wbuf).await?;
    rbuf.drain(..rpos);
    // RFC 8737 3: after a TLS-ALPN-01 handshake nothing is exchanged.
    if acme_validation::<S>(&conn) {
        return Err(TlsError::AcmeValidation.into());
    }

    let (secrets, kernel) = S::into_kernel(conn).map_err(rustls_err)?;
    let version = match kernel.protocol_version() {
        ProtocolVersion::TLSv1_3 => Version::Tls13,
        ProtocolVersion::TLSv1_2 => Version::Tls12,
        v => return Err(TlsError::UnsupportedVersion(format!("{v:?}")).into()),
    };
    let limit = match kernel.negotiated_cipher_suite() {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    };
    wbuf.clear();
    if rbuf.capacity() < MIN_READ {
        rbuf.reserve_exact(MIN_READ - rbuf.len());
    }
    Ok(TlsStream {
        tcp,
        version,
        tx: RecordCipher::new(version, secrets.tx).map_err(TlsError::Keys)?,
        inbound: Inbound::new(
            version,
            RecordCipher::new(version, secrets.rx).map_err(TlsError::Keys)?,
        ),
        broken: None,
        kernel,
        // Rekey well before the limit (rustls does the same).
        rekey_after: limit - limit / 16,
        rbuf,
        rpos: 0,
        plain: 0..0,
        last_read: (0, 0),
        early,
        wbuf,
        eof: false,
    })
}

/// Whether the handshake negotiated RFC 8737's `acme-tls/1`: a CA
/// validating a domain, not a client.
fn acme_validation<S: Side>(conn: &S::Conn) -> bool {
    conn.alpn_protocol() == Some(super::ACME_TLS_ALPN)
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
///
/// What was encoded and not sent yet goes first: in TLS 1.3 it may hold
/// our ServerHello, and an alert sealed with the handshake keys that
/// follow it is noise to a client that never got it. With it, the client
/// has the keys and reads the alert.
async fn send_alert<S: Side>(
    tcp: &mut TcpStream,
    conn: &mut S::Conn,
    rest: &mut [u8],
    wbuf: &mut Vec<u8>,
) {
    // Once: rustls queues one fatal alert (asking again would make it
    // send a second).
    if let Ok(ConnectionState::EncodeTlsData(mut enc)) = S::process(conn, rest).state {
        let at = wbuf.len();
        wbuf.resize(at + 1024, 0);
        match enc.encode(&mut wbuf[at..]) {
            Ok(n) => wbuf.truncate(at + n),
            Err(_) => wbuf.truncate(at),
        }
    }
    if !wbuf.is_empty() {
        let write = tcp.write_all(std::mem::take(wbuf));
        let _ = monoio::time::timeout(CLOSE_TIMEOUT, write).await;
    }
}
