//! A raw peer: a real handshake (rustls on both ends, driven through our
//! handshake code over loopback), after which the test end seals whatever
//! records a case wants with its known traffic key, straight onto the
//! socket. Each case asserts the exact outcome on our end (data read, the
//! error) and what the peer then sees (the alert we sent, close_notify or a
//! bare TCP end).

use std::sync::Arc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;

use super::tests::run;
use super::*;
use crate::tls::error::alert;
use crate::tls::inbound::MAX_KEY_UPDATES;
use crate::tls::record::{complete_record, RecordError, HANDSHAKE, MAX_RECORD, MAX_RECORD_13};
use crate::tls::{server_config, ServerCerts, ServerMaterial};

/// Our client and our server, connected over loopback with `version`.
async fn pair(version: Version) -> (ClientTls, ServerTls) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der: CertificateDer<'static> = c.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(c.key_pair.serialize_der().into());
    let material = ServerMaterial {
        chain: vec![der.clone()],
        key,
    };
    let server = server_config(&ServerCerts::Static(material)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let v = match version {
        Version::Tls12 => &rustls::version::TLS12,
        Version::Tls13 => &rustls::version::TLS13,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[v])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.enable_secret_extraction = true;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (c, s) = monoio::join!(
        async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            connect(Arc::new(client), name, tcp).await.unwrap()
        },
        async {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(server, tcp).await.unwrap()
        }
    );
    assert_eq!(c.version, version);
    (c, s)
}

/// The raw peer's tools: records sealed with the current key, as is.
impl<S: Side> TlsStream<S> {
    fn raw(&mut self, typ: u8, plain: &[u8], out: &mut Vec<u8>) {
        self.tx.seal_any_length(typ, plain, out);
    }

    /// A KeyUpdate, then the next key for what follows.
    fn raw_key_update(&mut self, requested: bool, out: &mut Vec<u8>) {
        self.raw(HANDSHAKE, &[24, 0, 0, 1, u8::from(requested)], out);
        let next = self.kernel.update_tx_secret().unwrap();
        self.tx = RecordCipher::new(self.version, next).unwrap();
    }

    async fn raw_send(&mut self, wire: Vec<u8>) {
        let (res, _) = self.tcp.write_all(wire).await;
        res.unwrap();
    }
}

/// What our end read before it stopped, and why it stopped.
#[derive(Debug)]
struct Read {
    data: Vec<u8>,
    /// `None`: close_notify.
    error: Option<io::Error>,
}

async fn read_all<S: Side>(ours: &mut TlsStream<S>) -> Read {
    let mut data = Vec::new();
    for _ in 0..100_000 {
        match ours.fill_plain().await {
            Ok(true) => {
                data.extend_from_slice(ours.plain());
                let n = ours.plain().len();
                ours.consume_plain(n);
            }
            Ok(false) => return Read { data, error: None },
            Err(error) => {
                return Read {
                    data,
                    error: Some(error),
                }
            }
        }
    }
    panic!("no end after 100 000 records");
}

/// What the peer sees after our end shut down.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    CloseNotify,
    Alert(u8),
    /// TCP ended without either.
    Bare,
}

async fn seen<S: Side>(peer: &mut TlsStream<S>) -> Seen {
    let r = read_all(peer).await;
    match r.error {
        None => Seen::CloseNotify,
        Some(e) => match TlsError::of(&e) {
            Some(TlsError::Alert(d)) => Seen::Alert(*d),
            Some(TlsError::Truncated) => Seen::Bare,
            _ => panic!("peer: {e}"),
        },
    }
}

fn tls_error(r: &Read) -> &TlsError {
    let e = r.error.as_ref().expect("an error");
    TlsError::of(e).unwrap_or_else(|| panic!("not a TLS error: {e}"))
}

