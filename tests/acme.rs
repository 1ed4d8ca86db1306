//! Automatic certificates end to end: the real ocirelay binary gets its
//! certificates from a real ACME server (Debian's `pebble`), which
//! validates each domain against the relay's own listeners, by TLS-ALPN-01
//! and by HTTP-01. A client trusting pebble's root then pulls through the
//! TLS listener. Renewal (short-lived certificates), reuse after a restart,
//! plain HTTP before the first certificate and retries are each a test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};

const DOMAIN: &str = "mirror.test";
const DOCKER_HOST: &str = "docker.mirror.test";

/// One test's world: the double, the relay's ports (chosen first: pebble
/// must know where to validate), pebble validating against them, the
/// relay's ACME state directory, and the challenge it asks for.
struct Setup {
    hub: HubDouble,
    http: u16,
    tls: u16,
    pebble: Pebble,
    state: tempdir::Dir,
    challenge: &'static str,
    /// `[acme] email` (an account without a contact when None).
    email: Option<String>,
}

impl Setup {
    /// Pebble issuing `validity_secs` certificates (None: its default, 5
    /// years), started or only prepared (a CA that is down).
    fn new(challenge: &'static str, validity_secs: Option<u64>, running: bool) -> Setup {
        let (http, tls) = (free_port(), free_port());
        let opts = PebbleOptions {
            http_port: http,
            tls_port: tls,
            validity_secs,
        };
        Setup {
            hub: hub(),
            http,
            tls,
            pebble: if running {
                Pebble::start(opts)
            } else {
                Pebble::prepare(opts)
            },
            state: tempdir::Dir::new("acme-state"),
            challenge,
            email: Some(format!("ops@{DOMAIN}")),
        }
    }

    fn tls_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.tls).into()
    }

    /// The relay config: plain and ACME TLS listeners, `domain` with the
    /// double as its `docker` registry, `[acme]` from pebble.
    fn config(&self) -> String {
        format!(
            "listen = [\"127.0.0.1:{http}\"]\nworkers = 2\ndebug = {debug}\n\
             domain = \"{DOMAIN}\"\nbuiltin_registries = false\n\n\
             [[tls_listener]]\naddr = \"127.0.0.1:{tls}\"\n\n\
             [timeouts]\nconnect_secs = 2\nupstream_read_secs = 5\nclient_header_secs = 5\n\
             client_idle_secs = 120\nclient_write_secs = 10\n\n\
             {registry}prefix = \"docker\"\n\n\
             [acme]\ndirectory = \"{directory}\"\n{email}\
             ca_file = \"{ca}\"\ndir = \"{dir}\"\nchallenge = \"{challenge}\"\n",
            http = self.http,
            tls = self.tls,
            debug = !self.hub.is_tls(),
            registry = registry_block(&self.hub, "docker.io"),
            directory = self.pebble.directory,
            ca = self.pebble.ca_file.display(),
            dir = self.state.path().display(),
            challenge = self.challenge,
            email = self
                .email
                .as_ref()
                .map(|e| format!("email = \"{e}\"\n"))
                .unwrap_or_default(),
        )
    }

    fn relay(&self) -> Relay {
        Relay::start_with(&self.config())
    }

    /// Waits (at most 90 s) until `relay` serves a certificate that
    /// verifies against pebble's root, other than `not`; returns it.
    fn wait_for_cert(
        &self,
        relay: &Relay,
        not: Option<&CertificateDer<'static>>,
    ) -> CertificateDer<'static> {
        let root = self.pebble.issuing_root();
        let mut got = None;
        let ok = wait_until(Duration::from_secs(90), || {
            match served_cert(self.tls_addr(), DOMAIN, &root) {
                Ok(c) if Some(&c) != not => {
                    got = Some(c);
                    true
                }
                _ => false,
            }
        });
        assert!(
            ok,
            "no new certificate from pebble\nrelay: {}\npebble: {}",
            relay.stderr(),
            self.pebble.log()
        );
        got.unwrap()
    }

    /// A TLS client of the relay for host `sni`, trusting pebble's root.
    fn tls_client(&self, sni: &str) -> Client {
        let root = self.pebble.issuing_root();
        let mut c = Client::new(self.tls_addr(), Some((sni, &root))).unwrap();
        c.set_timeout(Duration::from_secs(15));
        c
    }
}

