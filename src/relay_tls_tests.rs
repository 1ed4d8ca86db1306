//! The TLS-to-TLS relay path ([`relay_length_tls`]) against rustls peers over
//! loopback: an upstream that sends a body, a client that reads until the
//! connection ends. Digest failures must not let the held-back end out,
//! not even when the connection is then closed cleanly (close_notify).

use std::io::{Read, Write};
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::thread;

use monoio::io::AsyncWriteRent;
use monoio::net::{TcpListener, TcpStream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::*;
use crate::tls::{client_config, server_config, ServerMaterial};
use crate::tls_stream::{accept, connect};
use crate::upstream::{PoolKey, TrustId};
use crate::url::{Origin, Scheme};

const LEN: usize = (1 << 20) + 12_345;
/// Body bytes that came with the response head (in the connection's buffer).
const WITH_HEAD: usize = 1000;

fn body() -> Vec<u8> {
    (0..LEN)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(7) as u8)
        .collect()
}

/// Relays `sent` (after its first WITH_HEAD bytes, which are put in the
/// connection's buffer) from a rustls server to a rustls client checked
/// against `digest`; closes the client cleanly afterwards whatever happened.
/// Returns the relay's result and what the client received.
fn relay_once(sent: Vec<u8>, digest: &str) -> (Result<Relayed, RelayError>, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der: CertificateDer<'static> = c.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(c.key_pair.serialize_der().into());
    let material = ServerMaterial {
        chain: vec![der.clone()],
        key: key.clone_key(),
    };
    let ours_server = server_config(&material).unwrap();
    let ours_client = client_config(std::slice::from_ref(&der)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let peer_client = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let peer_server = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .unwrap(),
    );

    // The upstream: sends the body after the part that "came with the head".
    let up_listener = StdListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up_listener.local_addr().unwrap();
    let rest = sent[WITH_HEAD..].to_vec();
    let upstream = thread::spawn(move || {
        let (sock, _) = up_listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(peer_server).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(&rest).unwrap();
        tls.flush().unwrap();
        let mut sink = Vec::new();
        let _ = tls.read_to_end(&mut sink);
    });

    let digest = digest.to_string();
    let head_part = sent[..WITH_HEAD].to_vec();
    let mut result = None;
    let mut received = Vec::new();
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            // The client: reads everything until the connection ends.
            let client = thread::spawn(move || {
                let sock = std::net::TcpStream::connect(addr).unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(peer_client, name).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut got = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                got
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let mut to_client = accept(ours_server, tcp).await.unwrap();

            let tcp = TcpStream::connect(up_addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let up = connect(ours_client, name, tcp).await.unwrap();
            let key = PoolKey {
                origin: Origin {
                    scheme: Scheme::Https,
                    host: "localhost".into(),
                    port: up_addr.port(),
                },
                trust: TrustId(0),
            };
            let mut conn = Conn::new(UpstreamIo::Tls(Box::new(up)), key, Duration::from_secs(5));
            conn.buf.extend_from_slice(&head_part);

            let d = Digest::parse(&digest).unwrap();
            let mut buf = Vec::with_capacity(crate::worker::RELAY_BUF);
            let r = relay_body(
                &mut conn,
                RespFraming::Length(LEN as u64),
                &mut to_client,
                Duration::from_secs(5),
                Verifier::new(&d),
                ClientFraming::Same,
                &mut buf,
            )
            .await;
            // A clean close in every case: anything still pending would go
            // out before the close_notify.
            let _ = to_client.shutdown().await;
            drop(to_client);
            drop(conn);
            result = Some(r);
            received = client.join().unwrap();
        });
    upstream.join().unwrap();
    (result.unwrap(), received)
}

#[test]
fn a_good_body_goes_through_whole() {
    let sent = body();
    let digest = sha256_digest(&sent);
    let (r, got) = relay_once(sent.clone(), &digest);
    let done = r.unwrap();
    assert_eq!(done.bytes, LEN as u64);
    assert!(done.reusable);
    assert!(got == sent, "client got {} bytes, other bytes", got.len());
}

#[test]
fn a_body_failing_its_digest_never_arrives_whole() {
    let good = body();
    let digest = sha256_digest(&good);
    for at in [LEN - 1, WITH_HEAD + 5, 3] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let (r, got) = relay_once(bad.clone(), &digest);
        assert!(
            matches!(r, Err(RelayError::DigestMismatch)),
            "byte {at}: {:?}",
            r.map(|d| d.bytes)
        );
        assert!(
            got.len() < LEN,
            "byte {at}: the client got the whole failed body ({} bytes)",
            got.len()
        );
        assert!(got[..] == bad[..got.len()], "byte {at}: other bytes");
    }
}