/// The raw peer (a client) sends `wire`, then close_notify; our server reads
/// until it stops, then shuts down; returns what it read and what the peer
/// saw.
async fn client_sends(
    version: Version,
    wire: impl FnOnce(&mut ClientTls) -> Vec<u8>,
) -> (Read, Seen) {
    let (mut peer, mut ours) = pair(version).await;
    let mut out = wire(&mut peer);
    peer.raw(ALERT, &[1, CLOSE_NOTIFY], &mut out);
    peer.raw_send(out).await;
    let read = read_all(&mut ours).await;
    let _ = ours.shutdown().await;
    let seen = seen(&mut peer).await;
    (read, seen)
}

#[test]
fn tls13_record_over_its_limit_gets_record_overflow() {
    run(async {
        // One byte over 2^14 + 256: refused on its header alone.
        let (read, seen) = client_sends(Version::Tls13, |_| {
            let len = MAX_RECORD_13 - 5 + 1;
            let mut rec = vec![APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
            rec.resize(5 + len, 0);
            rec
        })
        .await;
        assert!(matches!(
            tls_error(&read),
            TlsError::Record(RecordError::RecordOverflow(_))
        ));
        assert_eq!(seen, Seen::Alert(alert::RECORD_OVERFLOW));
        // TLS 1.2 allows 2048 bytes of expansion: one byte more is refused.
        let (read, seen) = client_sends(Version::Tls12, |_| {
            let len = MAX_RECORD - 5 + 1;
            let mut rec = vec![APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
            rec.resize(5 + len, 0);
            rec
        })
        .await;
        assert!(read.data.is_empty());
        assert_eq!(seen, Seen::Alert(alert::RECORD_OVERFLOW));
    });
}

#[test]
fn tls13_inner_plaintext_over_2_14_plus_1_gets_record_overflow() {
    run(async {
        let full = vec![7u8; MAX_PLAIN];
        let (read, seen) = client_sends(Version::Tls13, |p| {
            let mut out = Vec::new();
            // 2^14 of content and the type: the largest allowed.
            p.raw(APPLICATION_DATA, &full, &mut out);
            // The same and one byte of padding: one too many.
            let mut padded = full.clone();
            padded.push(APPLICATION_DATA);
            p.raw(0, &padded, &mut out);
            out
        })
        .await;
        assert_eq!(read.data, full, "the first record is read, not the second");
        assert!(matches!(
            tls_error(&read),
            TlsError::Record(RecordError::RecordOverflow(_))
        ));
        assert_eq!(seen, Seen::Alert(alert::RECORD_OVERFLOW));
    });
}

#[test]
fn key_update_flood_is_refused_with_unexpected_message() {
    run(async {
        let (read, seen) = client_sends(Version::Tls13, |p| {
            let mut out = Vec::new();
            p.raw(APPLICATION_DATA, b"before", &mut out);
            for _ in 0..=MAX_KEY_UPDATES {
                p.raw_key_update(true, &mut out);
            }
            p.raw(APPLICATION_DATA, b"after", &mut out);
            out
        })
        .await;
        assert_eq!(read.data, b"before");
        assert!(matches!(tls_error(&read), TlsError::KeyUpdateFlood));
        assert_eq!(seen, Seen::Alert(alert::UNEXPECTED_MESSAGE));
    });
}

/// Up to the cap, key updates are taken; the replies they ask for are one
/// KeyUpdate, sent with our next data (not a write each).
#[test]
fn key_updates_up_to_the_cap_get_one_reply_with_the_next_data() {
    run(async {
        let (mut peer, mut ours) = pair(Version::Tls13).await;
        // Session tickets from the handshake are read first.
        let (res, _) = ours.write_all(b"hi".to_vec()).await;
        res.unwrap();
        let (res, _) = peer.read_exact(vec![0u8; 2]).await;
        res.unwrap();
        assert_eq!(peer.rbuf.len(), peer.rpos);
        let mut out = Vec::new();
        for round in 0..3 {
            // Data in between resets the count.
            for _ in 0..MAX_KEY_UPDATES {
                peer.raw_key_update(true, &mut out);
            }
            peer.raw(APPLICATION_DATA, &[round], &mut out);
        }
        peer.raw_send(std::mem::take(&mut out)).await;
        let (res, buf) = ours.read_exact(vec![0u8; 3]).await;
        res.unwrap();
        assert_eq!(buf, [0, 1, 2]);
        let (res, _) = ours.write_all(b"ok".to_vec()).await;
        res.unwrap();
        ours.shutdown().await.unwrap();
        // On the wire: our KeyUpdate, "ok", close_notify.
        let mut wire = Vec::new();
        for _ in 0..100 {
            let (res, buf) = peer.tcp.read(vec![0u8; 4096]).await;
            let n = res.unwrap();
            if n == 0 {
                break;
            }
            wire.extend_from_slice(&buf[..n]);
        }
        let mut records = 0;
        let mut at = 0;
        while let Some(len) = complete_record(&wire[at..]).unwrap() {
            at += len;
            records += 1;
        }
        assert_eq!((records, at), (3, wire.len()));
    });
}

#[test]
fn key_updates_split_over_records_are_taken() {
    run(async {
        let (read, seen) = client_sends(Version::Tls13, |p| {
            let mut out = Vec::new();
            p.raw(HANDSHAKE, &[24, 0], &mut out);
            p.raw(HANDSHAKE, &[0, 1, 0], &mut out);
            let next = p.kernel.update_tx_secret().unwrap();
            p.tx = RecordCipher::new(p.version, next).unwrap();
            p.raw(APPLICATION_DATA, b"new key", &mut out);
            out
        })
        .await;
        assert_eq!(read.data, b"new key");
        assert!(read.error.is_none(), "{:?}", read.error);
        assert_eq!(seen, Seen::CloseNotify);
    });
}

#[test]
fn misplaced_key_updates_get_unexpected_message() {
    run(async {
        // Another message after it in its record.
        let (read, seen) = client_sends(Version::Tls13, |p| {
            let mut out = Vec::new();
            p.raw(HANDSHAKE, &[24, 0, 0, 1, 0, 4, 0, 0, 0], &mut out);
            out
        })
        .await;
        assert!(matches!(tls_error(&read), TlsError::Protocol(_)));
        assert_eq!(seen, Seen::Alert(alert::UNEXPECTED_MESSAGE));
        // Application data between its fragments.
        let (read, seen) = client_sends(Version::Tls13, |p| {
            let mut out = Vec::new();
            p.raw(HANDSHAKE, &[24, 0], &mut out);
            p.raw(APPLICATION_DATA, b"x", &mut out);
            out
        })
        .await;
        assert!(read.data.is_empty());
        assert!(matches!(tls_error(&read), TlsError::Protocol(_)));
        assert_eq!(seen, Seen::Alert(alert::UNEXPECTED_MESSAGE));
        // In TLS 1.2, where there is none.
        let (read, seen) = client_sends(Version::Tls12, |p| {
            let mut out = Vec::new();
            p.raw(HANDSHAKE, &[24, 0, 0, 1, 0], &mut out);
            out
        })
        .await;
        assert!(matches!(
            tls_error(&read),
            TlsError::UnexpectedHandshake(24)
        ));
        assert_eq!(seen, Seen::Alert(alert::UNEXPECTED_MESSAGE));
    });
}

#[test]
fn alerts_warning_and_fatal() {
    run(async {
        // TLS 1.2: a warning is passed over, user_canceled too.
        let (read, seen) = client_sends(Version::Tls12, |p| {
            let mut out = Vec::new();
            p.raw(ALERT, &[1, 100], &mut out);
            p.raw(ALERT, &[1, 90], &mut out);
            p.raw(APPLICATION_DATA, b"still here", &mut out);
            out
        })
        .await;
        assert_eq!(read.data, b"still here");
        assert!(read.error.is_none());
        assert_eq!(seen, Seen::CloseNotify);
        // TLS 1.3: every alert but close_notify and user_canceled ends it;
        // a peer that sent an alert gets none back.
        for (version, level) in [
            (Version::Tls13, 1),
            (Version::Tls13, 2),
            (Version::Tls12, 2),
        ] {
            let (read, seen) = client_sends(version, |p| {
                let mut out = Vec::new();
                p.raw(APPLICATION_DATA, b"data", &mut out);
                p.raw(ALERT, &[level, 40], &mut out);
                p.raw(APPLICATION_DATA, b"after", &mut out);
                out
            })
            .await;
            assert_eq!(read.data, b"data");
            assert!(matches!(tls_error(&read), TlsError::Alert(40)));
            assert_eq!(seen, Seen::Bare, "{version:?} {level}");
        }
        // A malformed alert.
        let (read, seen) = client_sends(Version::Tls13, |p| {
            let mut out = Vec::new();
            p.raw(ALERT, &[2], &mut out);
            out
        })
        .await;
        assert!(matches!(tls_error(&read), TlsError::Protocol(_)));
        assert_eq!(seen, Seen::Alert(alert::UNEXPECTED_MESSAGE));
    });
}

#[test]
fn renegotiation_attempts_are_refused() {
    run(async {
        // A client's ClientHello after the handshake, both versions.
        for version in [Version::Tls12, Version::Tls13] {
            let (read, seen) = client_sends(version, |p| {
                let mut out = Vec::new();
                p.raw(HANDSHAKE, &[1, 0, 0, 2, 3, 3], &mut out);
                out
            })
            .await;
            assert!(matches!(tls_error(&read), TlsError::UnexpectedHandshake(1)));
            assert_eq!(seen, Seen::Alert(alert::UNEXPECTED_MESSAGE));
        }
        // HelloRequest has no place in TLS 1.3.
        let (read, seen) = client_sends(Version::Tls13, |p| {
            let mut out = Vec::new();
            p.raw(HANDSHAKE, &[0, 0, 0, 0], &mut out);
            out
        })
        .await;
        assert!(matches!(tls_error(&read), TlsError::UnexpectedHandshake(0)));
        assert_eq!(seen, Seen::Alert(alert::UNEXPECTED_MESSAGE));
        // A TLS 1.2 server's HelloRequest: our client passes over it.
        let (mut ours, mut peer) = pair(Version::Tls12).await;
        let mut out = Vec::new();
        peer.raw(HANDSHAKE, &[0, 0, 0, 0], &mut out);
        peer.raw(APPLICATION_DATA, b"body", &mut out);
        peer.raw(ALERT, &[1, CLOSE_NOTIFY], &mut out);
        peer.raw_send(out).await;
        let read = read_all(&mut ours).await;
        assert_eq!(read.data, b"body");
        assert!(read.error.is_none());
    });
}

#[test]
fn zero_length_and_padded_records() {
    run(async {
        let (read, seen) = client_sends(Version::Tls13, |p| {
            let mut out = Vec::new();
            for _ in 0..1000 {
                p.raw(APPLICATION_DATA, b"", &mut out);
            }
            // "ab", then its type, then padding.
            p.raw(0, b"ab\x17\0\0\0\0", &mut out);
            out
        })
        .await;
        assert_eq!(read.data, b"ab");
        assert!(read.error.is_none());
        assert_eq!(seen, Seen::CloseNotify);
        // Padding only: no content type.
        let (read, seen) = client_sends(Version::Tls13, |p| {
            let mut out = Vec::new();
            p.raw(0, &[0, 0, 0], &mut out);
            out
        })
        .await;
        assert!(matches!(
            tls_error(&read),
            TlsError::Record(RecordError::Malformed(_))
        ));
        assert_eq!(seen, Seen::Alert(alert::DECODE_ERROR));
        // An empty handshake record.
        let (read, seen) = client_sends(Version::Tls13, |p| {
            let mut out = Vec::new();
            p.raw(HANDSHAKE, b"", &mut out);
            out
        })
        .await;
        assert!(matches!(tls_error(&read), TlsError::Protocol(_)));
        assert_eq!(seen, Seen::Alert(alert::UNEXPECTED_MESSAGE));
    });
}

/// 700 KB of empty records grow the read buffer to its cap and no further;
/// going idle gives it back.
#[test]
fn empty_record_burst_grows_the_read_buffer_only_to_its_cap() {
    run(async {
        let (mut peer, mut ours) = pair(Version::Tls13).await;
        let mut out = Vec::new();
        while out.len() < 700_000 {
            peer.raw(APPLICATION_DATA, b"", &mut out);
        }
        peer.raw(APPLICATION_DATA, b"GET", &mut out);
        let (_, read) = monoio::join!(peer.raw_send(out), async {
            let mut most = 0;
            let mut got = Vec::new();
            while got.len() < 3 {
                assert!(ours.fill_plain().await.unwrap());
                most = most.max(ours.rbuf.capacity());
                got.extend_from_slice(ours.plain());
                let n = ours.plain().len();
                ours.consume_plain(n);
            }
            (got, most)
        });
        assert_eq!(read.0, b"GET");
        assert!(read.1 <= MAX_READ, "read buffer grew to {}", read.1);
        ours.shrink_idle();
        assert!(ours.rbuf.capacity() <= MIN_READ);
    });
}

/// Buffers swapped back and forth by a relay keep the size of the one
/// they replace: a smaller spare is not doubled past it.
#[test]
fn swapped_read_buffers_do_not_ratchet_up() {
    run(async {
        let (mut ours, _peer) = pair(Version::Tls13).await;
        ours.rbuf = Vec::with_capacity(MAX_READ);
        let mut spare = Vec::with_capacity(160 * 1024);
        for _ in 0..8 {
            let out = ours.swap_read_buffer(spare).unwrap();
            assert!(ours.rbuf.capacity() <= MAX_READ, "{}", ours.rbuf.capacity());
            spare = out;
        }
    });
}

#[test]
fn sequence_exhaustion_ends_the_stream_without_a_partial_record() {
    run(async {
        // Sending: the last sequence number is never used.
        let (mut peer, mut ours) = pair(Version::Tls13).await;
        let (res, _) = ours.write_all(b"first".to_vec()).await;
        res.unwrap();
        ours.tx.set_seq(u64::MAX);
        ours.set_rekey_after(u64::MAX);
        let (res, _) = ours.write_all(b"second".to_vec()).await;
        let e = res.unwrap_err();
        assert!(matches!(
            TlsError::of(&e),
            Some(TlsError::Record(RecordError::SequenceExhausted))
        ));
        assert!(ours.wbuf.is_empty(), "nothing half sealed is kept");
        let (res, _) = ours.write_all(b"third".to_vec()).await;
        assert!(matches!(
            TlsError::of(&res.unwrap_err()),
            Some(TlsError::Failed)
        ));
        let _ = ours.shutdown().await;
        let read = read_all(&mut peer).await;
        assert_eq!(read.data, b"first");
        assert!(matches!(tls_error(&read), TlsError::Truncated));
        // Receiving: the record before the end opens, and the sender cannot
        // seal one after it.
        let (mut peer, mut ours) = pair(Version::Tls13).await;
        peer.tx.set_seq(u64::MAX - 1);
        ours.inbound.set_rx_seq(u64::MAX - 1);
        let mut out = Vec::new();
        peer.raw(APPLICATION_DATA, b"last", &mut out);
        assert!(matches!(
            peer.tx.seal(APPLICATION_DATA, b"more", &mut out),
            Err(RecordError::SequenceExhausted)
        ));
        peer.raw_send(out).await;
        let (res, buf) = ours.read_exact(vec![0u8; 4]).await;
        res.unwrap();
        assert_eq!(buf, b"last");
    });
}

#[test]
fn truncation_without_close_notify_is_an_error() {
    run(async {
        let (mut peer, mut ours) = pair(Version::Tls13).await;
        let mut out = Vec::new();
        peer.raw(APPLICATION_DATA, b"part of a body", &mut out);
        peer.raw_send(out).await;
        peer.tcp.shutdown().await.unwrap();
        let read = read_all(&mut ours).await;
        assert_eq!(read.data, b"part of a body");
        let e = read.error.as_ref().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(matches!(tls_error(&read), TlsError::Truncated));
        // The stream is over: reading again is refused, not retried.
        assert!(ours.fill_plain().await.is_err());
    });
}

/// A relay's send to a client that reads nothing times out: the upstream
/// stream whose buffer went with the write refuses any further use (its
/// indices point into nothing), without a panic; the client stream sends
/// no alert over a half-sent record.
#[test]
fn send_timing_out_mid_relay_leaves_both_streams_refusing_use() {
    run(async {
        let (mut up, mut up_server) = pair(Version::Tls13).await;
        let (client_peer, mut client) = pair(Version::Tls13).await;
        // Small socket buffers on the client side fill quickly.
        for fd in [client.tcp.as_raw_fd(), client_peer.tcp.as_raw_fd()] {
            let fd = Fd(fd);
            let sock = socket2::SockRef::from(&fd);
            sock.set_send_buffer_size(4096).unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
        }
        // The upstream sends more than the client's buffers hold (left
        // blocked at the end: its task is dropped with the runtime).
        let body = vec![9u8; 4 << 20];
        let _writer = monoio::spawn(async move {
            let _ = up_server.write_all(body).await;
            up_server
        });
        let mut timed_out = false;
        {
            for _ in 0..10_000 {
                assert!(up.fill_records().await.unwrap());
                let done = up.reseal_buffered(&mut client, u64::MAX, |_| {}).unwrap();
                if done.run.is_empty() {
                    continue;
                }
                let send = up.send_run(&mut client, done.run);
                if monoio::time::timeout(Duration::from_millis(200), send)
                    .await
                    .is_err()
                {
                    timed_out = true;
                    break;
                }
            }
        }
        assert!(timed_out, "the client's buffers never filled");
        assert!(up.plain().is_empty());
        for e in [
            up.open_buffered().unwrap_err(),
            up.fill_records().await.unwrap_err(),
            up.swap_read_buffer(Vec::new()).unwrap_err(),
        ] {
            assert!(
                matches!(TlsError::of(&e), Some(TlsError::UsedAfterCancel)),
                "{e}"
            );
        }
        let (res, _) = client.write_all(b"more".to_vec()).await;
        assert!(matches!(
            TlsError::of(&res.unwrap_err()),
            Some(TlsError::UsedAfterCancel)
        ));
        assert!(!up.park(), "a broken stream goes back to no pool");
        // Shutting down sends nothing after the half-sent record.
        client.shutdown().await.unwrap();
        drop(client_peer);
    });
}

/// A borrowed fd for socket2.
struct Fd(std::os::fd::RawFd);
impl std::os::fd::AsFd for Fd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the stream owning the fd outlives this borrow (used for
        // two setsockopt calls while both are alive).
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) }
    }
}

