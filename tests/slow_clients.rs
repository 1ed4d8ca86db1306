//! Slow and many clients (hardening item 7): heads and bodies that
//! trickle are cut by their deadlines and their descriptors come back; a
//! refusal sent before the request was read arrives before an orderly
//! close (FIN, not a reset); slow readers that keep reading outlive
//! `client_write_secs`, those under the minimum rate are cut; thousands of
//! keep-alive connections do not stop a pull.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The relay's open sockets to clients of its listener on `port` (its
/// upstream connections, pooled, are not counted).
fn client_sockets(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, state (0A: listening), inode
            f.len() > 9 && f[1].ends_with(&local) && f[3] != "0A" && inodes.contains(f[9])
        })
        .count()
}

/// `config` with `key = value` lines added to its `[timeouts]` table.
fn with_timeouts(config: &str, lines: &str) -> String {
    config.replace("[timeouts]\n", &format!("[timeouts]\n{lines}\n"))
}

#[test]
fn refused_head_still_arriving_gets_its_431_then_a_fin_not_a_reset() {
    let hub = hub();
    let relay = Relay::start(&hub);
    for _ in 0..5 {
        let mut raw = Raw::connect(relay.http);
        // Past max_header_bytes (16 KiB), and more keeps coming after the
        // relay has answered: unread input at close would mean a reset.
        let mut writer = raw.s.try_clone().unwrap();
        let sending = std::thread::spawn(move || {
            let _ = writer.write_all(b"GET /v2/ HTTP/1.1\r\nHost: m\r\nX-Big: ");
            for _ in 0..64 {
                if writer.write_all(&[b'a'; 4096]).is_err() {
                    break;
                }
            }
            // Done sending: the client closes its side, as a browser would.
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        // A reset would arrive before the client reads (and on a real
        // network could discard the answer).
        std::thread::sleep(Duration::from_millis(300));
        let (bytes, end) = raw.read_to_end(Duration::from_secs(10));
        sending.join().unwrap();
        let r = assert_error_then_close(&bytes, end, 431);
        assert_eq!(error_code(&r.body), "UNKNOWN");
        assert_eq!(end, End::Eof, "an orderly close after the 431, not a reset");
    }
}

#[test]
fn token_bodies_trickled_are_cut_with_408_at_the_body_deadline() {
    let hub = hub();
    // A byte a second passes the per-read limit (client_header_secs = 2)
    // but not the body's (client_body_secs = 3).
    let config = with_timeouts(&config_for(&hub, ""), "client_body_secs = 3");
    let relay = Relay::start_with(&config);
    let (pid, port) = (relay.pid(), relay.http.port());
    let head = "POST /token HTTP/1.1\r\nHost: m\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n";
    let mut conns: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(relay.http).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    // A byte a second to each (within the per-read limit) until each is
    // answered: the cut comes at 3 s; without a deadline for the whole
    // body none would come.
    for s in &conns {
        s.set_nonblocking(true).unwrap();
    }
    let mut answered = vec![false; conns.len()];
    let started = Instant::now();
    while answered.contains(&false) && started.elapsed() < Duration::from_secs(10) {
        for (s, done) in conns.iter_mut().zip(&mut answered) {
            let mut peek = [0u8; 1];
            *done |= s.peek(&mut peek).is_ok();
            if !*done {
                let _ = s.write_all(b"a");
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        !answered.contains(&false),
        "{} of 50 still open after 10 s of trickling",
        answered.iter().filter(|d| !**d).count()
    );
    for s in conns {
        s.set_nonblocking(false).unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let (bytes, end) = raw.read_to_end(Duration::from_secs(10));
        let r = assert_error_then_close(&bytes, end, 408);
        assert!(error_message(&r.body).contains("body"), "{}", r.text());
    }
    // Their descriptors come back.
    assert!(
        wait_until(Duration::from_secs(10), || client_sockets(pid, port) == 0),
        "{} client sockets still open",
        client_sockets(pid, port)
    );
    assert!(
        hub.log().for_host(Host::Token).is_empty(),
        "nothing reached the token server"
    );
}

#[test]
fn slowloris_heads_are_cut_by_the_header_timeout_and_their_fds_come_back() {
    let hub = hub();
    let relay = Relay::start(&hub); // client_header_secs = 2
    let (pid, port) = (relay.pid(), relay.http.port());
    let mut conns: Vec<TcpStream> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while conns.len() < 2000 && Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&relay.http, Duration::from_secs(1)) {
            let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: m\r\n");
            conns.push(s);
        }
    }
    assert_eq!(conns.len(), 2000);
    let peak = client_sockets(pid, port);
    let rss = proc_status_bytes(pid, "VmRSS:");
    // One more header line each, a second later: a trickle.
    std::thread::sleep(Duration::from_secs(1));
    for s in &mut conns {
        let _ = s.write_all(b"X-Slow: 1\r\n");
    }
    // All cut by the header timeout: each read ends (408 then close).
    let mut cut = 0;
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = Vec::new();
        if s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 408") {
            cut += 1;
        }
    }
    assert_eq!(cut, 2000, "every slowloris connection got its 408");
    drop(conns);
    assert!(
        wait_until(Duration::from_secs(10), || client_sockets(pid, port) == 0),
        "{} client sockets open, {peak} at the peak",
        client_sockets(pid, port)
    );
    eprintln!(
        "slowloris: 2000 connections, {peak} client sockets at the peak, RSS {} MiB; all cut",
        rss >> 20
    );
}