/// The certificate the relay presents to a TLS client naming `sni` and
/// trusting `root_pem` (the handshake must verify).
fn served_cert(
    addr: SocketAddr,
    sni: &str,
    root_pem: &str,
) -> Result<CertificateDer<'static>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(conn.peer_certificates().unwrap()[0].clone().into_owned())
}

/// Pulls alpine's manifest and first layer through `c`, checking the
/// layer's digest. The config names its domain, so the challenge's realm is
/// built from it, whatever Host the client sent, with the port of the
/// listener the client came in on: a client that resolved the domain to
/// this relay follows it there (here: the same connection, `Host` set).
fn pull_alpine(hub: &HubDouble, c: &mut Client) {
    let r = c.get("/v2/library/alpine/manifests/latest").unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let realm = challenge_param(&r, "realm").expect("realm");
    let port = c.addr().port();
    assert!(
        [
            format!("https://{DOMAIN}:{port}/token"),
            format!("http://{DOMAIN}:{port}/token")
        ]
        .contains(&realm),
        "realm {realm}: the configured domain, on the client's listener"
    );
    let tok = token_from_challenge(c, &r, Some(DOMAIN));
    let alpine = &hub.seeded().alpine;
    let r = c
        .get_with(
            "/v2/library/alpine/manifests/latest",
            &[
                ("Authorization", &bearer(&tok)),
                ("Accept", &alpine.manifest.media_type),
            ],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, alpine.manifest_bytes);
    let layer = &alpine.layers[0];
    let r = get_auth(
        c,
        &format!("/v2/library/alpine/blobs/{}", layer.digest),
        &tok,
    );
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), layer.digest);
}