#[test]
fn a_read_timing_out_leaves_the_stream_refusing_use() {
    run(async {
        let (_peer, mut ours) = pair(Version::Tls13).await;
        let r = monoio::time::timeout(Duration::from_millis(50), ours.fill_plain()).await;
        assert!(r.is_err(), "nothing was sent");
        assert!(ours.plain().is_empty());
        let e = ours.fill_plain().await.unwrap_err();
        assert!(matches!(TlsError::of(&e), Some(TlsError::UsedAfterCancel)));
        ours.shutdown().await.unwrap();
    });
}

/// Only a connection with nothing left to read goes back to the pool.
#[test]
fn parking_refuses_closed_and_unread_connections() {
    run(async {
        // Quiet: reusable, and still works after.
        let (mut ours, mut peer) = pair(Version::Tls13).await;
        assert!(ours.park());
        let mut out = Vec::new();
        peer.raw(APPLICATION_DATA, b"next", &mut out);
        peer.raw_send(out).await;
        let (res, buf) = ours.read_exact(vec![0u8; 4]).await;
        res.unwrap();
        assert_eq!(buf, b"next");
        // After the upstream's close_notify.
        let mut out = Vec::new();
        peer.raw(ALERT, &[1, CLOSE_NOTIFY], &mut out);
        peer.raw_send(out).await;
        let (res, _) = ours.read(vec![0u8; 4]).await;
        assert_eq!(res.unwrap(), 0);
        assert!(!ours.park());
        // With a record of data left unread (read into the buffer with the
        // last of a response).
        let (mut ours, mut peer) = pair(Version::Tls13).await;
        let mut out = Vec::new();
        peer.raw(APPLICATION_DATA, b"body", &mut out);
        peer.raw(APPLICATION_DATA, b"stray", &mut out);
        peer.raw_send(out).await;
        let (res, buf) = ours.read_exact(vec![0u8; 4]).await;
        res.unwrap();
        assert_eq!(buf, b"body");
        assert!(!ours.park(), "a stray record is not reused");
        // Half a record after the response.
        let (mut ours, mut peer) = pair(Version::Tls13).await;
        let mut out = Vec::new();
        peer.raw(APPLICATION_DATA, b"body", &mut out);
        peer.raw(APPLICATION_DATA, b"stray", &mut out);
        out.truncate(out.len() - 3);
        peer.raw_send(out).await;
        let (res, buf) = ours.read_exact(vec![0u8; 4]).await;
        res.unwrap();
        assert_eq!(buf, b"body");
        assert!(!ours.park());
    });
}

