//! The TLS-to-TLS relay path ([`tls::relay_length_tls`]) against rustls peers over
//! loopback: an upstream that sends a body, a client that reads until the
//! connection ends. Both ways through it (records re-encrypted in place when
//! the layouts match, sealed from a copy when they do not), with key updates
//! on either side; digest failures must not let the held-back end out, not
//! even when the connection is then closed cleanly (close_notify).

use std::io::{Read, Write};
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use monoio::io::AsyncWriteRent;
use monoio::net::{TcpListener, TcpStream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::SupportedProtocolVersion;

use super::*;
use crate::tls::stream::{accept, connect, RESEALED_IN_PLACE};
use crate::tls::{client_config, server_config, ServerCerts, ServerMaterial};
use crate::upstream::{PoolKey, TrustKey};
use crate::wire::digest::{sha256_digest, Verifier};
use crate::wire::names::Digest;
use crate::wire::url::{Origin, Scheme};

const LEN: usize = (1 << 20) + 12_345;
/// Body bytes that came with the response head (in the connection's buffer).
const WITH_HEAD: usize = 1000;

static TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
static TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

#[derive(Clone, Copy)]
struct Case {
    /// Protocol versions the upstream (a rustls server) speaks.
    upstream: &'static [&'static SupportedProtocolVersion],
    /// Protocol versions the client (a rustls client) speaks.
    client: &'static [&'static SupportedProtocolVersion],
    /// The upstream updates its keys half way through the body.
    upstream_key_update: bool,
    /// We update our keys towards the client every this many records.
    rekey_every: Option<u64>,
}

const IN_PLACE: Case = Case {
    upstream: TLS13,
    client: TLS13,
    upstream_key_update: false,
    rekey_every: None,
};

fn body() -> Vec<u8> {
    (0..LEN)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(7) as u8)
        .collect()
}

struct Outcome {
    result: Result<Relayed, RelayError>,
    received: Vec<u8>,
    in_place: u64,
}

/// Relays `sent` (after its first WITH_HEAD bytes, which are put in the
/// connection's buffer) from a rustls server to a rustls client checked
/// against `digest`; closes the client cleanly afterwards whatever happened.
fn relay_once(case: Case, sent: Vec<u8>, digest: &str) -> Outcome {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der: CertificateDer<'static> = c.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(c.key_pair.serialize_der().into());
    let material = ServerMaterial {
        chain: vec![der.clone()],
        key: key.clone_key(),
    };
    let ours_server = server_config(&ServerCerts::Static(material)).unwrap();
    let ours_client = client_config(std::slice::from_ref(&der)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let peer_client = Arc::new(
        rustls::ClientConfig::builder_with_protocol_versions(case.client)
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let peer_server = Arc::new(
        rustls::ServerConfig::builder_with_protocol_versions(case.upstream)
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
        let (a, b) = rest.split_at(rest.len() / 2);
        tls.write_all(a).unwrap();
        if case.upstream_key_update {
            tls.conn.refresh_traffic_keys().unwrap();
        }
        tls.write_all(b).unwrap();
        tls.flush().unwrap();
        let mut sink = Vec::new();
        let _ = tls.read_to_end(&mut sink);
    });

    let digest = digest.to_string();
    let head_part = sent[..WITH_HEAD].to_vec();
    let mut outcome = None;
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
            if let Some(n) = case.rekey_every {
                to_client.set_rekey_after(to_client.tx_seq() + n);
            }

            let tcp = TcpStream::connect(up_addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let up = connect(ours_client, name, tcp).await.unwrap();
            let key = PoolKey {
                origin: Origin {
                    scheme: Scheme::Https,
                    host: "localhost".into(),
                    port: up_addr.port(),
                },
                trust: TrustKey::of(&[]),
            };
            let mut conn = Conn::new(UpstreamIo::Tls(Box::new(up)), key, Duration::from_secs(5));
            conn.buf.extend_from_slice(&head_part);

            let d = Digest::parse(&digest).unwrap();
            let mut buf = Vec::with_capacity(crate::relay::RELAY_BUF);
            let before = RESEALED_IN_PLACE.with(|n| n.get());
            let result = relay_body(
                &mut conn,
                RespFraming::Length(LEN as u64),
                &mut to_client,
                &crate::relay::Pace::fixed(Duration::from_secs(5)),
                &mut Verifier::new(&d),
                ClientFraming::Same,
                &mut buf,
            )
            .await;
            let in_place = RESEALED_IN_PLACE.with(|n| n.get()) - before;
            // A clean close in every case: anything still pending would go
            // out before the close_notify.
            let _ = to_client.shutdown().await;
            drop(to_client);
            drop(conn);
            outcome = Some(Outcome {
                result,
                received: client.join().unwrap(),
                in_place,
            });
        });
    upstream.join().unwrap();
    outcome.unwrap()
}

#[test]
fn a_good_body_goes_through_whole_either_way() {
    let sent = body();
    let digest = sha256_digest(&sent);
    let records = (LEN / crate::tls::record::MAX_PLAIN) as u64;
    for (name, case, in_place) in [
        ("TLS 1.3 both sides", IN_PLACE, true),
        (
            "TLS 1.2 both sides",
            Case {
                upstream: TLS12,
                client: TLS12,
                ..IN_PLACE
            },
            true,
        ),
        (
            "TLS 1.2 upstream, TLS 1.3 client",
            Case {
                upstream: TLS12,
                ..IN_PLACE
            },
            false,
        ),
        (
            "TLS 1.3 upstream, TLS 1.2 client",
            Case {
                client: TLS12,
                ..IN_PLACE
            },
            false,
        ),
        (
            "key updates on both sides",
            Case {
                upstream_key_update: true,
                rekey_every: Some(10),
                ..IN_PLACE
            },
            true,
        ),
    ] {
        let out = relay_once(case, sent.clone(), &digest);
        let done = out.result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(done.bytes, LEN as u64, "{name}");
        assert!(done.reusable, "{name}");
        assert!(
            out.received == sent,
            "{name}: client got {} bytes, other bytes",
            out.received.len()
        );
        if in_place {
            // Nearly every record; a few around the head's bytes and key
            // updates go the copying way.
            assert!(out.in_place > records * 3 / 4, "{name}: {}", out.in_place);
        } else {
            assert_eq!(out.in_place, 0, "{name}");
        }
    }
}

#[test]
fn a_body_failing_its_digest_never_arrives_whole_either_way() {
    let good = body();
    let digest = sha256_digest(&good);
    for case in [
        IN_PLACE,
        Case {
            upstream: TLS12,
            ..IN_PLACE
        },
    ] {
        for at in [LEN - 1, WITH_HEAD + 5, 3] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            let out = relay_once(case, bad.clone(), &digest);
            assert!(
                matches!(out.result, Err(RelayError::DigestMismatch)),
                "byte {at}: {:?}",
                out.result.map(|d| d.bytes)
            );
            let got = out.received;
            assert!(
                got.len() < LEN,
                "byte {at}: the client got the whole failed body ({} bytes)",
                got.len()
            );
            assert!(got[..] == bad[..got.len()], "byte {at}: other bytes");
        }
    }
}
