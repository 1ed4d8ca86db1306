//! The client's address behind a load balancer: a PROXY header (v1 or v2,
//! on plain and TLS listeners that expect one) or `X-Forwarded-For` names
//! the client, only when the TCP peer is in `trusted_proxies`; the access
//! log shows that client. A stranger's PROXY header, or a trusted peer's
//! connection without one on a PROXY listener, is refused (closed).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The test config with JSON access lines and `extra` top-level keys.
fn json_config(hub: &HubDouble, extra: &str) -> String {
    config_for(hub, &format!("access_log_format = \"json\"\n{extra}"))
}

/// A relay with a PROXY protocol listener, trusting `trusted`.
fn proxy_relay(hub: &HubDouble, trusted: &str) -> Relay {
    Relay::start_with(&json_config(
        hub,
        &format!("proxy_protocol_listen = [\"127.0.0.1:0\"]\ntrusted_proxies = {trusted}"),
    ))
}

/// The JSON access line of the request for `target`, once written.
fn line_for(relay: &Relay, target: &str) -> Value {
    let mut found = None;
    let seen = wait_until(Duration::from_secs(5), || {
        found = relay
            .stderr()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["target"] == target);
        found.is_some()
    });
    assert!(seen, "no access line for {target}: {}", relay.stderr());
    found.unwrap()
}

/// The client the access log names for `target`: address and port.
fn logged_client(relay: &Relay, target: &str) -> (String, Value) {
    let v = line_for(relay, target);
    (
        v["client"].as_str().unwrap().to_string(),
        v["client_port"].clone(),
    )
}

fn get(target: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: mirror.test\r\n{extra}\r\n")
}

/// Sends `bytes` (a request, maybe behind a PROXY header) on a new
/// connection to `addr` and expects a 200.
fn assert_served(addr: SocketAddr, bytes: &[u8]) {
    let mut raw = Raw::connect(addr);
    raw.send(bytes);
    assert_eq!(raw.read_response(false).unwrap().status, 200);
}

/// Sends `bytes` on a new connection to `addr` and expects the relay to
/// close it without answering.
fn assert_refused(addr: SocketAddr, bytes: &[u8]) {
    let (got, end) = Raw::one_shot(addr, bytes, Duration::from_secs(5));
    assert_ne!(end, End::Open, "the connection is left open");
    assert!(
        got.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// A PROXY v2 header for a TCP connection from `source` to `dest`, with
/// one TLV (an AWS-style VPC endpoint id) behind the addresses.
fn v2_header(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match (source, dest) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("one family"),
    };
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&dest.port().to_be_bytes());
    body.extend_from_slice(&[0xea, 0x00, 0x04, b'v', b'p', b'c', b'e']);
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, family]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

#[test]
fn a_trusted_proxys_v1_header_names_the_client_for_the_whole_connection() {
    let hub = hub();
    let relay = proxy_relay(&hub, "[\"127.0.0.1/32\"]");
    let addr = relay.proxied_http.expect("a PROXY listener");
    let mut raw = Raw::connect(addr);
    // The header and the first request in one segment, as balancers send.
    let first = format!(
        "PROXY TCP4 203.0.113.9 192.0.2.1 40000 443\r\n{}",
        get("/healthz?v1-first", "")
    );
    raw.send(first.as_bytes());
    assert_eq!(raw.read_response(false).unwrap().status, 200);
    raw.send(get("/healthz?v1-second", "").as_bytes());
    assert_eq!(raw.read_response(false).unwrap().status, 200);
    for target in ["/healthz?v1-first", "/healthz?v1-second"] {
        let (client, port) = logged_client(&relay, target);
        assert_eq!((client.as_str(), port), ("203.0.113.9", Value::from(40000)));
    }
    // v1 UNKNOWN (the balancer cannot say): the connection's own address.
    let unknown = format!("PROXY UNKNOWN\r\n{}", get("/healthz?v1-unknown", ""));
    assert_served(addr, unknown.as_bytes());
    assert_eq!(logged_client(&relay, "/healthz?v1-unknown").0, "127.0.0.1");
}

