//! ocirelay's TLS record layer against OpenSSL's: `openssl s_client` on the
//! relay's TLS listener sends key updates (`k`: ours only, `K`: asks for
//! the relay's too) between requests, and tries to renegotiate (`R`).
//! Skipped, saying so, when `openssl` is not installed (tests/deps.sh
//! installs it).
//!
//! Each s_client runs with a bound: it is killed by its own PID if it has
//! not ended after 30 s.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn have_openssl() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: openssl is not installed (tests/deps.sh installs it)");
    }
    ok
}

/// Runs `openssl s_client` against `addr` with `args`, feeding `input`
/// line by line (commands and request lines; -crlf makes CRLF of them),
/// with a pause between lines so that each is its own read; returns what
/// it printed (stdout and stderr).
fn s_client(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    args: &[&str],
    input: &[&str],
) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &addr.to_string(), "-servername", "localhost"])
        .arg("-CAfile")
        .arg(ca)
        // Not -ign_eof: s_client takes its k/K/R commands only without it.
        .arg("-crlf")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let lines: Vec<String> = input.iter().map(|s| s.to_string()).collect();
    let feeder = std::thread::spawn(move || {
        for line in lines {
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
            let _ = stdin.flush();
            std::thread::sleep(Duration::from_millis(300));
        }
        // The end of stdin ends the session: time for the last answer.
        std::thread::sleep(Duration::from_secs(2));
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            // Its own PID, nothing else.
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = feeder.join();
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

fn ca_file(relay: &Relay, ca_pem: &str) -> std::path::PathBuf {
    let path = relay.dir.path().join("interop-ca.pem");
    std::fs::write(&path, ca_pem).unwrap();
    path
}

const GET: &str = "GET /healthz HTTP/1.1\nHost: localhost\n\n";
const LAST: &str = "GET /healthz HTTP/1.1\nHost: localhost\nConnection: close\n\n";

#[test]
fn openssl_key_updates_between_requests_are_taken() {
    if !have_openssl() {
        return;
    }
    let hub = hub();
    let (mut relay, ca_pem) = start_with_tls(&hub, "");
    let ca = ca_file(&relay, &ca_pem);
    let https = relay.https.unwrap();
    // k: OpenSSL updates its own key; K: and asks for ours (answered with
    // our next response).
    let out = s_client(
        https,
        &ca,
        &["-tls1_3"],
        &[GET, "k\n", GET, "K\n", GET, "K\n", "k\n", LAST],
    );
    assert_eq!(
        out.matches("HTTP/1.1 200").count(),
        4,
        "every request answered across the key updates:\n{out}"
    );
    assert!(
        out.contains("KEYUPDATE"),
        "s_client sent key updates:\n{out}"
    );
    assert!(!out.to_lowercase().contains("alert"), "{out}");
    assert!(relay.alive());
}

#[test]
fn openssl_renegotiation_is_refused_and_the_relay_stays_up() {
    if !have_openssl() {
        return;
    }
    let hub = hub();
    let (relay, ca_pem) = start_with_tls(&hub, "");
    let ca = ca_file(&relay, &ca_pem);
    let https = relay.https.unwrap();
    // TLS 1.2: R sends a new ClientHello; the relay does not renegotiate.
    let out = s_client(https, &ca, &["-tls1_2"], &[GET, "R\n", GET]);
    assert_eq!(
        out.matches("HTTP/1.1 200").count(),
        1,
        "answered before the attempt, not after:\n{out}"
    );
    assert!(out.contains("RENEGOTIATING"), "{out}");
    assert!(
        out.contains("unexpected message"),
        "the relay's alert names why:\n{out}"
    );
    // (TLS 1.3 has no renegotiation: OpenSSL's s_client refuses R itself,
    // sending nothing; our side of a TLS 1.3 ClientHello after the
    // handshake is in src/tls/peer_tests.rs.) The relay serves on.
    let mut c = relay.tls_client(&ca_pem);
    assert_eq!(c.get("/healthz").unwrap().status, 200);
}
