//! Our record layer against rustls' own, over real loopback TCP: every
//! cipher suite rustls offers, both ends, key updates in both directions,
//! session tickets, clean close and truncation.

use std::io::{Read, Write};
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::thread;

use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

use super::*;
use crate::tls::{client_config, server_config, ServerCerts, ServerMaterial};

struct Cert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn cert() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    Cert {
        der: c.cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(c.key_pair.serialize_der().into()),
    }
}

/// rustls limited to one suite (and its protocol version).
fn peer_provider(suite: SupportedCipherSuite) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![suite],
        ..provider::default_provider()
    })
}

fn version_of(suite: SupportedCipherSuite) -> &'static SupportedProtocolVersion {
    match suite {
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
    }
}

fn suites() -> Vec<SupportedCipherSuite> {
    use provider::cipher_suite::*;
    vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8)
        .collect()
}

const LEN: usize = 3 * 1024 * 1024 + 777;

/// The peer: reads LEN bytes, asks for a key update if TLS 1.3, sends them
/// back, then closes cleanly (or just drops TCP when `truncate`).
fn rustls_peer<C>(mut tls: rustls::StreamOwned<C, std::net::TcpStream>, truncate: bool) -> Vec<u8>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<<C as PeerSide>::D>> + PeerSide,
{
    let mut got = vec![0u8; LEN];
    tls.read_exact(&mut got).unwrap();
    if tls.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        // Asks us to update our key too: exercises both directions.
        tls.conn.refresh_traffic_keys().unwrap();
    }
    tls.write_all(&got).unwrap();
    tls.flush().unwrap();
    if truncate {
        tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    } else {
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    }
    // Our side closes cleanly after reading everything.
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).unwrap();
    got
}

trait PeerSide {
    type D: rustls::SideData;
}
impl PeerSide for rustls::ClientConnection {
    type D = rustls::client::ClientConnectionData;
}
impl PeerSide for rustls::ServerConnection {
    type D = rustls::server::ServerConnectionData;
}

/// Our side: sends LEN bytes in relay-sized writes (rekeying every few
/// records), reads them back, checks the end of stream.
async fn our_side<S: Side>(mut tls: TlsStream<S>, truncate: bool) {
    if tls.version == Version::Tls13 {
        tls.set_rekey_after(tls.tx.seq() + 40);
    }
    let sent = data(LEN, 3);
    // Every other chunk is laid out as record slots and sealed in place
    // (what a cache hit does), unless a key update falls due in it.
    let (mut slot_buf, mut slots, mut in_place) = (Vec::new(), Vec::new(), 0);
    for (i, chunk) in sent.chunks(100_000).enumerate() {
        if i % 2 == 1 {
            if let Some(run) = tls.lay_out_records(chunk.len(), &mut slot_buf, &mut slots) {
                let mut from = 0;
                for r in &slots {
                    slot_buf[r.clone()].copy_from_slice(&chunk[from..from + r.len()]);
                    from += r.len();
                }
                assert_eq!(from, chunk.len());
                tls.seal_laid_out(&mut slot_buf, &slots).unwrap();
                let out = std::mem::take(&mut slot_buf);
                let (res, back) = tls.send_ciphertext(out, run).await;
                res.unwrap();
                slot_buf = back;
                in_place += 1;
                continue;
            }
        }
        let (res, _) = tls.write_all(chunk.to_vec()).await;
        res.unwrap();
    }
    assert!(in_place > 0, "no chunk was sealed in place");
    let (res, back) = tls.read_exact(vec![0u8; LEN]).await;
    res.unwrap();
    assert!(back == sent, "echo differs");
    // Going idle gives bulk buffers back; the stream keeps working.
    tls.shrink_idle();
    assert!(tls.rbuf.capacity() <= MIN_READ, "{}", tls.rbuf.capacity());
    assert!(tls.wbuf.capacity() <= KEEP_WRITE);
    let (res, _) = tls.read(vec![0u8; 100]).await;
    if truncate {
        let e = res.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    } else {
        assert_eq!(res.unwrap(), 0, "close_notify is a clean end");
        // Reading again stays at the end.
        let (res, _) = tls.read(vec![0u8; 100]).await;
        assert_eq!(res.unwrap(), 0);
    }
    tls.shutdown().await.unwrap();
}

/// A runtime with timers (the stream's shutdown and the tests' bounds).
pub(super) fn run<F: std::future::Future<Output = ()>>(f: F) {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f);
}

#[test]
fn our_client_against_rustls_server_every_suite() {
    for suite in suites() {
        for truncate in [false, true] {
            let c = cert();
            let server = ServerConfig::builder_with_provider(peer_provider(suite))
                .with_protocol_versions(&[version_of(suite)])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![c.der.clone()], c.key.clone_key())
                .unwrap();
            let server = Arc::new(server);
            let listener = StdListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let peer = thread::spawn(move || {
                let (sock, _) = listener.accept().unwrap();
                let conn = rustls::ServerConnection::new(server).unwrap();
                rustls_peer(rustls::StreamOwned::new(conn, sock), truncate)
            });
            let ours = client_config(std::slice::from_ref(&c.der)).unwrap();
            run(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                let tls = connect(ours, name, tcp).await.unwrap();
                assert_eq!(
                    tls.version,
                    if matches!(suite, SupportedCipherSuite::Tls13(_)) {
                        Version::Tls13
                    } else {
                        Version::Tls12
                    }
                );
                our_side(tls, truncate).await;
            });
            let got = peer.join().unwrap();
            assert!(got == data(LEN, 3), "{suite:?}: peer got other bytes");
        }
    }
}