#[test]
fn a_v2_header_in_pieces_names_an_ipv6_client_and_local_keeps_the_peer() {
    let hub = hub();
    let relay = proxy_relay(&hub, "[\"127.0.0.1/32\"]");
    let addr = relay.proxied_http.expect("a PROXY listener");
    let header = v2_header(
        "[2001:db8::9]:50000".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    let mut raw = Raw::connect(addr);
    // Split inside the signature, then the rest with the request: the
    // reader waits for the whole header.
    raw.send(&header[..7]);
    std::thread::sleep(Duration::from_millis(50));
    raw.send(&header[7..]);
    raw.send(get("/healthz?v2-six", "").as_bytes());
    assert_eq!(raw.read_response(false).unwrap().status, 200);
    let (client, port) = logged_client(&relay, "/healthz?v2-six");
    assert_eq!((client.as_str(), port), ("2001:db8::9", Value::from(50000)));

    // LOCAL (the balancer's own health check): the peer itself.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    local.extend_from_slice(get("/healthz?v2-local", "").as_bytes());
    assert_served(addr, &local);
    assert_eq!(logged_client(&relay, "/healthz?v2-local").0, "127.0.0.1");
}

#[test]
fn a_strangers_proxy_header_is_refused_and_a_stranger_without_one_is_served() {
    let hub = hub();
    let relay = proxy_relay(&hub, "[\"10.0.0.0/8\"]");
    let addr = relay.proxied_http.expect("a PROXY listener");
    let forged = format!(
        "PROXY TCP4 10.0.0.1 192.0.2.1 1 443\r\n{}",
        get("/healthz?forged", "")
    );
    assert_refused(addr, forged.as_bytes());
    let mut v2 = v2_header(
        "10.0.0.1:1".parse().unwrap(),
        "192.0.2.1:443".parse().unwrap(),
    );
    v2.extend_from_slice(get("/healthz?forged-v2", "").as_bytes());
    assert_refused(addr, &v2);
    // Served as itself.
    assert_served(addr, get("/healthz?direct", "").as_bytes());
    assert_eq!(logged_client(&relay, "/healthz?direct").0, "127.0.0.1");
    assert!(!relay.stderr().contains("forged"), "{}", relay.stderr());
    // Written as the refused connection closes, maybe on another worker.
    assert!(
        wait_until(Duration::from_secs(5), || relay.stderr().contains(
            "refused: it sent a PROXY header but is not in trusted_proxies"
        )),
        "{}",
        relay.stderr()
    );
}

#[test]
fn a_trusted_peer_without_a_header_or_with_a_broken_one_is_refused() {
    let hub = hub();
    let relay = proxy_relay(&hub, "[\"127.0.0.1/32\"]");
    let addr = relay.proxied_http.expect("a PROXY listener");
    assert_refused(addr, get("/healthz?no-header", "").as_bytes());
    let broken = format!(
        "PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n{}",
        get("/healthz", "")
    );
    assert_refused(addr, broken.as_bytes());
    // The refusal's line is written as the connection closes: the client
    // may see the close first.
    let logged = |what: &str| wait_until(Duration::from_secs(5), || relay.stderr().contains(what));
    assert!(logged("sent no PROXY header"), "{}", relay.stderr());
    assert!(logged("malformed PROXY header"), "{}", relay.stderr());
    // The plain listener of the same relay takes no PROXY headers at all.
    let (got, _) = Raw::one_shot(
        relay.http,
        format!("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n{}", get("/healthz", "")).as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(parse_one(&got).status, 400);
}

/// A TLS client config trusting `ca_pem`.
fn tls_client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[test]
fn a_tls_listener_reads_the_proxy_header_before_the_handshake() {
    let hub = hub();
    let (relay, ca_pem) = start_with_tls_listener(
        &hub,
        "access_log_format = \"json\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
        "proxy_protocol = true",
    );
    let addr = relay
        .proxied_https
        .expect("a TLS listener with PROXY protocol");
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn =
        rustls::ClientConnection::new(tls_client_config(&ca_pem), "localhost".try_into().unwrap())
            .unwrap();
    // The header and the ClientHello in one write: the relay must hand
    // what follows the header to the handshake.
    let mut first = v2_header(
        "198.51.100.4:61000".parse().unwrap(),
        "192.0.2.1:443".parse().unwrap(),
    );
    conn.write_tls(&mut first).unwrap();
    (&tcp).write_all(&first).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(get("/healthz?over-tls", "Connection: close\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let (client, port) = logged_client(&relay, "/healthz?over-tls");
    assert_eq!(
        (client.as_str(), port),
        ("198.51.100.4", Value::from(61000))
    );
}

#[test]
fn x_forwarded_for_is_believed_only_from_trusted_peers() {
    let hub = hub();
    let trusting = Relay::start_with(&json_config(
        &hub,
        "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]",
    ));
    let mut c = trusting.client();
    let ask = |c: &mut Client, target: &str, xff: &[&str]| {
        let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("X-Forwarded-For", *v)).collect();
        assert_eq!(c.get_with(target, &headers).unwrap().status, 200);
    };
    // A client-written entry on the left, the balancer's own on the right.
    ask(
        &mut c,
        "/healthz?xff",
        &["198.51.100.7, 203.0.113.9", "10.0.0.2"],
    );
    ask(
        &mut c,
        "/healthz?xff-trusted-only",
        &["10.0.0.3, 127.0.0.1"],
    );
    ask(&mut c, "/healthz?xff-garbage", &["unknown"]);
    let client = |relay: &Relay, target: &str| logged_client(relay, target);
    assert_eq!(
        client(&trusting, "/healthz?xff"),
        ("203.0.113.9".into(), Value::Null)
    );
    assert_eq!(client(&trusting, "/healthz?xff-trusted-only").0, "10.0.0.3");
    assert_eq!(client(&trusting, "/healthz?xff-garbage").0, "127.0.0.1");

    let wary = Relay::start_with(&json_config(&hub, "trusted_proxies = [\"10.0.0.0/8\"]"));
    let mut c = wary.client();
    ask(&mut c, "/healthz?xff-ignored", &["203.0.113.9"]);
    let (addr, port) = client(&wary, "/healthz?xff-ignored");
    assert_eq!(addr, "127.0.0.1", "a stranger's X-Forwarded-For");
    assert!(port.as_u64().is_some());
}

#[test]
fn x_forwarded_for_applies_behind_a_proxy_header_from_a_trusted_hop() {
    let hub = hub();
    let relay = proxy_relay(&hub, "[\"127.0.0.1/32\", \"10.0.0.0/8\"]");
    let addr = relay.proxied_http.expect("a PROXY listener");
    let req = format!(
        "PROXY TCP4 10.0.0.5 192.0.2.1 1234 80\r\n{}",
        get("/healthz?layered", "X-Forwarded-For: 203.0.113.77\r\n")
    );
    assert_served(addr, req.as_bytes());
    assert_eq!(logged_client(&relay, "/healthz?layered").0, "203.0.113.77");
}