#[test]
fn tls_alpn_01_gets_a_certificate_a_client_pulls_through() {
    let w = Setup::new("tls-alpn-01", None, true);
    let relay = w.relay();
    w.wait_for_cert(&relay, None);
    let log = relay.stderr();
    assert!(
        log.contains("acme: answered a TLS-ALPN-01 validation")
            && !log.contains("/.well-known/acme-challenge/"),
        "validated another way: {log}"
    );
    // The certificate covers every name served: the registry's host too.
    let mut c = w.tls_client(DOCKER_HOST);
    pull_alpine(&w.hub, &mut c);

    // Stored owner-only: the account key and the certificate's key and chain.
    let ca_dir = std::fs::read_dir(w.state.path())
        .unwrap()
        .next()
        .expect("a folder for the CA")
        .unwrap()
        .path();
    for f in ["account.key", "mirror.test.key", "mirror.test.crt"] {
        let mode = std::fs::metadata(ca_dir.join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn http_01_gets_a_certificate_through_the_plain_listener() {
    let mut w = Setup::new("http-01", None, true);
    w.email = None; // and an account with no contact address

    let relay = w.relay();
    w.wait_for_cert(&relay, None);
    // The access log is written every second.
    let answered = wait_until(Duration::from_secs(5), || {
        relay.stderr().contains("GET /.well-known/acme-challenge/")
    });
    let log = relay.stderr();
    assert!(
        answered && !log.contains("acme: answered a TLS-ALPN-01 validation"),
        "validated another way: {log}"
    );
    let mut c = w.tls_client(DOMAIN);
    pull_alpine(&w.hub, &mut c);
}

#[test]
fn renewal_swaps_the_certificate_and_open_connections_keep_working() {
    // 15 s certificates: renewed 10 s after they start.
    let w = Setup::new("tls-alpn-01", Some(15), true);
    let relay = w.relay();
    let first = w.wait_for_cert(&relay, None);
    // A connection opened under the first certificate...
    let mut before = w.tls_client(DOMAIN);
    assert_eq!(before.get("/healthz").unwrap().status, 200);
    let second = w.wait_for_cert(&relay, Some(&first));
    assert_ne!(first, second);
    // ...carries on on the same connection after the swap.
    let r = before.get("/v2/").unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(before.connections_opened(), 1, "the connection was dropped");
    // And the renewal was logged as one.
    assert!(
        relay.stderr().contains("acme: renewing"),
        "{}",
        relay.stderr()
    );
}

#[test]
fn a_restart_serves_the_stored_certificate_without_a_new_order() {
    let w = Setup::new("tls-alpn-01", None, true);
    let relay = w.relay();
    let issued = w.wait_for_cert(&relay, None);
    let orders = w.pebble.orders();
    assert!(orders >= 1, "{}", w.pebble.log());
    drop(relay);

    let relay = w.relay();
    // Served from the first handshake on: loaded before the listeners open.
    let root = w.pebble.issuing_root();
    let served = served_cert(w.tls_addr(), DOMAIN, &root)
        .unwrap_or_else(|e| panic!("no handshake right away: {e}\n{}", relay.stderr()));
    assert_eq!(served, issued, "not the stored certificate");
    assert_eq!(w.pebble.orders(), orders, "a new order: {}", w.pebble.log());
    assert!(
        relay
            .stderr()
            .contains("acme: using the stored certificate"),
        "{}",
        relay.stderr()
    );
}

#[test]
fn a_reload_keeps_the_acme_certificate_and_names_an_acme_change_as_needing_a_restart() {
    let w = Setup::new("tls-alpn-01", None, true);
    let relay = w.relay();
    let issued = w.wait_for_cert(&relay, None);
    let orders = w.pebble.orders();
    // The same file but another contact: [acme] is kept as it runs.
    relay.rewrite_config(
        &w.config()
            .replace(&format!("ops@{DOMAIN}"), &format!("other@{DOMAIN}")),
    );
    relay.reload(2);
    assert!(
        relay.stderr().contains("[acme] changed"),
        "{}",
        relay.stderr()
    );
    // New connections of the new generation get the same certificate.
    let root = w.pebble.issuing_root();
    let served = served_cert(w.tls_addr(), DOMAIN, &root)
        .unwrap_or_else(|e| panic!("no handshake after the reload: {e}\n{}", relay.stderr()));
    assert_eq!(served, issued);
    let mut c = w.tls_client(DOCKER_HOST);
    pull_alpine(&w.hub, &mut c);
    assert_eq!(w.pebble.orders(), orders, "a new order: {}", w.pebble.log());
}

#[test]
fn plain_http_serves_before_any_certificate_and_a_failed_attempt_is_retried() {
    // The CA is down at first: the first attempt cannot connect.
    let mut w = Setup::new("http-01", None, false);
    let relay = w.relay();
    // Plain HTTP answers at once; TLS has no certificate to offer yet.
    let mut c = relay.client();
    assert_eq!(c.get("/v2/").unwrap().status, 401);
    let r = c.get("/.well-known/acme-challenge/unknown-token").unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(error_code(&r.body), "UNKNOWN");
    assert!(tls_hello_refused(w.tls_addr()));
    // Not ready until the TLS listener has its certificate.
    let r = c.get("/readyz").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text()
            .contains("certificates: failing (a TLS listener has no certificate yet)"),
        "{}",
        r.text()
    );
    assert!(
        wait_until(Duration::from_secs(20), || relay
            .stderr()
            .contains("acme: attempt 1 failed")),
        "{}",
        relay.stderr()
    );
    assert!(
        relay.stderr().contains("next attempt in"),
        "{}",
        relay.stderr()
    );
    // The CA comes up: the next attempt (after the backoff) succeeds.
    w.pebble.run();
    w.wait_for_cert(&relay, None);
    assert!(
        relay.stderr().contains("(http-01, attempt 2)"),
        "{}",
        relay.stderr()
    );
    let r = c.get("/readyz").unwrap();
    assert!(
        r.text().contains("certificates: ok (loaded)"),
        "{}",
        r.text()
    );
    assert_eq!(
        c.get("/v2/").unwrap().status,
        401,
        "plain HTTP still serves"
    );
}

/// Whether a TLS handshake with the relay fails (no certificate to serve),
/// rather than hanging or succeeding.
fn tls_hello_refused(addr: SocketAddr) -> bool {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = ServerName::try_from(DOMAIN.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    tcp.write_all(&out).unwrap();
    let mut answer = [0u8; 7];
    // An alert record (21) or a close, never a ServerHello (22).
    match tcp.read(&mut answer) {
        Ok(0) => true,
        Ok(_) => answer[0] == 21,
        Err(_) => false,
    }
}

#[test]
fn config_check_names_the_line_of_an_acme_domain_not_served() {
    let (ok, err) = config_check(
        "listen = [\"127.0.0.1:0\"]\ndomain = \"mirror.test\"\n\n[[tls_listener]]\n\
         addr = \"127.0.0.1:0\"\n\n[acme]\ndomains = [\n  \"mirror.test\",\n  \"elsewhere.test\",\n]\n",
    );
    assert!(!ok);
    assert!(
        err.contains("line 10") && err.contains("elsewhere.test is not served"),
        "{err}"
    );
}