#[test]
fn rustls_client_against_our_server_every_suite() {
    for suite in suites() {
        let c = cert();
        let material = ServerMaterial {
            chain: vec![c.der.clone()],
            key: c.key.clone_key(),
        };
        let ours = server_config(&ServerCerts::Static(material)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(c.der.clone()).unwrap();
        let client = ClientConfig::builder_with_provider(peer_provider(suite))
            .with_protocol_versions(&[version_of(suite)])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = Arc::new(client);
        run(async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let peer = thread::spawn(move || {
                let sock = std::net::TcpStream::connect(addr).unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(client, name).unwrap();
                rustls_peer(rustls::StreamOwned::new(conn, sock), false)
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = accept(ours, tcp).await.unwrap();
            our_side(tls, false).await;
            let got = peer.join().unwrap();
            assert!(got == data(LEN, 3), "{suite:?}: peer got other bytes");
        });
    }
}

/// Counts what our client does with session tickets.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    inserted: std::sync::atomic::AtomicUsize,
    taken: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inserted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let t = self.inner.take_tls13_ticket(name);
        if t.is_some() {
            self.taken
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        t
    }
}

/// A client's first request travelling with its Finished is not lost;
/// session tickets sent after the handshake reach our client's store and
/// the next connections resume with them.
#[test]
fn first_request_and_session_tickets() {
    use std::sync::atomic::Ordering::Relaxed;
    let c = cert();
    let material = ServerMaterial {
        chain: vec![c.der.clone()],
        key: c.key.clone_key(),
    };
    let ours = server_config(&ServerCerts::Static(material)).unwrap();
    let store = Arc::new(CountingStore {
        inner: rustls::client::ClientSessionMemoryCache::new(16),
        inserted: 0.into(),
        taken: 0.into(),
    });
    let mut client = (*client_config(std::slice::from_ref(&c.der)).unwrap()).clone();
    client.resumption = rustls::client::Resumption::store(store.clone());
    let client = Arc::new(client);
    run(async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = &listener;
        for _ in 0..3 {
            let client = client.clone();
            let ours = ours.clone();
            let (client_tls, server_tls) = monoio::join!(
                async move {
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    let name = ServerName::try_from("localhost").unwrap();
                    let mut tls = connect(client, name, tcp).await.unwrap();
                    let (res, _) = tls.write_all(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await;
                    res.unwrap();
                    let (res, buf) = tls.read_exact(vec![0u8; 5]).await;
                    res.unwrap();
                    assert_eq!(&buf, b"hello");
                    tls
                },
                async move {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let mut tls = accept(ours, tcp).await.unwrap();
                    let (res, buf) = tls.read_exact(vec![0u8; 18]).await;
                    res.unwrap();
                    assert_eq!(&buf, b"GET / HTTP/1.1\r\n\r\n");
                    let (res, _) = tls.write_all(b"hello".to_vec()).await;
                    res.unwrap();
                    tls
                }
            );
            drop((client_tls, server_tls));
        }
    });
    assert!(store.inserted.load(Relaxed) >= 3, "tickets stored");
    assert_eq!(store.taken.load(Relaxed), 2, "second and third resumed");
}

/// A byte flipped on the wire after the handshake: the read fails with
/// InvalidData; no altered plaintext comes out.
#[test]
fn tampered_record_is_an_error_not_data() {
    let c = cert();
    let server = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![c.der.clone()], c.key.clone_key())
        .unwrap();
    let server = Arc::new(server);
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(server).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let _ = tls.write_all(&data(LEN, 5));
        let _ = tls.flush();
    });
    // A man in the middle on loopback: forwards both ways, flips one bit
    // of the server's stream 100 000 bytes in (well after the handshake).
    let mitm = StdListener::bind("127.0.0.1:0").unwrap();
    let mitm_addr = mitm.local_addr().unwrap();
    let relay = thread::spawn(move || {
        let (client, _) = mitm.accept().unwrap();
        let server = std::net::TcpStream::connect(addr).unwrap();
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let up = thread::spawn(move || {
            let _ = std::io::copy(&mut c2, &mut s2);
        });
        let (mut from, mut to) = (server, client);
        let mut seen = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if seen <= 100_000 && seen + n > 100_000 {
                buf[100_000 - seen] ^= 0x04;
            }
            seen += n;
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = up.join();
    });
    let ours = client_config(std::slice::from_ref(&c.der)).unwrap();
    run(async move {
        let tcp = TcpStream::connect(mitm_addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connect(ours, name, tcp).await.unwrap();
        let want = data(LEN, 5);
        let mut got = 0usize;
        let err = loop {
            let (res, buf) = tls.read(vec![0u8; 64 * 1024]).await;
            match res {
                Ok(0) => panic!("clean end after tampering"),
                Ok(n) => {
                    assert!(
                        buf[..n] == want[got..got + n],
                        "altered bytes were returned"
                    );
                    got += n;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(got < 100_000, "data after the flipped byte came out");
        drop(tls);
    });
    let _ = peer.join();
    let _ = relay.join();
}