/// A raw client sends its ClientHello and, in the same segment, a record
/// our server cannot open: the handshake fails after our ServerHello was
/// encoded. The alert must be one the client can read (here: rustls, fed
/// everything we sent, reports the alert, not a record it cannot decrypt).
#[test]
fn a_failed_handshake_sends_an_alert_the_client_can_read() {
    run(async {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der: CertificateDer<'static> = c.cert.der().clone();
        let material = ServerMaterial {
            chain: vec![der.clone()],
            key: PrivateKeyDer::Pkcs8(c.key_pair.serialize_der().into()),
        };
        let server = server_config(&ServerCerts::Static(material)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let client = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let name = ServerName::try_from("localhost").unwrap();
            let mut conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
            let mut hello = Vec::new();
            conn.write_tls(&mut hello).unwrap();
            hello.extend_from_slice(&[APPLICATION_DATA, 3, 3, 0, 32]);
            hello.extend_from_slice(&[0x55; 32]);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (ours, got) = monoio::join!(
                async {
                    let (tcp, _) = listener.accept().await.unwrap();
                    accept(server.clone(), tcp).await
                },
                async {
                    let mut tcp = TcpStream::connect(addr).await.unwrap();
                    let (res, _) = tcp.write_all(hello).await;
                    res.unwrap();
                    let mut got = Vec::new();
                    for _ in 0..1000 {
                        let (res, buf) = tcp.read(vec![0u8; 16 * 1024]).await;
                        match res {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got
                }
            );
            assert!(ours.is_err(), "the handshake failed");
            assert!(!got.is_empty(), "{version:?}: no alert at all");
            conn.read_tls(&mut &got[..]).unwrap();
            let err = conn.process_new_packets().unwrap_err();
            assert!(
                matches!(err, rustls::Error::AlertReceived(_)),
                "{version:?}: the client got {err:?}"
            );
        }
    });
}
